//! The cluster view: the members (up or down, what each leads), the placement map (each
//! group's partitions × members, the leader marked, followers' lag), and the answering
//! member's timeline of leader changes. It polls `GET /cluster` every second while shown;
//! with a moment in "as of" it asks with `X-reSTM-At`, and the leaders and the timeline
//! are those of that moment ("who led group 3 at 10:02?"). Shown now, each voter's cell
//! has a "lead here" button: the group's lead is handed to it
//! (`POST /cluster/groups/{group}/leader`).

use leptos::prelude::*;
use restm_shared::{ClusterStatus, LeaderMove, LeaderMoved};

use crate::api::{self, Load, Settings};
use crate::placement::{self, Role};
use crate::time;
use crate::widgets::TextField;

/// `/cluster`, polled while `active`, now or as of a moment.
#[derive(Clone, Copy)]
pub struct Feed {
    state: RwSignal<Load<ClusterStatus>>,
    /// The moment asked for (`X-reSTM-At`); empty: now.
    at: RwSignal<String>,
    settings: Settings,
    /// What the last "lead here" did, in one line.
    moved: RwSignal<Option<String>>,
}

impl Feed {
    pub fn start(settings: Settings, active: Signal<bool>) -> Self {
        let at = RwSignal::new(String::new());
        // Asked again at once when the moment changes.
        let state = api::poll_every_second(
            active,
            move || at.track(),
            move || {
                let (token, at) = (settings.token.get_untracked(), at.get_untracked());
                async move { api::get_json::<ClusterStatus>("/cluster", Some(&at), &token).await }
            },
        );
        Feed { state, at, settings, moved: RwSignal::new(None) }
    }

    /// Hands `group`'s lead to `node`, saying how it went in [`Feed::moved`].
    fn lead_here(self, group: u32, node: u64) {
        self.moved.set(Some(format!("Handing group {group}'s lead to node {node}…")));
        let token = self.settings.token.get_untracked();
        leptos::task::spawn_local(async move {
            let path = format!("/cluster/groups/{group}/leader");
            let answer = api::post_json::<_, LeaderMoved>(&path, &LeaderMove { to: node }, &token).await;
            self.moved.set(Some(match answer {
                Ok(m) if m.outcome == "already" => {
                    format!("Node {} leads group {} already.", m.leader, m.group)
                }
                Ok(m) => format!("Group {}'s lead moved from node {} to node {}.", m.group, m.from, m.leader),
                Err(e) => e,
            }));
        });
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
    let moment = RwSignal::new(String::new());
    let apply = move || feed.at.set(moment.get_untracked().trim().to_string());
    view! {
        <section class="view" data-testid="view-cluster">
            <div class="toolbar">
                <label>
                    "As of "
                    <TextField
                        value=moment
                        placeholder="now (or a version, an instant, -10m)"
                        testid="cluster-at"
                        on_enter=Callback::new(move |()| apply())
                    />
                </label>
                <button data-testid="cluster-at-apply" on:click=move |_| apply()>"Show"</button>
                <button
                    data-testid="cluster-at-now"
                    on:click=move |_| {
                        moment.set(String::new());
                        feed.at.set(String::new());
                    }
                >
                    "Now"
                </button>
            </div>
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
                Load::Ready(s) => view! {
                    {move || feed.moved.get().map(|m| view! { <p class="hint" data-testid="cluster-moved">{m}</p> })}
                    {status_view(&s, feed)}
                    {timeline_view(&s)}
                }
                    .into_any(),
            }}
        </section>
    }
}

fn timeline_view(s: &ClusterStatus) -> impl IntoView {
    let rows = placement::timeline(&s.leader_changes);
    if rows.is_empty() {
        return view! {
            <h3>"Leader changes"</h3>
            <p class="hint" data-testid="cluster-no-changes">"None kept."</p>
        }
        .into_any();
    }
    let rows = rows
        .into_iter()
        .map(|r| {
            let lead = match r.from {
                None => format!("first seen → {}", node_name(r.to)),
                Some(from) if from == r.to => format!("{} (stays)", node_name(r.to)),
                Some(from) => format!("{} → {}", node_name(from), node_name(r.to)),
            };
            view! {
                <tr data-testid="cluster-change" data-group=r.group.to_string()>
                    <td>{time::clock(time::parse_ms(&r.time))}</td>
                    <td>{format!("group {}", r.group)}</td>
                    <td>{lead}</td>
                    <td>{format!("term {}", r.term)}</td>
                    <td data-testid="cluster-change-members">{r.members.unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h3>{format!("Leader and membership changes node {} saw", s.node_id)}</h3>
        <table data-testid="cluster-timeline">
            <thead>
                <tr>
                    <th>"seen at (UTC)"</th>
                    <th>"group"</th>
                    <th>"leader"</th>
                    <th>"term"</th>
                    <th>"members"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

fn status_view(s: &ClusterStatus, feed: Feed) -> impl IntoView {
    // Leads are moved now, not in a rewound view.
    let movable = s.as_of.is_none();
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
                    let (group, node) = (g.group, r.node_id);
                    let button = (movable && r.role == Role::Voter).then(|| {
                        view! {
                            <button
                                class="small"
                                data-testid="lead-here"
                                data-group=group.to_string()
                                data-node=node.to_string()
                                title="Hand this group's lead to this member"
                                on:click=move |_| feed.lead_here(group, node)
                            >
                                "lead here"
                            </button>
                        }
                    });
                    view! {
                        <td
                            class=format!("replica {}", r.role.as_str())
                            data-testid="placement-cell"
                            data-group=g.group.to_string()
                            data-node=r.node_id.to_string()
                            data-role=r.role.as_str()
                        >
                            {text}
                            {button}
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
            {match s.as_of {
                Some(v) => format!("Cluster {} as node {} saw it at {} (UTC): leaders then, the rest now", s.cluster, s.node_id, time::clock(time::version_ms(v))),
                None => format!("Cluster {} as node {} sees it", s.cluster, s.node_id),
            }}
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
