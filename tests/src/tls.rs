//! A certificate authority made for one test: certificates for `localhost` and
//! `127.0.0.1`, written as the PEM files an operator would configure, and clients that
//! trust this authority and nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A server certificate and its key, as PEM text.
pub struct ServerCertificate {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The authority's own certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the authority's certificate to `path` (for `-cacert` and the like).
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("the CA file is written");
        path.to_owned()
    }

    /// A certificate for `localhost` and `127.0.0.1`, signed by this authority.
    pub fn server_certificate(&self) -> ServerCertificate {
        let key = KeyPair::generate().expect("a server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server parameters");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        ServerCertificate {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// An HTTPS client (HTTP/1.1 or h2, as ALPN agrees) trusting only this authority.
    pub fn http_client(&self) -> reqwest::Client {
        self.http_client_with(reqwest::Client::builder())
    }

    pub fn http_client_with(&self, builder: reqwest::ClientBuilder) -> reqwest::Client {
        builder
            .tls_certs_only([reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("PEM")])
            .build()
            .expect("an HTTPS client")
    }

    /// A gRPC channel to `addr` over TLS (h2), trusting only this authority.
    pub fn grpc_channel(&self, addr: std::net::SocketAddr) -> tonic::transport::Channel {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("PEM"))
            .expect("a CA certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connect = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let socket = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .expect("a DNS name")
                    .to_owned();
                let stream = connector.connect(name, socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a URL")
            .connect_with_connector_lazy(connect)
    }
}

impl ServerCertificate {
    /// Writes the pair to `dir/name.crt` and `dir/name.key`, each padded with blank lines
    /// to `pad_to` bytes (PEM readers skip them) so that one pair can replace another
    /// without the files' sizes changing.
    pub fn write(&self, dir: &Path, name: &str, pad_to: usize) -> (PathBuf, PathBuf) {
        let write = |path: PathBuf, pem: &str| {
            assert!(
                pem.len() <= pad_to,
                "{} bytes do not fit in {pad_to}",
                pem.len()
            );
            let mut padded = pem.to_owned();
            padded.push_str(&"\n".repeat(pad_to - pem.len()));
            std::fs::write(&path, padded).expect("a PEM file is written");
            path
        };
        (
            write(dir.join(format!("{name}.crt")), &self.cert),
            write(dir.join(format!("{name}.key")), &self.key),
        )
    }
}
