//! Connecting to the coordinator and turning gRPC failures into errors a person can read.

use std::time::Duration;

use feral_common::errors::error_chain;
use feral_proto::credentials::{self, AuthedChannel, BearerToken};
use feral_proto::leader::Coordinators;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::ClientTlsConfig;

/// The job API's client, every call carrying the CLI's token.
pub type Client = JobServiceClient<AuthedChannel>;

/// The coordinator(s) the CLI talks to (`--coordinator`) and the token it sends.
#[derive(Clone, Debug)]
pub struct Target {
    pub urls: String,
    pub token: BearerToken,
    /// TLS for `https://` addresses.
    pub tls: Option<ClientTlsConfig>,
}

impl Target {
    /// A coordinator without tokens (the demo's).
    pub fn open(urls: impl Into<String>) -> Self {
        Self { urls: urls.into(), token: BearerToken::none(), tls: None }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.urls)
    }
}

/// A `JobService` client connected to `target`, or an error naming the address. Given
/// several addresses (coordinators on one etcd, comma-separated), the client is the
/// leader's: the first that answers, or the one a standby names.
pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    let urls = target.urls.trim();
    let coordinators = Coordinators::parse_with_tls(urls, target.tls.as_ref()).map_err(|e| anyhow::anyhow!("--coordinator: {e}"))?;
    if coordinators.addresses().len() < 2 {
        return connect_one(urls, target).await;
    }
    // Ask the one believed to lead; a standby names the leader and an unreachable one
    // moves the list on (`Coordinators::failed_at`), so twice round the list is enough.
    let coordinators = coordinators.with_token(target.token.clone());
    let mut problems = Vec::new();
    for _ in 0..2 * coordinators.addresses().len() {
        let (at, channel) = coordinators.channel_at();
        let mut client = JobServiceClient::new(channel);
        match client.list_jobs(pb::ListJobsRequest { page_size: 1, page_token: String::new() }).await {
            Ok(_) => return Ok(client),
            Err(status) => {
                problems.push(format!("{}: {}", coordinators.addresses()[at], status.message()));
                coordinators.failed_at(at, &status);
                if coordinators.channel_at().0 == at {
                    // A coordinator that answered and named no one else (a refused token): its word.
                    return Err(rpc_error(status));
                }
            }
        }
    }
    anyhow::bail!("no coordinator of {urls} leads: {}", problems.join("; "))
}

async fn connect_one(url: &str, target: &Target) -> anyhow::Result<Client> {
    let endpoint = credentials::endpoint(url, target.tls.as_ref(), Duration::from_secs(5)).map_err(|e| anyhow::anyhow!("--coordinator: {e}"))?;
    let channel = endpoint.connect().await.map_err(|error| anyhow::anyhow!("cannot reach the coordinator at {url}: {}", error_chain(&error)))?;
    Ok(JobServiceClient::new(target.token.channel(channel)))
}

/// A failed call as an error that reads as the coordinator's message alone (it names the
/// bad field or id); transport failures keep their code, since their message is terse.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            anyhow::anyhow!("coordinator unavailable: {}", status.message())
        }
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_read_as_the_coordinator_message() {
        let error = rpc_error(tonic::Status::invalid_argument("job spec field `train.epochs` must be at least 1, got 0"));
        assert_eq!(error.to_string(), "job spec field `train.epochs` must be at least 1, got 0");
        let error = rpc_error(tonic::Status::not_found("no job with id `job-x`"));
        assert_eq!(error.to_string(), "no job with id `job-x`");
    }

    #[test]
    fn transport_errors_say_the_coordinator_is_unavailable() {
        let error = rpc_error(tonic::Status::unavailable("connection reset"));
        assert_eq!(error.to_string(), "coordinator unavailable: connection reset");
    }

    #[tokio::test]
    async fn invalid_url_names_the_flag() {
        let error = connect(&Target::open("not a url")).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(error.contains("--coordinator"), "{error}");
    }
}
