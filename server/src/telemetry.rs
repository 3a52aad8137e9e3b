//! Logging and OpenTelemetry trace export.
//!
//! Logs always go to stderr (`RUST_LOG`). Trace export turns on only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans go
//! over OTLP/HTTP (protobuf) with a batch exporter, named by `OTEL_SERVICE_NAME` and sampled
//! by `OTEL_TRACES_SAMPLER`, which the SDK reads itself. With no endpoint nothing is exported
//! and the OpenTelemetry layer is not installed at all.
//!
//! A transaction is one trace: its `begin` request's span is the root, and every later
//! request naming the transaction is parented on it ([`txn_parent`]).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporter alive; flushes it when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn export_wanted() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the global subscriber: stderr logs, plus OTLP export when configured. A cluster
/// member names itself in the resource (`service.instance.id`, its node id), so a trace
/// across members shows which member made each span.
pub fn init(instance: Option<String>) -> Telemetry {
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    // Unless RUST_LOG asks for more, the log output shows events but not the spans around
    // them: a log layer that sees a span formats its fields when it opens, which cost about a
    // tenth of the node's CPU under load with nothing ever printed. Spans still reach the
    // trace exporter when one is configured.
    let spans_wanted = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft and fjall narrate every election and flush at info: keep their warnings.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn"))
        .and(filter_fn(move |meta| spans_wanted || !meta.is_span()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if !export_wanted() {
        tracing_subscriber::registry().with(fmt.with_filter(filter)).init();
        return Telemetry { provider: None };
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("restm: trace export disabled, cannot build the OTLP exporter: {e}");
            tracing_subscriber::registry().with(fmt.with_filter(filter)).init();
            return Telemetry { provider: None };
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if let Some(id) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", id));
    }
    let resource = resource.build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("restm");
    // Spans reach the exporter at every level; the env filter governs only the log output.
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).init();
    Telemetry { provider: Some(provider) }
}

/// The trace id and span id (hex) of the current span, when it is exported.
pub fn current() -> Option<(String, String)> {
    parent_of(&tracing::Span::current()).map(|p| (p.trace_hex(), p.span_hex()))
}

/// Parents `span` on a trace id and span id in hex (of a `traceparent`, or a txn's root).
pub fn set_parent(span: &tracing::Span, trace_id: &str, span_id: &str) {
    if let Some(parent) = SpanParent::from_hex(trace_id, span_id) {
        set_parent_to(span, &parent);
    }
}

/// Parses a `traceparent` header into (trace id, span id).
pub fn parse_traceparent(raw: &str) -> Option<(String, String)> {
    let mut parts = raw.trim().split('-');
    let (_v, t, s) = (parts.next()?, parts.next()?, parts.next()?);
    (t.len() == 32 && s.len() == 16).then(|| (t.to_string(), s.to_string()))
}

/// A span's place in its trace, carried inside a Raft proposal so that the members that
/// apply it hang their spans under the leader's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpanParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanParent {
    fn from_hex(trace_id: &str, span_id: &str) -> Option<Self> {
        let (t, s) = (TraceId::from_hex(trace_id).ok()?, SpanId::from_hex(span_id).ok()?);
        Some(Self { trace_id: t.to_bytes(), span_id: s.to_bytes() })
    }

    fn trace_hex(&self) -> String {
        TraceId::from_bytes(self.trace_id).to_string()
    }

    fn span_hex(&self) -> String {
        SpanId::from_bytes(self.span_id).to_string()
    }

    /// As a W3C `traceparent` (or `traceresponse`) value, sampled.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_hex(), self.span_hex())
    }
}

/// Where `span` is, when it is exported (`None` otherwise: nothing to carry).
pub fn parent_of(span: &tracing::Span) -> Option<SpanParent> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| SpanParent { trace_id: sc.trace_id().to_bytes(), span_id: sc.span_id().to_bytes() })
}

/// Parents `span` on `parent` (a span of another member, or of this one).
pub fn set_parent_to(span: &tracing::Span, parent: &SpanParent) {
    let sc = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    if sc.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// The W3C `traceparent` of `span`, when it is exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    parent_of(span).map(|p| p.traceparent())
}
