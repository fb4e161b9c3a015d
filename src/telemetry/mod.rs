//! Logs, metrics and traces.
//!
//! Logs: JSON lines by default (what log pipelines ingest); `LEADROUTER_LOG_FORMAT=pretty` for
//! humans. The filter comes from `LEADROUTER_LOG` (same syntax as `RUST_LOG`). Every line passes
//! the PII mask in [`logs`], whatever code emitted it.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

pub mod logs;
pub mod metrics;
pub mod traces;
pub mod windows;

pub fn init_logging() {
    let filter = EnvFilter::try_from_env("LEADROUTER_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,async_nats=warn,warp=warn,hyper=warn,hyper_util=warn")
    });
    let pretty = std::env::var("LEADROUTER_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let fmt_layer = if pretty {
        fmt::layer()
            .with_writer(logs::MaskingWriter::stderr(false))
            .boxed()
    } else {
        // The current span's fields (the handler's key, sender, seq, attempt, replay) go on
        // every line, so each stage event names its lead.
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(logs::MaskingWriter::stderr(true))
            .boxed()
    };
    // The filter is the log layer's own, so traces (on when `traces::init` installed an
    // exporter) do not depend on LEADROUTER_LOG; the log layer skips the trace-only spans.
    let filter = tracing_subscriber::filter::FilterExt::and(filter, traces::log_filter());
    // A second init (tests embedding the service) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(traces::layer())
        .try_init();
}

/// For commands that print their own output (`import`): no log lines, only the trace layer, so
/// their spans are exported when `[telemetry]` names an endpoint.
pub fn init_traces_only() {
    let _ = tracing_subscriber::registry()
        .with(traces::layer())
        .try_init();
}
