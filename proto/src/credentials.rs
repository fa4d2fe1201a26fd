//! A client's credential: the bearer token it sends with every call to a coordinator that
//! has tokens (the coordinator's `auth` module says who may call what). The `feral` CLI and
//! `feral-worker` read it the same way: the `FERAL_TOKEN` environment variable, or a file
//! (`--token-file`, `FERAL_TOKEN_FILE`) whose first line is the token.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

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
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err("the token is empty".into());
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        let value = format!("Bearer {secret}").parse().map_err(|_| "the token cannot travel in a header".to_owned())?;
        Ok(Self(Some(value)))
    }

    /// The token of `file` (its first line) if given, else of `$FERAL_TOKEN` if set, else none.
    pub fn from_sources(file: Option<&Path>) -> Result<Self, String> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
            let first = text.lines().next().unwrap_or_default();
            return Self::new(first).map_err(|problem| format!("token file {}: {problem}", path.display()));
        }
        match std::env::var(TOKEN_ENV) {
            Ok(secret) => Self::new(&secret).map_err(|problem| format!("${TOKEN_ENV}: {problem}")),
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
        let error = BearerToken::from_sources(Some(&path)).expect_err("empty");
        assert!(error.contains("token file") && error.contains("empty"), "{error}");
        assert!(BearerToken::new("two words").expect_err("space").contains("without spaces"));
        let error = BearerToken::from_sources(Some(&dir.join("missing"))).expect_err("missing");
        assert!(error.contains("missing"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
        let mut none = BearerToken::none();
        assert!(none.call(Request::new(())).expect("call").metadata().get("authorization").is_none());
    }
}
