//! The queue gauges: the handlers' backlog and the DLQ's size, read from JetStream every
//! [`QUEUE_POLL_INTERVAL`] into the process-wide metrics. The queue owns the reading; telemetry
//! only holds the gauges.

use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

use super::STREAM_DLQ;
use crate::error_chain::chain;
use crate::telemetry::metrics::metrics;

/// How often the queue gauges are refreshed from the consumers' info.
pub const QUEUE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Why the queue gauges could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GaugeError {
    #[error(transparent)]
    Backlog(#[from] super::backlog::BacklogError),
    #[error("reading the size of stream {STREAM_DLQ}")]
    Dlq(#[source] jetstream::context::GetStreamError),
}

/// Reads the handler consumers' backlog (and the DLQ's size) into the queue gauges once.
pub async fn refresh_queue_gauges(
    js: &jetstream::Context,
    partitions: u16,
) -> Result<(), GaugeError> {
    let m = metrics();
    let result = async {
        let b = super::backlog::read(js, partitions).await?;
        m.queue_pending
            .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
        m.queue_ack_pending
            .set(i64::try_from(b.ack_pending).unwrap_or(i64::MAX));
        m.queue_max_ack_pending.set(b.max_ack_pending);
        m.queue_oldest_unacked
            .set(b.oldest_unacked.map_or(0.0, |d| d.as_secs_f64()));
        let dlq = js.get_stream(STREAM_DLQ).await.map_err(GaugeError::Dlq)?;
        m.dlq_messages
            .set(i64::try_from(dlq.cached_info().state.messages).unwrap_or(i64::MAX));
        Ok::<(), GaugeError>(())
    }
    .await;
    m.queue_info_up.set(i64::from(result.is_ok()));
    result
}

/// Refreshes the queue gauges every [`QUEUE_POLL_INTERVAL`] until `stop` turns true.
pub async fn poll_queue(js: jetstream::Context, partitions: u16, mut stop: watch::Receiver<bool>) {
    // The first read after one interval: at start-up the pool is still creating the consumer.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + QUEUE_POLL_INTERVAL,
        QUEUE_POLL_INTERVAL,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // A NATS that stopped answering must not hold up shutdown for a request timeout.
        let refreshed = tokio::select! {
            _ = stop.changed() => return,
            r = refresh_queue_gauges(&js, partitions) => r,
        };
        match refreshed {
            Ok(()) => failing = false,
            Err(e) => {
                // Once per failure streak: an edge-only node before any router exists would
                // otherwise log every 5 s.
                if !failing {
                    tracing::warn!(error = %chain(&e), "queue gauges not refreshed (leadrouter_queue_info_up = 0)");
                }
                failing = true;
            }
        }
    }
}
