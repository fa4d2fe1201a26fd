//! A client's credential: the bearer token it sends with every call to a coordinator that
//! has tokens (the coordinator's `auth` module says who may call what). The `feral` CLI and
//! `feral-worker` read it the same way: the `FERAL_TOKEN` environment variable, or a file
//! (`--token-file`, `FERAL_TOKEN_FILE`) whose first line is the token. Over TLS
//! (`https://` addresses) a client trusts the CA it is given (`--tls-ca`) and may show its
//! own certificate (`--tls-cert`, `--tls-key`) to a coordinator that asks for one (mTLS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// The bytes of PEM file `path`; the error names `what` it is and the path.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadPem { what: what.to_owned(), path: path.to_path_buf(), source })
}

/// A client's TLS settings from PEM files: the CA to trust, and this client's certificate
/// and key for mutual TLS (both or neither). `None` when no file is given.
pub fn client_tls(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ClientTlsConfig>, TlsError> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read_pem(cert, "the TLS certificate")?, read_pem(key, "the TLS key")?)),
        (None, None) => None,
        _ => return Err(TlsError::CertWithoutKey),
    };
    let Some(ca) = ca else {
        return match identity {
            Some(_) => Err(TlsError::CertWithoutCa),
            None => Ok(None),
        };
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca, "the TLS CA")?));
    if let Some(identity) = identity {
        config = config.identity(identity);
    }
    Ok(Some(config))
}

/// Why TLS material cannot be used: a PEM file that cannot be read, client TLS flags that
/// do not go together ([`client_tls`]), or PEM contents that rustls refuses
/// ([`crate::https::server_config`]). Each names the file or flag that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadPem { what: String, path: PathBuf, source: std::io::Error },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    CertWithoutKey,
    #[error("--tls-cert needs --tls-ca, the CA that signed the coordinator's certificate")]
    CertWithoutCa,
    #[error("the TLS certificate is not PEM: {0}")]
    CertificateNotPem(#[source] pem::Error),
    #[error("the TLS certificate file holds no certificate")]
    NoCertificate,
    #[error("the TLS key is not a PEM private key: {0}")]
    KeyNotPem(#[source] pem::Error),
    #[error("TLS: {0}")]
    ProtocolVersions(#[source] rustls::Error),
    #[error("the client CA is not PEM: {0}")]
    ClientCaNotPem(#[source] pem::Error),
    #[error("the client CA: {0}")]
    ClientCa(#[source] rustls::Error),
    #[error("the client CA: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the TLS certificate and key: {0}")]
    CertificateAndKey(#[source] rustls::Error),
}

/// The endpoint of coordinator `url`: TLS for an `https://` address (which needs `tls`),
/// plain for `http://`.
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>, connect_timeout: Duration) -> Result<Endpoint, CredentialsError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| CredentialsError::InvalidUrl { url: url.to_owned(), problem: e.to_string() })?
        .connect_timeout(connect_timeout)
        .timeout(REQUEST_TIMEOUT);
    match (url.starts_with("https://"), tls) {
        (true, Some(tls)) => endpoint.tls_config(tls.clone()).map_err(|e| CredentialsError::Tls { url: url.to_owned(), problem: e.to_string() }),
        (true, None) => Err(CredentialsError::NeedsCa { url: url.to_owned() }),
        (false, _) => Ok(endpoint),
    }
}

/// Why a coordinator's address or a client's token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("coordinator address {url:?} is not a valid URL (expected e.g. http://127.0.0.1:7070): {problem}")]
    InvalidUrl { url: String, problem: String },
    #[error("TLS settings for {url}: {problem}")]
    Tls { url: String, problem: String },
    #[error("{url} is an https:// address: give --tls-ca (FERAL_TLS_CA), the CA that signed the coordinator's certificate")]
    NeedsCa { url: String },
    #[error("the token is empty")]
    EmptyToken,
    #[error("the token must be printable ASCII without spaces")]
    UnprintableToken,
    #[error("the token cannot travel in a header")]
    UnsendableToken,
    #[error("cannot read token file {}: {source}", path.display())]
    ReadTokenFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("token file {}: {problem}", path.display())]
    TokenFile { path: std::path::PathBuf, problem: Box<CredentialsError> },
    #[error("$FERAL_TOKEN: {0}")]
    TokenEnv(Box<CredentialsError>),
}

/// How long a client waits for a coordinator's answer (the response's headers: a stream
/// such as `WatchJob` then flows as long as it lasts). A paused or cut-off coordinator
/// cannot hold a client longer: the call fails with `Cancelled` ("Timeout expired") and a
/// client of several coordinators tries the next (docs/design.md §3, High availability).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that holds a token itself.
pub const TOKEN_ENV: &str = "FERAL_TOKEN";

/// A channel whose every call carries the client's [`BearerToken`].
pub type AuthedChannel = InterceptedService<Channel, BearerToken>;

/// The `authorization: Bearer …` header a client sends, or none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// No token: for coordinators without tokens.
    pub fn none() -> Self {
        Self(None)
    }

    /// A token from its secret; the error says what is wrong with it.
    pub fn new(secret: &str) -> Result<Self, CredentialsError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(CredentialsError::EmptyToken);
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialsError::UnprintableToken);
        }
        let value = format!("Bearer {secret}").parse().map_err(|_| CredentialsError::UnsendableToken)?;
        Ok(Self(Some(value)))
    }

    /// The token of `file` (its first line) if given, else of `$FERAL_TOKEN` if set, else none.
    pub fn from_sources(file: Option<&Path>) -> Result<Self, CredentialsError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::ReadTokenFile { path: path.to_path_buf(), source })?;
            let first = text.lines().next().unwrap_or_default();
            return Self::new(first).map_err(|problem| CredentialsError::TokenFile { path: path.to_path_buf(), problem: Box::new(problem) });
        }
        match std::env::var(TOKEN_ENV) {
            Ok(secret) => Self::new(&secret).map_err(|problem| CredentialsError::TokenEnv(Box::new(problem))),
            Err(_) => Ok(Self::none()),
        }
    }

    /// `channel` with this token on every call.
    pub fn channel(&self, channel: Channel) -> AuthedChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_its_first_line_and_bad_tokens_are_named() {
        let dir = std::env::temp_dir().join(format!("feral-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "s3cret-token-0123\n# comment\n").expect("write");
        let mut token = BearerToken::from_sources(Some(&path)).expect("valid");
        let request = token.call(Request::new(())).expect("call");
        assert_eq!(request.metadata().get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer s3cret-token-0123"));
        std::fs::write(&path, "\n").expect("write");
        let error = BearerToken::from_sources(Some(&path)).expect_err("empty").to_string();
        assert!(error.contains("token file") && error.contains("empty"), "{error}");
        assert!(BearerToken::new("two words").expect_err("space").to_string().contains("without spaces"));
        let error = BearerToken::from_sources(Some(&dir.join("missing"))).expect_err("missing").to_string();
        assert!(error.contains("missing"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
        let mut none = BearerToken::none();
        assert!(none.call(Request::new(())).expect("call").metadata().get("authorization").is_none());
    }
}

/// What to do about a failed call that is really a TLS mix-up: plain text to a TLS port,
/// TLS to a plain port, or no client certificate for a coordinator with mutual TLS. The
/// errors these give vary from run to run (an HTTP/2 protocol error, a cancelled call, a
/// corrupt TLS record, a bare transport error), so the first of `urls` is asked what it
/// speaks: an HTTP/2 preface sent in plain text is answered by a plain gRPC server with
/// frames of its own, and by a TLS server with a TLS alert record.
pub async fn tls_hint(urls: &str, client_certificate: bool, message: &str) -> Option<&'static str> {
    let transport = ["coordinator unavailable", "cannot reach", "h2 protocol error", "transport error"];
    if !transport.iter().any(|t| message.contains(t)) || message.contains("certificate") {
        return None;
    }
    let first = urls.split(',').next()?.trim();
    let (https, address) = match (first.strip_prefix("https://"), first.strip_prefix("http://")) {
        (Some(address), _) => (true, address),
        (None, Some(address)) => (false, address),
        _ => return None,
    };
    let tls = speaks_tls(address.trim_end_matches('/')).await?;
    match (https, tls) {
        (false, true) => Some("the coordinator speaks TLS: use an https:// address (with --tls-ca)"),
        (true, false) => Some("the coordinator does not speak TLS: use an http:// address"),
        (true, true) if !client_certificate => Some("the coordinator may require a client certificate (mutual TLS): give --tls-cert and --tls-key"),
        _ => None,
    }
}

/// Whether the server at `address` answers an HTTP/2 preface with a TLS alert record (it
/// speaks TLS) or with anything else (it does not); none if it answers nothing in time.
async fn speaks_tls(address: &str) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        // A TLS record of type alert (21), protocol version 3.x.
        Some(head == [0x15, 0x03])
    };
    tokio::time::timeout(Duration::from_secs(2), probe).await.ok().flatten()
}
