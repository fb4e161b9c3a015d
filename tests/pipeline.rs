//! The handler pool against a real nats-server and real sandbox HTTP servers: exactly one CRM
//! write per lead through crashes, retries, partner faults and dead letters.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use leadrouter::config::{HandlersConfig, StreamsConfig};
use leadrouter::devtools::harness::{file_sink, segment_sink};
use leadrouter::devtools::sandbox_crm::{Faults, SandboxCrm};
use leadrouter::dlq::DlqWriter;
use leadrouter::intake::envelope::{email_hash, idempotency_key, LeadEnvelope};
use leadrouter::intake::group_key::{GroupKey, KeySource};
use leadrouter::intake::Grouping;
use leadrouter::ledger::idempotency::Idempotency;
use leadrouter::pipeline::enrich::{EnrichConfig, Enricher};
use leadrouter::pipeline::fence::Fence;
use leadrouter::pipeline::schema::SchemaRegistry;
use leadrouter::pipeline::{HandlerPool, PipelineStats, PoolParts};
use leadrouter::queue::message::{header as hdr, LeadHeaders, LeadMessage};
use leadrouter::sinks::{self, Delivered, LeadRecord, Sink, SinkConfig, SinkContext, SinkError};
use serde_json::{json, Map, Value};

use common::NatsServer;

struct Rig {
    /// Kept alive for the rig's lifetime; dropping it stops the server.
    _nats: NatsServer,
    js: jetstream::Context,
    pool: Option<HandlerPool>,
    stats: Arc<PipelineStats>,
    grouping: Grouping,
}

/// The edge's grouping, with a fixed test key.
fn grouping() -> Grouping {
    Grouping {
        key: GroupKey::from_secret(b"pipeline-test-group-key", KeySource::Env("T".into())),
        partitions: HandlersConfig::default().partitions,
    }
}

fn fast_handlers() -> HandlersConfig {
    HandlersConfig {
        pool_size: 4,
        max_deliver: 3,
        ack_wait: Duration::from_secs(3),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        schemas_dir: common::manifest_dir().join("config/schemas"),
        ..HandlersConfig::default()
    }
}

async fn sink_from(
    cfg: &SinkConfig,
    data: &std::path::Path,
    client: &async_nats::Client,
) -> Arc<dyn Sink> {
    let ctx = SinkContext {
        data_dir: data.to_path_buf(),
        nats: Some(client.clone()),
        env: [("TEST_SEGMENT_KEY".to_string(), "wk_test".to_string())].into(),
    };
    sinks::build(0, cfg, &ctx).await.expect("sink builds")
}

impl Rig {
    async fn start(handlers: HandlersConfig, sinks: Vec<Arc<dyn Sink>>) -> Rig {
        let nats = NatsServer::start();
        Rig::start_on(nats, handlers, sinks).await
    }

    async fn start_on(
        nats: NatsServer,
        handlers: HandlersConfig,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Rig {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client.clone());
        leadrouter::queue::topology::ensure(&js, &StreamsConfig::default(), &[])
            .await
            .expect("topology");
        leadrouter::queue::topology::ensure_partitions(&js, handlers.partitions)
            .await
            .expect("partitions");
        let kv = js.get_key_value("leads_idempotency").await.expect("kv");
        let fence = Fence::new(
            js.get_key_value("leads_fence").await.expect("fence kv"),
            handlers.ack_wait,
        );
        let parts = PoolParts {
            client,
            sinks,
            schemas: Arc::new(SchemaRegistry::load(&handlers.schemas_dir).expect("schemas")),
            enricher: Arc::new(Enricher::new(&EnrichConfig::default()).expect("enricher")),
            idem: Idempotency::new(kv, 1000, Duration::from_secs(3600), handlers.ack_wait),
            fence,
            dlq: DlqWriter::new(js.clone(), test_keys()),
            grouping: grouping(),
            instance: "test".into(),
        };
        let pool = HandlerPool::start(
            js.clone(),
            &handlers,
            leadrouter::pipeline::Placement {
                replicas: 1,
                solo: false,
            },
            parts,
        )
        .await
        .expect("pool");
        let stats = pool.stats().clone();
        Rig {
            _nats: nats,
            js,
            pool: Some(pool),
            stats,
            grouping: grouping(),
        }
    }

    /// A rig whose one sink is the sandbox CRM (its data dir kept alive by the caller).
    async fn with_crm() -> (Rig, SandboxCrm, tempfile::TempDir) {
        Rig::with_crm_and(fast_handlers(), |crm| crm, &[]).await
    }

    /// A rig whose sinks are the sandbox CRM's `crm` sink as `wrap` makes it, then `more`.
    async fn with_crm_and(
        handlers: HandlersConfig,
        wrap: impl FnOnce(Arc<dyn Sink>) -> Arc<dyn Sink>,
        more: &[SinkConfig],
    ) -> (Rig, SandboxCrm, tempfile::TempDir) {
        let crm = common::sandbox_crm().await;
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut sinks = vec![wrap(
            sink_from(&common::crm_sink(&crm.url()), data.path(), &client).await,
        )];
        for cfg in more {
            sinks.push(sink_from(cfg, data.path(), &client).await);
        }
        (Rig::start_on(nats, handlers, sinks).await, crm, data)
    }

    /// Publishes an envelope as the edge would; `msg_id` defaults to the key.
    async fn publish(&self, env: &LeadEnvelope, msg_id: Option<&str>) -> u64 {
        let (group, partition) = self.grouping.locate(&env.fields);
        let mut lead = LeadMessage::new(env.clone(), group, partition);
        if let Some(id) = msg_id {
            lead.headers.msg_id = Some(id.to_string());
        }
        store(&self.js, &lead).await
    }

    /// Waits (on the pool's progress events) until `cond` holds.
    async fn until(&self, what: &str, cond: impl Fn(&PipelineStats) -> bool) {
        common::wait_stats(&self.stats, what, cond).await;
    }

    async fn dlq_entries(&self) -> Vec<(async_nats::HeaderMap, Vec<u8>)> {
        let mut s = self.js.get_stream("LEADS_DLQ").await.unwrap();
        let info = s.info().await.unwrap().clone();
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push((m.headers, m.payload.to_vec()));
            }
        }
        out
    }

    async fn stop(mut self) {
        if let Some(p) = self.pool.take() {
            p.stop(Duration::from_secs(5)).await;
        }
    }
}

fn envelope(sender: &str, event: &str, fields: Value) -> LeadEnvelope {
    let fields: Map<String, Value> = fields.as_object().cloned().unwrap();
    let key = idempotency_key(sender, event, &email_hash(&fields));
    LeadEnvelope {
        schema: "lead.v1".into(),
        sender: sender.into(),
        source_event_id: event.into(),
        received_at: leadrouter::timestamp::now(),
        key,
        fields,
    }
}

/// Stores an encoded lead; its sequence in `LEADS`.
async fn store(js: &jetstream::Context, lead: &LeadMessage) -> u64 {
    let (subject, h, body) = lead.encode().unwrap();
    js.publish_with_headers(subject, h, body)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

fn header<'a>(h: &'a async_nats::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.as_str()).unwrap_or("")
}

fn test_keys() -> leadrouter::dlq::crypto::KeyRing {
    leadrouter::dlq::crypto::KeyRing::from_keys([("t".to_string(), [7u8; 32])]).expect("key ring")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_reaches_every_sink_once_and_redelivery_is_a_duplicate() {
    let (rig, crm, data) =
        Rig::with_crm_and(fast_handlers(), |crm| crm, &[file_sink("archive", None)]).await;

    let env = envelope(
        "demo",
        "evt-1",
        json!({"email": "Ada@Example.com", "first_name": "Ada", "phone": "+44 20 7946 0958"}),
    );
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;

    let rec = crm.record(&env.key).expect("CRM has the lead");
    assert_eq!((rec.requests, rec.created), (1, 1));
    let body = rec.latest_body.unwrap();
    assert_eq!(
        body["fields"]["email"], "ada@example.com",
        "email normalized"
    );
    assert_eq!(body["fields"]["phone"], "+442079460958", "phone in E.164");
    assert_eq!(
        rec.last_headers.get("idempotency-key").map(String::as_str),
        Some(env.key.as_str())
    );
    let lines = std::fs::read_to_string(data.path().join("sinks/leads.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1);

    // The same lead again under a fresh message id (past the stream's dedupe window).
    rig.publish(&env, Some("another-msg-id")).await;
    rig.until("duplicate", |s| s.duplicates() == 1).await;
    assert_eq!(
        crm.record(&env.key).unwrap().requests,
        1,
        "no second CRM call"
    );
    assert!(rig
        .stats
        .latency
        .percentile(Duration::from_secs(900), 0.5)
        .latency_ms
        .is_some());
    rig.stop().await;
}

/// Delivers through `inner`, then panics once: the crash between the sink's write and the ack.
struct CrashAfterWrite {
    inner: Arc<dyn Sink>,
    crashed: AtomicBool,
    before: bool,
}

impl CrashAfterWrite {
    /// `before`: the panic comes before the sink call instead.
    fn wrap(before: bool) -> impl FnOnce(Arc<dyn Sink>) -> Arc<dyn Sink> {
        move |inner| {
            Arc::new(CrashAfterWrite {
                inner,
                crashed: AtomicBool::new(false),
                before,
            })
        }
    }
}

#[async_trait::async_trait]
impl Sink for CrashAfterWrite {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        if self.before && !self.crashed.swap(true, Ordering::SeqCst) {
            panic!("simulated handler crash before the sink call");
        }
        let r = self.inner.deliver(lead).await;
        if !self.before && !self.crashed.swap(true, Ordering::SeqCst) {
            panic!("simulated handler crash after the sink write, before the ack");
        }
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_sink_write_redelivers_and_the_crm_creates_once() {
    let (rig, crm, _data) =
        Rig::with_crm_and(fast_handlers(), CrashAfterWrite::wrap(false), &[]).await;

    let env = envelope("demo", "evt-crash", json!({"email": "crash@example.com"}));
    rig.publish(&env, None).await;
    rig.until("delivered after restart", |s| s.delivered() == 1)
        .await;

    assert_eq!(rig.stats.handler_restarts(), 1, "the handler was restarted");
    let rec = crm.record(&env.key).unwrap();
    assert_eq!(
        rec.requests, 2,
        "the redelivery wrote again with the same Idempotency-Key"
    );
    assert_eq!(rec.created, 1, "and the CRM created exactly one record");
    assert_eq!(crm.stats().records, 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_is_restarted_and_its_message_is_not_lost() {
    let (rig, crm, _data) =
        Rig::with_crm_and(fast_handlers(), CrashAfterWrite::wrap(true), &[]).await;

    let env = envelope("demo", "evt-panic", json!({"email": "panic@example.com"}));
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;
    assert_eq!(rig.stats.handler_restarts(), 1);
    let rec = crm.record(&env.key).unwrap();
    assert_eq!((rec.requests, rec.created), (1, 1));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_then_ok_waits_at_least_retry_after() {
    let (rig, crm, _data) = Rig::with_crm().await;
    let mut f = Faults::fail_next(1, 429);
    f.retry_after_secs = 2;
    crm.set_faults(f);

    let env = envelope("demo", "evt-429", json!({"email": "slow@example.com"}));
    let t0 = Instant::now();
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before Retry-After"
    );
    assert_eq!(rig.stats.retries(), 1);
    let rec = crm.record(&env.key).unwrap();
    assert_eq!((rec.requests, rec.created), (2, 1));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_500s_dead_letter_after_exactly_max_deliver_attempts() {
    let (rig, crm, _data) = Rig::with_crm().await;
    crm.set_faults(Faults::fail_next(1000, 500));

    let env = envelope("demo", "evt-500", json!({"email": "down@example.com"}));
    let seq = rig.publish(&env, None).await;
    rig.until("dead-lettered", |s| {
        s.dead().get("retries_exhausted") == Some(&1)
    })
    .await;

    assert_eq!(
        crm.record(&env.key).unwrap().requests,
        3,
        "exactly max_deliver attempts"
    );
    let dlq = rig.dlq_entries().await;
    assert_eq!(dlq.len(), 1);
    let (h, payload) = &dlq[0];
    assert_eq!(header(h, hdr::dlq::REASON), "retries_exhausted");
    assert!(
        header(h, hdr::dlq::LAST_ERROR).contains("500"),
        "{}",
        header(h, hdr::dlq::LAST_ERROR)
    );
    assert_eq!(header(h, hdr::dlq::ATTEMPTS), "3");
    assert_eq!(header(h, hdr::dlq::ORIGINAL_SEQ), seq.to_string());
    assert_eq!(header(h, hdr::MSG_ID), format!("LEADS:{seq}"));
    assert_eq!(header(h, hdr::dlq::SENDER), "demo");
    assert!(
        !payload
            .windows(env.key.len())
            .any(|w| w == env.key.as_bytes()),
        "the payload is sealed"
    );
    assert_eq!(header(h, hdr::dlq::KEY_ID), "t");
    let plain = test_keys()
        .open("t", payload, format!("LEADS:{seq}").as_bytes())
        .expect("opens with the key that sealed it");
    let stored: LeadEnvelope = serde_json::from_slice(&plain).unwrap();
    assert_eq!(stored.key, env.key, "the DLQ keeps the lead");

    // A replay (the same lead as a new message) while the CRM is still down gets a budget of
    // its own: max_deliver attempts again, not one.
    rig.publish(&env, Some("replay:test:1")).await;
    rig.until("the replay dead-lettered too", |s| {
        s.dead().get("retries_exhausted") == Some(&2)
    })
    .await;
    assert_eq!(crm.record(&env.key).unwrap().requests, 6);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_mismatch_dead_letters_after_one_attempt_without_sink_calls() {
    let (rig, crm, _data) = Rig::with_crm().await;

    let env = envelope("demo", "evt-noemail", json!({"first_name": "Nobody"}));
    rig.publish(&env, None).await;
    rig.until("dead-lettered", |s| {
        s.dead().get("schema_mismatch") == Some(&1)
    })
    .await;
    assert_eq!(crm.stats().requests, 0);
    let dlq = rig.dlq_entries().await;
    assert_eq!(header(&dlq[0].0, hdr::dlq::REASON), "schema_mismatch");
    assert_eq!(header(&dlq[0].0, hdr::dlq::ATTEMPTS), "1");
    assert!(header(&dlq[0].0, hdr::dlq::LAST_ERROR).contains("/email"));
    assert_eq!(rig.stats.retries(), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_ok_and_analytics_failing_retries_analytics_only() {
    let analytics = common::sandbox_crm().await;
    analytics.set_faults(Faults::fail_next(2, 503));
    let segment = segment_sink(
        "analytics",
        "TEST_SEGMENT_KEY",
        analytics.url(),
        Some(Duration::from_secs(2)),
    );
    let (rig, crm, _data) = Rig::with_crm_and(fast_handlers(), |crm| crm, &[segment]).await;

    let env = envelope(
        "demo",
        "evt-fanout",
        json!({"email": "fan@example.com", "utm_source": "Google"}),
    );
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;

    let rec = crm.record(&env.key).unwrap();
    assert_eq!(
        rec.requests, 1,
        "the CRM write is not repeated while analytics retries"
    );
    assert_eq!(rig.stats.retries(), 2);
    let identify = analytics.message(&env.key).expect("identify recorded");
    assert_eq!(identify.kind, "identify");
    assert!(
        analytics.message(&format!("{}:track", env.key)).is_some(),
        "track recorded"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lead_completes_in_stream_order_while_other_leads_flow() {
    let (rig, crm, data) =
        Rig::with_crm_and(fast_handlers(), |crm| crm, &[file_sink("archive", None)]).await;
    // The create is turned away once with a 2 s Retry-After, so without per-lead FIFO the update
    // would overtake it, and a lead held up behind it would show a 2 s gap.
    let mut f = Faults::fail_next(1, 429);
    f.retry_after_secs = 2;
    crm.set_faults(f);

    let create = envelope(
        "demo",
        "evt-create",
        json!({"email": "grace@example.com", "company": "Old Co"}),
    );
    let update = envelope(
        "demo",
        "evt-update",
        json!({"email": "grace@example.com", "company": "New Co"}),
    );
    // Another lead of the same partition: a retry holds up its own lead, never its partition.
    let partition = |e: &LeadEnvelope| {
        let (group, _) = rig.grouping.place(&e.sender, &e.fields);
        leadrouter::queue::partition::partition_of(&group, 16)
    };
    let other = (0..)
        .map(|i| {
            envelope(
                "demo",
                "evt-other",
                json!({"email": format!("other{i}@example.com"), "company": "Elsewhere"}),
            )
        })
        .find(|o| partition(o) == partition(&create))
        .unwrap();
    rig.publish(&create, None).await;
    rig.until("the create was turned away", |s| s.retries() == 1)
        .await;
    // While it waits out its Retry-After it is the oldest unacknowledged lead, and the backlog
    // says how old (the `leadrouter_queue_oldest_unacked_seconds` gauge reads this).
    let backlog = leadrouter::queue::backlog::read(&rig.js, 16).await.unwrap();
    assert_eq!(backlog.ack_pending, 1, "{backlog:?}");
    assert!(backlog.oldest_unacked.is_some(), "{backlog:?}");
    rig.publish(&update, None).await;
    rig.publish(&other, None).await;
    rig.until("all three delivered", |s| s.delivered() == 3)
        .await;

    let lines: Vec<Value> = std::fs::read_to_string(data.path().join("sinks/leads.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let order: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    let pos = |k: &str| order.iter().position(|o| *o == k).unwrap();
    assert!(
        pos(&create.key) < pos(&update.key),
        "create completes before update: {order:?}"
    );
    // The file sink confirmed the create on its first attempt (only the CRM failed), so the
    // CRM's write times show whether another lead was held up by the create's retry.
    let other_written = crm.record(&other.key).unwrap().first_write.unwrap();
    let create_written = crm.record(&create.key).unwrap().first_write.unwrap();
    assert!(
        other_written < create_written,
        "another lead is not held up by the retry: {other_written} vs {create_written}"
    );
    // The lead ends with the update's values at the CRM: the update was written last.
    let last_create = crm.record(&create.key).unwrap().last_write.unwrap();
    let last_update = crm.record(&update.key).unwrap().last_write.unwrap();
    assert!(last_update > last_create);
    assert_eq!(
        crm.record(&update.key).unwrap().latest_body.unwrap()["fields"]["company"],
        "New Co"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_phone_still_reaches_the_crm_flagged() {
    let (rig, crm, _data) = Rig::with_crm().await;

    let env = envelope(
        "demo",
        "evt-phone",
        json!({"email": "p@example.com", "phone": "call me maybe"}),
    );
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;
    let body = crm.record(&env.key).unwrap().latest_body.unwrap();
    assert_eq!(body["fields"]["phone"], "call me maybe");
    assert!(
        body["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "phone_unparsed"),
        "{body}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_settings_follow_config() {
    let rig = Rig::start(fast_handlers(), vec![]).await;
    let env = envelope("demo", "evt-x", json!({"email": "x@example.com"}));
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;
    let stream = rig.js.get_stream("LEADS").await.unwrap();
    // The lead's partition consumer: pinned to one router, with the partition's share of the
    // pending budget; its delivery cap is the crash net's (attempts are counted by the handler).
    let (group, _) = rig.grouping.place(&env.sender, &env.fields);
    let p = leadrouter::queue::partition::partition_of(&group, 16);
    let info = stream
        .consumer_info(leadrouter::queue::partition::consumer_name(p))
        .await
        .unwrap();
    assert_eq!(info.config.max_deliver, 100);
    assert_eq!(info.config.ack_wait, Duration::from_secs(3));
    assert_eq!(info.config.max_ack_pending, 1024 / 16);
    assert_eq!(
        info.config.priority_policy,
        jetstream::consumer::PriorityPolicy::PinnedClient
    );
    assert!(
        info.config.backoff.is_empty(),
        "no consumer backoff: NAK delays rule"
    );
    assert_eq!(info.num_ack_pending, 0, "acked");
    rig.stop().await;
}

/// A sink slower than `ack_wait`: in-progress acks keep the message from being redelivered.
struct Slow {
    inner: Arc<dyn Sink>,
    delay: Duration,
}

#[async_trait::async_trait]
impl Sink for Slow {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        tokio::time::sleep(self.delay).await;
        self.inner.deliver(lead).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_longer_than_ack_wait_is_not_redelivered() {
    let handlers = HandlersConfig {
        ack_wait: Duration::from_secs(1),
        ..fast_handlers()
    };
    let slow = |inner| -> Arc<dyn Sink> {
        Arc::new(Slow {
            inner,
            delay: Duration::from_millis(3_500),
        })
    };
    let (rig, crm, _data) = Rig::with_crm_and(handlers, slow, &[]).await;

    let env = envelope(
        "demo",
        "evt-slow",
        json!({"email": "slow-sink@example.com"}),
    );
    rig.publish(&env, None).await;
    rig.until("delivered", |s| s.delivered() == 1).await;
    assert_eq!(
        rig.stats.received(),
        1,
        "no redelivery while the sink worked"
    );
    assert_eq!(crm.record(&env.key).unwrap().requests, 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_net_dead_letters_a_message_the_server_gave_up_on() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    leadrouter::queue::topology::ensure(&js, &StreamsConfig::default(), &[])
        .await
        .unwrap();
    leadrouter::queue::topology::ensure_partitions(&js, 16)
        .await
        .unwrap();
    let handlers = HandlersConfig {
        max_deliver: 1,
        // The server gives up after one delivery: the crash net's case.
        max_redeliveries: 1,
        ack_wait: Duration::from_secs(1),
        ..fast_handlers()
    };
    let env = envelope(
        "demo",
        "evt-lost-verdict",
        json!({"email": "lost@example.com"}),
    );
    let (group, p) = grouping().locate(&env.fields);
    // A router that took the message and died before any verdict: pulled, never acked.
    let stream = js.get_stream("LEADS").await.unwrap();
    let settings = leadrouter::pipeline::ownership::Settings {
        partitions: 16,
        timeout: handlers.ownership_timeout,
        instance: "dead-router".into(),
        ack_wait: handlers.ack_wait,
        max_redeliveries: handlers.max_redeliveries,
        max_ack_pending: handlers.max_ack_pending,
        prefetch: 1,
        handover_grace: Duration::from_secs(1),
        replicas: 1,
        solo: false,
    };
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(leadrouter::pipeline::ownership::consumer_config(
            &settings, p,
        ))
        .await
        .unwrap();
    // Only the id and the group: what the dispatcher and the crash net need.
    let lead = LeadMessage {
        headers: LeadHeaders {
            msg_id: Some(env.key.clone()),
            group: Some(group.clone()),
            ..LeadHeaders::default()
        },
        ..LeadMessage::new(env.clone(), group, p)
    };
    let seq = store(&js, &lead).await;
    use futures::StreamExt;
    let mut batch = consumer
        .stream()
        .group(leadrouter::queue::partition::PRIORITY_GROUP)
        .max_messages_per_batch(1)
        .messages()
        .await
        .unwrap();
    let taken = batch.next().await.expect("pulled").unwrap();
    assert_eq!(taken.info().unwrap().stream_sequence, seq);
    drop(batch);
    // The dead router's pin lasts until priority_timeout; the pool's own pulls then get it.
    stream
        .unpin_consumer(
            &leadrouter::queue::partition::consumer_name(p),
            leadrouter::queue::partition::PRIORITY_GROUP,
        )
        .await
        .unwrap();

    // The pool's waiting pull is what makes the server emit MAX_DELIVERIES once ack_wait passes.
    let rig = Rig::start_on(nats, handlers, vec![]).await;
    rig.until("crash net dead-lettered it", |s| {
        s.dead().get("max_deliveries") == Some(&1)
    })
    .await;
    let dlq = rig.dlq_entries().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0].0, hdr::dlq::REASON), "max_deliveries");
    assert_eq!(header(&dlq[0].0, hdr::MSG_ID), format!("LEADS:{seq}"));
    assert_eq!(header(&dlq[0].0, hdr::dlq::KEY), env.key);
    assert_eq!(rig.stats.delivered(), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_published_the_old_way_is_moved_to_its_partition_and_delivered() {
    let (rig, crm, _data) = Rig::with_crm().await;
    // As an older replay or `nats pub leads.in.demo` would: no partition, a plain group header.
    let env = envelope("demo", "evt-legacy", json!({"email": "old@example.com"}));
    let legacy = LeadMessage {
        sender: "demo".into(),
        partition: None,
        headers: LeadHeaders {
            msg_id: Some(env.key.clone()),
            group: Some(email_hash(&env.fields)),
            received_at: Some(env.received_at.clone()),
            ..LeadHeaders::default()
        },
        envelope: env.clone(),
    };
    assert_eq!(legacy.subject(), "leads.in.demo");
    let legacy_seq = store(&rig.js, &legacy).await;
    rig.until("delivered", |s| s.delivered() == 1).await;
    assert_eq!(crm.record(&env.key).unwrap().created, 1);
    // The copy sits in the lead's partition, with the keyed group and the original headers.
    let (group, subject) = rig.grouping.place(&env.sender, &env.fields);
    let stream = rig.js.get_stream("LEADS").await.unwrap();
    let copy = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("re-partitioned copy");
    assert!(copy.sequence > legacy_seq);
    let moved = LeadMessage::from_stored(&copy).unwrap().headers;
    assert_eq!(moved.group, Some(group));
    assert_eq!(moved.received_at, Some(env.received_at.clone()));
    assert_eq!(moved.msg_id, Some(format!("lr-repartition-{legacy_seq}")));
    // The re-partitioning consumer keeps the old durable name and is done with it.
    let info = stream.consumer_info("router").await.unwrap();
    assert_eq!(info.config.filter_subject, "leads.in.*");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    rig.stop().await;
}
