//! Locks and waiters: the active transactions (from `GET /txns`) with their age, held
//! locks and who waits on them (from `GET /locks`), polled every second while the view is
//! open. The oldest transaction is marked: it is the one holding back garbage collection.

use leptos::prelude::*;
use restm_shared::{ActiveTxns, Locks, TxnStatus};

use crate::api::{self, Load, Settings, settings};
use crate::time;
use crate::widgets::trace_link;

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub txns: ActiveTxns,
    pub locks: Locks,
    pub at_ms: f64,
}

/// Polls while `active`.
#[derive(Clone, Copy)]
pub struct Feed {
    state: RwSignal<Load<Snapshot>>,
}

impl Feed {
    pub fn start(settings: Settings, active: Signal<bool>) -> Self {
        let state = api::poll_every_second(
            active,
            || {},
            move || {
                let token = settings.token.get_untracked();
                async move {
                    let txns = api::get_json::<ActiveTxns>("/txns", None, &token).await?;
                    let locks = api::get_json::<Locks>("/locks", None, &token).await?;
                    Ok(Snapshot { txns, locks, at_ms: time::now_ms() })
                }
            },
        );
        Feed { state }
    }
}

fn txn_row(t: TxnStatus, snap: &Snapshot, oldest: bool, s: Settings) -> impl IntoView {
    let waiters: Vec<String> = snap
        .locks
        .locks
        .iter()
        .filter(|l| l.holder_txn == t.txn)
        .flat_map(|l| {
            l.waiters
                .iter()
                .map(move |w| format!("{} on {} ({})", time::short(&w.txn), l.ptr, time::age(w.waiting_ms)))
        })
        .collect();
    let waiting_for: Vec<String> = snap
        .locks
        .locks
        .iter()
        .filter(|l| l.waiters.iter().any(|w| w.txn == t.txn))
        .map(|l| format!("{} (held by {})", l.ptr, time::short(&l.holder_txn)))
        .collect();
    view! {
        <tr class:oldest=oldest data-testid="txn-row" data-txn=t.txn.clone()>
            <td class="mono">
                {t.txn.clone()}
                {oldest.then(|| view! { <span class="badge" data-testid="oldest-badge">"oldest · holds back GC"</span> })}
            </td>
            <td>{time::age(t.age_ms)}</td>
            <td>{if t.read_only { "read-only" } else { "read-write" }}</td>
            <td class="mono">{t.read_version.to_string()}</td>
            <td class="mono" data-testid="txn-locks">{t.locks.join(", ")}</td>
            <td class="mono" data-testid="txn-waiters">{waiters.join("; ")}</td>
            <td class="mono">{waiting_for.join("; ")}</td>
            <td>{format!("{} / {}", t.reads.len(), t.writes.len())}</td>
            <td>
                {trace_link(s, t.trace_id.clone(), "trace")}
            </td>
        </tr>
    }
}

#[component]
pub fn LocksView(feed: Feed) -> impl IntoView {
    let s = settings();
    view! {
        <section class="view" data-testid="view-locks">
            {move || match feed.state.get() {
                Load::Idle | Load::Loading => view! { <p class="loading">"Loading transactions and locks…"</p> }.into_any(),
                Load::Failed(e) => view! { <p class="error" data-testid="locks-error">{e}</p> }.into_any(),
                Load::Ready(snap) => {
                    let oldest = snap.txns.oldest.clone();
                    let n_txns = snap.txns.txns.len();
                    let n_locks = snap.locks.locks.len();
                    let n_waiters: usize = snap.locks.locks.iter().map(|l| l.waiters.len()).sum();
                    let rows = snap
                        .txns
                        .txns
                        .clone()
                        .into_iter()
                        .map(|t| {
                            let is_oldest = oldest.as_deref() == Some(t.txn.as_str());
                            txn_row(t, &snap, is_oldest, s)
                        })
                        .collect_view();
                    let lock_rows = snap
                        .locks
                        .locks
                        .clone()
                        .into_iter()
                        .map(|l| {
                            let waiters = l
                                .waiters
                                .iter()
                                .map(|w| format!("{} ({})", w.txn, time::age(w.waiting_ms)))
                                .collect::<Vec<_>>()
                                .join(", ");
                            view! {
                                <tr data-testid="lock-row" class:contended=!l.waiters.is_empty()>
                                    <td class="mono">{l.ptr}</td>
                                    <td class="mono">{l.holder_txn}</td>
                                    <td>{time::age(l.holder_age_ms)}</td>
                                    <td class="mono" data-testid="lock-waiters">{waiters}</td>
                                    <td>
                                        {trace_link(s, l.holder_trace_id.clone(), "holder trace")}
                                    </td>
                                </tr>
                            }
                        })
                        .collect_view();
                    view! {
                        <p class="summary" data-testid="locks-summary">
                            {format!(
                                "{n_txns} active txns · {n_locks} locks held · {n_waiters} waiting · updated {} UTC",
                                time::clock(snap.at_ms),
                            )}
                        </p>
                        <h3>"Active transactions (oldest first)"</h3>
                        {if n_txns == 0 {
                            view! { <p class="empty">"No active transactions."</p> }.into_any()
                        } else {
                            view! {
                                <table data-testid="txn-table">
                                    <thead>
                                        <tr>
                                            <th>"txn"</th>
                                            <th>"age"</th>
                                            <th>"kind"</th>
                                            <th>"read version"</th>
                                            <th>"locks held"</th>
                                            <th>"waiters on its locks"</th>
                                            <th>"waiting for"</th>
                                            <th>"reads / writes"</th>
                                            <th></th>
                                        </tr>
                                    </thead>
                                    <tbody>{rows}</tbody>
                                </table>
                            }
                                .into_any()
                        }}
                        <h3>"Locks (contended first)"</h3>
                        {if n_locks == 0 {
                            view! { <p class="empty">"No locks held."</p> }.into_any()
                        } else {
                            view! {
                                <table data-testid="lock-table">
                                    <thead>
                                        <tr>
                                            <th>"pointer"</th>
                                            <th>"holder"</th>
                                            <th>"held for"</th>
                                            <th>"waiters"</th>
                                            <th></th>
                                        </tr>
                                    </thead>
                                    <tbody>{lock_rows}</tbody>
                                </table>
                            }
                                .into_any()
                        }}
                    }
                        .into_any()
                }
            }}
        </section>
    }
}
