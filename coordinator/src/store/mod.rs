//! Where the coordinator's state lives. One narrow trait with a backend per deployment:
//! [`MemoryStore`] for tests, [`EmbeddedStore`] (a file on local disk) for one machine,
//! [`EtcdStore`] (etcd v3) for a cluster.
//! Keys are `/`-separated paths such as `jobs/<id>`; values are JSON documents.
//! Every backend passes the same test suite (`store_test_suite!`).

mod embedded;
mod etcd;
/// A real etcd member on loopback, for tests of this crate and of others (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod etcd_process;
pub(crate) mod members;
mod memory;

use std::path::PathBuf;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, Fence};
pub use memory::MemoryStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store file {path} cannot be used: {problem}")]
    Open { path: PathBuf, problem: String },
    #[error("etcd at {endpoints} cannot be reached: {problem}")]
    Unreachable { endpoints: String, problem: String },
    #[error("this coordinator is no longer the leader: etcd refused its write of `{key}`")]
    Fenced { key: String },
    #[error("store operation on key prefix `{key}` failed: {problem}")]
    Operation { key: String, problem: String },
}

/// One change in an atomic [`Store::apply`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Write {
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Write::Put { key: key.into(), value }
    }

    fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies all writes or none; once it returns `Ok`, they are durable.
    async fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError>;
}

/// The test suite every backend must pass: `store_test_suite!(module, async constructor)`.
#[cfg(test)]
macro_rules! store_test_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::super::*;

            #[tokio::test]
            async fn put_get_delete() {
                let (store, _guard) = $make;
                assert_eq!(store.get("jobs/a").await.expect("get"), None);
                store.apply(vec![Write::put("jobs/a", b"1".to_vec())]).await.expect("put");
                assert_eq!(store.get("jobs/a").await.expect("get"), Some(b"1".to_vec()));
                store.apply(vec![Write::put("jobs/a", b"2".to_vec())]).await.expect("overwrite");
                assert_eq!(store.get("jobs/a").await.expect("get"), Some(b"2".to_vec()));
                store.apply(vec![Write::Delete { key: "jobs/a".into() }]).await.expect("delete");
                assert_eq!(store.get("jobs/a").await.expect("get"), None);
                store.apply(vec![Write::Delete { key: "jobs/never".into() }]).await.expect("deleting a missing key is fine");
            }

            #[tokio::test]
            async fn list_returns_the_prefix_in_key_order() {
                let (store, _guard) = $make;
                let writes = ["workers/b", "jobs/2", "jobs/1", "jobsx/3", "jobs/10"].iter().map(|k| Write::put(*k, k.as_bytes().to_vec())).collect();
                store.apply(writes).await.expect("apply");
                let keys: Vec<String> = store.list("jobs/").await.expect("list").into_iter().map(|(k, _)| k).collect();
                assert_eq!(keys, vec!["jobs/1", "jobs/10", "jobs/2"]);
                assert!(store.list("nothing/").await.expect("list").is_empty());
            }

            #[tokio::test]
            async fn a_batch_is_applied_whole() {
                let (store, _guard) = $make;
                store.apply(vec![Write::put("a/1", vec![1]), Write::put("a/2", vec![2]), Write::Delete { key: "a/1".into() }]).await.expect("apply");
                let all = store.list("a/").await.expect("list");
                assert_eq!(all, vec![("a/2".to_owned(), vec![2])]);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    store_test_suite!(memory, (MemoryStore::default(), ()));
    store_test_suite!(embedded, {
        let dir = tempfile::tempdir().expect("tempdir");
        (EmbeddedStore::open(&dir.path().join("state.redb")).expect("open"), dir)
    });
    // A real etcd member per test, on loopback ports of its own.
    store_test_suite!(etcd, {
        let etcd = super::super::etcd_process::EtcdProcess::start().await;
        (etcd.store("/feral-test/").await, etcd)
    });

    use super::*;

    #[tokio::test]
    async fn embedded_store_keeps_its_data_across_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store.apply(vec![Write::put("jobs/x", b"kept".to_vec())]).await.expect("put");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.get("jobs/x").await.expect("get"), Some(b"kept".to_vec()));
    }

    #[tokio::test]
    async fn etcd_keys_stay_under_their_prefix_and_a_lost_etcd_is_named() {
        let etcd = etcd_process::EtcdProcess::start().await;
        let (one, other) = (etcd.store("/a/").await, etcd.store("/b/").await);
        one.apply(vec![Write::put("jobs/x", b"a".to_vec())]).await.expect("put");
        assert_eq!(other.get("jobs/x").await.expect("get"), None, "another prefix sees nothing");
        assert_eq!(one.list("jobs/").await.expect("list"), vec![("jobs/x".to_owned(), b"a".to_vec())], "keys come back without the prefix");
        let endpoint = etcd.endpoint.clone();
        drop(etcd);
        let error = one.get("jobs/x").await.expect_err("etcd is gone");
        assert!(error.to_string().contains("/a/jobs/x"), "{error}");
        let error = EtcdStore::connect(std::slice::from_ref(&endpoint), "/a/").await.err().expect("nothing answers");
        assert!(error.to_string().contains(&endpoint), "{error}");
    }

    #[test]
    fn embedded_store_names_a_bad_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"this is not a database file, just some bytes that are long enough").expect("write");
        let err = EmbeddedStore::open(&path).err().expect("must refuse");
        assert!(err.to_string().contains("state.redb"), "{err}");
    }
}
