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
        let (stop, stopped) = oneshot::channel();
        let (finish, finished) = oneshot::channel();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
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
    pub async fn stop(mut self) -> Result<(), String> {
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

    /// Whether `run` has returned (it should not before `stop`).
    pub fn has_exited(&mut self) -> bool {
        self.finished.as_mut().is_none_or(|finished| {
            !matches!(
                finished.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            )
        })
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }
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
