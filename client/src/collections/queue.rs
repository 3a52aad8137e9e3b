//! A FIFO queue (see the module docs for the layout).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Txn};

/// A FIFO queue of JSON items.
#[derive(Debug, Clone)]
pub struct Queue {
    name: String,
}

impl Queue {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    fn head(&self) -> String {
        format!("{}/head", self.name)
    }

    fn tail(&self) -> String {
        format!("{}/tail", self.name)
    }

    fn item(&self, index: u64) -> String {
        format!("{}/item/{index:020}", self.name)
    }

    /// Appends `item`; returns its index.
    pub async fn push<T: Serialize + ?Sized>(&self, tx: &Txn, item: &T) -> Result<u64, Error> {
        // Locking reads of `tail` (and of `head` in a pop): producers (and consumers) queue
        // on it rather than fail at commit.
        let tail: u64 = tx.get_for_update(&self.tail()).await?.unwrap_or(0);
        tx.put(&self.item(tail), item).await?;
        tx.put(&self.tail(), &(tail + 1)).await?;
        Ok(tail)
    }

    /// Removes and returns the oldest item with its index; `None` when empty.
    pub async fn pop<T: DeserializeOwned>(&self, tx: &Txn) -> Result<Option<(u64, T)>, Error> {
        let head: u64 = tx.get_for_update(&self.head()).await?.unwrap_or(0);
        // Pushes write an item and the tail together, so the item at `head` exists exactly
        // when the queue is not empty: no need to read `tail` (and conflict with producers).
        let Some(item) = tx.get::<T>(&self.item(head)).await? else { return Ok(None) };
        tx.delete(&self.item(head)).await?;
        tx.put(&self.head(), &(head + 1)).await?;
        Ok(Some((head, item)))
    }

    /// The oldest item, left in place.
    pub async fn peek<T: DeserializeOwned>(&self, tx: &Txn) -> Result<Option<T>, Error> {
        let head: u64 = tx.get(&self.head()).await?.unwrap_or(0);
        tx.get(&self.item(head)).await
    }

    /// Items in the queue at the snapshot.
    pub async fn len(&self, tx: &Txn) -> Result<u64, Error> {
        let head: u64 = tx.get(&self.head()).await?.unwrap_or(0);
        let tail: u64 = tx.get(&self.tail()).await?.unwrap_or(0);
        Ok(tail.saturating_sub(head))
    }

    pub async fn is_empty(&self, tx: &Txn) -> Result<bool, Error> {
        Ok(self.len(tx).await? == 0)
    }
}
