//! Who may call what (docs/design.md §3, Security). Every call carries a bearer token
//! (`authorization: Bearer SECRET`); the coordinator knows its tokens from a file, each with
//! a name and a role:
//!
//! - a *submitter* may call the job API (submit, watch, cancel, list), and sees and
//!   changes only the jobs it submitted: another's job answers as one that does not exist;
//! - a *worker* may call the worker API only, and only as the worker its name is: a worker
//!   token named `gpu-node-1` registers, heartbeats and reports tasks as `gpu-node-1` and
//!   no other, so nobody can take over a live worker's id or finish its tasks;
//! - an *admin* may do both, as any worker, on every job.
//!
//! ```toml
//! version = 1
//!
//! [[token]]
//! name = "alice"
//! role = "submitter"
//! secret = "…at least 16 characters…"
//!
//! [[token]]
//! name = "gpu-node-1"       # a worker token's name is the worker id it may use
//! role = "worker"
//! secret = "…"
//! ```
//!
//! Secrets are compared as SHA-256 digests in constant time, against every known token
//! (no early exit), so neither a secret nor which token matched leaks through timing.
//!
//! With mutual TLS and no tokens file, the client certificate names the caller instead:
//! its name is the certificate's first DNS name (subject alternative name), else its
//! common name, and its role its organisational unit (`OU=submitter`, `worker` or `admin`);
//! a certificate without one is refused. A worker certificate for `w-a` then registers and
//! reports as `w-a` only, and cannot submit, exactly as a worker token.
//! Without tokens or client certificates every caller is an anonymous admin.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use feral_common::ids::{WorkerId, WorkerIdError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::control::Scope;

/// The shortest secret a tokens file may hold.
pub const MIN_SECRET_CHARS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Submitter,
    Worker,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Submitter => "submitter",
            Role::Worker => "worker",
            Role::Admin => "admin",
        })
    }
}

/// The caller a request's token names, put in the request's extensions by [`Gate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Anyone, when the coordinator has no tokens.
    fn anonymous() -> Self {
        Self { name: "anonymous".into(), role: Role::Admin }
    }

    /// Whose jobs this caller may see and change: an admin's every job, a submitter's its own.
    pub fn scope(&self) -> Scope<'_> {
        match self.role {
            Role::Admin => Scope::Every,
            Role::Submitter | Role::Worker => Scope::OwnedBy(&self.name),
        }
    }

    /// Whether this caller may speak for worker `id`: an admin for any, a worker for its own.
    pub fn may_act_as(&self, id: &WorkerId) -> Result<(), Status> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Worker if self.name == id.as_str() => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "`{}` (role {}) may not act as worker `{id}`: a worker token or certificate acts only as the worker it is named after",
                self.name, self.role
            ))),
        }
    }
}

/// The caller of `request`, as [`Gate`] found it (anonymous if no gate ran, as in unit
/// tests of the API types).
pub fn caller<T>(request: &Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or_else(Caller::anonymous)
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read tokens file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tokens file {path} is invalid: {source}")]
    Invalid { path: PathBuf, source: TokensFileError },
}

/// What is wrong in a tokens file's text: each names the token (by its place in the file,
/// from 1, and its name) and the field.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// Not TOML, or not the file's fields and types.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("version must be 1, got {found}")]
    Version { found: u32 },
    #[error("it lists no [[token]]")]
    NoTokens,
    #[error("token {index}: `name` must not be empty")]
    EmptyName { index: usize },
    #[error("token {index} (`{name}`): a worker token's name is its worker id, and it {source}")]
    WorkerName { index: usize, name: String, source: WorkerIdError },
    #[error("token {index} (`{name}`): `secret` must be at least {MIN_SECRET_CHARS} characters")]
    ShortSecret { index: usize, name: String },
    #[error("token {index} (`{name}`): `secret` must be printable ASCII without spaces (it travels in a header)")]
    UnprintableSecret { index: usize, name: String },
    /// Two tokens with one secret would be one caller with two names.
    #[error("token {index} (`{name}`): its secret is also another token's (token {other})")]
    SharedSecret { index: usize, name: String, other: usize },
    #[error("token {index} (`{name}`): another token has the same name (token {other})")]
    SameName { index: usize, name: String, other: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    version: u32,
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    secret: String,
}

/// The tokens a coordinator accepts.
#[derive(Debug)]
pub struct Tokens {
    known: Vec<([u8; 32], Caller)>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|source| TokensError::Invalid { path: path.into(), source })
    }

    /// Parses a tokens file's text; the error names the token and field that is wrong.
    pub fn parse(text: &str) -> Result<Self, TokensFileError> {
        let file: TokensFile = toml::from_str(text)?;
        if file.version != 1 {
            return Err(TokensFileError::Version { found: file.version });
        }
        if file.token.is_empty() {
            return Err(TokensFileError::NoTokens);
        }
        let mut known: Vec<([u8; 32], Caller)> = Vec::with_capacity(file.token.len());
        for (at, entry) in file.token.into_iter().enumerate() {
            let index = at + 1;
            if entry.name.trim().is_empty() {
                return Err(TokensFileError::EmptyName { index });
            }
            let name = || entry.name.clone();
            if entry.role == Role::Worker {
                WorkerId::parse(&entry.name).map_err(|source| TokensFileError::WorkerName { index, name: name(), source })?;
            }
            if entry.secret.chars().count() < MIN_SECRET_CHARS {
                return Err(TokensFileError::ShortSecret { index, name: name() });
            }
            if !entry.secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokensFileError::UnprintableSecret { index, name: name() });
            }
            let digest: [u8; 32] = Sha256::digest(entry.secret.as_bytes()).into();
            if let Some(other) = known.iter().position(|(d, _)| *d == digest) {
                return Err(TokensFileError::SharedSecret { index, name: name(), other: other + 1 });
            }
            if let Some(other) = known.iter().position(|(_, c)| c.name == entry.name) {
                return Err(TokensFileError::SameName { index, name: name(), other: other + 1 });
            }
            known.push((digest, Caller { name: entry.name, role: entry.role }));
        }
        Ok(Self { known })
    }

    /// The caller whose secret this is.
    fn find(&self, secret: &str) -> Option<&Caller> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (known, caller) in &self.known {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found
    }
}

/// Which of the two gRPC services a [`Gate`] guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Jobs,
    Workers,
}

/// The interceptor in front of each service: finds the caller by its token, refuses a
/// missing or unknown one (`Unauthenticated`) and a role the service does not serve
/// (`PermissionDenied`), and hands the caller on in the request's extensions.
#[derive(Clone, Debug)]
pub struct Gate {
    tokens: Option<Arc<Tokens>>,
    api: Api,
}

impl Gate {
    pub fn new(tokens: Option<Arc<Tokens>>, api: Api) -> Self {
        Self { tokens, api }
    }

    fn check(&self, request: &Request<()>) -> Result<Caller, Status> {
        if self.tokens.is_none() {
            // Present only when the listener asks for client certificates (mutual TLS).
            if let Some(leaf) = request.peer_certs().as_deref().and_then(|certs| certs.first().cloned()) {
                return permit(self.api, certificate_caller(&leaf)?);
            }
        }
        let header = request.metadata().get("authorization").map(|value| value.to_str().unwrap_or(""));
        authorize(self.tokens.as_deref(), self.api, header)
    }
}

/// The caller a client certificate (DER) names: see the module's documentation.
pub fn certificate_caller(der: &[u8]) -> Result<Caller, Status> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Status::unauthenticated(format!("the client certificate cannot be read: {e}")))?;
    let dns_name = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| san.value.general_names.iter().find_map(|n| if let GeneralName::DNSName(name) = n { Some(name.to_string()) } else { None }));
    let common_name = || cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let name =
        dns_name.or_else(common_name).ok_or_else(|| Status::unauthenticated("the client certificate names nobody: it has no DNS name and no common name"))?;
    let unit = cert.subject().iter_organizational_unit().next().and_then(|ou| ou.as_str().ok()).map(str::to_owned);
    let role = match unit.as_deref() {
        Some("submitter") => Role::Submitter,
        Some("worker") => Role::Worker,
        Some("admin") => Role::Admin,
        other => {
            let had = other.map_or("none".to_owned(), |ou| format!("{ou:?}"));
            return Err(Status::permission_denied(format!(
                "client certificate `{}` has no role: its subject needs OU=submitter, OU=worker or OU=admin (it has {had})",
                name.escape_debug()
            )));
        }
    };
    if role == Role::Worker {
        WorkerId::parse(&name).map_err(|p| {
            Status::permission_denied(format!("client certificate `{}` is a worker's, whose name is its worker id, and it {p}", name.escape_debug()))
        })?;
    }
    Ok(Caller { name, role })
}

/// `caller`, if its role may use `api`.
fn permit(api: Api, caller: Caller) -> Result<Caller, Status> {
    let allowed = matches!((api, caller.role), (_, Role::Admin) | (Api::Jobs, Role::Submitter) | (Api::Workers, Role::Worker));
    if !allowed {
        let api = match api {
            Api::Jobs => "the job API (feral.v1.JobService)",
            Api::Workers => "the worker API (feral.v1.WorkerService)",
        };
        return Err(Status::permission_denied(format!("`{}` has role {}, which may not call {api}", caller.name, caller.role)));
    }
    Ok(caller)
}

/// The caller whose `authorization` header value is `header`, if it may use `api`: anyone
/// without tokens; with tokens, a missing or unknown token is `Unauthenticated` and a role
/// that `api` does not serve `PermissionDenied`. The gRPC [`Gate`] and the HTTP dashboard
/// both ask this.
pub fn authorize(tokens: Option<&Tokens>, api: Api, header: Option<&str>) -> Result<Caller, Status> {
    permit(api, identify(tokens, header)?)
}

/// The caller whose `authorization` header value is `header`, whatever its role: anyone
/// without tokens; with tokens, a missing or unknown token is `Unauthenticated`.
pub fn identify(tokens: Option<&Tokens>, header: Option<&str>) -> Result<Caller, Status> {
    let Some(tokens) = tokens else { return Ok(Caller::anonymous()) };
    let header =
        header.ok_or_else(|| Status::unauthenticated("this coordinator needs a bearer token (header `authorization: Bearer TOKEN`); the call sent none"))?;
    let secret = header.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("the `authorization` header must read `Bearer TOKEN`"))?;
    tokens.find(secret.trim()).cloned().ok_or_else(|| Status::unauthenticated("the bearer token is not one this coordinator knows"))
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.check(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    const FILE: &str = r#"
version = 1
[[token]]
name = "alice"
role = "submitter"
secret = "alice-secret-0123456789"
[[token]]
name = "node-a"
role = "worker"
secret = "node-a-secret-0123456789"
[[token]]
name = "root"
role = "admin"
secret = "root-secret-0123456789"
"#;

    fn call(gate: &mut Gate, token: Option<&str>) -> Result<Caller, Status> {
        let mut request = Request::new(());
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", token.parse().expect("ascii"));
        }
        gate.call(request).map(|r| r.extensions().get::<Caller>().cloned().expect("caller"))
    }

    #[test]
    fn each_role_reaches_its_own_api_only() {
        let tokens = Some(Arc::new(Tokens::parse(FILE).expect("valid")));
        let (mut jobs, mut workers) = (Gate::new(tokens.clone(), Api::Jobs), Gate::new(tokens, Api::Workers));
        assert_eq!(call(&mut jobs, Some("Bearer alice-secret-0123456789")).expect("submitter").role, Role::Submitter);
        assert_eq!(call(&mut workers, Some("Bearer node-a-secret-0123456789")).expect("worker").name, "node-a");
        for gate in [&mut jobs, &mut workers] {
            assert_eq!(call(gate, Some("Bearer root-secret-0123456789")).expect("admin").role, Role::Admin);
        }
        let denied = call(&mut jobs, Some("Bearer node-a-secret-0123456789")).expect_err("worker on jobs");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("`node-a` has role worker"), "{}", denied.message());
        let denied = call(&mut workers, Some("Bearer alice-secret-0123456789")).expect_err("submitter on workers");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        for token in [None, Some("Bearer wrong-secret-0123456789"), Some("alice-secret-0123456789"), Some("Bearer ")] {
            assert_eq!(call(&mut jobs, token).expect_err("refused").code(), tonic::Code::Unauthenticated, "{token:?}");
        }
        assert_eq!(call(&mut Gate::new(None, Api::Workers), None).expect("open").role, Role::Admin);
    }

    #[test]
    fn a_worker_token_acts_as_its_own_worker_only() {
        let worker = Caller { name: "node-a".into(), role: Role::Worker };
        assert!(worker.may_act_as(&WorkerId::new("node-a")).is_ok());
        let denied = worker.may_act_as(&WorkerId::new("node-b")).expect_err("another worker");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("`node-b`"), "{}", denied.message());
        assert!(Caller { name: "root".into(), role: Role::Admin }.may_act_as(&WorkerId::new("node-b")).is_ok());
    }

    #[test]
    fn a_bad_tokens_file_names_what_is_wrong() {
        let entry = |name: &str, role: &str, secret: &str| format!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsecret = \"{secret}\"\n");
        let long = "0123456789abcdef";
        let cases = [
            (format!("version = 2\n{}", entry("a", "admin", long)), "version must be 1"),
            ("version = 1\n".to_owned(), "no [[token]]"),
            (format!("version = 1\n{}", entry("a", "admin", "short")), "at least 16 characters"),
            (format!("version = 1\n{}", entry("a", "boss", long)), "boss"),
            (format!("version = 1\n{}", entry("a", "admin", "with space 0123456789")), "printable ASCII"),
            (format!("version = 1\n{}{}", entry("a", "admin", long), entry("b", "submitter", long)), "also another token's"),
            (format!("version = 1\n{}{}", entry("a", "admin", long), entry("a", "submitter", "fedcba9876543210")), "same name"),
            (format!("version = 1\n{}", entry("bad id", "worker", long)), "worker id"),
            (format!("version = 1\n{}color = 1\n", entry("a", "admin", long)), "color"),
        ];
        for (text, expected) in cases {
            let error = Tokens::parse(&text).expect_err(expected).to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        let shared = Tokens::parse(&format!("version = 1\n{}{}", entry("a", "admin", long), entry("b", "submitter", long))).expect_err("shared");
        assert!(matches!(&shared, TokensFileError::SharedSecret { index: 2, name, other: 1 } if name == "b"), "{shared}");
        assert!(matches!(Tokens::parse("version = 3\n"), Err(TokensFileError::Version { found: 3 })));
    }
}
