//! A store in etcd v3 (crate `etcd-client`), for a coordinator on a cluster: every key
//! lives under a prefix of its own (say `/feral/`), so one etcd serves several Feral
//! installations, and a batch is one etcd transaction, applied whole or not at all.
//!
//! A store [`fenced`](EtcdStore::fenced) by a leadership key conditions every transaction
//! on that key still being the one this coordinator was elected with: once its lease is
//! gone (the coordinator paused, partitioned or deposed), etcd refuses its writes.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use tokio::sync::watch;

use super::members::Members;
use super::{Store, StoreError, Write};

/// The most operations etcd takes in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

#[derive(Clone)]
pub struct EtcdStore {
    members: Members,
    prefix: String,
    fence: Option<Fence>,
}

/// The leadership key a fenced store's writes are conditioned on.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The election key this coordinator holds.
    pub key: Vec<u8>,
    /// The revision it was created at: a later holder's key has another.
    pub revision: i64,
    /// Told `true` when etcd refuses a write for the fence.
    pub lost: watch::Sender<bool>,
}

impl EtcdStore {
    /// Connects to the etcd members at `endpoints` (`http://host:port`), keeping every key
    /// under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(10));
        let members = Members::connect(endpoints, options).await?;
        Ok(Self { members, prefix: prefix.to_owned(), fence: None })
    }

    /// The same store with every write conditioned on `fence`.
    pub fn fenced(&self, fence: Fence) -> Self {
        Self { fence: Some(fence), ..self.clone() }
    }

    fn failed(&self, key: &str, error: etcd_client::Error) -> StoreError {
        StoreError::Operation { key: format!("{}{key}", self.prefix), problem: error.to_string() }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = format!("{}{key}", self.prefix);
        let reply = self
            .members
            .call(|client| {
                let full = full.clone();
                async move { client.kv_client().get(full, None).await }
            })
            .await
            .map_err(|e| self.failed(key, e))?;
        Ok(reply.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let options = GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Ascend);
        let full = format!("{}{prefix}", self.prefix);
        let reply = self
            .members
            .call(|client| {
                let (full, options) = (full.clone(), options.clone());
                async move { client.kv_client().get(full, Some(options)).await }
            })
            .await
            .map_err(|e| self.failed(prefix, e))?;
        reply
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().map_err(|e| self.failed(prefix, e))?;
                Ok((key.strip_prefix(&self.prefix).unwrap_or(key).to_owned(), kv.value().to_vec()))
            })
            .collect()
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        // etcd refuses a transaction that names a key twice; applied in order, only each
        // key's last write counts, so that is the one sent.
        let mut last: Vec<Write> = Vec::with_capacity(writes.len());
        for write in writes {
            last.retain(|w| w.key() != write.key());
            last.push(write);
        }
        let first = last.first().map(|w| w.key().to_owned()).unwrap_or_default();
        if last.len() > MAX_TXN_OPS {
            return Err(StoreError::Operation {
                key: format!("{}{first}", self.prefix),
                problem: format!("a batch of {} writes is more than etcd's {MAX_TXN_OPS} per transaction", last.len()),
            });
        }
        let operations: Vec<TxnOp> = last
            .into_iter()
            .map(|write| match write {
                Write::Put { key, value } => TxnOp::put(format!("{}{key}", self.prefix), value, None),
                Write::Delete { key } => TxnOp::delete(format!("{}{key}", self.prefix), None),
            })
            .collect();
        let mut txn = Txn::new();
        if let Some(fence) = &self.fence {
            txn = txn.when(vec![Compare::create_revision(fence.key.clone(), CompareOp::Equal, fence.revision)]);
        }
        let txn = txn.and_then(operations);
        let reply = self
            .members
            .call(|client| {
                let txn = txn.clone();
                async move { client.kv_client().txn(txn).await }
            })
            .await
            .map_err(|e| self.failed(&first, e))?;
        if !reply.succeeded() {
            if let Some(fence) = &self.fence {
                let _ = fence.lost.send(true);
            }
            return Err(StoreError::Fenced { key: format!("{}{first}", self.prefix) });
        }
        Ok(())
    }
}
