//! Leads published the old way, on `leads.in.{sender}` without a partition (an older replay, a
//! hand publish with the nats CLI, an older edge), are still processed: the `router` consumer
//! takes them one at a time and re-publishes each to its partition, then acks it.
//!
//! Why a step and not a stream subject transform: nats-server's `partition()` can hash only
//! subject tokens, and the legacy subject carries the sender, not the lead; hashing the sender
//! would put every legacy lead of a sender in one partition, away from its own other events.
//! The `router` consumer keeps the durable name of the single consumer that existed before
//! partitioning, so an upgraded deployment resumes exactly where it stopped.
//!
//! One in flight (`max_ack_pending = 1`), across all routers: two events of one lead published
//! the old way keep their order.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use tokio::sync::watch;

use crate::error_chain::chain;
use crate::intake::Grouping;
use crate::queue::message::{self, LeadMessage};
use crate::queue::partition::{self, LEGACY_FILTER};
use crate::queue::pull::{pull_forever, Pull};
use crate::queue::{CONSUMER_ROUTER, STREAM_LEADS};

pub fn consumer_config(ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(CONSUMER_ROUTER.into()),
        description: Some("leadrouter: re-partitions leads published without a partition".into()),
        filter_subject: LEGACY_FILTER.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 1,
        ..Default::default()
    }
}

/// Where a legacy message goes: its group and partition subject.
fn place(grouping: &Grouping, msg: &jetstream::Message) -> (String, String) {
    match LeadMessage::from_delivery(msg) {
        Ok(lead) => grouping.place(&lead.sender, &lead.envelope.fields),
        // Not an envelope: the handler dead-letters it; any partition will do.
        Err(_) => grouping.place(partition::sender_of(&msg.subject), &serde_json::Map::new()),
    }
}

pub async fn run(
    js: jetstream::Context,
    grouping: Grouping,
    ack_wait: Duration,
    stop: watch::Receiver<bool>,
) {
    let pull = Pull {
        batch: 1,
        heartbeat: Duration::from_secs(5),
        expires: Duration::from_secs(30),
        group: None,
        what: CONSUMER_ROUTER.to_string(),
    };
    let (js2, grouping) = (&js, &grouping);
    pull_forever(
        &js,
        STREAM_LEADS,
        consumer_config(ack_wait),
        pull,
        stop,
        |m| async move {
            move_one(js2, grouping, m).await;
            true
        },
    )
    .await;
}

async fn move_one(js: &jetstream::Context, grouping: &Grouping, m: jetstream::Message) {
    let Ok(info) = m.info() else {
        return;
    };
    let seq = info.stream_sequence;
    let stored_at = std::time::SystemTime::from(info.published);
    let (group, subject) = place(grouping, &m);
    // Stable per legacy message: a redelivery after a lost ack is deduplicated by the stream.
    let id = format!("lr-repartition-{seq}");
    let headers = message::repartitioned_headers(m.headers.as_ref(), &group, &id);
    let stored = async {
        js.publish_with_headers(subject.clone(), headers, m.payload.clone())
            .await?
            .await
    };
    match stored.await {
        Ok(_) => {
            if let Err(e) = m.double_ack().await {
                tracing::debug!(seq, error = %chain(&*e), "re-partitioned lead's ack not confirmed; its redelivery is deduplicated");
            }
            tracing::debug!(seq, subject = %subject, "lead re-partitioned");
            observe_edge_delay(m.headers.as_ref(), stored_at);
        }
        Err(e) => {
            tracing::warn!(seq, error = %chain(&e), "cannot re-partition a lead yet; retrying");
            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

/// A lead an edge took: how long from the edge's 202 to its arrival in the hub's `LEADS`.
fn observe_edge_delay(headers: Option<&async_nats::HeaderMap>, stored_at: std::time::SystemTime) {
    let Some(edge) = message::edge_of_headers(headers) else {
        return;
    };
    let received = headers
        .and_then(|h| h.get(message::header::RECEIVED_AT))
        .and_then(|v| crate::timestamp::parse(v.as_str()))
        .map(std::time::SystemTime::from);
    if let Some(delay) = received.and_then(|r| stored_at.duration_since(r).ok()) {
        crate::telemetry::metrics::metrics()
            .edge_delay
            .with_label_values(&[&edge])
            .observe(delay.as_secs_f64());
    }
}
