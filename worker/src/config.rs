//! Worker configuration: a versioned TOML file (`--config worker.toml`) whose values flags
//! and `FERAL_*` environment variables override.
//!
//! ```toml
//! version = 1
//! coordinator = "http://10.0.0.1:7070"   # or "http://c1:7070,http://c2:7070,http://c3:7070"
//! id = "node-a"
//! devices = "cuda:0,cuda:1"
//! advertise_host = "10.0.0.2"
//! token_file = "/etc/feral/worker-token"  # for a coordinator with tokens
//! metrics_listen = "0.0.0.0:7072"          # HTTP: /metrics (Prometheus); off when absent
//! metrics_tls_cert = "/etc/feral/node.pem"  # HTTPS for it (with metrics_tls_key)
//! metrics_tls_key = "/etc/feral/node.key"
//! allowed_roots = ["/data", "/artifacts"]  # where tasks may read and write [default: the working directory]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {problem}")]
    Parse { path: PathBuf, problem: String },
}

/// The file's values; every one optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    pub version: u32,
    pub coordinator: Option<String>,
    pub id: Option<String>,
    pub devices: Option<String>,
    pub advertise_host: Option<String>,
    pub token_file: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub metrics_tls_cert: Option<PathBuf>,
    pub metrics_tls_key: Option<PathBuf>,
    pub allowed_roots: Option<Vec<PathBuf>>,
}

impl WorkerFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let file: WorkerFile = toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), problem: e.to_string() })?;
        if file.version != 1 {
            return Err(ConfigError::Parse { path: path.into(), problem: format!("version must be 1, got {}", file.version) });
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_loads_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, "version = 1\ncoordinator = \"http://h:1\"\ndevices = \"cpu\"\n").expect("write");
        let file = WorkerFile::load(&path).expect("valid");
        assert_eq!(file.coordinator.as_deref(), Some("http://h:1"));
        assert_eq!(file.id, None);
        std::fs::write(&path, "version = 1\ndevice = \"cpu\"\n").expect("write");
        let err = WorkerFile::load(&path).expect_err("unknown key");
        assert!(err.to_string().contains("device"), "{err}");
        let err = WorkerFile::load(&dir.path().join("missing.toml")).expect_err("missing");
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }
}
