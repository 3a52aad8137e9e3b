//! A striped counter (see the module docs for the layout).

use rand::Rng;

use crate::{Error, Txn};

/// A counter spread over stripes, for hot increments.
#[derive(Debug, Clone)]
pub struct Counter {
    name: String,
    stripes: u32,
}

impl Counter {
    /// The counter `name` over `stripes` pointers (at least 1). Every user of a counter
    /// must use the same stripe count.
    pub fn new(name: impl Into<String>, stripes: u32) -> Self {
        Self { name: name.into(), stripes: stripes.max(1) }
    }

    fn stripe(&self, i: u32) -> String {
        format!("{}/s/{i}", self.name)
    }

    /// Adds `delta` (touching one random stripe, read with its lock so that concurrent
    /// adders of the same stripe queue instead of conflicting).
    pub async fn add(&self, tx: &Txn, delta: i64) -> Result<(), Error> {
        let i = rand::rng().random_range(0..self.stripes);
        let ptr = self.stripe(i);
        let now: i64 = tx.get_for_update(&ptr).await?.unwrap_or(0);
        let next =
            now.checked_add(delta).ok_or_else(|| Error::User(format!("counter {} overflows", self.name)))?;
        tx.put(&ptr, &next).await
    }

    /// The value: the sum of every stripe at the transaction's snapshot.
    pub async fn get(&self, tx: &Txn) -> Result<i64, Error> {
        let mut sum = 0i64;
        for i in 0..self.stripes {
            sum = sum.saturating_add(tx.get::<i64>(&self.stripe(i)).await?.unwrap_or(0));
        }
        Ok(sum)
    }
}
