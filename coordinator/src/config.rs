//! Coordinator configuration: a versioned TOML file (`--config coordinator.toml`) whose
//! values flags and environment variables can override. Every override is listed once, in
//! [`Overrides`] (clap shows each flag's variable in `--help`).
//!
//! ```toml
//! version = 1
//! listen = "0.0.0.0:7070"
//! http_listen = "0.0.0.0:7071"            # HTTP: /metrics (Prometheus); off when absent
//! store = "feral-state/coordinator.redb"   # or "memory", or "etcd://h1:2379,h2:2379/feral"
//! artifact_root = "feral-artifacts"
//! heartbeat_interval_ms = 1000
//! lease_ttl_ms = 10000
//! advertise = "http://10.0.0.1:7070"      # with etcd: what a standby tells callers of the leader
//! leader_lease_s = 5
//! tokens = "/etc/feral/tokens.toml"       # bearer tokens and their roles (see `auth`)
//! tls_cert = "/etc/feral/coordinator.pem" # TLS on both APIs (clients use https://)
//! tls_key = "/etc/feral/coordinator.key"
//! tls_client_ca = "/etc/feral/ca.pem"     # mutual TLS: only clients with a certificate it signed
//! metrics_public = false                   # true: /metrics needs no token even with tokens
//! http_hosts = ["feral.example.org"]       # the names the HTTP listener answers to (Host)
//!
//! [task_deadlines]   # seconds a task may show no life before it fails as stuck (these are the defaults)
//! ack_s = 60         # from its assignment until its worker's heartbeat lists it
//! prepare_s = 3600   # a prepare, infer or select task, from its start to its end
//! infer_s = 3600
//! select_s = 3600
//! epoch_s = 21600    # a training task, from its start or its last epoch to the next epoch
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::control::Settings;
use crate::model::TaskDeadlines;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("config value `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

/// Where the coordinator keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// Gone when the process ends; for tests and trials.
    Memory,
    /// A file on local disk.
    Embedded(PathBuf),
    /// etcd v3: its members' client URLs, and the prefix every key lives under.
    Etcd { endpoints: Vec<String>, prefix: String },
}

impl StoreConfig {
    /// `memory`; `etcd://host:port[,host:port…][/prefix]` (prefix `feral` by default); or
    /// the path of the embedded store file.
    fn parse(text: &str) -> Result<Self, ConfigError> {
        if text == "memory" {
            return Ok(StoreConfig::Memory);
        }
        let Some(rest) = text.strip_prefix("etcd://") else { return Ok(StoreConfig::Embedded(PathBuf::from(text))) };
        let (members, prefix) = rest.split_once('/').unwrap_or((rest, "feral"));
        let invalid = |problem: String| ConfigError::Invalid { field: "store", problem };
        let endpoints: Vec<String> = members.split(',').map(|m| format!("http://{}", m.trim())).collect();
        if members.split(',').any(|m| m.trim().rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())) {
            return Err(invalid(format!("must name etcd members as host:port, got {text:?}")));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Err(invalid(format!("must give a key prefix after the members, got {text:?}")));
        }
        Ok(StoreConfig::Etcd { endpoints, prefix: format!("/{prefix}/") })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    /// Where HTTP (`/metrics`) is served; none when not asked for.
    pub http_listen: Option<SocketAddr>,
    pub store: StoreConfig,
    pub settings: Settings,
    /// The URL workers and the CLI reach this coordinator at; a standby names the leader's.
    pub advertise: String,
    /// The leader's etcd lease: a leader silent this long is replaced by a standby.
    pub leader_lease_s: u64,
    /// The tokens file ([`crate::auth`]); without one, every caller may call anything.
    pub tokens: Option<PathBuf>,
    /// PEM files: this coordinator's certificate and key (TLS), and the CA whose client
    /// certificates it requires (mutual TLS).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// `/metrics` answers without a token even when there are tokens.
    pub metrics_public: bool,
    /// The names the HTTP listener answers to (its `Host` header); empty: see `http::Hosts`.
    pub http_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    version: u32,
    listen: Option<String>,
    http_listen: Option<String>,
    store: Option<String>,
    artifact_root: Option<PathBuf>,
    heartbeat_interval_ms: Option<u64>,
    lease_ttl_ms: Option<u64>,
    advertise: Option<String>,
    leader_lease_s: Option<u64>,
    tokens: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    task_deadlines: Option<TaskDeadlines>,
    metrics_public: Option<bool>,
    http_hosts: Option<Vec<String>>,
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Address to serve gRPC on.
    #[arg(long, env = "FERAL_LISTEN")]
    pub listen: Option<String>,
    /// Address to serve HTTP on (`/metrics` for Prometheus); without it, no HTTP.
    #[arg(long, env = "FERAL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// `memory`, `etcd://host:port[,host:port...][/prefix]`, or the path of the embedded store file.
    #[arg(long, env = "FERAL_STORE")]
    pub store: Option<String>,
    /// Directory under which each job gets its artifact directory.
    #[arg(long, env = "FERAL_ARTIFACT_ROOT")]
    pub artifact_root: Option<PathBuf>,
    /// How often workers heartbeat, in milliseconds.
    #[arg(long, env = "FERAL_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// After how long without a heartbeat a worker is lost, in milliseconds.
    #[arg(long, env = "FERAL_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    /// The URL workers and the CLI reach this coordinator at (`http://host:port`); with an
    /// etcd store, standbys name the leader by it. Default: the listen address, or this
    /// host's name when listening on every interface.
    #[arg(long, env = "FERAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// With an etcd store: the leader's lease in seconds; a leader silent this long is
    /// replaced by a standby.
    #[arg(long, env = "FERAL_LEADER_LEASE_S")]
    pub leader_lease_s: Option<u64>,
    /// The tokens file: bearer tokens with their names and roles (submitter, worker, admin).
    /// Without one, anyone who reaches the port may call anything.
    #[arg(long, env = "FERAL_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// This coordinator's TLS certificate (PEM): both APIs then speak TLS only (clients use https://).
    #[arg(long, env = "FERAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The key (PEM) of --tls-cert.
    #[arg(long, env = "FERAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA (PEM) whose client certificates are required of every caller.
    #[arg(long, env = "FERAL_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve `/metrics` without a token even when the coordinator has tokens (a scraper
    /// on a trusted network); otherwise a scrape needs a known token, of any role.
    #[arg(long, env = "FERAL_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// The host names the HTTP listener answers to (its `Host` header), separated by
    /// commas: the names users reach the dashboard by. Without them, a loopback listener
    /// answers to loopback names only, one beyond loopback to any.
    #[arg(long, env = "FERAL_HTTP_HOSTS", value_delimiter = ',')]
    pub http_hosts: Option<Vec<String>>,
}

impl CoordinatorConfig {
    /// Defaults, then the file (if any), then the overrides; then validation.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                let parsed: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), problem: e.to_string() })?;
                if parsed.version != 1 {
                    return Err(ConfigError::Parse { path: path.into(), problem: format!("version must be 1, got {}", parsed.version) });
                }
                Some(parsed)
            }
            None => None,
        };
        let file = from_file.as_ref();
        let listen = overrides.listen.clone().or_else(|| file.and_then(|f| f.listen.clone())).unwrap_or_else(|| "0.0.0.0:7070".into());
        let listen = listen.parse().map_err(|e| ConfigError::Invalid { field: "listen", problem: format!("is not an address ({e}): {listen:?}") })?;
        let http_listen = overrides.http_listen.clone().or_else(|| file.and_then(|f| f.http_listen.clone()));
        let http_listen = http_listen
            .map(|text| text.parse().map_err(|e| ConfigError::Invalid { field: "http_listen", problem: format!("is not an address ({e}): {text:?}") }))
            .transpose()?;
        let store = overrides.store.clone().or_else(|| file.and_then(|f| f.store.clone()));
        let store = StoreConfig::parse(store.as_deref().unwrap_or("feral-state/coordinator.redb"))?;
        let artifact_root =
            overrides.artifact_root.clone().or_else(|| file.and_then(|f| f.artifact_root.clone())).unwrap_or_else(|| PathBuf::from("feral-artifacts"));
        let heartbeat_interval_ms = overrides.heartbeat_interval_ms.or_else(|| file.and_then(|f| f.heartbeat_interval_ms)).unwrap_or(1000);
        let lease_ttl_ms = overrides.lease_ttl_ms.or_else(|| file.and_then(|f| f.lease_ttl_ms)).unwrap_or(10_000);
        let tokens = overrides.tokens.clone().or_else(|| file.and_then(|f| f.tokens.clone()));
        let tls_cert = overrides.tls_cert.clone().or_else(|| file.and_then(|f| f.tls_cert.clone()));
        let tls_key = overrides.tls_key.clone().or_else(|| file.and_then(|f| f.tls_key.clone()));
        let tls_client_ca = overrides.tls_client_ca.clone().or_else(|| file.and_then(|f| f.tls_client_ca.clone()));
        let scheme = if tls_cert.is_some() { "https" } else { "http" };
        let advertise = overrides.advertise.clone().or_else(|| file.and_then(|f| f.advertise.clone())).unwrap_or_else(|| default_advertise(scheme, listen));
        let leader_lease_s = overrides.leader_lease_s.or_else(|| file.and_then(|f| f.leader_lease_s)).unwrap_or(5);
        let deadlines = file.and_then(|f| f.task_deadlines).unwrap_or_default();
        let settings = Settings { artifact_root, heartbeat_interval_ms, lease_ttl_ms, deadlines };
        let metrics_public = overrides.metrics_public || file.and_then(|f| f.metrics_public).unwrap_or(false);
        let http_hosts = overrides.http_hosts.clone().or_else(|| file.and_then(|f| f.http_hosts.clone())).unwrap_or_default();
        let config =
            Self { listen, http_listen, store, settings, advertise, leader_lease_s, tokens, tls_cert, tls_key, tls_client_ca, metrics_public, http_hosts };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        if s.heartbeat_interval_ms == 0 {
            return Err(ConfigError::Invalid { field: "heartbeat_interval_ms", problem: "must be at least 1".into() });
        }
        if s.lease_ttl_ms <= s.heartbeat_interval_ms {
            return Err(ConfigError::Invalid {
                field: "lease_ttl_ms",
                problem: format!("must be longer than heartbeat_interval_ms ({} <= {})", s.lease_ttl_ms, s.heartbeat_interval_ms),
            });
        }
        if let Some((key, value)) = s.deadlines.invalid() {
            let problem = format!("must be in 1..={} seconds, got {value}", TaskDeadlines::MAX_S);
            return Err(ConfigError::Invalid { field: key, problem: format!("(in [task_deadlines]) {problem}") });
        }
        if !(1..=300).contains(&self.leader_lease_s) {
            return Err(ConfigError::Invalid { field: "leader_lease_s", problem: format!("must be in 1..=300 seconds, got {}", self.leader_lease_s) });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid { field: "tls_cert", problem: "and `tls_key` go together: give both or neither".into() });
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::Invalid { field: "tls_client_ca", problem: "needs `tls_cert` and `tls_key` (mutual TLS is TLS first)".into() });
        }
        if self.advertise.parse::<tonic::transport::Uri>().map_or(true, |uri| uri.scheme().is_none() || uri.host().is_none()) {
            return Err(ConfigError::Invalid { field: "advertise", problem: format!("must be a URL such as http://host:7070, got {:?}", self.advertise) });
        }
        Ok(())
    }

    /// A configuration for tests: loopback, memory store, short leases.
    pub fn for_test(artifact_root: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: None,
            store: StoreConfig::Memory,
            settings: Settings { artifact_root, heartbeat_interval_ms: 100, lease_ttl_ms: 1500, deadlines: TaskDeadlines::default() },
            advertise: "http://127.0.0.1:0".into(),
            leader_lease_s: 2,
            tokens: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            metrics_public: false,
            http_hosts: Vec::new(),
        }
    }
}

/// `<scheme>://<listen address>`, or `<scheme>://<host name>:<port>` when listening on every
/// interface (`https` over TLS).
fn default_advertise(scheme: &str, listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return format!("{scheme}://{listen}");
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{scheme}://{host}:{}", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "version = 1\nlisten = \"127.0.0.1:9000\"\nstore = \"memory\"\nlease_ttl_ms = 5000\n").expect("write");
        let overrides = Overrides { lease_ttl_ms: Some(7000), ..Overrides::default() };
        let config = CoordinatorConfig::load(Some(&path), &overrides).expect("valid");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.store, StoreConfig::Memory);
        assert_eq!(config.settings.lease_ttl_ms, 7000);
        assert_eq!(config.settings.heartbeat_interval_ms, 1000);
        assert_eq!(config.advertise, "http://127.0.0.1:9000");
        assert_eq!(config.leader_lease_s, 5);
        assert_eq!(config.tokens, None);
        assert_eq!(config.http_listen, None, "no HTTP unless asked for");
        let overrides = Overrides { tokens: Some("/etc/feral/tokens.toml".into()), ..Overrides::default() };
        assert_eq!(CoordinatorConfig::load(Some(&path), &overrides).expect("valid").tokens, Some(PathBuf::from("/etc/feral/tokens.toml")));
        let tls = Overrides { tls_cert: Some("c.pem".into()), tls_key: Some("k.pem".into()), ..Overrides::default() };
        assert_eq!(CoordinatorConfig::load(Some(&path), &tls).expect("valid").advertise, "https://127.0.0.1:9000", "TLS advertises https");
        let half = Overrides { tls_cert: Some("c.pem".into()), ..Overrides::default() };
        assert!(CoordinatorConfig::load(Some(&path), &half).expect_err("no key").to_string().contains("tls_key"));
        let mutual = Overrides { tls_client_ca: Some("ca.pem".into()), ..Overrides::default() };
        assert!(CoordinatorConfig::load(Some(&path), &mutual).expect_err("no cert").to_string().contains("`tls_client_ca`"));
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "version = 1\nlisten_on = \"x\"\n").expect("write");
        let err = CoordinatorConfig::load(Some(&path), &Overrides::default()).expect_err("unknown field");
        assert!(err.to_string().contains("listen_on"), "{err}");
        let overrides = Overrides { listen: Some("nowhere".into()), ..Overrides::default() };
        let err = CoordinatorConfig::load(None, &overrides).expect_err("bad address");
        assert!(err.to_string().contains("listen"), "{err}");
        let overrides = Overrides { http_listen: Some("127.0.0.1".into()), ..Overrides::default() };
        let err = CoordinatorConfig::load(None, &overrides).expect_err("no port");
        assert!(err.to_string().contains("`http_listen`"), "{err}");
        let overrides = Overrides { lease_ttl_ms: Some(10), ..Overrides::default() };
        let err = CoordinatorConfig::load(None, &overrides).expect_err("short lease");
        assert!(err.to_string().contains("lease_ttl_ms"), "{err}");
        let overrides = Overrides { advertise: Some("10.0.0.1:7070".into()), ..Overrides::default() };
        let err = CoordinatorConfig::load(None, &overrides).expect_err("advertise without a scheme");
        assert!(err.to_string().contains("`advertise`"), "{err}");
        let overrides = Overrides { leader_lease_s: Some(0), ..Overrides::default() };
        let err = CoordinatorConfig::load(None, &overrides).expect_err("no leader lease");
        assert!(err.to_string().contains("`leader_lease_s`"), "{err}");
        let err = CoordinatorConfig::load(Some(&dir.path().join("missing.toml")), &Overrides::default()).expect_err("missing");
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn etcd_stores_name_their_members_and_prefix() {
        let etcd = |endpoints: &[&str], prefix: &str| StoreConfig::Etcd { endpoints: endpoints.iter().map(|e| e.to_string()).collect(), prefix: prefix.into() };
        assert_eq!(StoreConfig::parse("etcd://10.0.0.1:2379").expect("one member"), etcd(&["http://10.0.0.1:2379"], "/feral/"));
        assert_eq!(
            StoreConfig::parse("etcd://e1:2379,e2:2379/team-a/feral").expect("two members"),
            etcd(&["http://e1:2379", "http://e2:2379"], "/team-a/feral/")
        );
        for bad in ["etcd://", "etcd://e1", "etcd://e1:x", "etcd://:2379", "etcd://e1:2379,/p", "etcd://e1:2379//"] {
            let error = StoreConfig::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("`store`"), "{bad}: {error}");
        }
    }
}
