//! Logging set-up. JSON lines by default (what log pipelines ingest); `LEADROUTER_LOG_FORMAT=pretty`
//! for humans. The filter comes from `LEADROUTER_LOG` (same syntax as `RUST_LOG`).

use tracing_subscriber::{fmt, EnvFilter};

pub fn init_logging() {
    let filter = EnvFilter::try_from_env("LEADROUTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,warp=warn,hyper=warn"));
    let pretty = std::env::var("LEADROUTER_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests embedding the service) keeps the first subscriber.
    let _ = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}

pub mod metrics;
pub mod traces;
