//! The event tail: `/events` filtered by kind and prefix, newest first. Subscribes when
//! the view is first opened and again whenever the filter or the token changes.

use leptos::prelude::*;
use restm_shared::Event;

use crate::api::{enc, settings};
use crate::stream::{Link, Stream};
use crate::widgets::TextField;

const KINDS: [&str; 10] = [
    "begin",
    "read",
    "write",
    "lock_acquired",
    "lock_wait",
    "lock_released",
    "conflict",
    "commit",
    "abort",
    "gc",
];
/// Rows kept on screen.
const SHOWN: usize = 500;

#[component]
pub fn TailView(active: Signal<bool>) -> impl IntoView {
    let s = settings();
    let kinds: RwSignal<Vec<&'static str>> =
        RwSignal::new(KINDS.iter().copied().filter(|k| *k != "read").collect());
    let prefix = RwSignal::new(String::new());
    // The filter in force: changes when "Apply" is pressed.
    let applied = RwSignal::new((String::new(), String::new()));
    let paused = RwSignal::new(false);
    let events: RwSignal<Vec<Event>> = RwSignal::new(Vec::new());
    // Events land here and are drawn four times a second, so a busy node does not redraw
    // the table once per event.
    let pending: StoredValue<Vec<Event>> = StoredValue::new(Vec::new());
    let _ = set_interval_with_handle(
        move || {
            let batch = pending.try_update_value(std::mem::take).unwrap_or_default();
            if batch.is_empty() || paused.get_untracked() {
                return;
            }
            events.update(|v| {
                v.extend(batch);
                if v.len() > SHOWN {
                    let cut = v.len() - SHOWN;
                    v.drain(..cut);
                }
            });
        },
        std::time::Duration::from_millis(250),
    );
    let link = RwSignal::new(Link::Connecting);
    let missed = RwSignal::new(0u64);
    let stream: StoredValue<Option<Stream>, LocalStorage> = StoredValue::new_local(None);
    let started = RwSignal::new(false);
    let apply = move || {
        applied.set((kinds.get_untracked().join(","), prefix.get_untracked()));
        started.set(true);
    };
    Effect::new(move |_| {
        if active.get() && !started.get_untracked() {
            apply();
        }
    });
    Effect::new(move |_| {
        let (k, p) = applied.get();
        let token = s.token.get();
        if !started.get() {
            return;
        }
        let mut q = vec![format!("kinds={}", enc(&k))];
        if !p.is_empty() {
            q.push(format!("prefix={}", enc(&p)));
        }
        events.set(Vec::new());
        pending.set_value(Vec::new());
        stream.update_value(|st| {
            if let Some(old) = st.take() {
                old.close();
            }
            *st = Some(Stream::open(q.join("&"), token, None, link, missed, move |e| {
                if paused.get_untracked() {
                    return;
                }
                pending.update_value(|p| {
                    p.push(e);
                    if p.len() >= 2 * SHOWN {
                        p.drain(..SHOWN);
                    }
                });
            }));
        });
    });
    view! {
        <section class="view" data-testid="view-events">
            <div class="toolbar wrap">
                {KINDS
                    .iter()
                    .map(|k| {
                        let k = *k;
                        view! {
                            <label class="kind">
                                <input
                                    type="checkbox"
                                    data-testid=format!("kind-{k}")
                                    prop:checked=move || kinds.get().contains(&k)
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        kinds
                                            .update(|v| {
                                                v.retain(|x| *x != k);
                                                if on {
                                                    v.push(k);
                                                }
                                            });
                                    }
                                />
                                {k}
                            </label>
                        }
                    })
                    .collect_view()}
                <TextField value=prefix placeholder="pointer prefix" testid="tail-prefix" on_enter=move |()| apply()/>
                <button data-testid="tail-apply" on:click=move |_| apply()>"Apply"</button>
                <label>
                    <input
                        type="checkbox"
                        prop:checked=move || paused.get()
                        on:change=move |ev| paused.set(event_target_checked(&ev))
                    />
                    "pause"
                </label>
                <button on:click=move |_| events.set(Vec::new())>"Clear"</button>
                <span class="link" data-testid="tail-link">
                    {move || link.get().label()}
                </span>
                <Show when=move || { missed.get() > 0 }>
                    <span class="warn">{move || format!("{} events missed", missed.get())}</span>
                </Show>
            </div>
            {move || {
                let v = events.get();
                if v.is_empty() {
                    return view! { <p class="empty">"No events yet for this filter."</p> }.into_any();
                }
                view! {
                    <table class="tail" data-testid="tail-table">
                        <thead>
                            <tr>
                                <th>"seq"</th>
                                <th>"time"</th>
                                <th>"kind"</th>
                                <th>"txn"</th>
                                <th>"pointer"</th>
                                <th>"version"</th>
                                <th>"detail"</th>
                            </tr>
                        </thead>
                        <tbody>
                            {v
                                .into_iter()
                                .rev()
                                .map(|e| {
                                    let detail = [
                                        e.holder_txn.as_ref().map(|h| format!("holder {h}")),
                                        e.winner_txn.as_ref().map(|w| format!("winner {w}")),
                                        e.winner_version.map(|w| format!("at v{w}")),
                                        e.reason.clone(),
                                        e.missed.map(|m| format!("missed {m}")),
                                    ]
                                        .into_iter()
                                        .flatten()
                                        .collect::<Vec<_>>()
                                        .join(" · ");
                                    let kind = e.kind.clone();
                                    let cls = format!("k-{kind}");
                                    view! {
                                        <tr data-testid="tail-row" class=cls>
                                            <td>{e.node.map_or_else(|| e.seq.to_string(), |n| format!("{n}:{}", e.seq))}</td>
                                            <td>{e.time.get(11..23).unwrap_or(&e.time).to_string()}</td>
                                            <td>{kind}</td>
                                            <td class="mono">{e.txn.unwrap_or_default()}</td>
                                            <td class="mono">{e.ptr.unwrap_or_default()}</td>
                                            <td class="mono">{e.version.map(|v| v.to_string()).unwrap_or_default()}</td>
                                            <td>{detail}</td>
                                        </tr>
                                    }
                                })
                                .collect_view()}
                        </tbody>
                    </table>
                }
                    .into_any()
            }}
        </section>
    }
}
