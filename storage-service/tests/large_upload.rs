//! A 256 MiB upload through the real `storage-service` process, watching its memory.
//!
//! The streaming core promises that memory holds at most `parts_in_flight + 1` parts
//! whatever the file size (8 MiB parts, 2 in flight by default). A process-level test is
//! the only honest check of that: the kernel's high-water mark of resident memory
//! (`VmHWM`) counts every buffer — gRPC, HTTP/2, the multipart writer — not just the
//! ones the code knows about. The file is generated on the fly, so the test process does
//! not hold it either.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use strongbox_common::jwt::{AUDIENCE, Claims, ISSUER};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{FileMetadata, UploadRequest, upload_request};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;
const FILE_SIZE: u64 = 256 * MIB;
const CHUNK_SIZE: usize = MIB as usize;
/// Three parts of 8 MiB in memory at most, plus the process itself and its gRPC
/// buffers: well under this. Buffering the file would take at least 256 MiB.
const PEAK_RSS_LIMIT: u64 = 128 * MIB;
const JWT_SECRET: &str = "large-upload-test-secret-0123456789abcdef";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_upload_streams_through_in_flat_memory() {
    let service = ServiceProcess::start();
    let channel = service.wait_until_serving().await;
    let pid = service.pid();

    let (size, sha256) = expected_file();
    let sent = Arc::new(Sent::default());
    let rss_samples = sample_rss_while_streaming(pid, sent.clone());

    let mut client = StorageServiceClient::new(channel);
    let mut request = tonic::Request::new(upload_stream(size, sha256.clone(), sent.clone()));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", access_token())
            .parse()
            .expect("an ASCII header value"),
    );
    let uploaded = client
        .upload(request)
        .await
        .unwrap_or_else(|status| panic!("the upload failed: {status:?}\n{}", service.log()))
        .into_inner();
    let samples = rss_samples.stop().await;
    let high_water_mark = vm_kib(pid, "VmHWM:") * 1024;

    assert_eq!(
        sent.total(),
        (size, sha256.clone()),
        "what the client streamed"
    );
    assert_eq!(uploaded.size, FILE_SIZE);
    assert_eq!(uploaded.sha256, sha256);

    let stored = service.stored_objects();
    assert_eq!(stored.len(), 1, "exactly the one object: {stored:?}");
    assert!(
        stored[0].ends_with(&uploaded.key),
        "{:?} is not {}",
        stored[0],
        uploaded.key
    );
    assert_eq!(file_sha256(&stored[0]), (FILE_SIZE, sha256));

    // The kernel updates VmHWM when memory is unmapped, not when an allocator returns
    // pages with madvise, so it can miss a peak a VmRSS sample saw: take the higher.
    let sampled_peak = samples.iter().copied().max().unwrap_or(0);
    let peak_rss = high_water_mark.max(sampled_peak);
    println!(
        "uploaded {} MiB ({} bytes); peak RSS of storage-service during a 256 MiB upload: \
         {} MiB (VmHWM {} MiB; highest of {} VmRSS samples {} MiB)",
        FILE_SIZE / MIB,
        sent.total().0,
        peak_rss / MIB,
        high_water_mark / MIB,
        samples.len(),
        sampled_peak / MIB,
    );
    assert!(
        !samples.is_empty(),
        "VmRSS was never sampled during the upload"
    );
    assert!(
        peak_rss < PEAK_RSS_LIMIT,
        "storage-service reached {} MiB of resident memory; memory must stay flat",
        peak_rss / MIB
    );
}

/// The binary running as a child process on a free port, with its own data directory.
/// Dropping it (also when the test panics) kills the process.
struct ServiceProcess {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl ServiceProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let addr = free_loopback_addr();
        let log = File::create(dir.path().join("service.log")).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_storage-service"))
            // Nothing from the developer's shell or a `.env` decides the settings.
            .env_clear()
            .current_dir(dir.path())
            .env("STORAGE_LISTEN", addr.to_string())
            .env("DATA_DIR", dir.path().join("data"))
            .env("JWT_SECRET", JWT_SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file handle"))
            .stderr(log)
            .spawn()
            .expect("the storage-service binary starts");
        Self { child, addr, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until grpc.health.v1 answers SERVING; panics with the log if the process
    /// exits or never gets there.
    async fn wait_until_serving(&self) -> Channel {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a valid URL")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let mut health = HealthClient::new(channel.clone());
        for _ in 0..600 {
            let check = health
                .check(HealthCheckRequest {
                    service: "storage.v1.StorageService".into(),
                })
                .await;
            if check.is_ok_and(|response| response.into_inner().status() == ServingStatus::Serving)
            {
                return channel;
            }
            assert!(
                Path::new(&format!("/proc/{}", self.pid())).exists(),
                "storage-service exited while starting:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "storage-service did not become healthy in 30 s:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Every file of the local object store (`DATA_DIR/objects`).
    fn stored_objects(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.dir.path().join("data").join("objects")];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("a readable directory") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now: bound, read, released.
fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// An HS256 access token for a fresh user, as auth-service would issue it.
fn access_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let claims = Claims {
        sub: Uuid::new_v4().to_string(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("a signed token")
}

/// Chunk `index` of the test file: deterministic pseudo-random bytes (xorshift), which
/// neither compress nor repeat, so no layer can shortcut them.
fn chunk(index: u64) -> Bytes {
    let mut state = (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(CHUNK_SIZE);
    while bytes.len() < CHUNK_SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(bytes)
}

fn chunk_count() -> u64 {
    FILE_SIZE / CHUNK_SIZE as u64
}

/// The size and SHA-256 the upload declares up front: one pass over the generated
/// chunks, none of them kept.
fn expected_file() -> (u64, String) {
    let mut hasher = Sha256::new();
    for index in 0..chunk_count() {
        hasher.update(chunk(index));
    }
    (FILE_SIZE, hex::encode(hasher.finalize()))
}

/// What the client actually put on the wire, counted and hashed chunk by chunk.
#[derive(Default)]
struct Sent {
    bytes: AtomicU64,
    hasher: Mutex<Sha256>,
}

impl Sent {
    fn record(&self, chunk: &[u8]) {
        self.hasher
            .lock()
            .expect("an unpoisoned hasher")
            .update(chunk);
        self.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }

    fn started(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > 0
    }

    fn total(&self) -> (u64, String) {
        let hasher = self.hasher.lock().expect("an unpoisoned hasher").clone();
        (
            self.bytes.load(Ordering::Relaxed),
            hex::encode(hasher.finalize()),
        )
    }
}

/// Metadata, then the file chunk by chunk, generated only as the client asks for it.
fn upload_stream(
    size: u64,
    sha256: String,
    sent: Arc<Sent>,
) -> impl futures::Stream<Item = UploadRequest> + Send + 'static {
    let metadata = upload_request::Payload::Metadata(FileMetadata {
        filename: "large.bin".into(),
        content_type: "application/octet-stream".into(),
        size: Some(size),
        sha256: Some(sha256),
    });
    let chunks = futures::stream::iter(0..chunk_count()).map(move |index| {
        let bytes = chunk(index);
        sent.record(&bytes);
        upload_request::Payload::Chunk(bytes)
    });
    futures::stream::once(async move { metadata })
        .chain(chunks)
        .map(|payload| UploadRequest {
            payload: Some(payload),
        })
}

/// The size and SHA-256 of a file on disk, read in chunks.
fn file_sha256(path: &Path) -> (u64, String) {
    let mut file = File::open(path).expect("the stored object opens");
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK_SIZE];
    let mut size = 0;
    loop {
        let read = file.read(&mut buffer).expect("the stored object reads");
        if read == 0 {
            return (size, hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
}

/// A value of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`).
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the storage-service process is alive");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Samples the child's VmRSS (bytes) while the upload streams.
struct RssSampler {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

fn sample_rss_while_streaming(pid: u32, sent: Arc<Sent>) -> RssSampler {
    let running = Arc::new(AtomicBool::new(true));
    let keep_going = running.clone();
    let task = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        while keep_going.load(Ordering::Relaxed) {
            ticks.tick().await;
            if sent.started() {
                samples.push(vm_kib(pid, "VmRSS:") * 1024);
            }
        }
        samples
    });
    RssSampler { running, task }
}

impl RssSampler {
    async fn stop(self) -> Vec<u64> {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.expect("the sampler task")
    }
}
