//! Small pieces every view uses: a text field bound to a signal, and a link to a trace.

use leptos::prelude::*;

use crate::api::Settings;

/// A text input bound to `value`; Enter runs `on_enter`, if given.
#[component]
pub fn TextField(
    value: RwSignal<String>,
    #[prop(into)] placeholder: String,
    testid: &'static str,
    #[prop(optional)] password: bool,
    #[prop(optional, into)] on_enter: Option<Callback<()>>,
) -> impl IntoView {
    view! {
        <input
            type=if password { "password" } else { "text" }
            placeholder=placeholder
            data-testid=testid
            prop:value=move || value.get()
            on:input=move |ev| value.set(event_target_value(&ev))
            on:keydown=move |ev| {
                if ev.key() == "Enter"
                    && let Some(cb) = on_enter
                {
                    cb.run(());
                }
            }
        />
    }
}

/// A link to a trace in the configured Jaeger, or nothing when the trace is unknown.
pub fn trace_link(s: Settings, trace: String, label: &'static str) -> impl IntoView {
    (!trace.is_empty()).then(|| {
        view! {
            <a class="trace" href=s.trace_url(&trace) target="_blank" rel="noopener" data-testid="trace-link">
                {label}
            </a>
        }
    })
}
