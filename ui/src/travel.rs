//! Time travel: find pointers by prefix; for one pointer, its versions on a timeline (who
//! wrote each, when, with a trace link), a slider or any `X-reSTM-At` expression to read it
//! as of a moment, and a diff between two versions; and a whole prefix as of a time.

use leptos::prelude::*;
use restm_shared::{HistoryEntry, HistoryPage, ListPage};
use serde_json::Value;

use crate::api::{self, Load, enc, settings};
use crate::diff::{Change, diff};
use crate::time;
use crate::widgets::{TextField, trace_link};

/// Versions of one pointer loaded at most.
const MAX_VERSIONS: usize = 5_000;
const TIMELINE_W: f64 = 900.0;

#[component]
pub fn TravelView() -> impl IntoView {
    let selected: RwSignal<Option<String>> = RwSignal::new(None);
    view! {
        <section class="view travel" data-testid="view-travel">
            <div class="columns">
                <Finder selected=selected/>
                <div class="grow">
                    {move || match selected.get() {
                        None => {
                            view! { <p class="hint">"Find a pointer on the left, or type its id, to see its history."</p> }
                                .into_any()
                        }
                        Some(p) => view! { <PointerPanel ptr=p/> }.into_any(),
                    }}
                </div>
            </div>
            <StateView/>
        </section>
    }
}

/// Pointers by prefix; picking one selects it.
#[component]
fn Finder(selected: RwSignal<Option<String>>) -> impl IntoView {
    let s = settings();
    let prefix = RwSignal::new(String::new());
    let found: RwSignal<Load<ListPage>> = RwSignal::new(Load::Idle);
    let find = move || {
        let p = prefix.get_untracked();
        found.set(Load::Loading);
        let token = s.token.get_untracked();
        leptos::task::spawn_local(async move {
            let path = format!("/ptr?prefix={}&limit=100", enc(&p));
            found.set(match api::get_json::<ListPage>(&path, None, &token).await {
                Ok(page) => Load::Ready(page),
                Err(e) => Load::Failed(e),
            });
        });
    };
    view! {
        <div class="finder">
            <h3>"Pointers"</h3>
            <div class="row">
                <TextField value=prefix placeholder="prefix (empty: all)" testid="find-prefix" on_enter=move |()| find()/>
                <button data-testid="find" on:click=move |_| find()>"Find"</button>
            </div>
            <button
                class="small"
                data-testid="open-exact"
                title="Open the pointer whose id is exactly what is typed"
                on:click=move |_| {
                    let p = prefix.get_untracked();
                    if !p.is_empty() {
                        selected.set(Some(p));
                    }
                }
            >
                "Open this exact id"
            </button>
            {move || match found.get() {
                Load::Idle => ().into_any(),
                Load::Loading => view! { <p class="loading">"Searching…"</p> }.into_any(),
                Load::Failed(e) => view! { <p class="error">{e}</p> }.into_any(),
                Load::Ready(page) if page.pointers.is_empty() => {
                    view! { <p class="empty">"No live pointer has this prefix."</p> }.into_any()
                }
                Load::Ready(page) => {
                    let more = page.next.is_some();
                    view! {
                        <ul class="ptr-list" data-testid="ptr-list">
                            {page
                                .pointers
                                .into_iter()
                                .map(|e| {
                                    let id = e.ptr.clone();
                                    let is_sel = {
                                        let id = id.clone();
                                        move || selected.get().as_deref() == Some(id.as_str())
                                    };
                                    view! {
                                        <li
                                            class:selected=is_sel
                                            data-testid="ptr-item"
                                            on:click=move |_| selected.set(Some(id.clone()))
                                        >
                                            <span class="mono">{e.ptr}</span>
                                            <span class="dim">{format!(" v{}", e.version)}</span>
                                        </li>
                                    }
                                })
                                .collect_view()}
                        </ul>
                        {more.then(|| view! { <p class="dim">"First 100 shown; narrow the prefix."</p> })}
                    }
                        .into_any()
                }
            }}
        </div>
    }
}

fn parse_value(e: &HistoryEntry) -> Option<Value> {
    if e.deleted {
        return None;
    }
    e.value.as_ref().and_then(|v| serde_json::from_str(v.get()).ok())
}

fn pretty(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| raw.to_string())
}

async fn load_history(ptr: &str, token: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/ptr/{}/history?limit=1000", enc(ptr));
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", enc(a)));
        }
        let page = api::get_json::<HistoryPage>(&path, None, token).await?;
        out.extend(page.versions);
        match page.next {
            Some(n) if out.len() < MAX_VERSIONS => after = Some(n),
            _ => return Ok(out),
        }
    }
}

/// One pointer: timeline, as-of read, versions and diff.
#[component]
fn PointerPanel(ptr: String) -> impl IntoView {
    let s = settings();
    let ptr = StoredValue::new(ptr);
    let history: RwSignal<Load<Vec<HistoryEntry>>> = RwSignal::new(Load::Loading);
    // The slider's range, fixed when the history loads.
    let range = RwSignal::new((0.0f64, 1.0f64));
    let at_ms: RwSignal<Option<f64>> = RwSignal::new(None);
    let at_text = RwSignal::new(String::new());
    let read: RwSignal<Load<Option<(u64, String)>>> = RwSignal::new(Load::Idle);
    let read_seq = StoredValue::new(0u64);
    let diff_a: RwSignal<Option<u64>> = RwSignal::new(None);
    let diff_b: RwSignal<Option<u64>> = RwSignal::new(None);

    let do_read = move |at: Option<String>| {
        let n = read_seq.get_value() + 1;
        read_seq.set_value(n);
        read.set(Load::Loading);
        let token = s.token.get_untracked();
        let p = ptr.get_value();
        leptos::task::spawn_local(async move {
            let r = api::read_ptr(&p, at.as_deref(), &token).await;
            // A later read supersedes this one.
            if read_seq.get_value() == n {
                read.set(match r {
                    Ok(v) => Load::Ready(v),
                    Err(e) => Load::Failed(e),
                });
            }
        });
    };
    let reload = move || {
        history.set(Load::Loading);
        let token = s.token.get_untracked();
        let p = ptr.get_value();
        leptos::task::spawn_local(async move {
            match load_history(&p, &token).await {
                Ok(h) => {
                    let first = h.first().map(|e| time::version_ms(e.version)).unwrap_or_else(time::now_ms);
                    let last = h.last().map(|e| time::version_ms(e.version)).unwrap_or(first);
                    let end = time::now_ms().max(last + 1.0);
                    range.set((first - 1_000.0, end));
                    let n = h.len();
                    diff_a.set(h.get(n.saturating_sub(2)).map(|e| e.version));
                    diff_b.set(h.last().map(|e| e.version));
                    history.set(Load::Ready(h));
                }
                Err(e) => history.set(Load::Failed(e)),
            }
        });
        at_ms.set(None);
        at_text.set(String::new());
        do_read(None);
    };
    reload();
    let set_at = move |ms: f64| {
        at_ms.set(Some(ms));
        let iso = time::iso(ms);
        at_text.set(iso.clone());
        do_read(Some(iso));
    };

    let timeline = move || {
        let Load::Ready(h) = history.get() else { return ().into_any() };
        let (lo, hi) = range.get();
        let x = move |ms: f64| ((ms - lo) / (hi - lo).max(1.0) * TIMELINE_W).clamp(0.0, TIMELINE_W);
        let dots = h
            .iter()
            .map(|e| {
                let ms = time::version_ms(e.version);
                let cls = if e.deleted { "dot deleted" } else { "dot" };
                view! {
                    <circle
                        class=cls
                        cx=x(ms).to_string()
                        cy="14"
                        r="5"
                        data-testid="timeline-dot"
                        on:click=move |_| set_at(ms)
                    ></circle>
                }
            })
            .collect_view();
        let cursor = move || {
            let ms = at_ms.get().unwrap_or(hi);
            view! { <line class="cursor" x1=x(ms).to_string() x2=x(ms).to_string() y1="0" y2="28"></line> }
        };
        view! {
            <svg class="timeline" width=TIMELINE_W.to_string() height="28" viewBox=format!("0 0 {TIMELINE_W} 28")>
                <line class="axis-line" x1="0" x2=TIMELINE_W.to_string() y1="14" y2="14"></line>
                {dots}
                {cursor}
            </svg>
            <input
                type="range"
                class="slider"
                data-testid="time-slider"
                min=lo.to_string()
                max=hi.to_string()
                step="1"
                prop:value=move || at_ms.get().unwrap_or(hi).to_string()
                on:input=move |ev| {
                    if let Ok(v) = event_target_value(&ev).parse::<f64>() {
                        set_at(v);
                    }
                }
            />
            <div class="range-labels dim">
                <span>{format!("{} UTC", time::iso(lo))}</span>
                <span>{format!("{} UTC", time::iso(hi))}</span>
            </div>
        }
            .into_any()
    };

    view! {
        <div class="pointer-panel">
            <h2>
                <span class="mono" data-testid="ptr-title">{ptr.get_value()}</span>
                <button class="small" on:click=move |_| reload()>"Reload"</button>
            </h2>
            <div class="as-of">
                {timeline}
                <div class="row">
                    <label>
                        "Read as of "
                        <TextField
                            value=at_text
                            placeholder="now, or 1234…, 2026-11-25T10:00:00Z, -5m"
                            testid="at-input"
                            on_enter=move |()| {
                                at_ms.set(None);
                                do_read(Some(at_text.get_untracked()));
                            }
                        />
                    </label>
                    <button
                        data-testid="at-read"
                        on:click=move |_| {
                            at_ms.set(None);
                            do_read(Some(at_text.get_untracked()));
                        }
                    >
                        "Read"
                    </button>
                    <button
                        data-testid="at-now"
                        on:click=move |_| {
                            at_ms.set(None);
                            at_text.set(String::new());
                            do_read(None);
                        }
                    >
                        "Now"
                    </button>
                </div>
                <div class="read-result" data-testid="as-of-value">
                    {move || match read.get() {
                        Load::Idle => ().into_any(),
                        Load::Loading => view! { <p class="loading">"Reading…"</p> }.into_any(),
                        Load::Failed(e) => view! { <p class="error" data-testid="as-of-error">{e}</p> }.into_any(),
                        Load::Ready(None) => {
                            view! { <p class="empty" data-testid="as-of-absent">"Absent at this moment."</p> }.into_any()
                        }
                        Load::Ready(Some((v, raw))) => {
                            view! {
                                <p class="dim">
                                    "version "
                                    <span class="mono" data-testid="as-of-version">{v.to_string()}</span>
                                    {format!(" · written {} UTC", time::iso(time::version_ms(v)))}
                                </p>
                                <pre data-testid="as-of-json">{pretty(&raw)}</pre>
                            }
                                .into_any()
                        }
                    }}
                </div>
            </div>
            {move || match history.get() {
                Load::Idle | Load::Loading => view! { <p class="loading">"Loading history…"</p> }.into_any(),
                Load::Failed(e) => view! { <p class="error" data-testid="history-error">{e}</p> }.into_any(),
                Load::Ready(h) => {
                    let rows = h
                        .iter()
                        .rev()
                        .map(|e| {
                            let v = e.version;
                            let ms = time::version_ms(v);
                            let preview: String = if e.deleted {
                                "(deleted)".into()
                            } else {
                                let raw = e.value.as_ref().map(|r| r.get().to_string()).unwrap_or_default();
                                if raw.chars().count() > 80 {
                                    format!("{}…", raw.chars().take(79).collect::<String>())
                                } else {
                                    raw
                                }
                            };
                            view! {
                                <tr data-testid="version-row">
                                    <td>
                                        <input
                                            type="radio"
                                            name="diff-a"
                                            prop:checked=move || diff_a.get() == Some(v)
                                            on:change=move |_| diff_a.set(Some(v))
                                        />
                                        <input
                                            type="radio"
                                            name="diff-b"
                                            prop:checked=move || diff_b.get() == Some(v)
                                            on:change=move |_| diff_b.set(Some(v))
                                        />
                                    </td>
                                    <td class="mono">{v.to_string()}</td>
                                    <td>{time::iso(ms)}</td>
                                    <td class="mono">{e.txn.clone()}</td>
                                    <td>
                                        {trace_link(s, e.trace_id.clone(), "trace")}
                                    </td>
                                    <td class="mono preview">{preview}</td>
                                    <td>
                                        <button class="small" on:click=move |_| set_at(ms)>
                                            "read here"
                                        </button>
                                    </td>
                                </tr>
                            }
                        })
                        .collect_view();
                    let count = h.len();
                    let changes = move || {
                        let (a, b) = (diff_a.get(), diff_b.get());
                        let find = |v: Option<u64>| h.iter().find(|e| Some(e.version) == v);
                        match (find(a), find(b)) {
                            (Some(ea), Some(eb)) => {
                                let list = diff(parse_value(ea).as_ref(), parse_value(eb).as_ref());
                                diff_view(ea.version, eb.version, list).into_any()
                            }
                            _ => view! { <p class="hint">"Pick A and B in the versions table."</p> }.into_any(),
                        }
                    };
                    view! {
                        <h3>{format!("Versions ({count}), newest first")}</h3>
                        <table data-testid="versions">
                            <thead>
                                <tr>
                                    <th title="diff from A to B">"A B"</th>
                                    <th>"version"</th>
                                    <th>"time (UTC)"</th>
                                    <th>"written by txn"</th>
                                    <th></th>
                                    <th>"value"</th>
                                    <th></th>
                                </tr>
                            </thead>
                            <tbody>{rows}</tbody>
                        </table>
                        <div class="diff" data-testid="diff">{changes}</div>
                    }
                        .into_any()
                }
            }}
        </div>
    }
}

fn diff_view(a: u64, b: u64, changes: Vec<Change>) -> impl IntoView {
    let n = changes.len();
    view! {
        <h3>{format!("Diff v{a} → v{b}: {n} change{}", if n == 1 { "" } else { "s" })}</h3>
        <table class="diff-table">
            <tbody>
                {changes
                    .into_iter()
                    .map(|c| {
                        let path = c.path().to_string();
                        let (cls, text) = match c {
                            Change::Added { new, .. } => ("added", format!("+ {new}")),
                            Change::Removed { old, .. } => ("removed", format!("− {old}")),
                            Change::Changed { old, new, .. } => ("changed", format!("{old} → {new}")),
                        };
                        view! {
                            <tr class=cls data-testid="diff-row">
                                <td class="mono">{path}</td>
                                <td class="mono">{text}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}

/// Every pointer under a prefix as of a chosen time, page by page.
#[component]
fn StateView() -> impl IntoView {
    let s = settings();
    let prefix = RwSignal::new(String::new());
    let at = RwSignal::new(String::new());
    let rows: RwSignal<Load<(Vec<restm_shared::PointerEntry>, Option<String>)>> = RwSignal::new(Load::Idle);
    let fetch = move |after: Option<String>| {
        let token = s.token.get_untracked();
        let (p, a) = (prefix.get_untracked(), at.get_untracked());
        let keep = match (&after, rows.get_untracked()) {
            (Some(_), Load::Ready((v, _))) => v,
            _ => Vec::new(),
        };
        if after.is_none() {
            rows.set(Load::Loading);
        }
        leptos::task::spawn_local(async move {
            let mut path = format!("/ptr?prefix={}&limit=200", enc(&p));
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", enc(a)));
            }
            rows.set(match api::get_json::<ListPage>(&path, Some(&a), &token).await {
                Ok(page) => {
                    let mut all = keep;
                    all.extend(page.pointers);
                    Load::Ready((all, page.next))
                }
                Err(e) => Load::Failed(e),
            });
        });
    };
    view! {
        <div class="state-view" data-testid="state-view">
            <h3>"Whole state as of a moment"</h3>
            <div class="row">
                <TextField value=prefix placeholder="prefix (empty: all)" testid="state-prefix"/>
                <TextField value=at placeholder="as of: now, a version, RFC 3339, -10m" testid="state-at"/>
                <button data-testid="state-browse" on:click=move |_| fetch(None)>"Browse"</button>
            </div>
            {move || match rows.get() {
                Load::Idle => ().into_any(),
                Load::Loading => view! { <p class="loading">"Listing…"</p> }.into_any(),
                Load::Failed(e) => view! { <p class="error" data-testid="state-error">{e}</p> }.into_any(),
                Load::Ready((v, _)) if v.is_empty() => {
                    view! { <p class="empty">"No pointer under this prefix at that moment."</p> }.into_any()
                }
                Load::Ready((v, next)) => {
                    let n = v.len();
                    view! {
                        <table data-testid="state-table">
                            <thead>
                                <tr>
                                    <th>"pointer"</th>
                                    <th>"version"</th>
                                    <th>"value"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {v
                                    .into_iter()
                                    .map(|e| {
                                        view! {
                                            <tr data-testid="state-row">
                                                <td class="mono">{e.ptr}</td>
                                                <td class="mono">{e.version.to_string()}</td>
                                                <td class="mono preview">{e.value.get().to_string()}</td>
                                            </tr>
                                        }
                                    })
                                    .collect_view()}
                            </tbody>
                        </table>
                        <p class="dim">{format!("{n} pointers")}</p>
                        {next.map(|cursor| {
                            view! { <button on:click=move |_| fetch(Some(cursor.clone()))>"Load more"</button> }
                        })}
                    }
                        .into_any()
                }
            }}
        </div>
    }
}
