//! The handlers' backlog across every partition consumer (and the re-partitioning `router`
//! consumer): what waits, what is delivered but unacknowledged, and how old the oldest
//! unfinished lead is. One owner for these figures, read by the metrics poller and `stats`.

use std::time::Duration;

use async_nats::jetstream;

use super::partition;
use super::{CONSUMER_ROUTER, STREAM_LEADS};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    /// Not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// The sum of the partition consumers' `max_ack_pending` (= `handlers.max_ack_pending`).
    pub max_ack_pending: i64,
    /// The fullest partition's `num_ack_pending` / `max_ack_pending` (a stall shows per
    /// partition, not in the sum).
    pub fullest_share: f64,
    /// Age of the oldest lead not yet acknowledged (waiting or in flight), if any.
    pub oldest_unacked: Option<Duration>,
    /// Partition consumers found.
    pub partitions: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("reading the backlog of {STREAM_LEADS}: cannot open the stream")]
    Stream(#[source] jetstream::context::GetStreamError),
    #[error("reading the backlog of {STREAM_LEADS}: no handler consumer exists yet")]
    NoConsumer,
}

/// Reads every partition's consumer info; consumers not created yet count as empty.
pub async fn read(js: &jetstream::Context, partitions: u16) -> Result<Backlog, BacklogError> {
    let stream = js
        .get_stream_no_info(STREAM_LEADS)
        .await
        .map_err(BacklogError::Stream)?;
    let mut b = Backlog::default();
    let mut oldest: Option<u64> = None;
    let names = (0..partitions)
        .map(|p| (partition::consumer_name(p), partition::filter_subject(p)))
        .chain(std::iter::once((
            CONSUMER_ROUTER.to_string(),
            partition::LEGACY_FILTER.to_string(),
        )));
    let mut any = false;
    for (name, filter) in names {
        let info = match stream.consumer_info(&name).await {
            Ok(i) => i,
            Err(_) => continue,
        };
        any = true;
        if name != CONSUMER_ROUTER {
            b.partitions += 1;
        }
        b.pending += info.num_pending;
        b.ack_pending += info.num_ack_pending as u64;
        if name != CONSUMER_ROUTER {
            // The re-partitioner's one slot is not handler capacity.
            b.max_ack_pending += info.config.max_ack_pending;
        }
        if info.config.max_ack_pending > 0 {
            b.fullest_share = b
                .fullest_share
                .max(info.num_ack_pending as f64 / info.config.max_ack_pending as f64);
        }
        if info.num_pending + info.num_ack_pending as u64 == 0 {
            continue;
        }
        // Everything at or below the ack floor is done: the oldest unfinished lead of this
        // consumer is its first message after the floor.
        let from = info.ack_floor.stream_sequence + 1;
        if let Ok(m) = stream.get_first_raw_message_by_subject(&filter, from).await {
            let age = time::OffsetDateTime::now_utc() - m.time;
            let ms = u64::try_from(age.whole_milliseconds()).unwrap_or(0);
            oldest = Some(oldest.map_or(ms, |o| o.max(ms)));
        }
    }
    if !any {
        return Err(BacklogError::NoConsumer);
    }
    b.oldest_unacked = oldest.map(Duration::from_millis);
    Ok(b)
}
