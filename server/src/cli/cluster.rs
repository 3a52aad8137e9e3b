//! `restm cluster status`: `GET /cluster` of one member, as a table (or as JSON), now or
//! as of a moment (`--at`: who led each group then). `restm cluster add` and `remove`:
//! membership changes (`POST /cluster/members`, `DELETE /cluster/members/{id}`), printing
//! the cluster as it then stands. `restm cluster move-leader`: a group's lead handed to
//! another voter (`POST /cluster/groups/{group}/leader`).

use restm_shared::{ClusterStatus, GroupStatus, HEADER_AT};

use super::client::{Target, refusal, request, unreachable};

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// The members (up or down, last contact) and each group's leader, term, log and
    /// applied indexes, follower lag and closed timestamps, as the member asked sees them.
    Status(StatusArgs),
    /// Adds a node (started with --join, or to be) to every group: a learner, then a
    /// voter once it has caught up.
    Add(AddArgs),
    /// Takes a node out of every group; refused while a group would be left without a
    /// majority of voters that are up.
    Remove(RemoveArgs),
    /// Hands a group's lead to another of its voters (as etcd's move-leader).
    MoveLeader(MoveLeaderArgs),
}

#[derive(Debug, clap::Args)]
pub struct MoveLeaderArgs {
    /// The group's id, as `restm cluster status` lists it.
    pub group: u32,
    /// The voter to lead it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub to: u64,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new node's id (its --node-id).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Where its peers dial it (`http://host:port`).
    #[arg(long)]
    pub peer_url: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The node's id.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the answer as JSON, as `GET /cluster` gives it.
    #[arg(long)]
    pub json: bool,
    /// Each group's leader and term as of this moment (`X-reSTM-At`: a version, an RFC
    /// 3339 instant, or e.g. `-10m`), by the member's leader timeline.
    #[arg(long)]
    pub at: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(cmd: ClusterCommand) -> Result<(), String> {
    let a = match cmd {
        ClusterCommand::Status(a) => a,
        ClusterCommand::Add(a) => {
            let url = format!("{}/cluster/members", a.target.target.trim_end_matches('/'));
            let body = restm_shared::MemberRequest { id: a.id, peer_url: a.peer_url.clone() };
            let ask = request(&a.target, reqwest::Method::POST, url)?.json(&body);
            return change(ask).await;
        }
        ClusterCommand::Remove(a) => {
            let url = format!("{}/cluster/members/{}", a.target.target.trim_end_matches('/'), a.id);
            return change(request(&a.target, reqwest::Method::DELETE, url)?).await;
        }
        ClusterCommand::MoveLeader(a) => {
            let url = format!("{}/cluster/groups/{}/leader", a.target.target.trim_end_matches('/'), a.group);
            let body = restm_shared::LeaderMove { to: a.to };
            let resp = request(&a.target, reqwest::Method::POST, url)?
                .json(&body)
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(refusal(status, &text));
            }
            let moved: restm_shared::LeaderMoved = serde_json::from_str(&text)
                .map_err(|e| format!("the node's answer is not the move this CLI reads: {e}"))?;
            match moved.outcome.as_str() {
                "already" => println!("group {}: node {} leads it already", moved.group, moved.leader),
                _ => println!(
                    "group {}: node {} leads it (was node {})",
                    moved.group, moved.leader, moved.from
                ),
            }
            return Ok(());
        }
    };
    let url = format!("{}/cluster", a.target.target.trim_end_matches('/'));
    let mut ask = request(&a.target, reqwest::Method::GET, url)?;
    if let Some(at) = &a.at {
        ask = ask.header(HEADER_AT, at);
    }
    let resp = ask.send().await.map_err(unreachable)?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(refusal(status, &text));
    }
    if a.json {
        println!("{text}");
        return Ok(());
    }
    let s: ClusterStatus = serde_json::from_str(&text)
        .map_err(|e| format!("the node's /cluster is not what this CLI reads: {e}"))?;
    print!("{}", table(&s));
    Ok(())
}

/// Sends a membership change and prints the cluster as it then stands.
async fn change(ask: reqwest::RequestBuilder) -> Result<(), String> {
    let resp = ask.send().await.map_err(unreachable)?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(refusal(status, &text));
    }
    let s: ClusterStatus = serde_json::from_str(&text)
        .map_err(|e| format!("the node's answer is not the /cluster this CLI reads: {e}"))?;
    print!("{}", table(&s));
    Ok(())
}

/// The status as the table `restm cluster status` prints.
pub fn table(s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !s.replicated {
        let _ = writeln!(
            out,
            "node {}: a cluster of one (started without cluster flags), unreplicated",
            s.node_id
        );
        return out;
    }
    match s.as_of {
        Some(v) => {
            let then = crate::engine::hlc::version_time_ms(crate::engine::hlc::millis_of(v));
            let _ = writeln!(
                out,
                "cluster {:?}, as node {} saw it at {then} (version {v}): leaders and terms then, the rest now",
                s.cluster, s.node_id
            );
        }
        None => {
            let _ = writeln!(out, "cluster {:?}, as node {} sees it", s.cluster, s.node_id);
        }
    }
    let _ = writeln!(out, "\nmembers\n  {:<4} {:<8} {:>13}  peer", "id", "state", "last contact");
    for m in &s.members {
        let contact = m.last_contact_ms.map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        let _ = writeln!(out, "  {:<4} {:<8} {:>13}  {}", m.node_id, m.state, contact, m.peer_url);
    }
    if let Some(t) = &s.timing {
        let _ = writeln!(
            out,
            "\ntiming: heartbeat every {} ms, election timeout {} ms, leader lease {} ms",
            t.heartbeat_interval_ms, t.election_timeout_ms, t.lease_ms
        );
    }
    for g in &s.groups {
        group(&mut out, g);
    }
    let recent = &s.leader_changes[s.leader_changes.len().saturating_sub(10)..];
    if !recent.is_empty() {
        let _ = writeln!(out, "\nleader changes node {} saw (newest last)", s.node_id);
        for c in recent {
            let leader = c.leader.map_or("no leader".to_string(), |l| format!("node {l}"));
            let _ = writeln!(out, "  {}  group {}: {leader}, term {}", c.time, c.group, c.term);
        }
    }
    out
}

fn group(out: &mut String, g: &GroupStatus) {
    use std::fmt::Write;
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let leader = g.leader.map_or("none elected".to_string(), |l| format!("node {l}"));
    let _ = writeln!(
        out,
        "\ngroup {}: {} partitions, leader {leader}, term {}, voters {}{}",
        g.group,
        g.partitions.len(),
        g.term,
        ids(&g.voters),
        if g.learners.is_empty() { String::new() } else { format!(", learners {}", ids(&g.learners)) },
    );
    let index = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
    let _ = writeln!(
        out,
        "  this node: {}, log {}, applied {}",
        g.role,
        index(g.last_log_index),
        index(g.applied_index)
    );
    if let Some(ms) = g.millis_since_quorum_ack {
        let _ = writeln!(out, "  a majority acknowledged the leader {ms} ms ago");
    }
    for f in &g.follower_lag {
        let lag = f.lag.map_or("unknown".to_string(), |l| format!("{l} entries behind"));
        let _ = writeln!(out, "  follower {}: matched {}, {lag}", f.node_id, index(f.matched_index));
    }
    let lags: Vec<u64> = g.closed.iter().filter(|c| c.version > 0).map(|c| c.lag_ms).collect();
    match (lags.iter().min(), lags.iter().max()) {
        (Some(lo), Some(hi)) => {
            let _ = writeln!(
                out,
                "  closed timestamps: {} of {} partitions, {lo}–{hi} ms behind (as-of reads older than that are served here)",
                lags.len(),
                g.closed.len()
            );
        }
        _ => {
            let _ = writeln!(out, "  closed timestamps: none yet");
        }
    }
}
