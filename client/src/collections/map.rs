//! A hash map (see the module docs for the layout).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Counter;
use crate::{Error, Txn};

/// A map from string keys to JSON values, one pointer per key.
#[derive(Debug, Clone)]
pub struct Map {
    name: String,
    len: Counter,
}

impl Map {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self { len: Counter::new(format!("{name}/len"), 8), name }
    }

    fn prefix(&self) -> String {
        format!("{}/k/", self.name)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }

    pub async fn get<T: DeserializeOwned>(&self, tx: &Txn, key: &str) -> Result<Option<T>, Error> {
        tx.get(&self.key(key)).await
    }

    /// Sets `key` to `value`; returns whether the key was new.
    pub async fn put<T: Serialize + ?Sized>(&self, tx: &Txn, key: &str, value: &T) -> Result<bool, Error> {
        let ptr = self.key(key);
        let existed = tx.get::<serde_json::Value>(&ptr).await?.is_some();
        tx.put(&ptr, value).await?;
        if !existed {
            self.len.add(tx, 1).await?;
        }
        Ok(!existed)
    }

    /// Removes `key`; returns whether it was there.
    pub async fn remove(&self, tx: &Txn, key: &str) -> Result<bool, Error> {
        let removed = tx.delete(&self.key(key)).await?;
        if removed {
            self.len.add(tx, -1).await?;
        }
        Ok(removed)
    }

    /// Entries at the transaction's snapshot, by key. Exact, and serializable, only for
    /// keys this transaction also reads or writes: a listing takes no predicate lock, so
    /// a concurrent insert does not make this transaction conflict. [`Map::len`] does.
    pub async fn entries<T: DeserializeOwned>(&self, tx: &Txn) -> Result<Vec<(String, T)>, Error> {
        let prefix = self.prefix();
        let at = tx.read_version().to_string();
        let mut out = Vec::new();
        for e in tx.client().list_all(&prefix, Some(&at), usize::MAX).await? {
            let key = e.ptr.strip_prefix(&prefix).unwrap_or(&e.ptr).to_string();
            out.push((key, serde_json::from_str(e.value.get())?));
        }
        Ok(out)
    }

    /// Keys in the map (a striped counter kept with every insert and removal).
    pub async fn len(&self, tx: &Txn) -> Result<i64, Error> {
        self.len.get(tx).await
    }
}
