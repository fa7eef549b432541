//! A real S3 protocol server for the suites: `s3s-fs` on a loopback port, with SigV4
//! authentication (including presigned URLs and the host they were signed for). The
//! same server runs as its own process, `strongbox-s3-server`, where MinIO cannot be
//! had (the container check's stand-in): both serve through [`serve`].

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

use crate::{RunningService, Scratch};

pub const ACCESS_KEY: &str = "strongbox-test-access";
pub const SECRET_KEY: &str = "strongbox-test-secret-key";

pub struct TestS3 {
    pub service: RunningService,
    root: PathBuf,
}

impl TestS3 {
    /// Starts an S3 server storing its buckets under `dir/s3`.
    pub fn start(dir: &Scratch) -> Self {
        Self::start_at(dir.join("s3"), None)
    }

    /// Starts (or restarts) an S3 server over `root`, on `port` if given.
    pub fn start_at(root: PathBuf, port: Option<u16>) -> Self {
        Self::start_with_credentials(root, port, ACCESS_KEY, SECRET_KEY)
    }

    /// Like [`TestS3::start_at`], accepting only the given credentials.
    pub fn start_with_credentials(
        root: PathBuf,
        port: Option<u16>,
        access_key: &str,
        secret_key: &str,
    ) -> Self {
        std::fs::create_dir_all(&root).expect("an S3 root");
        let (access_key, secret_key) = (access_key.to_owned(), secret_key.to_owned());
        let fs_root = root.clone();
        let service = RunningService::start_on(
            port.unwrap_or(0),
            2,
            // Stopping returns at once and the runtime drops every connection: to
            // clients this is the server dying, not a graceful drain.
            move |listener, stopped| async move {
                serve(
                    listener,
                    &fs_root,
                    access_key,
                    secret_key,
                    crate::until_stopped(stopped),
                )
                .await
            },
        );
        Self { service, root }
    }

    pub fn endpoint(&self) -> String {
        self.service.url()
    }

    /// The objects of `bucket` and every multipart upload in progress.
    pub fn files(&self, bucket: &str) -> Vec<PathBuf> {
        let mut files = crate::files_below(&self.root.join(bucket));
        files.extend(self.multipart_files());
        files
    }

    /// What multipart uploads in progress hold: s3s-fs keeps parts as `.upload_id-*`
    /// files and upload state as `.upload-*` files at its root. (Its per-object
    /// `.bucket-*` bookkeeping files are not objects and are left out.)
    pub fn multipart_files(&self) -> Vec<PathBuf> {
        crate::files_below(&self.root)
            .into_iter()
            .filter(|path| {
                path.parent() == Some(self.root.as_path())
                    && path
                        .file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.contains(".upload"))
            })
            .collect()
    }

    /// Whether `path` (one of [`TestS3::multipart_files`]) is an uploaded part.
    pub fn is_part(path: &Path) -> bool {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(".upload_id-") && name.contains(".part-"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Serves S3 over the buckets under `root` (one directory each) on `listener` until
/// `shutdown` resolves, accepting only requests signed with `access_key` and
/// `secret_key`. Returning drops the accept loop only: connections in flight belong to
/// the runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: &Path,
    access_key: String,
    secret_key: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|err| format!("{err:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let s3 = builder.build();
    let http = ConnectionBuilder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                // As MinIO (Go) does: no Nagle delay on small replies.
                Ok((socket, _)) => {
                    socket.set_nodelay(true).ok();
                    socket
                }
                Err(_) => continue,
            },
            () = &mut shutdown => return Ok(()),
        };
        let connection = http
            .serve_connection(TokioIo::new(socket), s3.clone())
            .into_owned();
        tokio::spawn(connection);
    }
}
