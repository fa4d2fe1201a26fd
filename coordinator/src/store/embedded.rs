//! A store in one file on local disk (redb: ACID, crash-safe), the default for a
//! coordinator on one machine. Blocking file work runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{Store, StoreError, Write};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

#[derive(Clone)]
pub struct EmbeddedStore {
    database: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |problem: String| StoreError::Open { path: path.to_path_buf(), problem };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        let database = Database::create(path).map_err(|e| fail(e.to_string()))?;
        let setup = database.begin_write().map_err(|e| fail(e.to_string()))?;
        setup.open_table(STATE).map_err(|e| fail(e.to_string()))?;
        setup.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Self { database: Arc::new(database) })
    }

    async fn blocking<T: Send + 'static>(&self, key: &str, work: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static) -> Result<T, StoreError> {
        let database = Arc::clone(&self.database);
        let fail = |problem: String| StoreError::Operation { key: key.to_owned(), problem };
        tokio::task::spawn_blocking(move || work(&database)).await.map_err(|e| fail(e.to_string()))?.map_err(|e| fail(e.to_string()))
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let owned = key.to_owned();
        self.blocking(key, move |db| {
            let table = db.begin_read()?.open_table(STATE)?;
            Ok(table.get(owned.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let owned = prefix.to_owned();
        self.blocking(prefix, move |db| {
            let table = db.begin_read()?.open_table(STATE)?;
            let mut found = Vec::new();
            for entry in table.range(owned.as_str()..)? {
                let (key, value) = entry?;
                if !key.value().starts_with(owned.as_str()) {
                    break;
                }
                found.push((key.value().to_owned(), value.value().to_vec()));
            }
            Ok(found)
        })
        .await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let first = writes.first().map(|w| w.key().to_owned()).unwrap_or_default();
        self.blocking(&first, move |db| {
            let transaction = db.begin_write()?;
            {
                let mut table = transaction.open_table(STATE)?;
                for write in &writes {
                    match write {
                        Write::Put { key, value } => {
                            table.insert(key.as_str(), value.as_slice())?;
                        }
                        Write::Delete { key } => {
                            table.remove(key.as_str())?;
                        }
                    }
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }
}
