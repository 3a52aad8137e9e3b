//! Background work on a timer, for as long as its owner lives: the node's reaper and GC
//! passes, the cluster's heartbeat ticker.

use std::sync::Arc;
use std::time::Duration;

/// Runs `work` with `owner` every `every` (a late tick waits, it does not burst), until
/// `owner` is dropped.
pub fn spawn_every<T, F, Fut>(owner: &Arc<T>, every: Duration, work: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let owner = Arc::downgrade(owner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(owner) = owner.upgrade() else { return };
            work(owner).await;
        }
    });
}
