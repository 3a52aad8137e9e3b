//! A live `/events` subscription that survives disconnects: on close it reconnects with
//! growing back-off and resumes with `since` (the last seq, per member where each member
//! numbers its own), so nothing buffered is missed.
//! The token travels as the `restm.bearer.<token>` subprotocol (browsers cannot set
//! headers on a WebSocket).

use std::cell::RefCell;
use std::rc::Rc;

use leptos::prelude::*;
use restm_shared::{Event, Since};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

/// Where a stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Live,
    /// Disconnected; retrying after the given milliseconds, with why.
    Retrying(u32, String),
}

impl Link {
    /// The status line shown beside a live view.
    pub fn label(&self) -> String {
        match self {
            Link::Live => "● live".to_string(),
            Link::Connecting => "○ connecting…".to_string(),
            Link::Retrying(ms, why) => format!("○ {why}; retrying in {ms} ms"),
        }
    }
}

struct Inner {
    /// Query without `since`, e.g. `kinds=conflict`.
    query: String,
    token: String,
    /// Where to resume: the last event seen, per member where every member numbers its own.
    since: Since,
    /// Bumped on every (re)connect and on close, so callbacks of an old socket do nothing.
    generation: u64,
    ws: Option<WebSocket>,
    backoff_ms: u32,
    on_event: Rc<dyn Fn(Event)>,
    link: RwSignal<Link>,
    /// Events the node said this subscriber missed.
    missed: RwSignal<u64>,
    closed: bool,
}

/// A reconnecting subscription. Dropping the handle does not close it; call [`Stream::close`].
#[derive(Clone)]
pub struct Stream(Rc<RefCell<Inner>>);

impl Stream {
    /// Opens `/events?<query>`, replaying from `since` when given.
    pub fn open(
        query: String,
        token: String,
        since: Option<u64>,
        link: RwSignal<Link>,
        missed: RwSignal<u64>,
        on_event: impl Fn(Event) + 'static,
    ) -> Self {
        let s = Stream(Rc::new(RefCell::new(Inner {
            query,
            token,
            since: Since { default: since, ..Since::default() },
            generation: 0,
            ws: None,
            backoff_ms: 500,
            on_event: Rc::new(on_event),
            link,
            missed,
            closed: false,
        })));
        s.connect();
        s
    }

    /// Stops for good.
    pub fn close(&self) {
        let mut inner = self.0.borrow_mut();
        inner.closed = true;
        inner.generation += 1;
        if let Some(ws) = inner.ws.take() {
            let _ = ws.close();
        }
    }

    fn url(inner: &Inner) -> String {
        let origin = crate::api::origin();
        let ws_origin = origin.replacen("http", "ws", 1);
        let mut q = inner.query.clone();
        if !inner.since.is_empty() {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&format!("since={}", inner.since));
        }
        format!("{ws_origin}/events?{q}")
    }

    fn connect(&self) {
        let (url, token, generation, link) = {
            let mut inner = self.0.borrow_mut();
            if inner.closed {
                return;
            }
            inner.generation += 1;
            (Self::url(&inner), inner.token.clone(), inner.generation, inner.link)
        };
        link.set(Link::Connecting);
        let ws = if token.is_empty() {
            WebSocket::new(&url)
        } else {
            WebSocket::new_with_str(&url, &format!("restm.bearer.{token}"))
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                self.retry(generation, format!("cannot open {url}: {e:?}"));
                return;
            }
        };
        let me = self.clone();
        let on_open = Closure::<dyn FnMut()>::new(move || {
            let mut inner = me.0.borrow_mut();
            if inner.generation == generation {
                inner.backoff_ms = 500;
                inner.link.set(Link::Live);
            }
        });
        let me = self.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
            let Some(text) = m.data().as_string() else { return };
            let Ok(event) = serde_json::from_str::<Event>(&text) else { return };
            let callback = {
                let mut inner = me.0.borrow_mut();
                if inner.generation != generation {
                    return;
                }
                inner.since.saw(&event);
                if event.kind == "lagged" {
                    inner.missed.update(|n| *n += event.missed.unwrap_or(0));
                }
                inner.on_event.clone()
            };
            callback(event);
        });
        let me = self.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |c: CloseEvent| {
            let why = if c.reason().is_empty() {
                format!("connection closed (code {})", c.code())
            } else {
                format!("connection closed: {} (code {})", c.reason(), c.code())
            };
            me.retry(generation, why);
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        // The socket owns its callbacks for its whole life; they check `generation`.
        on_open.forget();
        on_message.forget();
        on_close.forget();
        self.0.borrow_mut().ws = Some(ws);
    }

    fn retry(&self, generation: u64, why: String) {
        let delay = {
            let mut inner = self.0.borrow_mut();
            if inner.closed || inner.generation != generation {
                return;
            }
            inner.ws = None;
            let d = inner.backoff_ms;
            inner.backoff_ms = (d * 2).min(5_000);
            inner.link.set(Link::Retrying(d, why));
            d
        };
        let me = self.clone();
        set_timeout(move || me.connect(), std::time::Duration::from_millis(delay as u64));
    }
}
