//! Instants and durations as the explorer shows them.

use wasm_bindgen::JsValue;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Milliseconds since the epoch of an RFC 3339 instant (NaN when it is not one).
pub fn parse_ms(rfc3339: &str) -> f64 {
    js_sys::Date::parse(rfc3339)
}

/// RFC 3339 (UTC, milliseconds) of an instant: accepted by `X-reSTM-At`.
pub fn iso(ms: f64) -> String {
    String::from(js_sys::Date::new(&JsValue::from_f64(ms)).to_iso_string())
}

/// `HH:MM:SS.mmm` (UTC) of an instant.
pub fn clock(ms: f64) -> String {
    let s = iso(ms);
    s.get(11..23).unwrap_or(&s).to_string()
}

/// The physical milliseconds of a version (a hybrid logical clock: 16 logical bits).
pub fn version_ms(version: u64) -> f64 {
    (version >> 16) as f64
}

/// A duration in the largest sensible unit.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The first characters of a long id.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}
