//! The embedded all-in-one launch: auth-service, storage-service and the gateway in one
//! process, each configured from the environment exactly as its own binary would be,
//! wired to each other over loopback, and stopped together.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use strongbox_common::server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The three configurations, as the environment (and `.env`) sets them.
pub struct Settings {
    pub auth: auth_service::Config,
    pub storage: storage_service::Config,
    pub gateway: gateway::Config,
}

impl Settings {
    pub fn from_env() -> Self {
        use clap::Parser;
        Self {
            auth: auth_service::Config::parse_from(["auth-service"]),
            storage: storage_service::Config::parse_from(["storage-service"]),
            gateway: gateway::Config::parse_from(["gateway"]),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error("auth-service: {0}")]
    Auth(auth_service::AuthError),
    #[error("storage-service: {0}")]
    Storage(storage_service::StorageError),
    #[error("gateway: {0}")]
    Gateway(gateway::GatewayError),
    #[error(
        "the gateway did not report SERVING within {} s of starting (last answer: {last}); \
         see the log above for what failed",
        READY_DEADLINE.as_secs()
    )]
    NotReady { last: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How long the three parts may take to answer health together before the launch is
/// given up: starting is migrations and a look at the object store, seconds at most.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How often the gateway's health is asked while starting.
const READY_POLL: Duration = Duration::from_millis(50);

/// The address a browser uses for a listen address (`0.0.0.0:8000` →
/// `http://localhost:8000`, or `https://` when the gateway serves TLS).
pub fn browser_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        format!("{scheme}://localhost:{}", addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

/// Binds all three listeners, wires the services to each other's real addresses, calls
/// `ready` with the page's URL once the gateway reports SERVING (which it does only
/// while both services answer their health checks), and runs until `shutdown` resolves
/// or any part fails; then stops every part gracefully. A part that fails while
/// starting ends the launch with its error, and `ready` is never called.
pub async fn run(
    mut settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(&str),
) -> Result<(), LaunchError> {
    let auth_listener = server::bind(settings.auth.listen).await?;
    let storage_listener = server::bind(settings.storage.listen).await?;
    let gateway_listener = server::bind(settings.gateway.listen).await?;
    let auth_url = format!("http://{}", auth_listener.local_addr()?);
    let storage_url = format!("http://{}", storage_listener.local_addr()?);
    let gateway_addr = gateway_listener.local_addr()?;
    let tls_cert = settings.gateway.tls_cert.clone();
    let page_url = browser_url(gateway_addr, tls_cert.is_some());
    settings.storage.auth_service_url = auth_url.clone();
    if std::env::var_os("PUBLIC_BASE_URL").is_none() {
        settings.storage.public_base_url = page_url.clone();
    }
    settings.gateway.auth_service_url = auth_url;
    settings.gateway.storage_service_url = storage_url;

    let stop = CancellationToken::new();
    let auth = spawn_part(
        &stop,
        auth_listener,
        |listener, done| auth_service::run(settings.auth, listener, done),
        LaunchError::Auth,
    );
    let storage = spawn_part(
        &stop,
        storage_listener,
        |listener, done| storage_service::run(settings.storage, listener, done),
        LaunchError::Storage,
    );
    let gateway = spawn_part(
        &stop,
        gateway_listener,
        |listener, done| gateway::run(settings.gateway, listener, done),
        LaunchError::Gateway,
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let mut not_ready = None;
    tokio::select! {
        serving = serving(gateway_addr, tls_cert.as_deref()) => match serving {
            Ok(()) => ready(&page_url),
            Err(err) => not_ready = Some(err),
        },
        () = stop.cancelled() => {}
        () = &mut shutdown => stop.cancel(),
    }
    if not_ready.is_none() {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
    }
    stop.cancel();
    let (auth, storage, gateway) = tokio::join!(auth, storage, gateway);
    // A part's own error says more than "not ready".
    for outcome in [gateway, storage, auth] {
        outcome.map_err(|err| LaunchError::Io(std::io::Error::other(err)))??;
    }
    not_ready.map_or(Ok(()), Err)
}

/// Waits until the gateway at `addr` reports SERVING (over TLS with the certificate it
/// serves, if any), for up to [`READY_DEADLINE`].
async fn serving(addr: SocketAddr, tls_cert: Option<&std::path::Path>) -> Result<(), LaunchError> {
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let checked = match tls_cert {
            Some(cert) => strongbox_common::tls::check_serving_pinned(addr, cert).await,
            None => server::check_serving(addr).await,
        };
        let last = match checked {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(LaunchError::NotReady { last });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Runs one service until `stop` is cancelled; if it ends on its own (an error), it
/// cancels `stop` so the others shut down too.
fn spawn_part<Fut, E>(
    stop: &CancellationToken,
    listener: TcpListener,
    run: impl FnOnce(TcpListener, tokio_util::sync::WaitForCancellationFutureOwned) -> Fut,
    wrap: fn(E) -> LaunchError,
) -> tokio::task::JoinHandle<Result<(), LaunchError>>
where
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let part = run(listener, stop.clone().cancelled_owned());
    let stop = stop.clone();
    tokio::spawn(async move {
        let outcome = part.await.map_err(wrap);
        stop.cancel();
        outcome
    })
}
