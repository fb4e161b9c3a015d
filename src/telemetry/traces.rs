//! OTLP traces. Off unless an endpoint is configured (`[telemetry] otlp_endpoint` or the
//! standard `OTEL_EXPORTER_OTLP_*` variables); then the `tracing` spans of the lead path become
//! OpenTelemetry spans (tracing-opentelemetry), exported in batches over OTLP gRPC or
//! HTTP/protobuf, and the W3C trace context (`traceparent`, `tracestate`) travels in the NATS
//! headers of every lead, so one trace covers a lead from the vendor's request to the sinks.
//!
//! When traces are off, [`enabled`] is false, the trace-only spans ([`trace_span!`]) are
//! `Span::none()` and nothing is injected or extracted: the hot path pays one atomic load.
//!
//! Spans carry ids, keys, sender and sink names, counts and outcomes: never lead fields (no
//! emails, phones, names or IPs). Log events do not reach the exporter, only spans.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::queue::message::header::TRACEPARENT as HDR_TRACEPARENT;

/// Target of the spans that exist only for traces (see [`trace_span!`]); the log layer leaves
/// them out, so log lines keep naming the handler's span (key, sender, seq) as before.
pub const TARGET: &str = "leadrouter::traces";

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether traces are being exported by this process.
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// An INFO span under [`TARGET`] when traces are on, `Span::none()` otherwise. Same syntax as
/// `tracing::info_span!` (`parent: None, "name", field = value, ...`).
#[macro_export]
#[doc(hidden)]
macro_rules! __leadrouter_trace_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::traces::enabled() {
            ::tracing::info_span!(target: $crate::telemetry::traces::TARGET, $($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub use crate::__leadrouter_trace_span as trace_span;

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("OTLP exporter for {endpoint} ({protocol})")]
    Exporter {
        endpoint: String,
        protocol: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("traces were already set up in this process")]
    AlreadySetUp,
    #[error("traces need a Tokio runtime to export from")]
    NoRuntime,
}

/// The running exporter; [`Traces::shutdown`] flushes what is still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
    endpoint: String,
    protocol: OtlpProtocol,
}

/// Installs the OTLP exporter when `cfg` names an endpoint (`Ok(None)`: traces stay off).
/// Call inside the Tokio runtime and before `init_logging`, which then adds the span layer.
///
/// The batch processor's timing follows the standard `OTEL_BSP_*` variables
/// (`OTEL_BSP_SCHEDULE_DELAY`, default 5000 ms, `OTEL_BSP_MAX_QUEUE_SIZE`, ...).
pub fn init(cfg: &TelemetryConfig) -> Result<Option<Traces>, TracesError> {
    let Some(endpoint) = cfg.traces_endpoint() else {
        return Ok(None);
    };
    let protocol = cfg.otlp_protocol;
    let err = |source: Box<dyn std::error::Error + Send + Sync>| TracesError::Exporter {
        endpoint: endpoint.clone(),
        protocol: protocol.as_str(),
        source,
    };
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TracesError::NoRuntime)?;
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone());
            if endpoint.starts_with("https://") {
                b = b.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_enabled_roots(),
                );
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let client = RuntimeHttpClient::new(runtime).map_err(|e| err(e.into()))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_http_client(client)
                .build()
        }
    }
    .map_err(|e| err(e.into()))?;
    let sampler = if cfg.sample_ratio >= 1.0 {
        Sampler::AlwaysOn
    } else {
        Sampler::TraceIdRatioBased(cfg.sample_ratio)
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(sampler)))
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("leadrouter");
    if TRACER.set(tracer).is_err() {
        let _ = provider.shutdown_with_timeout(Duration::from_millis(100));
        return Err(TracesError::AlreadySetUp);
    }
    Ok(Some(Traces {
        provider,
        endpoint,
        protocol,
    }))
}

impl Traces {
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn protocol(&self) -> &'static str {
        self.protocol.as_str()
    }

    /// Exports what is buffered and stops the exporter (bounded: an unreachable collector
    /// cannot hold the process up for long).
    pub async fn shutdown(self) {
        let provider = self.provider;
        // Blocking call, and the HTTP exporter needs this runtime's workers free: off to a
        // blocking thread.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        });
        match tokio::time::timeout(Duration::from_secs(6), done).await {
            Ok(Ok(Ok(()))) => tracing::debug!("traces flushed"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %crate::error_chain::chain(&e), "traces not fully flushed at shutdown")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error_chain::chain(&e), "traces not fully flushed at shutdown")
            }
            Err(_) => tracing::warn!("traces not flushed within 6 s at shutdown"),
        }
    }
}

/// The span layer for `init_logging`: `None` when traces are off. It sees the spans of
/// leadrouter at INFO and above, never log events, and is independent of `LEADROUTER_LOG`
/// as long as that filter is applied to the log layer only.
pub fn layer<S>() -> Option<impl Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let tracer = TRACER.get()?.clone();
    let only_our_spans = filter_fn(|m| {
        m.is_span() && m.target().starts_with("leadrouter") && *m.level() <= tracing::Level::INFO
    })
    .with_max_level_hint(tracing::Level::INFO);
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(only_our_spans),
    )
}

/// For the log layer: leaves out the trace-only spans, so a log line's "current span" stays
/// the one that names the lead.
pub fn log_filter() -> FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    fn not_trace_only(m: &tracing::Metadata<'_>) -> bool {
        m.target() != TARGET
    }
    filter_fn(not_trace_only)
}

// ---- propagation ------------------------------------------------------------------------------

fn propagator() -> &'static TraceContextPropagator {
    static P: OnceLock<TraceContextPropagator> = OnceLock::new();
    P.get_or_init(TraceContextPropagator::new)
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) into NATS headers. Nothing
/// when traces are off or the span is not recorded by the trace layer.
pub fn inject(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    inject_into(span, &mut NatsInjector(headers));
}

/// `span`'s context into any carrier, when traces are on and the span is recorded.
fn inject_into(span: &tracing::Span, carrier: &mut dyn Injector) {
    if !enabled() || span.is_none() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        propagator().inject_context(&cx, carrier);
    }
}

/// [`inject`] with the current span (the publish span on the intake path).
pub fn inject_current(headers: &mut async_nats::HeaderMap) {
    if enabled() {
        inject(&tracing::Span::current(), headers);
    }
}

fn valid(cx: Context) -> Option<Context> {
    cx.span().span_context().is_valid().then_some(cx)
}

/// The remote context in a vendor's request (`traceparent`), if any and valid.
pub fn from_http(headers: &warp::http::HeaderMap) -> Option<Context> {
    if !enabled() || !headers.contains_key(HDR_TRACEPARENT) {
        return None;
    }
    valid(propagator().extract(&opentelemetry_http::HeaderExtractor(headers)))
}

/// The remote context in a stored lead's headers, if any and valid.
pub fn from_nats(headers: Option<&async_nats::HeaderMap>) -> Option<Context> {
    let headers = headers.filter(|_| enabled())?;
    headers.get(HDR_TRACEPARENT)?;
    valid(propagator().extract(&NatsExtractor(headers)))
}

/// The span context named by one `traceparent` value (for links).
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let mut h = async_nats::HeaderMap::new();
    h.insert(HDR_TRACEPARENT, traceparent);
    let cx = valid(propagator().extract(&NatsExtractor(&h)))?;
    let sc = cx.span().span_context().clone();
    Some(sc)
}

/// Makes `span` (not yet entered) a child of the remote context `cx`.
pub fn set_parent(span: &tracing::Span, cx: Option<Context>) {
    if let Some(cx) = cx {
        if !span.is_none() {
            let _ = span.set_parent(cx);
        }
    }
}

/// Links `span` to the span named by `traceparent` (a replay to the original lead's trace).
pub fn link(span: &tracing::Span, traceparent: Option<&str>) {
    if span.is_none() || !enabled() {
        return;
    }
    if let Some(sc) = traceparent.and_then(span_context) {
        span.add_link_with_attributes(sc, vec![KeyValue::new("leadrouter.link", "replay_of")]);
    }
}

/// Links `span` to another span of this process (a batch call to each lead it carries).
pub fn link_span(span: &tracing::Span, other: &tracing::Span) {
    if span.is_none() || other.is_none() || !enabled() {
        return;
    }
    let sc = other.context().span().span_context().clone();
    if sc.is_valid() {
        span.add_link_with_attributes(sc, vec![KeyValue::new("leadrouter.link", "batched_lead")]);
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) into an outgoing HTTP request's
/// headers: a sink's call, so a CRM or a proxy that traces sees the lead's trace. Nothing when
/// traces are off.
pub fn inject_http(span: &tracing::Span, headers: &mut reqwest::header::HeaderMap) {
    inject_into(span, &mut opentelemetry_http::HeaderInjector(headers));
}

/// An OTel-only attribute (not a `tracing` field, so log lines do not change).
pub fn set_attribute(
    span: &tracing::Span,
    key: &'static str,
    value: impl Into<opentelemetry::Value>,
) {
    if enabled() && !span.is_none() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` failed with a short, PII-free description (a reason or error class).
pub fn set_error(span: &tracing::Span, description: &'static str) {
    if enabled() && !span.is_none() {
        span.set_status(Status::error(description));
    }
}

// ---- OTLP/HTTP client ------------------------------------------------------------------------

/// The HTTP exporter's client: the project's reqwest (0.12, no second HTTP stack), driven on
/// the service's Tokio runtime. The batch processor exports from its own thread with a plain
/// executor, so each request is spawned onto the runtime and its join handle awaited.
#[derive(Debug)]
struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// A collector's answer is small; a bigger one is cut off rather than buffered.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

impl RuntimeHttpClient {
    fn new(runtime: tokio::runtime::Handle) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(export_timeout())
            .build()?;
        Ok(RuntimeHttpClient { client, runtime })
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT` (ms), default 10 s.
fn export_timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse::<u64>().ok())
    .map(Duration::from_millis)
    .unwrap_or(Duration::from_secs(10))
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let req = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        let task = self.runtime.spawn(async move {
            let mut resp = req.send().await?;
            let status = resp.status();
            let headers = std::mem::take(resp.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = task.await??;
        let mut resp = opentelemetry_http::Response::new(opentelemetry_http::Bytes::from(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_values_parse_into_span_contexts() {
        let sc = span_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid traceparent");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(span_context("garbage").is_none());
    }

    #[test]
    fn off_means_no_spans_and_no_headers() {
        // No exporter in unit tests: the trace-only spans are disabled and nothing is written.
        assert!(!enabled());
        let span = trace_span!("intake", sender = "demo");
        assert!(span.is_none());
        let mut h = async_nats::HeaderMap::new();
        inject(&span, &mut h);
        inject_current(&mut h);
        assert!(h.is_empty());
        let mut http = warp::http::HeaderMap::new();
        http.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(from_http(&http).is_none());
    }
}
