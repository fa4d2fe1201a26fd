//! A store in memory: for tests and for throwaway coordinators.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Store, StoreError, Write};

#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding this lock cannot leave the map half-written (every
        // operation is a single map call), so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries().get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = self.entries();
        let found = entries.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix));
        Ok(found.map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut entries = self.entries();
        for write in writes {
            match write {
                Write::Put { key, value } => entries.insert(key, value),
                Write::Delete { key } => entries.remove(&key),
            };
        }
        Ok(())
    }
}
