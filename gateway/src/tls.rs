//! HTTPS at the front door: `GATEWAY_TLS_CERT` and `GATEWAY_TLS_KEY` (PEM) turn the one
//! port into TLS for everything on it — native gRPC and grpc-web over h2, the page and
//! download links over HTTP/1.1 or h2 (ALPN picks).
//!
//! Certificates are replaced without a restart, as certificate renewers expect: on
//! SIGHUP, and when either file changes (checked every [`CHANGE_CHECK`]). A new pair is
//! used only once both files load and the key belongs to the certificate; until then
//! (a renewer that has written one file of two, a broken file) the pair in use stays,
//! and the error is logged. Connections already open keep the certificate they began
//! with; new handshakes get the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the files are checked for a change (a SIGHUP reloads at once).
pub const CHANGE_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read GATEWAY_TLS_CERT {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error(
        "GATEWAY_TLS_CERT {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate { path: PathBuf },
    #[error("cannot read GATEWAY_TLS_KEY {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "GATEWAY_TLS_KEY {key} does not belong to the certificate in GATEWAY_TLS_CERT {cert}: {reason}"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The front door's TLS: the acceptor for new connections and the certificate behind it.
pub struct FrontDoorTls {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadableCertificate>,
}

impl FrontDoorTls {
    /// Loads the pair (refusing to start with a broken one) and builds the acceptor.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certificate = Arc::new(ReloadableCertificate::load(cert, key, provider.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Setup(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    pub async fn accept(&self, socket: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(socket).await
    }

    /// Reloads the pair on SIGHUP and when the files change, until the task is aborted.
    pub fn watch(&self) -> tokio::task::JoinHandle<()> {
        let certificate = self.certificate.clone();
        tokio::spawn(async move {
            let mut hangups = hangups();
            let mut seen = certificate.stamps();
            loop {
                tokio::select! {
                    Some(()) = next_hangup(&mut hangups) => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        certificate.reload();
                        seen = certificate.stamps();
                    }
                    () = tokio::time::sleep(CHANGE_CHECK) => {
                        let now = certificate.stamps();
                        if now != seen {
                            tracing::info!("the TLS certificate files changed: reloading");
                            certificate.reload();
                            seen = now;
                        }
                    }
                }
            }
        })
    }
}

fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGHUP; certificates reload on file change only");
            None
        }
    }
}

async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// The pair in use, swapped whole when a new one loads.
#[derive(Debug)]
struct ReloadableCertificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

/// What tells a file changed: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

impl ReloadableCertificate {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let current = certified_key(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    fn reload(&self) {
        match certified_key(&self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(err) => tracing::error!(%err, "keeping the TLS certificate in use"),
        }
    }

    fn stamps(&self) -> (Stamp, Stamp) {
        let stamp = |path: &Path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        };
        (stamp(&self.cert), stamp(&self.key))
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|err| TlsError::Certificate {
            path: cert.to_owned(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsError::Key {
        path: key.to_owned(),
        reason: err.to_string(),
    })?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|err| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: err.to_string(),
    })
}
