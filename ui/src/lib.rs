//! The reSTM explorer: a client-side Leptos app served by the node at `/ui/`.
//!
//! It has five views, picked in the header and kept in the URL's `#fragment`:
//! - [`heatmap`]: conflicts and lock waits over time, by pointer-prefix group, live from
//!   `/events`; click a cell to see its conflicts and open both traces in Jaeger;
//! - [`locks`]: the active transactions, their locks and waiters, the oldest highlighted;
//! - [`travel`]: find pointers, a pointer's versions on a timeline, read it as of any
//!   moment, diff two versions, and browse a whole prefix as of a time;
//! - [`tail`]: the raw event stream, filtered by kind and prefix;
//! - [`cluster`]: the members, each group's placement and leader, and the leader timeline,
//!   now or as of any moment.
//!
//! The pure parts ([`heat`], [`diff`], [`placement`]) have no browser in them and are
//! unit-tested on the host.

pub mod diff;
pub mod heat;
pub mod placement;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod cluster;
#[cfg(target_arch = "wasm32")]
mod heatmap;
#[cfg(target_arch = "wasm32")]
mod locks;
#[cfg(target_arch = "wasm32")]
mod stream;
#[cfg(target_arch = "wasm32")]
mod tail;
#[cfg(target_arch = "wasm32")]
mod time;
#[cfg(target_arch = "wasm32")]
mod travel;
#[cfg(target_arch = "wasm32")]
mod widgets;

#[cfg(target_arch = "wasm32")]
pub use app::start;

#[cfg(target_arch = "wasm32")]
mod app {
    use leptos::prelude::*;
    use restm_shared::Health;
    use wasm_bindgen::prelude::wasm_bindgen;

    use crate::api::{self, Load, Settings};
    use crate::widgets::TextField;

    /// The views.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Tab {
        Heatmap,
        Locks,
        Travel,
        Tail,
        Cluster,
    }

    impl Tab {
        const ALL: [Tab; 5] = [Tab::Heatmap, Tab::Locks, Tab::Travel, Tab::Tail, Tab::Cluster];

        fn slug(self) -> &'static str {
            match self {
                Tab::Heatmap => "heatmap",
                Tab::Locks => "locks",
                Tab::Travel => "travel",
                Tab::Tail => "events",
                Tab::Cluster => "cluster",
            }
        }

        fn title(self) -> &'static str {
            match self {
                Tab::Heatmap => "Conflict heatmap",
                Tab::Locks => "Locks & txns",
                Tab::Travel => "Time travel",
                Tab::Tail => "Event tail",
                Tab::Cluster => "Cluster",
            }
        }

        fn from_hash() -> Tab {
            let hash = web_sys::window().and_then(|w| w.location().hash().ok()).unwrap_or_default();
            let slug = hash.trim_start_matches('#').trim_start_matches('/');
            Tab::ALL.into_iter().find(|t| slug.starts_with(t.slug())).unwrap_or(Tab::Heatmap)
        }
    }

    /// Entry point, run when the WASM module loads.
    #[wasm_bindgen(start)]
    pub fn start() {
        console_error_panic_hook::set_once();
        leptos::mount::mount_to_body(App);
    }

    #[component]
    fn App() -> impl IntoView {
        let settings = Settings::load();
        provide_context(settings);
        let tab = RwSignal::new(Tab::from_hash());
        Effect::new(move |_| {
            let t = tab.get();
            if let Some(w) = web_sys::window() {
                let _ = w.location().set_hash(&format!("/{}", t.slug()));
            }
        });
        // Back, forward and edited URLs switch the view too.
        let on_hash = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || {
            let t = Tab::from_hash();
            if tab.get_untracked() != t {
                tab.set(t);
            }
        });
        if let Some(w) = web_sys::window() {
            use wasm_bindgen::JsCast;
            let _ = w.add_event_listener_with_callback("hashchange", on_hash.as_ref().unchecked_ref());
        }
        // The app lives as long as the page.
        on_hash.forget();
        let health = RwSignal::new(Load::<Health>::Loading);
        leptos::task::spawn_local(async move {
            health.set(match api::get_json::<Health>("/health", None, "").await {
                Ok(h) => Load::Ready(h),
                Err(e) => Load::Failed(e),
            });
        });
        // The heatmap listens from the start, whatever view is open.
        let heat = crate::heatmap::Feed::start(settings);
        let locks = crate::locks::Feed::start(settings, Signal::derive(move || tab.get() == Tab::Locks));
        let cluster =
            crate::cluster::Feed::start(settings, Signal::derive(move || tab.get() == Tab::Cluster));
        view! {
            <header>
                <h1>"reSTM explorer"</h1>
                <nav>
                    {Tab::ALL
                        .into_iter()
                        .map(|t| {
                            view! {
                                <button
                                    class="tab"
                                    class:active=move || tab.get() == t
                                    data-testid=format!("tab-{}", t.slug())
                                    on:click=move |_| tab.set(t)
                                >
                                    {t.title()}
                                </button>
                            }
                        })
                        .collect_view()}
                </nav>
                <span class="node" data-testid="health">
                    {move || match health.get() {
                        Load::Ready(h) => format!("node {} · v{}", h.status, h.version),
                        Load::Failed(e) => format!("node unreachable: {e}"),
                        _ => "connecting…".to_string(),
                    }}
                </span>
                <SettingsPanel/>
            </header>
            <main>
                <div style:display=move || if tab.get() == Tab::Heatmap { "block" } else { "none" }>
                    <crate::heatmap::HeatmapView feed=heat/>
                </div>
                <div style:display=move || if tab.get() == Tab::Locks { "block" } else { "none" }>
                    <crate::locks::LocksView feed=locks/>
                </div>
                <div style:display=move || if tab.get() == Tab::Travel { "block" } else { "none" }>
                    <crate::travel::TravelView/>
                </div>
                <div style:display=move || if tab.get() == Tab::Tail { "block" } else { "none" }>
                    <crate::tail::TailView active=Signal::derive(move || tab.get() == Tab::Tail)/>
                </div>
                <div style:display=move || if tab.get() == Tab::Cluster { "block" } else { "none" }>
                    <crate::cluster::ClusterView feed=cluster/>
                </div>
            </main>
        }
    }

    /// The auth token and the Jaeger address, edited in place and saved on "Save".
    #[component]
    fn SettingsPanel() -> impl IntoView {
        let s = api::settings();
        let open = RwSignal::new(false);
        let token = RwSignal::new(s.token.get_untracked());
        let jaeger = RwSignal::new(s.jaeger.get_untracked());
        let save = move |_| {
            s.token.set(token.get_untracked().trim().to_string());
            s.jaeger.set(jaeger.get_untracked().trim().to_string());
            s.save();
            open.set(false);
        };
        view! {
            <button class="settings-toggle" data-testid="settings" on:click=move |_| open.update(|o| *o = !*o)>
                {move || if s.token.get().is_empty() { "Settings" } else { "Settings · token set" }}
            </button>
            <Show when=move || open.get()>
                <div class="settings">
                    <label>
                        "Auth token "
                        <TextField value=token placeholder="none" testid="token" password=true/>
                    </label>
                    <label>
                        "Jaeger UI "
                        <TextField value=jaeger placeholder="" testid="jaeger"/>
                    </label>
                    <button on:click=save data-testid="settings-save">"Save"</button>
                </div>
            </Show>
        }
    }
}
