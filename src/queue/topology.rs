//! Streams and buckets, created idempotently at start-up. Re-running changes nothing; a changed
//! setting is applied where JetStream allows it, otherwise start-up fails naming the setting.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::{
    partition, QueueError, KV_DLQ_AUDIT, KV_DLQ_KEYS, KV_FENCE, KV_IDEMPOTENCY, KV_LEAD_INDEX,
    META_PARTITIONS, STREAM_ADVISORIES, STREAM_DLQ, STREAM_EDGE, STREAM_LEADS,
};
use crate::config::{edge_domain, EdgeConfig, StreamsConfig};

/// What `ensure` did to each object, for the start-up log and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created(&'static str),
    Updated(&'static str, Vec<String>),
    Unchanged(&'static str),
}

/// `LEADS`, sourcing the stream of each edge in `edges` (hub mode; none otherwise).
pub fn leads_stream(cfg: &StreamsConfig, edges: &[String]) -> stream::Config {
    stream::Config {
        name: STREAM_LEADS.into(),
        description: Some("leadrouter: accepted leads, awaiting the handlers".into()),
        subjects: vec!["leads.in.>".into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: cfg.max_age,
        // Explicit, always: a stream with sources gets no default window, and this one is what
        // makes one vendor event posted to two edges one lead.
        duplicate_window: cfg.duplicate_window,
        num_replicas: cfg.replicas,
        // Group commit stores concurrent leads as one atomic batch (one fsync for all); on
        // whatever the durability, so switching it needs no stream change.
        allow_atomic_publish: true,
        sources: (!edges.is_empty()).then(|| edges.iter().map(|e| edge_source(e)).collect()),
        ..Default::default()
    }
}

/// The hub's source of one edge: that edge's `LEADS_EDGE` across its domain, each lead moved
/// to the legacy `leads.in.{sender}` (the `router` consumer then files it in its partition).
/// `Nats-Msg-Id`, `traceparent` and every other header travel with it. The edge stream's
/// work-queue retention makes the server source through a durable consumer that an edge
/// message leaves only once the hub has stored it (reliable sourcing, nats-server 2.14).
pub fn edge_source(edge: &str) -> stream::Source {
    stream::Source {
        name: STREAM_EDGE.into(),
        external: Some(stream::External {
            api_prefix: edge_api(edge),
            delivery_prefix: None,
        }),
        subject_transforms: vec![stream::SubjectTransform {
            source: partition::edge_filter(edge),
            destination: "leads.in.>".into(),
        }],
        ..Default::default()
    }
}

/// The JetStream API prefix of an edge's domain, as seen from the hub.
pub fn edge_api(edge: &str) -> String {
    format!("$JS.{}.API", edge_domain(edge))
}

/// The edge this router is: `LEADS_EDGE`, sized for the configured outage. Work-queue
/// retention (a lead leaves once the hub stored it), no age limit and `DiscardNew`: when the
/// store is full intake answers 503 and the vendor retries; nothing is ever dropped to make
/// room.
pub fn edge_stream(edge: &EdgeConfig, cfg: &StreamsConfig) -> stream::Config {
    stream::Config {
        name: STREAM_EDGE.into(),
        description: Some(format!(
            "leadrouter edge {}: accepted leads, waiting for the hub to store them",
            edge.name
        )),
        subjects: vec![partition::edge_filter(&edge.name)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_messages: edge.max_msgs(),
        max_bytes: edge.max_bytes(),
        max_age: Duration::ZERO,
        duplicate_window: cfg.duplicate_window,
        num_replicas: cfg.replicas,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// Creates or reconciles the edge's one stream: an edge keeps no DLQ, no KV and no consumers
/// of its own (the hub's sourcing consumer is the only one).
pub async fn ensure_edge(
    js: &jetstream::Context,
    edge: &EdgeConfig,
    cfg: &StreamsConfig,
) -> Result<Change, QueueError> {
    ensure_stream(js, "stream LEADS_EDGE", edge_stream(edge, cfg)).await
}

pub fn dlq_stream(cfg: &StreamsConfig) -> stream::Config {
    stream::Config {
        name: STREAM_DLQ.into(),
        description: Some("leadrouter: dead-lettered leads (payload encrypted)".into()),
        subjects: vec!["leads.dlq.>".into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: cfg.dlq_max_age,
        // DLQ entries are deduplicated by `LEADS:<seq>`; the window must cover a handler retry
        // cycle, not the stream's lifetime.
        duplicate_window: Duration::from_secs(600).min(cfg.dlq_max_age),
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

pub fn advisories_stream(cfg: &StreamsConfig) -> stream::Config {
    stream::Config {
        name: STREAM_ADVISORIES.into(),
        description: Some("leadrouter: MAX_DELIVERIES advisories of the router consumer".into()),
        subjects: vec!["$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.LEADS.>".into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: cfg.max_age,
        duplicate_window: Duration::from_secs(120).min(cfg.max_age),
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// Creates or reconciles LEADS, LEADS_DLQ, LEADS_ADVISORIES and the idempotency bucket. The
/// advisory stream exists before any consumer, so no advisory is emitted unheard.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &StreamsConfig,
    edges: &[String],
) -> Result<Vec<Change>, QueueError> {
    let mut changes = Vec::new();
    for (label, want) in [
        ("stream LEADS", leads_stream(cfg, edges)),
        ("stream LEADS_DLQ", dlq_stream(cfg)),
        ("stream LEADS_ADVISORIES", advisories_stream(cfg)),
    ] {
        changes.push(ensure_stream(js, label, want).await?);
    }
    changes.push(ensure_kv(js, cfg).await?);
    changes.push(ensure_audit(js, cfg).await?);
    changes.push(ensure_keys(js, cfg).await?);
    changes.push(ensure_index(js, cfg).await?);
    changes.push(
        ensure_bucket(
            js,
            "kv leads_fence",
            KV_FENCE,
            "leadrouter: per-lead write fences (newest event written)",
            cfg.max_age,
            cfg.replicas,
        )
        .await?,
    );
    Ok(changes)
}

/// Records the partition count in `LEADS`'s metadata on first use and refuses a different one
/// later: the count decides which consumer every stored lead belongs to, so changing it would
/// split one lead's events across partitions (and owners) and lose their order.
pub async fn ensure_partitions(
    js: &jetstream::Context,
    partitions: u16,
) -> Result<Change, QueueError> {
    const LABEL: &str = "stream LEADS partitions";
    let mut stream = js
        .get_stream(STREAM_LEADS)
        .await
        .map_err(failed(LABEL.to_string()))?;
    let mut have = stream
        .info()
        .await
        .map_err(failed(format!("{LABEL}: info")))?
        .config
        .clone();
    let want = partitions.to_string();
    match have.metadata.get(META_PARTITIONS) {
        Some(v) if *v == want => Ok(Change::Unchanged(LABEL)),
        Some(v) => Err(QueueError::Topology(format!(
            "config key `handlers.partitions` is {partitions}, but stream LEADS was set up with {v} partitions. The count is fixed once the stream exists (it decides which consumer owns every stored lead): set handlers.partitions = {v} on every router, or move to a new stream"
        ))),
        None => {
            // A stream from before partitioning: from now on its count is ours.
            have.metadata.insert(META_PARTITIONS.into(), want);
            js.update_stream(have)
                .await
                .map_err(failed(format!("{LABEL}: update")))?;
            Ok(Change::Updated(LABEL, vec![format!("partitions -> {partitions}")]))
        }
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    label: &'static str,
    want: stream::Config,
) -> Result<Change, QueueError> {
    let existing = match js.get_stream(&want.name).await {
        Ok(mut s) => Some(
            s.info()
                .await
                .map_err(failed(format!("{label}: info")))?
                .config
                .clone(),
        ),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(failed(label.to_string())(e)),
    };
    let Some(have) = existing else {
        js.create_stream(want)
            .await
            .map_err(failed(format!("{label}: create")))?;
        return Ok(Change::Created(label));
    };
    if have.storage != want.storage {
        return Err(QueueError::Topology(format!(
            "{label} exists with {:?} storage but leadrouter needs {:?}; JetStream cannot change a stream's storage type: back it up and delete it, or point nats.url elsewhere",
            have.storage, want.storage
        )));
    }
    if have.retention != want.retention {
        return Err(QueueError::Topology(format!(
            "{label} exists with {:?} retention but leadrouter needs {:?}; JetStream cannot change retention",
            have.retention, want.retention
        )));
    }
    let mut diffs = Vec::new();
    if have.subjects != want.subjects {
        diffs.push(format!(
            "subjects {:?} -> {:?}",
            have.subjects, want.subjects
        ));
    }
    if have.max_age != want.max_age {
        diffs.push(format!(
            "max_age {} -> {}",
            humantime::format_duration(have.max_age),
            humantime::format_duration(want.max_age)
        ));
    }
    if have.duplicate_window != want.duplicate_window {
        diffs.push(format!(
            "duplicate_window {} -> {}",
            humantime::format_duration(have.duplicate_window),
            humantime::format_duration(want.duplicate_window)
        ));
    }
    if have.num_replicas != want.num_replicas {
        diffs.push(format!(
            "replicas {} -> {}",
            have.num_replicas, want.num_replicas
        ));
    }
    // Turned on where we need it, never off: an operator may have enabled it elsewhere.
    let atomic = want.allow_atomic_publish && !have.allow_atomic_publish;
    if atomic {
        diffs.push("allow_atomic_publish false -> true".into());
    }
    // Limits are ours only on a stream that sets them (the edge's); elsewhere an operator's
    // limits stay.
    let limits = want.max_messages > 0 || want.max_bytes > 0;
    if limits && (have.max_messages, have.max_bytes) != (want.max_messages, want.max_bytes) {
        diffs.push(format!(
            "limits {} msgs / {} bytes -> {} / {}",
            have.max_messages, have.max_bytes, want.max_messages, want.max_bytes
        ));
    }
    if limits && have.discard != want.discard {
        diffs.push(format!("discard {:?} -> {:?}", have.discard, want.discard));
    }
    let sources = merged_sources(have.sources.as_deref(), want.sources.as_deref());
    if sources != have.sources {
        diffs.push(format!(
            "edge sources -> [{}]",
            edge_names(sources.as_deref()).join(", ")
        ));
    }
    if diffs.is_empty() {
        return Ok(Change::Unchanged(label));
    }
    // Keep what we do not manage (metadata, limits an operator added) and change only our keys.
    let mut next = have;
    next.subjects = want.subjects;
    next.max_age = want.max_age;
    next.duplicate_window = want.duplicate_window;
    next.num_replicas = want.num_replicas;
    next.allow_atomic_publish |= atomic;
    if limits {
        next.max_messages = want.max_messages;
        next.max_bytes = want.max_bytes;
        next.discard = want.discard;
    }
    next.sources = sources;
    js.update_stream(next).await.map_err(failed(format!(
        "{label}: JetStream refused the change ({})",
        diffs.join(", ")
    )))?;
    Ok(Change::Updated(label, diffs))
}

/// The sources a stream should have: the edge sources we want (ours are those reading an
/// edge domain's `LEADS_EDGE`), plus any other source an operator added, in their order.
/// An edge dropped from `[hub] edges` loses its source; leads it still holds stay in its store
/// (work-queue retention) until it is listed again.
fn merged_sources(
    have: Option<&[stream::Source]>,
    want: Option<&[stream::Source]>,
) -> Option<Vec<stream::Source>> {
    let ours = |s: &stream::Source| s.name == STREAM_EDGE && source_edge(s).is_some();
    let mut out: Vec<stream::Source> = have
        .unwrap_or_default()
        .iter()
        .filter(|s| !ours(s))
        .cloned()
        .collect();
    for w in want.unwrap_or_default() {
        // Keep the server's form of a source we already have (it may fill in defaults), so an
        // unchanged list compares equal.
        let kept = have.unwrap_or_default().iter().find(|h| {
            ours(h)
                && source_edge(h) == source_edge(w)
                && h.subject_transforms == w.subject_transforms
        });
        out.push(kept.unwrap_or(w).clone());
    }
    (!out.is_empty()).then_some(out)
}

/// The edge a source reads, from its API prefix `$JS.edge-{name}.API`.
fn source_edge(s: &stream::Source) -> Option<&str> {
    s.external
        .as_ref()?
        .api_prefix
        .strip_prefix("$JS.edge-")?
        .strip_suffix(".API")
}

fn edge_names(sources: Option<&[stream::Source]>) -> Vec<&str> {
    sources
        .unwrap_or_default()
        .iter()
        .filter_map(source_edge)
        .collect()
}

async fn ensure_kv(js: &jetstream::Context, cfg: &StreamsConfig) -> Result<Change, QueueError> {
    const LABEL: &str = "kv leads_idempotency";
    match js.get_key_value(KV_IDEMPOTENCY).await {
        Ok(store) => {
            let mut s = store.stream.clone();
            let info = s.info().await.map_err(failed(format!("{LABEL}: info")))?;
            let mut have = info.config.clone();
            if have.max_age == cfg.idempotency_ttl && have.num_replicas == cfg.replicas {
                return Ok(Change::Unchanged(LABEL));
            }
            let diffs = vec![format!(
                "ttl {} -> {}",
                humantime::format_duration(have.max_age),
                humantime::format_duration(cfg.idempotency_ttl)
            )];
            have.max_age = cfg.idempotency_ttl;
            have.num_replicas = cfg.replicas;
            js.update_stream(have)
                .await
                .map_err(failed(format!("{LABEL}: update")))?;
            Ok(Change::Updated(LABEL, diffs))
        }
        Err(_) => {
            js.create_key_value(kv::Config {
                bucket: KV_IDEMPOTENCY.into(),
                description: "leadrouter: per-lead claims and per-sink completion".into(),
                history: 1,
                max_age: cfg.idempotency_ttl,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(failed(format!("{LABEL}: create")))?;
            Ok(Change::Created(LABEL))
        }
    }
}

/// Replay records live as long as the DLQ entries they describe.
async fn ensure_audit(js: &jetstream::Context, cfg: &StreamsConfig) -> Result<Change, QueueError> {
    ensure_bucket(
        js,
        "kv leads_dlq_audit",
        KV_DLQ_AUDIT,
        "leadrouter: replays of DLQ entries",
        cfg.dlq_max_age,
        cfg.replicas,
    )
    .await
}

/// The lead lookup index lives as long as the leads it points at (`streams.max_age`).
async fn ensure_index(js: &jetstream::Context, cfg: &StreamsConfig) -> Result<Change, QueueError> {
    const LABEL: &str = "kv leads_index";
    let Ok(store) = js.get_key_value(KV_LEAD_INDEX).await else {
        return ensure_bucket(
            js,
            LABEL,
            KV_LEAD_INDEX,
            "leadrouter: lead lookup index (event id / email hash -> key)",
            cfg.max_age,
            cfg.replicas,
        )
        .await;
    };
    let mut s = store.stream.clone();
    let mut have = s
        .info()
        .await
        .map_err(failed(format!("{LABEL}: info")))?
        .config
        .clone();
    if have.max_age == cfg.max_age {
        return Ok(Change::Unchanged(LABEL));
    }
    let diffs = vec![format!(
        "ttl {} -> {}",
        humantime::format_duration(have.max_age),
        humantime::format_duration(cfg.max_age)
    )];
    have.max_age = cfg.max_age;
    js.update_stream(have)
        .await
        .map_err(failed(format!("{LABEL}: update")))?;
    Ok(Change::Updated(LABEL, diffs))
}

/// Key-check records (a few hundred bytes per key id), never aged out.
async fn ensure_keys(js: &jetstream::Context, cfg: &StreamsConfig) -> Result<Change, QueueError> {
    ensure_bucket(
        js,
        "kv leads_dlq_keys",
        KV_DLQ_KEYS,
        "leadrouter: DLQ key-check records",
        Duration::ZERO,
        cfg.replicas,
    )
    .await
}

/// A history-1 file bucket created when missing and otherwise left as it is (these buckets
/// have no setting an operator tunes after creation). `max_age` zero: kept forever.
pub(crate) async fn ensure_bucket(
    js: &jetstream::Context,
    label: &'static str,
    bucket: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<Change, QueueError> {
    if js.get_key_value(bucket).await.is_ok() {
        return Ok(Change::Unchanged(label));
    }
    js.create_key_value(kv::Config {
        bucket: bucket.into(),
        description: description.into(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(failed(format!("{label}: create")))?;
    Ok(Change::Created(label))
}

/// For `map_err` on a JetStream call: the call's error, kept whole as the source.
fn failed<E: Into<async_nats::Error>>(what: String) -> impl FnOnce(E) -> QueueError {
    move |e| QueueError::Jetstream {
        what,
        source: e.into(),
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// True when the streams intake writes to exist (for `/readyz`).
pub async fn streams_present(js: &jetstream::Context, streams: &[&str]) -> bool {
    let probe = async {
        for s in streams {
            if js.get_stream(*s).await.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator_source() -> stream::Source {
        stream::Source {
            name: "ARCHIVE".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_hub_sources_each_listed_edge_and_keeps_an_operator_s_own_sources() {
        let cfg = StreamsConfig::default();
        let want = leads_stream(&cfg, &["eu1".into(), "us1".into()]);
        let sources = want.sources.clone().expect("sources");
        assert_eq!(edge_names(Some(&sources)), ["eu1", "us1"]);
        assert_eq!(
            sources[0].external.as_ref().map(|e| e.api_prefix.as_str()),
            Some("$JS.edge-eu1.API")
        );
        assert_eq!(sources[0].subject_transforms[0].source, "leads.edge.eu1.>");
        assert_eq!(sources[0].subject_transforms[0].destination, "leads.in.>");
        assert_eq!(
            want.duplicate_window, cfg.duplicate_window,
            "explicit on a sourced stream"
        );
        assert!(leads_stream(&cfg, &[]).sources.is_none());

        // An operator's source stays; an edge dropped from the list loses its source.
        let have = vec![operator_source(), edge_source("eu1"), edge_source("old")];
        let merged = merged_sources(Some(&have), want.sources.as_deref()).expect("merged");
        assert_eq!(merged[0].name, "ARCHIVE");
        assert_eq!(edge_names(Some(&merged)), ["eu1", "us1"]);
        // Unchanged when nothing changed.
        let again = merged_sources(Some(&merged), want.sources.as_deref());
        assert_eq!(again.as_deref(), Some(&merged[..]));
        assert_eq!(merged_sources(None, None), None);
    }

    #[test]
    fn an_edge_stream_is_a_bounded_work_queue_that_refuses_rather_than_drops() {
        let edge: EdgeConfig = toml::from_str(
            "name = \"eu1\"\nhub = \"nats-leaf://h:7422\"\noutage = \"1h\"\nrate = 2.0",
        )
        .expect("edge");
        let s = edge_stream(&edge, &StreamsConfig::default());
        assert_eq!(s.name, STREAM_EDGE);
        assert_eq!(s.subjects, ["leads.edge.eu1.>"]);
        assert_eq!(s.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(s.discard, stream::DiscardPolicy::New);
        assert_eq!(s.max_messages, 7200);
        assert_eq!(s.max_age, Duration::ZERO, "never aged out");
    }
}
