//! The coordinator's TLS material, read once from PEM files and used on both listeners:
//! tonic's own TLS on gRPC, and rustls (ring) through [`TlsListener`] on HTTP (`/metrics`
//! and the dashboard). With a client CA both require client certificates it signed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::debug;

use crate::ServeError;

/// How long a client gets to finish its TLS handshake on the HTTP listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and key (PEM), and optionally the CA that signs client certificates.
#[derive(Clone)]
pub struct TlsMaterial {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("mutual", &self.client_ca.is_some()).finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads this coordinator's certificate and key, and the CA whose client certificates it
    /// then requires; checks that rustls accepts them, so a bad file fails at start.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, ServeError> {
        let read = |path: &Path, what: &str| feral_proto::credentials::read_pem(path, what).map_err(ServeError::Tls);
        let material = Self { cert: read(cert, "the TLS certificate")?, key: read(key, "the TLS key")?, client_ca: client_ca.map(|ca| read(ca, "the client CA")).transpose()? };
        material.http()?;
        Ok(material)
    }

    /// tonic's configuration, for the gRPC listener.
    pub fn grpc(&self) -> ServerTlsConfig {
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => tls.client_ca_root(Certificate::from_pem(ca)),
            None => tls,
        }
    }

    /// rustls' configuration, for the HTTP listener (HTTP/1.1).
    pub fn http(&self) -> Result<Arc<ServerConfig>, ServeError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {e}"));
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.cert).collect::<Result<_, _>>().map_err(|e| bad("the TLS certificate is not PEM", &e))?;
        if certs.is_empty() {
            return Err(ServeError::Tls("the TLS certificate file holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| bad("the TLS key is not a PEM private key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| bad("TLS", &e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots.add(cert.map_err(|e| bad("the client CA is not PEM", &e))?).map_err(|e| bad("the client CA", &e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| bad("the client CA", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| bad("the TLS certificate and key", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A TCP listener whose connections are TLS: each handshake runs in a task of its own (a
/// slow or broken client holds up no one), and failed ones are dropped.
pub struct TlsListener {
    address: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        debug!(%error, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake on the HTTP listener failed"),
                        Err(_) => debug!(%peer, "TLS handshake on the HTTP listener timed out"),
                    }
                });
            }
        });
        Ok(Self { address, accepted, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.address)
    }
}
