//! The coordinator's TLS material, read once from PEM files and used on both listeners:
//! tonic's own TLS on gRPC, and rustls (ring) through [`feral_proto::https`] on HTTP
//! (`/metrics` and the dashboard). With a client CA both require client certificates it
//! signed.

use std::path::Path;
use std::sync::Arc;

use feral_proto::https::ServerConfig;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::ServeError;

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
        let read = |path: &Path, what: &str| feral_proto::credentials::read_pem(path, what).map_err(ServeError::TlsFiles);
        let material = Self {
            cert: read(cert, "the TLS certificate")?,
            key: read(key, "the TLS key")?,
            client_ca: client_ca.map(|ca| read(ca, "the client CA")).transpose()?,
        };
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
        feral_proto::https::server_config(&self.cert, &self.key, self.client_ca.as_deref()).map_err(ServeError::TlsFiles)
    }
}
