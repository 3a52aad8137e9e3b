//! The cluster view: the members (up or down, what each leads), the placement map (each
//! group's partitions × members, the leader marked, followers' lag), and a timeline of
//! the leader changes seen since the page opened. It polls `GET /cluster` every second for
//! as long as the page is open, whatever view is shown, so a change made while another
//! view is open is on the timeline too.

use std::time::Duration;

use leptos::prelude::*;
use restm_shared::ClusterStatus;

use crate::api::{self, Load, Settings};
use crate::placement::{self, LeaderChange, Role};
use crate::time;

/// Leader changes kept on the timeline.
const KEEP_CHANGES: usize = 200;

/// `/cluster`, polled, and the leader changes between polls.
#[derive(Clone, Copy)]
pub struct Feed {
    state: RwSignal<Load<ClusterStatus>>,
    changes: RwSignal<Vec<(f64, LeaderChange)>>,
    busy: StoredValue<bool>,
}

impl Feed {
    pub fn start(settings: Settings) -> Self {
        let feed = Feed {
            state: RwSignal::new(Load::Loading),
            changes: RwSignal::new(Vec::new()),
            busy: StoredValue::new(false),
        };
        let last: StoredValue<Option<ClusterStatus>> = StoredValue::new(None);
        let poll = move || {
            if feed.busy.get_value() {
                return;
            }
            feed.busy.set_value(true);
            let token = settings.token.get_untracked();
            leptos::task::spawn_local(async move {
                match api::get_json::<ClusterStatus>("/cluster", None, &token).await {
                    Ok(now) => {
                        let at = time::now_ms();
                        let moved = last.with_value(|l| {
                            l.as_ref()
                                .map(|before| placement::leader_changes(before, &now))
                                .unwrap_or_default()
                        });
                        if !moved.is_empty() {
                            feed.changes.update(|c| {
                                c.extend(moved.into_iter().map(|m| (at, m)));
                                let cut = c.len().saturating_sub(KEEP_CHANGES);
                                c.drain(..cut);
                            });
                        }
                        last.set_value(Some(now.clone()));
                        feed.state.set(Load::Ready(now));
                    }
                    Err(e) => feed.state.set(Load::Failed(e)),
                }
                feed.busy.set_value(false);
            });
        };
        poll();
        let _ = set_interval_with_handle(poll, Duration::from_millis(1000));
        feed
    }
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

fn node_name(n: Option<u64>) -> String {
    n.map_or_else(|| "no leader".to_string(), |n| format!("node {n}"))
}

#[component]
pub fn ClusterView(feed: Feed) -> impl IntoView {
    view! {
        <section class="view" data-testid="view-cluster">
            {move || match feed.state.get() {
                Load::Idle | Load::Loading => view! { <p class="loading">"Loading the cluster…"</p> }.into_any(),
                Load::Failed(e) => view! { <p class="error" data-testid="cluster-error">{e}</p> }.into_any(),
                Load::Ready(s) if !s.replicated => {
                    view! {
                        <p class="empty" data-testid="cluster-single">
                            "This node is a cluster of one (started without cluster flags): nothing is replicated. "
                            "Start several with --initial-cluster, or try restm demo --nodes 3."
                        </p>
                    }
                        .into_any()
                }
                Load::Ready(s) => status_view(&s).into_any(),
            }}
            <h3>"Leader changes seen"</h3>
            {move || {
                let changes = feed.changes.get();
                if changes.is_empty() {
                    return view! {
                        <p class="hint" data-testid="cluster-no-changes">
                            "None since this page opened. A kill or a restart shows here."
                        </p>
                    }
                        .into_any();
                }
                let rows = changes
                    .into_iter()
                    .rev()
                    .map(|(at, c)| {
                        view! {
                            <tr data-testid="cluster-change" data-group=c.group.to_string()>
                                <td>{time::clock(at)}</td>
                                <td>{format!("group {}", c.group)}</td>
                                <td>{format!("{} → {}", node_name(c.from), node_name(c.to))}</td>
                                <td>{format!("term {}", c.term)}</td>
                            </tr>
                        }
                    })
                    .collect_view();
                view! {
                    <table data-testid="cluster-timeline">
                        <thead>
                            <tr>
                                <th>"seen at (UTC)"</th>
                                <th>"group"</th>
                                <th>"leader"</th>
                                <th>"term"</th>
                            </tr>
                        </thead>
                        <tbody>{rows}</tbody>
                    </table>
                }
                    .into_any()
            }}
        </section>
    }
}

fn status_view(s: &ClusterStatus) -> impl IntoView {
    let members = placement::members(s);
    let groups = placement::placement(s);
    let member_rows = members
        .iter()
        .map(|m| {
            let last = m.last_contact_ms.map_or_else(|| "never".to_string(), time::age);
            view! {
                <tr data-testid="cluster-member" data-node=m.node_id.to_string() data-state=m.state.clone()>
                    <td>{format!("node {}", m.node_id)}</td>
                    <td class=format!("state {}", m.state)>{m.state.clone()}</td>
                    <td>{last}</td>
                    <td data-testid="member-leads">{format!("{} · {}", count(m.groups_led, "group"), count(m.partitions_led, "partition"))}</td>
                    <td class="mono">{m.peer_url.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    let heads = members.iter().map(|m| view! { <th>{format!("node {}", m.node_id)}</th> }).collect_view();
    let group_rows = groups
        .into_iter()
        .map(|g| {
            let cells = g
                .replicas
                .iter()
                .map(|r| {
                    let text = match (r.role, r.lag) {
                        (Role::Leader, _) => "★ leader".to_string(),
                        (Role::Absent, _) => "—".to_string(),
                        (role, Some(lag)) => format!("{} · lag {lag}", role.as_str()),
                        (role, None) => role.as_str().to_string(),
                    };
                    view! {
                        <td
                            class=format!("replica {}", r.role.as_str())
                            data-testid="placement-cell"
                            data-group=g.group.to_string()
                            data-node=r.node_id.to_string()
                            data-role=r.role.as_str()
                        >
                            {text}
                        </td>
                    }
                })
                .collect_view();
            view! {
                <tr data-testid="placement-row">
                    <td>{format!("group {}", g.group)}</td>
                    <td class="mono">{placement::partitions_label(&g.partitions, 6)}</td>
                    <td>{g.term.to_string()}</td>
                    {cells}
                </tr>
            }
        })
        .collect_view();
    let lease = s.timing.map(|t| {
        format!(
            " · heartbeat {} ms, election timeout {} ms, lease {} ms",
            t.heartbeat_interval_ms, t.election_timeout_ms, t.lease_ms
        )
    });
    view! {
        <h2 data-testid="cluster-title">
            {format!("Cluster {} as node {} sees it", s.cluster, s.node_id)}
        </h2>
        <p class="hint">{format!("{}, {}{}", count(members.len(), "member"), count(s.groups.len(), "group"), lease.unwrap_or_default())}</p>
        <h3>"Members"</h3>
        <table data-testid="cluster-members">
            <thead>
                <tr>
                    <th>"member"</th>
                    <th>"state"</th>
                    <th>"last heard"</th>
                    <th>"leads"</th>
                    <th>"peer address"</th>
                </tr>
            </thead>
            <tbody>{member_rows}</tbody>
        </table>
        <h3>"Placement"</h3>
        <table data-testid="cluster-placement">
            <thead>
                <tr>
                    <th>"group"</th>
                    <th>"partitions"</th>
                    <th>"term"</th>
                    {heads}
                </tr>
            </thead>
            <tbody>{group_rows}</tbody>
        </table>
    }
}
