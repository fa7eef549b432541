//! A service binary run as its own process, for what only a process shows: the
//! environment it accepts, its subcommands, its memory and CPU time, and what survives
//! a kill. Peak memory is the kernel's high-water mark (`VmHWM` in `/proc/PID/status`),
//! which counts every buffer the process ever touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// A running service binary, killed when dropped (however the caller ends).
pub struct ServiceProcess {
    name: String,
    child: tokio::process::Child,
    pid: u32,
}

impl ServiceProcess {
    /// Starts `binary` with exactly `environment` (in `dir`), then waits until its own
    /// `healthcheck` subcommand reports SERVING; panics naming the service otherwise.
    pub async fn start(binary: &Path, environment: &BTreeMap<String, String>, dir: &Path) -> Self {
        let name = binary
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        let child = tokio::process::Command::new(binary)
            .env_clear()
            .envs(environment)
            .current_dir(dir)
            // Logs go to stdout: a warning during a benchmark or test must be seen.
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let pid = child.id().expect("a running child has a pid");
        let mut process = Self { name, child, pid };
        process.wait_healthy(binary, environment).await;
        process
    }

    async fn wait_healthy(&mut self, binary: &Path, environment: &BTreeMap<String, String>) {
        for _ in 0..150 {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("{} exited while starting: {exit}", self.name);
            }
            let status = tokio::process::Command::new(binary)
                .arg("healthcheck")
                .env_clear()
                .envs(environment)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .expect("the healthcheck subcommand runs");
            if status.success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{} never reported SERVING through `{} healthcheck`",
            self.name, self.name
        );
    }

    /// Kills the process outright (SIGKILL: no shutdown path runs) and waits for it.
    pub async fn kill(mut self) {
        self.child.start_kill().ok();
        self.child.wait().await.ok();
    }

    /// The most memory the process has held since it started, in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_field(self.pid, "VmHWM:")
            .unwrap_or_else(|| panic!("{} has no VmHWM: did it exit?", self.name))
    }

    /// CPU time the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(Some(self.pid))
    }

    /// Sends the process a signal by name (`HUP`, `TERM`, …), as an operator would.
    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "cannot send SIG{name} to {}", self.name);
    }
}

/// CPU time (user + system, all threads) the process `pid` has used so far; `None`
/// means this process.
pub fn cpu_time(pid: Option<u32>) -> Duration {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |pid| format!("/proc/{pid}/stat"),
    );
    let stat = std::fs::read_to_string(&path).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |at: usize| {
        fields
            .get(at)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as whole MiB, for reports.
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// The path of a workspace binary in the `debug` or `release` profile, built on first
/// use (another package's `CARGO_BIN_EXE_*` is not visible to this crate).
pub fn workspace_binary_in(profile: Profile, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(Profile, String)>> = std::sync::Mutex::new(Vec::new());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|done| done.0 == profile && done.1 == name) {
        let mut build = std::process::Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--bin", name])
            .current_dir(&workspace);
        if profile == Profile::Release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push((profile, name.to_owned()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    target.join(profile.dir()).join(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The profile the calling code was built with.
    pub fn current() -> Self {
        if cfg!(debug_assertions) {
            Self::Debug
        } else {
            Self::Release
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// The three binaries as separate processes on loopback, wired to each other, with
/// storage on `s3` (or in a local directory without one): the deployment a black-box
/// suite looks at from outside.
pub struct Deployment {
    pub auth: std::net::SocketAddr,
    pub storage: std::net::SocketAddr,
    pub gateway: std::net::SocketAddr,
    pub auth_process: ServiceProcess,
    pub storage_process: ServiceProcess,
    pub gateway_process: ServiceProcess,
}

impl Deployment {
    /// Starts auth-service, storage-service and the gateway in `dir`, each with its own
    /// settings plus `shared` (given to all three), and `gateway` given to the gateway
    /// only; returns once each reports SERVING through its `healthcheck`.
    pub async fn start(
        dir: &crate::Scratch,
        s3: Option<&crate::s3::TestS3>,
        shared: &[(&str, String)],
        gateway: &[(&str, String)],
    ) -> Self {
        Self::start_with(dir, s3, shared, gateway, None).await
    }

    /// Like [`Deployment::start`], with every call between the processes over TLS when
    /// `service_tls` is given: auth-service and storage-service serve certificates of
    /// that CA, and the gateway and storage-service call them at https:// URLs trusting
    /// it (`SERVICE_CA_FILE`).
    pub async fn start_with(
        dir: &crate::Scratch,
        s3: Option<&crate::s3::TestS3>,
        shared: &[(&str, String)],
        gateway: &[(&str, String)],
        service_tls: Option<&crate::tls::TestCa>,
    ) -> Self {
        let free = || {
            crate::reserve_port(0)
                .local_addr()
                .expect("a free loopback port")
        };
        let (auth, storage, gateway_addr) = (free(), free(), free());
        let scheme = if service_tls.is_some() {
            "https"
        } else {
            "http"
        };
        // Each service's certificate and key, and the CA file its callers trust.
        let tls_settings = |service: &str, cert_var: &'static str, key_var: &'static str| {
            let Some(ca) = service_tls else {
                return Vec::new();
            };
            let (cert, key) = ca.server_certificate().write(dir.path(), service, 4096);
            vec![
                (cert_var, cert.display().to_string()),
                (key_var, key.display().to_string()),
                (
                    "SERVICE_CA_FILE",
                    ca.write(&dir.join("service-ca.pem")).display().to_string(),
                ),
            ]
        };
        let environment = |own: Vec<(&str, String)>, extra: &[(&str, String)]| {
            own.into_iter()
                .chain(shared.iter().cloned())
                .chain(extra.iter().cloned())
                .map(|(key, value)| (key.to_owned(), value))
                .collect::<BTreeMap<String, String>>()
        };
        let auth_process = ServiceProcess::start(
            &crate::tools::workspace_binary("auth-service"),
            &environment(
                vec![
                    ("AUTH_LISTEN", auth.to_string()),
                    ("DATA_DIR", dir.join("auth").display().to_string()),
                    ("BCRYPT_ROUNDS", "4".to_owned()),
                ],
                &tls_settings("auth", "AUTH_TLS_CERT", "AUTH_TLS_KEY"),
            ),
            dir.path(),
        )
        .await;
        let storage_process = ServiceProcess::start(
            &crate::tools::workspace_binary("storage-service"),
            &environment(
                [
                    ("STORAGE_LISTEN", storage.to_string()),
                    ("DATA_DIR", dir.join("storage").display().to_string()),
                    ("AUTH_SERVICE_URL", format!("{scheme}://{auth}")),
                ]
                .into_iter()
                .chain(s3.into_iter().flat_map(|s3| {
                    [
                        ("STORAGE_ENDPOINT", s3.endpoint()),
                        ("STORAGE_ACCESS_KEY", crate::s3::ACCESS_KEY.to_owned()),
                        ("STORAGE_SECRET_KEY", crate::s3::SECRET_KEY.to_owned()),
                        ("STORAGE_BUCKET", crate::storage::BUCKET.to_owned()),
                    ]
                }))
                .collect(),
                &tls_settings("storage", "STORAGE_TLS_CERT", "STORAGE_TLS_KEY"),
            ),
            dir.path(),
        )
        .await;
        let gateway_process = ServiceProcess::start(
            &crate::tools::workspace_binary("gateway"),
            &environment(
                vec![
                    ("GATEWAY_LISTEN", gateway_addr.to_string()),
                    ("AUTH_SERVICE_URL", format!("{scheme}://{auth}")),
                    ("STORAGE_SERVICE_URL", format!("{scheme}://{storage}")),
                ]
                .into_iter()
                .chain(service_tls.map(|ca| {
                    (
                        "SERVICE_CA_FILE",
                        ca.write(&dir.join("service-ca.pem")).display().to_string(),
                    )
                }))
                .collect(),
                gateway,
            ),
            dir.path(),
        )
        .await;
        Self {
            auth,
            storage,
            gateway: gateway_addr,
            auth_process,
            storage_process,
            gateway_process,
        }
    }
}
