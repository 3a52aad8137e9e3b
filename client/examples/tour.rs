//! The README's SDK snippets, as one program (so they keep compiling):
//! `cargo run -p restm-client --example tour -- http://127.0.0.1:7070`, with a node there.
//! It runs a worker for a few seconds at the end.

use std::ops::Bound;
use std::time::Duration;

use restm_client::collections::{OrderedMap, Queue};
use restm_client::tasks::{Outcome, TaskSpec, Tasks, Worker};

#[tokio::main]
async fn main() -> Result<(), restm_client::Error> {
    let base = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let c = restm_client::Client::new(base)?;
    c.transact(|tx| async move {
        let n: i64 = tx.get("counter").await?.unwrap_or(0);
        tx.put("counter", &(n + 1)).await
    })
    .await?;
    let then: Option<String> = c.read_at("-10m", |tx| async move { tx.get("greeting").await }).await?;
    println!("greeting 10 minutes ago: {then:?}");
    let v = c.one_shot().put("flag", &true)?.commit().await?;
    c.one_shot().check("flag", Some(v)).delete("flag").commit().await?;

    let (index, outbox) = (OrderedMap::new("orders-by-time"), Queue::new("outbox"));
    c.transact(|tx| {
        let (index, outbox) = (index.clone(), outbox.clone());
        async move {
            index.insert(&tx, "2026-11-25T10:00:00Z/o-17", &17).await?;
            outbox.push(&tx, "order 17 placed").await.map(drop)
        }
    })
    .await?;
    let morning: Vec<(String, u64)> = c
        .read_only(|tx| async move {
            index.range(&tx, Bound::Included("2026-11-25T00"), Bound::Excluded("2026-11-25T12"), 100).await
        })
        .await?;
    println!("this morning's orders: {morning:?}");

    let tasks = Tasks::new(c.clone(), "tasks");
    let id = tasks.submit(TaskSpec::new("resize", serde_json::json!({"image": "a.png"}))).await?;
    println!("submitted task {id}");
    Worker::new(tasks.clone(), "worker-1")
        .handler("resize", |ctx| async move { Ok(Outcome::Done(ctx.task.input.clone())) })
        .run(tokio::time::sleep(Duration::from_secs(2)))
        .await;
    println!("task {id}: {:?}", tasks.get(&id).await?.map(|t| t.status));
    Ok(())
}
