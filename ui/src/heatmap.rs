//! The live conflict heatmap: conflicts and lock waits from `/events` (kinds `conflict`
//! and `lock_wait`, replayed from the node's buffer on first connect), drawn by time and
//! by pointer-prefix group, partition or member. Clicking a cell lists its conflicts with
//! links to both traces.

use std::time::Duration;

use leptos::prelude::*;
use restm_shared::Event;

use crate::api::{Settings, settings};
use crate::heat::{self, Cell, Hit, Rows};
use crate::stream::{Link, Stream};
use crate::time;
use crate::widgets::trace_link;

/// Columns (time buckets) on screen.
const COLUMNS: usize = 60;
/// Rows before the quietest groups are folded into one.
const MAX_ROWS: usize = 24;
/// Events kept for drawing and listing.
const KEEP: usize = 50_000;
const LABEL_W: f64 = 170.0;
const CELL_W: f64 = 14.0;
const CELL_H: f64 = 20.0;

/// The heatmap's data, collected for as long as the page is open.
#[derive(Clone, Copy)]
pub struct Feed {
    hits: RwSignal<Vec<Hit>>,
    pending: StoredValue<Vec<Hit>>,
    link: RwSignal<Link>,
    missed: RwSignal<u64>,
    now: RwSignal<f64>,
}

fn hit_of(e: Event) -> Option<Hit> {
    let conflict = match e.kind.as_str() {
        "conflict" => true,
        "lock_wait" => false,
        _ => return None,
    };
    Some(Hit {
        seq: e.seq,
        time_ms: time::parse_ms(&e.time),
        conflict,
        ptr: e.ptr.unwrap_or_default(),
        txn: e.txn.unwrap_or_default(),
        trace_id: e.trace_id.unwrap_or_default(),
        other_txn: e.winner_txn.or(e.holder_txn).unwrap_or_default(),
        other_trace_id: e.other_trace_id.unwrap_or_default(),
        winner_version: e.winner_version,
        partition: e.partition,
        node: e.node,
    })
}

impl Feed {
    pub fn start(settings: Settings) -> Self {
        let feed = Feed {
            hits: RwSignal::new(Vec::new()),
            pending: StoredValue::new(Vec::new()),
            link: RwSignal::new(Link::Connecting),
            missed: RwSignal::new(0),
            now: RwSignal::new(time::now_ms()),
        };
        let stream: StoredValue<Option<Stream>, LocalStorage> = StoredValue::new_local(None);
        // (Re)subscribe whenever the token changes; the first subscription replays the
        // node's buffer so conflicts from before the page opened show too.
        Effect::new(move |_| {
            let token = settings.token.get();
            let since = stream.with_value(|s| s.is_none()).then_some(0);
            stream.update_value(|s| {
                if let Some(old) = s.take() {
                    old.close();
                }
                *s = Some(Stream::open(
                    "kinds=conflict,lock_wait".into(),
                    token,
                    since,
                    feed.link,
                    feed.missed,
                    move |e| {
                        if let Some(h) = hit_of(e) {
                            feed.pending.update_value(|p| p.push(h));
                        }
                    },
                ));
            });
        });
        // Draw at most twice a second, however fast events come.
        let _ = set_interval_with_handle(
            move || {
                let batch = feed.pending.try_update_value(std::mem::take).unwrap_or_default();
                if !batch.is_empty() {
                    feed.hits.update(|h| {
                        h.extend(batch);
                        if h.len() > KEEP {
                            let cut = h.len() - KEEP;
                            h.drain(..cut);
                        }
                    });
                }
                feed.now.set(time::now_ms());
            },
            Duration::from_millis(500),
        );
        feed
    }
}

fn colour(cell: &Cell, max: u32) -> String {
    let intensity =
        if max <= 1 { 1.0 } else { ((cell.total() as f64).ln_1p() / (max as f64).ln_1p()).max(0.0) };
    let alpha = 0.25 + 0.75 * intensity;
    if cell.conflicts > 0 {
        format!("rgba(220, 38, 38, {alpha:.2})")
    } else {
        format!("rgba(217, 119, 6, {alpha:.2})")
    }
}

#[component]
pub fn HeatmapView(feed: Feed) -> impl IntoView {
    let s = settings();
    let bucket_ms = RwSignal::new(5_000.0f64);
    let rows_by = RwSignal::new(Rows::Prefix(1));
    let selected: RwSignal<Option<(String, i64)>> = RwSignal::new(None);
    let grid = Memo::new(move |_| {
        let (now, b, d) = (feed.now.get(), bucket_ms.get(), rows_by.get());
        feed.hits.with(|h| heat::grid(h, now, b, COLUMNS, d, MAX_ROWS))
    });
    let totals = Memo::new(move |_| {
        feed.hits.with(|h| {
            let c = h.iter().filter(|x| x.conflict).count();
            (c, h.len() - c)
        })
    });
    let listing = Memo::new(move |_| {
        let (label, bucket) = selected.get()?;
        let rows = grid.with(|g| g.rows.clone());
        let (b, d) = (bucket_ms.get(), rows_by.get());
        Some(feed.hits.with(|h| {
            heat::hits_in(h, &rows, &label, bucket, b, d).into_iter().take(500).cloned().collect::<Vec<_>>()
        }))
    });
    let width = LABEL_W + CELL_W * COLUMNS as f64 + 10.0;
    view! {
        <section class="view" data-testid="view-heatmap">
            <div class="toolbar">
                <span class="link" data-testid="heat-link">
                    {move || feed.link.get().label()}
                </span>
                <label>
                    "Bucket "
                    <select
                        data-testid="heat-bucket"
                        on:change=move |ev| {
                            if let Ok(v) = event_target_value(&ev).parse::<f64>() {
                                bucket_ms.set(v);
                                selected.set(None);
                            }
                        }
                    >
                        <option value="1000">"1 s (1 min)"</option>
                        <option value="5000" selected>"5 s (5 min)"</option>
                        <option value="30000">"30 s (30 min)"</option>
                        <option value="60000">"1 min (1 h)"</option>
                    </select>
                </label>
                <label>
                    "Group by "
                    <select
                        data-testid="heat-depth"
                        on:change=move |ev| {
                            if let Some(v) = Rows::parse(&event_target_value(&ev)) {
                                rows_by.set(v);
                                selected.set(None);
                            }
                        }
                    >
                        <option value="1" selected>"first segment (a/…)"</option>
                        <option value="2">"two segments (a/b/…)"</option>
                        <option value="3">"three segments"</option>
                        <option value="1000">"whole pointer"</option>
                        <option value="partition">"partition"</option>
                        <option value="node">"member (node)"</option>
                    </select>
                </label>
                <span data-testid="heat-totals">
                    {move || {
                        let (c, w) = totals.get();
                        format!("{c} conflicts · {w} lock waits seen")
                    }}
                </span>
                <span class="legend">
                    <i class="sw conflict"></i>
                    "conflict "
                    <i class="sw wait"></i>
                    "lock wait only"
                </span>
                <Show when=move || { feed.missed.get() > 0 }>
                    <span class="warn">
                        {move || format!("{} events were missed (the node's buffer moved on)", feed.missed.get())}
                    </span>
                </Show>
            </div>
            {move || {
                let g = grid.get();
                if g.rows.is_empty() {
                    return view! {
                        <p class="empty" data-testid="heat-empty">
                            "No conflicts or lock waits in this window. They appear here as they happen."
                        </p>
                    }
                        .into_any();
                }
                let height = 24.0 + CELL_H * g.rows.len() as f64;
                let b = bucket_ms.get();
                let axis = (0..COLUMNS)
                    .step_by(10)
                    .map(|c| {
                        let t = (g.first_bucket + c as i64) as f64 * b;
                        view! {
                            <text x=(LABEL_W + CELL_W * c as f64).to_string() y="12" class="axis">
                                {time::clock(t)[..8].to_string()}
                            </text>
                        }
                    })
                    .collect_view();
                let labels = g
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(r, name)| {
                        let shown: String = if name.chars().count() > 24 {
                            format!("{}…", name.chars().take(23).collect::<String>())
                        } else {
                            name.clone()
                        };
                        view! {
                            <text x="0" y=(24.0 + CELL_H * r as f64 + 14.0).to_string() class="row-label">
                                {shown}
                            </text>
                        }
                    })
                    .collect_view();
                let grid_bg = view! {
                    <rect
                        x=LABEL_W.to_string()
                        y="20"
                        width=(CELL_W * COLUMNS as f64).to_string()
                        height=(CELL_H * g.rows.len() as f64).to_string()
                        class="grid-bg"
                    ></rect>
                };
                let cells = g
                    .cells
                    .iter()
                    .map(|(&(r, c), cell)| {
                        let label = g.rows[r].clone();
                        let bucket = g.first_bucket + c as i64;
                        let is_sel = {
                            let label = label.clone();
                            move || selected.get().is_some_and(|(l, bk)| l == label && bk == bucket)
                        };
                        let on_click = {
                            let label = label.clone();
                            move |_| selected.set(Some((label.clone(), bucket)))
                        };
                        view! {
                            <rect
                                class="cell"
                                class:selected=is_sel
                                data-testid="heat-cell"
                                data-group=label
                                data-conflicts=cell.conflicts.to_string()
                                data-waits=cell.waits.to_string()
                                x=(LABEL_W + CELL_W * c as f64).to_string()
                                y=(20.0 + CELL_H * r as f64 + 1.0).to_string()
                                width=(CELL_W - 1.0).to_string()
                                height=(CELL_H - 2.0).to_string()
                                fill=colour(cell, g.max)
                                on:click=on_click
                            ></rect>
                        }
                    })
                    .collect_view();
                view! {
                    <svg
                        class="heatmap"
                        data-testid="heatmap"
                        width=width.to_string()
                        height=height.to_string()
                        viewBox=format!("0 0 {width} {height}")
                    >
                        {axis}
                        {labels}
                        {grid_bg}
                        {cells}
                    </svg>
                }
                    .into_any()
            }}
            <div class="cell-detail" data-testid="conflict-list">
                {move || match listing.get() {
                    None => view! { <p class="hint">"Click a cell to list what happened in it."</p> }.into_any(),
                    Some(hits) if hits.is_empty() => {
                        view! { <p class="hint">"That cell has scrolled out of the kept events."</p> }.into_any()
                    }
                    Some(hits) => {
                        let (label, bucket) = selected.get().unwrap_or_default();
                        let start = bucket as f64 * bucket_ms.get();
                        view! {
                            <h3>
                                {format!(
                                    "{} in {label} from {} (UTC), {} events",
                                    "Conflicts and waits",
                                    time::clock(start),
                                    hits.len(),
                                )}
                            </h3>
                            <table>
                                <thead>
                                    <tr>
                                        <th>"time"</th>
                                        <th>"kind"</th>
                                        <th>"pointer"</th>
                                        <th>"losing / waiting txn"</th>
                                        <th>"winner / holder txn"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {hits.into_iter().map(|h| conflict_row(h, s)).collect_view()}
                                </tbody>
                            </table>
                        }
                            .into_any()
                    }
                }}
            </div>
        </section>
    }
}

fn conflict_row(h: Hit, s: Settings) -> impl IntoView {
    let kind = if h.conflict { "conflict" } else { "lock wait" };
    let other_role = match (h.conflict, h.winner_version) {
        (true, Some(v)) => format!("committed v{v}"),
        (true, None) => "held the lock".to_string(),
        (false, _) => "holds the lock".to_string(),
    };
    view! {
        <tr data-testid="conflict-row" class=if h.conflict { "conflict" } else { "wait" }>
            <td>{time::clock(h.time_ms)}</td>
            <td>{kind}</td>
            <td class="mono" data-testid="conflict-ptr">{h.ptr}</td>
            <td class="mono">
                <span data-testid="conflict-loser">{h.txn}</span>
                " "
                {trace_link(s, h.trace_id, "trace")}
            </td>
            <td class="mono">
                <span data-testid="conflict-winner">{h.other_txn}</span>
                {format!(" ({other_role}) ")}
                {trace_link(s, h.other_trace_id, "trace")}
            </td>
        </tr>
    }
}
