//! Test support for the black-box suites: each `spawn_*` starts a real service on a
//! free loopback port, in its own thread and tokio runtime (as if it were its own
//! process), with a fresh temp directory, and returns its address and a way to stop it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

pub mod auth;
pub mod database;
pub mod gateway;
pub mod metrics;
pub mod process;
pub mod s3;
pub mod storage;
pub mod tls;
pub mod tools;

/// A service running on its own runtime thread. Dropping it signals shutdown without
/// waiting; [`RunningService::stop`] waits for `run` to return.
pub struct RunningService {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    finished: Option<oneshot::Receiver<Result<(), String>>>,
}

impl RunningService {
    /// Binds `127.0.0.1:0` and runs the server that `serve` builds, on a dedicated
    /// runtime with `workers` worker threads.
    pub fn start<F, Fut, E>(workers: usize, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        Self::start_on(0, workers, serve)
    }

    /// Like [`RunningService::start`], on a given port (0 picks a free one): restarting a
    /// service on its old port is how the suites test recovery.
    pub fn start_on<F, Fut, E>(port: u16, workers: usize, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        Self::start_with(reserve_port(port), workers, serve)
    }

    /// Like [`RunningService::start`], on a listener bound beforehand (so its address can
    /// be handed to other services first).
    pub fn start_with<F, Fut, E>(listener: std::net::TcpListener, workers: usize, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let (stop, stopped) = oneshot::channel();
        let (finish, finished) = oneshot::channel();
        let addr = listener.local_addr().expect("a bound address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        std::thread::spawn(move || {
            let outcome = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .map_err(|err| err.to_string())
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)
                            .map_err(|err| err.to_string())?;
                        serve(listener, stopped)
                            .await
                            .map_err(|err| err.to_string())
                    })
                });
            finish.send(outcome).ok();
        });
        Self {
            addr,
            stop: Some(stop),
            finished: Some(finished),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the service; connects lazily.
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("a valid URL")
            .connect_lazy()
    }

    /// Stops the service gracefully and returns what `run` returned. Clients holding
    /// connections keep working meanwhile: waiting never blocks the caller's runtime.
    pub async fn stop(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        match self.finished.take() {
            Some(finished) => finished
                .await
                .map_err(|_| "the service thread panicked".to_owned())?,
            None => Ok(()),
        }
    }

    /// Waits until the service answers health checks with SERVING; panics with the
    /// service's own error if it stopped instead.
    pub async fn wait_until_serving(&mut self) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut health = HealthClient::new(self.channel());
        for _ in 0..200 {
            if let Some(finished) = self.finished.as_mut()
                && let Ok(outcome) = finished.try_recv()
            {
                panic!("the service stopped while starting: {outcome:?}");
            }
            let check = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if check.is_ok_and(|response| response.into_inner().status() == ServingStatus::Serving)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "the service at {} did not become healthy within 10 s",
            self.addr
        );
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }
}

/// Binds a loopback listener on `port` (0 picks a free one).
pub fn reserve_port(port: u16) -> std::net::TcpListener {
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("a free loopback port")
}

/// Turns the oneshot a test holds into the shutdown future `run` takes.
pub async fn until_stopped(stopped: oneshot::Receiver<()>) {
    let _ = stopped.await;
}

/// A temp directory that survives as long as the test needs it.
pub struct Scratch(TempDir);

impl Scratch {
    pub fn new() -> Self {
        Self(tempfile::tempdir().expect("a temp dir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Every regular file below `root`, recursively (empty when it does not exist).
pub fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Runs each named scenario, an `async fn(Backend)` of the calling test file, twice:
/// against the local directory and against a real S3 server (`mod local`, `mod s3`),
/// both with the index in SQLite. For scenarios about objects rather than the index;
/// those that count on the index's rules use [`on_every_backend!`]. The file must have
/// `Backend` in scope.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::Backend::Local).await })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::Backend::S3).await })*
        }
    };
}

/// Like [`on_both_backends!`], and a third time with the index on PostgreSQL
/// (`mod s3_postgres`): every rule the index keeps must hold on both databases.
#[macro_export]
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        $crate::on_both_backends!($($scenario),*);
        mod s3_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::Backend::S3Postgres).await })*
        }
    };
}
