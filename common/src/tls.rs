//! TLS between the services: what a service serves with (`AUTH_TLS_CERT` /
//! `STORAGE_TLS_CERT` and their keys) and what a caller trusts (`SERVICE_CA_FILE`, the
//! authority that signed the services' certificates) for `https://` service URLs.
//! Plain `http://` URLs stay h2c, for a private network.
//!
//! Also the `healthcheck` subcommand over TLS: it trusts exactly the certificate its
//! own server is configured with ([`pinned`]), so it needs no CA file and accepts no
//! other server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{setting} {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{url} is https://, so set SERVICE_CA_FILE to the CA that signed its certificate")]
    NoCa { url: String },
    #[error("{url} is not a valid service URL: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// The certificates in a PEM file, at least one.
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let found: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if found.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_owned(),
        });
    }
    Ok(found)
}

/// A service's own certificate and key (both PEM files), named by their settings.
#[derive(Debug, Clone)]
pub struct ServedCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_setting: &'static str,
    pub key_setting: &'static str,
}

impl ServedCertificate {
    /// tonic's server TLS for this pair; read at start, so a broken pair stops the start.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        certificates(self.cert_setting, &self.cert)?;
        let cert = read(self.cert_setting, &self.cert)?;
        let key = read(self.key_setting, &self.key)?;
        Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
    }
}

/// What a caller trusts for `https://` service URLs: the CA in `SERVICE_CA_FILE`.
#[derive(Debug, Clone)]
pub struct ServiceCa {
    pem: Vec<u8>,
}

impl ServiceCa {
    pub fn load(path: Option<&Path>) -> Result<Option<Self>, TlsError> {
        let Some(path) = path else {
            return Ok(None);
        };
        certificates("SERVICE_CA_FILE", path)?;
        Ok(Some(Self {
            pem: read("SERVICE_CA_FILE", path)?,
        }))
    }

    /// A rustls client config trusting only this CA, with no ALPN set (hyper-rustls sets
    /// it to the protocols its connector enables).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&self.pem).filter_map(Result::ok) {
            roots
                .add(certificate)
                .map_err(|err| TlsError::Setup(err.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Setup(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(config)
    }
}

/// A tonic endpoint for a service URL: h2c for `http://`, TLS trusting `ca` for
/// `https://` (refused without a CA: no URL silently trusts the system's roots).
pub fn service_endpoint(url: &str, ca: Option<&ServiceCa>) -> Result<Endpoint, TlsError> {
    service_endpoint_at(url, None, ca)
}

/// Like [`service_endpoint`], connecting to `replica` (one of the addresses `url`'s name
/// resolves to) while naming and verifying the server as `url` does.
pub fn replica_endpoint(
    url: &str,
    replica: std::net::SocketAddr,
    ca: Option<&ServiceCa>,
) -> Result<Endpoint, TlsError> {
    service_endpoint_at(url, Some(replica), ca)
}

fn service_endpoint_at(
    url: &str,
    replica: Option<std::net::SocketAddr>,
    ca: Option<&ServiceCa>,
) -> Result<Endpoint, TlsError> {
    let invalid = |reason: String| TlsError::Url {
        url: url.to_owned(),
        reason,
    };
    let named = Endpoint::from_shared(url.to_owned()).map_err(|err| invalid(err.to_string()))?;
    let scheme = named.uri().scheme_str().unwrap_or_default().to_owned();
    let host = named
        .uri()
        .host()
        .map(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .ok_or_else(|| invalid("no host".to_owned()))?;
    let endpoint = match replica {
        None => named,
        Some(replica) => Endpoint::from_shared(format!("{scheme}://{replica}"))
            .map_err(|err| invalid(err.to_string()))?
            .origin(named.uri().clone()),
    };
    match scheme.as_str() {
        "http" => Ok(endpoint),
        "https" => {
            let ca = ca.ok_or_else(|| TlsError::NoCa {
                url: url.to_owned(),
            })?;
            endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&ca.pem))
                        .domain_name(host),
                )
                .map_err(|err| invalid(err.to_string()))
        }
        _ => Err(invalid("use http:// or https://".to_owned())),
    }
}

/// One `grpc.health.v1` check of the server on `listen` over TLS, trusting only the
/// certificate in `cert` (the file the server itself serves).
pub async fn check_serving_pinned(listen: std::net::SocketAddr, cert: &Path) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let leaf = certificates("the certificate", cert)
        .map_err(|err| err.to_string())?
        .remove(0);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned::Pinned::new(leaf, provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = crate::server::local_target(listen);
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let socket = tokio::net::TcpStream::connect(target).await?;
            let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
            let stream = connector.connect(name, socket).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The URL only names the call; the connector above makes the TLS connection.
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|err| err.to_string())?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect_with_connector(connect);
    crate::server::check_serving_with(channel, target).await
}

/// A verifier that accepts exactly one certificate, whoever issued it, and still checks
/// the handshake's signatures with it.
pub mod pinned {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub struct Pinned {
        certificate: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
    }

    impl Pinned {
        pub fn new(certificate: CertificateDer<'static>, provider: Arc<CryptoProvider>) -> Self {
            Self {
                certificate,
                provider,
            }
        }
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            if end_entity.as_ref() == self.certificate.as_ref() {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(Error::General(
                    "the server's certificate is not the one this check was given".into(),
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
