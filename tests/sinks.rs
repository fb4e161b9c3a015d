//! Sinks against real servers: the sandbox CRM (in-process, real HTTP on 127.0.0.1:0) and a
//! real nats-server.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use leadrouter::devtools::sandbox_crm::{FaultMode, Faults, IdempotencyMode, SandboxCrm, Scope};
use leadrouter::queue::message::header;
use leadrouter::sinks::{
    self, FileSinkConfig, HttpMode, HttpSinkConfig, LeadRecord, NatsSinkConfig, SegmentSinkConfig,
    Sink, SinkConfig, SinkContext,
};
use serde_json::{json, Value};

const EMAIL: &str = "ada@example.com";

fn lead(key: &str) -> LeadRecord {
    let fields = json!({
        "email": EMAIL,
        "first_name": "Ada",
        "phone": "+441234567890",
        "company": "Analytical Engines",
    });
    LeadRecord {
        key: key.to_string(),
        sender: "demo".into(),
        source_event_id: format!("evt_{key}"),
        schema: "lead.v1".into(),
        received_at: "2026-11-24T20:01:02.345Z".into(),
        fields: fields.as_object().cloned().unwrap_or_default(),
        flags: vec![],
        replay: false,
    }
}

fn ctx(data_dir: &Path, env: &[(&str, &str)], nats: Option<async_nats::Client>) -> SinkContext {
    SinkContext {
        data_dir: data_dir.to_path_buf(),
        nats,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

async fn sandbox() -> SandboxCrm {
    common::sandbox_crm().await
}

fn http_cfg(sb: &SandboxCrm) -> HttpSinkConfig {
    HttpSinkConfig {
        url: Some(format!("{}/leads", sb.url())),
        ..HttpSinkConfig::default()
    }
}

/// The `http` sink called `crm`.
fn crm(cfg: HttpSinkConfig) -> SinkConfig {
    SinkConfig::new("crm", cfg)
}

async fn build(cfg: SinkConfig, env: &[(&str, &str)]) -> Arc<dyn Sink> {
    let dir = tempfile::tempdir().expect("tempdir");
    sinks::build(0, &cfg, &ctx(dir.path(), env, None))
        .await
        .expect("sink builds")
}

async fn http_sink(sb: &SandboxCrm) -> Arc<dyn Sink> {
    build(crm(http_cfg(sb)), &[]).await
}

// ---------------------------------------------------------------------------------------------
// http

#[tokio::test]
async fn http_create_sends_idempotency_key_and_a_redelivery_creates_nothing() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    assert_eq!(sink.name(), "crm");
    let l = lead("lr_create1");

    let first = sink.deliver(&l).await.expect("first delivery");
    let second = sink.deliver(&l).await.expect("redelivery");
    assert_eq!(first.remote_id.as_deref(), Some("crm_1"));
    assert_eq!(second.remote_id.as_deref(), Some("crm_1"));

    let k = sb.record("lr_create1").expect("key seen");
    assert_eq!(k.requests, 2);
    assert_eq!(k.writes, 2);
    assert_eq!(k.created, 1, "exactly one record for the key");
    assert_eq!(k.record_ids, vec!["crm_1".to_string()]);
    assert_eq!(k.last_headers["idempotency-key"], "lr_create1");
    assert_eq!(k.last_headers["content-type"], "application/json");
    let body = k.latest_body.expect("body");
    assert_eq!(body["key"], "lr_create1");
    assert_eq!(body["sender"], "demo");
    assert_eq!(body["received_at"], "2026-11-24T20:01:02.345Z");
    assert_eq!(body["fields"]["email"], EMAIL);

    let stats = sb.stats();
    assert_eq!(
        (stats.records, stats.writes, stats.duplicate_keys),
        (1, 2, 0)
    );
    assert_eq!(sb.records().len(), 1);
}

#[tokio::test]
async fn http_create_409_conflict_means_already_written() {
    let sb = sandbox().await;
    sb.set_idempotency(IdempotencyMode::Conflict);
    let sink = http_sink(&sb).await;
    let l = lead("lr_conflict");
    let first = sink.deliver(&l).await.expect("created");
    let again = sink.deliver(&l).await.expect("409 is success");
    assert_eq!(first.remote_id.as_deref(), Some("crm_1"));
    assert_eq!(again.remote_id.as_deref(), Some("crm_1"));
    let k = sb.record("lr_conflict").expect("key");
    assert_eq!((k.requests, k.writes, k.created), (2, 1, 1));
}

#[tokio::test]
async fn a_legacy_crm_that_ignores_the_key_shows_the_duplicate() {
    let sb = sandbox().await;
    sb.set_idempotency(IdempotencyMode::Ignore);
    let sink = http_sink(&sb).await;
    let l = lead("lr_legacy");
    sink.deliver(&l).await.expect("1");
    sink.deliver(&l).await.expect("2");
    let k = sb.record("lr_legacy").expect("key");
    assert_eq!(k.created, 2);
    assert_eq!(k.record_ids, vec!["crm_1".to_string(), "crm_2".to_string()]);
    assert_eq!(sb.stats().duplicate_keys, 1);
}

#[tokio::test]
async fn http_upsert_puts_to_the_keyed_path() {
    let sb = sandbox().await;
    let sink = build(
        crm(HttpSinkConfig {
            mode: Some(HttpMode::Upsert),
            // A trailing slash must not produce `//key`.
            url: Some(format!("{}/leads/", sb.url())),
            ..http_cfg(&sb)
        }),
        &[],
    )
    .await;
    let mut l = lead("lr_upsert");
    let first = sink.deliver(&l).await.expect("created");
    l.fields.insert("first_name".into(), json!("Augusta"));
    let second = sink.deliver(&l).await.expect("updated");
    assert_eq!(first.remote_id.as_deref(), Some("crm_1"));
    assert_eq!(second.remote_id.as_deref(), Some("crm_1"));

    let k = sb.record("lr_upsert").expect("key");
    assert_eq!((k.requests, k.writes, k.created), (2, 2, 1));
    assert!(!k.last_headers.contains_key("idempotency-key"));
    assert_eq!(
        k.latest_body.expect("body")["fields"]["first_name"],
        "Augusta"
    );

    // The record is reachable under its key, like a CRM's GET.
    let got: Value = reqwest::get(format!("{}/leads/lr_upsert", sb.url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["id"], "crm_1");
    assert_eq!(got["key"], "lr_upsert");
    assert_eq!(got["writes"], 2);
    assert_eq!(got["body"]["fields"]["first_name"], "Augusta");
}

#[tokio::test]
async fn http_500_is_transient_and_n_failures_then_success_is_deterministic() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    let l = lead("lr_500");

    sb.set_faults(Faults::mode(FaultMode::Error500));
    let err = sink.deliver(&l).await.expect_err("500");
    assert_eq!(err.class(), "http_5xx");
    assert!(!err.is_permanent());
    assert_eq!(err.retry_after(), None);
    assert_eq!(
        err.to_string(),
        "http_5xx: HTTP 500 Internal Server Error: {\"error\":\"sandbox_fault\",\"status\":500}",
        "the CRM's own words come with the status"
    );
    assert!(!err.to_string().contains(EMAIL));

    sb.set_faults(Faults::fail_next(2, 500));
    for _ in 0..2 {
        let err = sink.deliver(&l).await.expect_err("500 again");
        assert_eq!(err.class(), "http_5xx");
    }
    sink.deliver(&l).await.expect("healed after 2 failures");
    let k = sb.record("lr_500").expect("key");
    assert_eq!((k.requests, k.writes, k.created), (4, 1, 1));
    assert_eq!(sb.stats().faults_injected, 3);
}

#[tokio::test]
async fn http_503_with_retry_after_is_transient_with_the_delay() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    sb.set_faults(Faults {
        retry_after_secs: 3,
        ..Faults::fail_next(1, 503)
    });
    let err = sink.deliver(&lead("lr_503")).await.expect_err("503");
    assert_eq!(err.class(), "http_5xx");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn http_429_retry_after_seconds() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    sb.set_faults(Faults {
        retry_after_secs: 7,
        ..Faults::mode(FaultMode::Rate429)
    });
    let err = sink.deliver(&lead("lr_429")).await.expect_err("429");
    assert_eq!(err.class(), "rate_limited");
    assert!(!err.is_permanent());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        err.to_string(),
        "rate_limited: HTTP 429 Too Many Requests: {\"error\":\"sandbox_fault\",\"status\":429}"
    );
}

#[tokio::test]
async fn http_429_retry_after_http_date() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    sb.set_faults(Faults {
        retry_after_secs: 120,
        retry_after_date: true,
        ..Faults::mode(FaultMode::Rate429)
    });
    let err = sink.deliver(&lead("lr_429d")).await.expect_err("429");
    assert_eq!(err.class(), "rate_limited");
    let ra = err.retry_after().expect("retry_after from the date");
    // The date has one-second resolution; allow for that and a slow machine.
    assert!(
        ra >= Duration::from_secs(115) && ra <= Duration::from_secs(121),
        "{ra:?}"
    );
}

#[tokio::test]
async fn http_timeout_is_transient_timeout() {
    let sb = sandbox().await;
    let sink = build(
        crm(HttpSinkConfig {
            timeout: Some(Duration::from_millis(200)),
            ..http_cfg(&sb)
        }),
        &[],
    )
    .await;
    sb.set_faults(Faults::mode(FaultMode::Timeout));
    let started = Instant::now();
    let err = sink.deliver(&lead("lr_slow")).await.expect_err("timeout");
    let took = started.elapsed();
    assert_eq!(err.class(), "timeout");
    assert!(!err.is_permanent());
    assert_eq!(err.to_string(), "timeout: no answer within 200ms");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let k = sb.record("lr_slow").expect("request reached the server");
    assert_eq!((k.requests, k.writes), (1, 0));
}

#[tokio::test]
async fn http_reset_is_transient_connect_and_the_pool_recovers() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    // Warm a pooled connection first: the reset must also be survivable on a reused one.
    sink.deliver(&lead("lr_warm")).await.expect("warm-up");

    sb.set_faults(Faults::mode(FaultMode::Reset));
    let err = sink.deliver(&lead("lr_reset")).await.expect_err("reset");
    assert_eq!(err.class(), "connect", "{err}");
    assert!(!err.is_permanent());
    let m = err.message();
    assert!(m.contains("reset") || m.contains("closed"), "{err}");
    let k = sb.record("lr_reset").expect("request reached the server");
    assert_eq!((k.requests, k.writes, k.created), (1, 0, 0));

    sb.heal();
    let ok = sink.deliver(&lead("lr_reset")).await.expect("after heal");
    assert_eq!(ok.remote_id.as_deref(), Some("crm_2"));
    assert_eq!(sb.record("lr_reset").expect("key").created, 1);
}

#[tokio::test]
async fn http_connection_refused_is_transient_connect() {
    // Free now, so nobody listens there.
    let port = common::free_port();
    let sink = build(
        crm(HttpSinkConfig {
            url: Some(format!("http://127.0.0.1:{port}/leads")),
            ..HttpSinkConfig::default()
        }),
        &[],
    )
    .await;
    let err = sink
        .deliver(&lead("lr_refused"))
        .await
        .expect_err("refused");
    assert_eq!(err.class(), "connect");
    assert!(!err.is_permanent());
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");
}

#[tokio::test]
async fn http_400_is_permanent() {
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    sb.set_faults(Faults::fail_next(1, 400));
    let err = sink.deliver(&lead("lr_400")).await.expect_err("400");
    assert!(err.is_permanent());
    assert_eq!(err.class(), "http_4xx");
    assert_eq!(err.retry_after(), None);
    assert_eq!(
        err.to_string(),
        "http_4xx: HTTP 400 Bad Request: {\"error\":\"sandbox_fault\",\"status\":400}"
    );

    sb.set_faults(Faults::fail_next(1, 408));
    let err = sink.deliver(&lead("lr_408")).await.expect_err("408");
    assert!(!err.is_permanent());
    assert_eq!(err.class(), "timeout");
}

#[tokio::test]
async fn http_auth_from_env_and_static_headers_reach_the_server() {
    let sb = sandbox().await;
    let env = [("TEST_CRM_TOKEN", "s3cret"), ("TEST_CRM_KEY", "k-42")];
    let bearer = build(
        crm(HttpSinkConfig {
            auth_env: Some("TEST_CRM_TOKEN".into()),
            auth_prefix: Some("Bearer ".into()),
            headers: Some([("X-Source".to_string(), "leadrouter".to_string())].into()),
            ..http_cfg(&sb)
        }),
        &env,
    )
    .await;
    bearer.deliver(&lead("lr_auth1")).await.expect("delivered");
    let h = sb.record("lr_auth1").expect("key").last_headers;
    assert_eq!(h["authorization"], "Bearer s3cret");
    assert_eq!(h["x-source"], "leadrouter");

    let api_key = build(
        crm(HttpSinkConfig {
            auth_header: Some("X-Api-Key".into()),
            auth_env: Some("TEST_CRM_KEY".into()),
            ..http_cfg(&sb)
        }),
        &env,
    )
    .await;
    api_key.deliver(&lead("lr_auth2")).await.expect("delivered");
    let h = sb.record("lr_auth2").expect("key").last_headers;
    assert_eq!(h["x-api-key"], "k-42");
    assert!(!h.contains_key("authorization"));

    // A missing secret fails the build, naming the key.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = crm(HttpSinkConfig {
        auth_env: Some("TEST_CRM_UNSET".into()),
        ..http_cfg(&sb)
    });
    let err = sinks::build(2, &cfg, &ctx(dir.path(), &env, None))
        .await
        .err()
        .expect("build error");
    assert_eq!(err.key, "sinks[2].auth_env");
    assert!(err.message.contains("TEST_CRM_UNSET"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// segment

fn segment_cfg(sb: &SandboxCrm) -> SinkConfig {
    SinkConfig::new(
        "analytics",
        SegmentSinkConfig {
            endpoint: Some(sb.url()),
            write_key_env: Some("TEST_SEGMENT_KEY".into()),
            ..SegmentSinkConfig::default()
        },
    )
}

#[tokio::test]
async fn segment_identify_then_track_with_message_ids_and_basic_auth() {
    let sb = sandbox().await;
    let sink = build(segment_cfg(&sb), &[("TEST_SEGMENT_KEY", "wk_test")]).await;
    let l = lead("lr_seg");
    sink.deliver(&l).await.expect("delivered");

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("wk_test:")
    );
    let msgs = sb.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].message_id, "lr_seg", "identify first");
    assert_eq!(msgs[1].message_id, "lr_seg:track");

    let id = sb.message("lr_seg").expect("identify");
    assert_eq!(id.kind, "identify");
    assert_eq!(id.user_id.as_deref(), Some("lr_seg"));
    assert_eq!(id.calls, 1);
    assert_eq!(id.body["traits"]["email"], EMAIL);
    assert_eq!(id.body["traits"]["phone"], "+441234567890");
    assert_eq!(id.body["timestamp"], "2026-11-24T20:01:02.345Z");
    assert_eq!(id.last_headers["authorization"], basic);

    let tr = sb.message("lr_seg:track").expect("track");
    assert_eq!(tr.kind, "track");
    assert_eq!(tr.event.as_deref(), Some("Lead Received"));
    assert_eq!(tr.user_id.as_deref(), Some("lr_seg"));
    assert_eq!(tr.body["timestamp"], "2026-11-24T20:01:02.345Z");
    let props = &tr.body["properties"];
    assert_eq!(props["first_name"], "Ada");
    assert_eq!(props["company"], "Analytical Engines");
    assert_eq!(props["sender"], "demo");
    assert_eq!(props["schema"], "lead.v1");
    assert!(
        props.get("email").is_none(),
        "contact data stays off events"
    );
    assert!(props.get("phone").is_none());
    assert_eq!(tr.last_headers["authorization"], basic);

    // A redelivery repeats both calls with the same messageIds: deduped, not new messages.
    sink.deliver(&l).await.expect("redelivered");
    let stats = sb.stats();
    assert_eq!(stats.analytics_messages, 2);
    assert_eq!((stats.identify_calls, stats.track_calls), (2, 2));
    assert_eq!(sb.message("lr_seg").expect("identify").calls, 2);
}

#[tokio::test]
async fn segment_faults_are_scoped_apart_from_the_crm() {
    let sb = sandbox().await;
    let seg = build(segment_cfg(&sb), &[("TEST_SEGMENT_KEY", "wk_test")]).await;
    let crm = http_sink(&sb).await;
    sb.set_faults_for(Scope::Analytics, Faults::mode(FaultMode::Error500));

    let err = seg
        .deliver(&lead("lr_scoped"))
        .await
        .expect_err("analytics down");
    assert_eq!(err.class(), "http_5xx");
    assert_eq!(
        err.to_string(),
        "http_5xx: identify: HTTP 500 Internal Server Error"
    );
    crm.deliver(&lead("lr_scoped")).await.expect("CRM healthy");
    assert_eq!(sb.faults(Scope::Crm).mode, FaultMode::Healthy);

    sb.set_faults_for(Scope::Analytics, Faults::healthy());
    seg.deliver(&lead("lr_scoped2"))
        .await
        .expect("healthy again");
    let stats = sb.stats();
    assert_eq!(stats.faults_injected, 1);
    assert_eq!((stats.identify_calls, stats.track_calls), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// file

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("file")
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn file_sink_writes_one_line_per_key_across_rebuilds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ctx(dir.path(), &[], None);
    let cfg = SinkConfig::file("archive");
    let path = dir.path().join("sinks/leads.jsonl");

    let sink = sinks::build(0, &cfg, &c).await.expect("builds");
    let first = sink.deliver(&lead("lr_f1")).await.expect("written");
    let again = sink.deliver(&lead("lr_f1")).await.expect("redelivery");
    assert_eq!(first.persisted_at, again.persisted_at);
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 1);
    let v: Value = serde_json::from_str(&lines[0]).expect("json line");
    assert_eq!(v["key"], "lr_f1");
    assert_eq!(v["fields"]["email"], EMAIL);
    let persisted = v["persisted_at"].as_str().expect("persisted_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(persisted).is_ok(),
        "{persisted}"
    );
    drop(sink);

    // A new instance over the same file (a restart) still knows the key.
    let sink = sinks::build(0, &cfg, &c).await.expect("rebuilds");
    let after = sink
        .deliver(&lead("lr_f1"))
        .await
        .expect("redelivery after restart");
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after epoch")
            .as_millis()
    };
    assert_eq!(ms(after.persisted_at), ms(first.persisted_at));
    assert_eq!(read_lines(&path).len(), 1);
    sink.deliver(&lead("lr_f2")).await.expect("second key");
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    assert!(lines[1].contains("\"key\":\"lr_f2\""));
}

#[tokio::test]
async fn file_sink_survives_a_torn_last_line_and_resolves_relative_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ctx(dir.path(), &[], None);
    let cfg = SinkConfig::new(
        "archive",
        FileSinkConfig {
            path: Some("out/custom.jsonl".into()),
            fsync: Some(true),
        },
    );
    let path = dir.path().join("out/custom.jsonl");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    // A crash mid-append leaves a partial line without newline.
    std::fs::write(
        &path,
        "{\"key\":\"lr_old\",\"persisted_at\":\"2026-01-01T00:00:00.000Z\"}\n{\"key\":\"lr_to",
    )
    .expect("seed");

    let sink = sinks::build(0, &cfg, &c).await.expect("builds");
    let old = sink.deliver(&lead("lr_old")).await.expect("known key");
    assert_eq!(
        chrono::DateTime::<chrono::Utc>::from(old.persisted_at).to_rfc3339(),
        "2026-01-01T00:00:00+00:00"
    );
    sink.deliver(&lead("lr_new")).await.expect("new key");
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1], "{\"key\":\"lr_to");
    let v: Value = serde_json::from_str(&lines[2]).expect("new line starts fresh");
    assert_eq!(v["key"], "lr_new");

    drop(sink);
    let sink = sinks::build(0, &cfg, &c).await.expect("rebuilds");
    sink.deliver(&lead("lr_new")).await.expect("known");
    sink.deliver(&lead("lr_old")).await.expect("known");
    assert_eq!(read_lines(&path).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// nats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_publish_dedupes_by_msg_id() {
    let server = common::NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CRMOUT".into(),
        subjects: vec!["crm.out.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream");

    let dir = tempfile::tempdir().expect("tempdir");
    let bus = NatsSinkConfig {
        subject: Some("crm.out.{sender}".into()),
        jetstream: Some(true),
        ..NatsSinkConfig::default()
    };
    let cfg = SinkConfig::new("bus", bus.clone());
    let sink = sinks::build(0, &cfg, &ctx(dir.path(), &[], Some(client.clone())))
        .await
        .expect("builds");
    let l = lead("lr_js");
    let a = sink.deliver(&l).await.expect("published");
    let b = sink.deliver(&l).await.expect("duplicate is success");
    assert_eq!(a.remote_id.as_deref(), Some("CRMOUT:1"));
    assert_eq!(b.remote_id.as_deref(), Some("CRMOUT:1"));

    let mut stream = js.get_stream("CRMOUT").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
    let msg = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(msg.subject.as_str(), "crm.out.demo");
    assert_eq!(
        msg.headers.get(header::MSG_ID).map(|v| v.as_str()),
        Some("lr_js")
    );
    assert_eq!(
        msg.headers.get(header::RECEIVED_AT).map(|v| v.as_str()),
        Some("2026-11-24T20:01:02.345Z")
    );
    let got: LeadRecord = serde_json::from_slice(&msg.payload).expect("record JSON");
    assert_eq!(got, l);

    // A subject no stream captures: retried (the stream may be coming), not dead-lettered.
    let cfg = SinkConfig::new(
        "bus",
        NatsSinkConfig {
            subject: Some("nowhere.{sender}".into()),
            ..bus
        },
    );
    let sink = sinks::build(0, &cfg, &ctx(dir.path(), &[], Some(client)))
        .await
        .expect("builds");
    let err = sink.deliver(&l).await.expect_err("no stream");
    assert_eq!(err.class(), "no_stream");
    assert!(!err.is_permanent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_core_publish_carries_the_headers() {
    use futures::StreamExt as _;
    let server = common::NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut sub = client.subscribe("core.demo").await.expect("subscribe");
    client.flush().await.expect("flush");

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = SinkConfig::new(
        "bus",
        NatsSinkConfig {
            subject: Some("core.{sender}".into()),
            ..NatsSinkConfig::default()
        },
    );
    let sink = sinks::build(0, &cfg, &ctx(dir.path(), &[], Some(client)))
        .await
        .expect("builds");
    let l = lead("lr_core");
    let d = sink.deliver(&l).await.expect("published");
    assert_eq!(d.remote_id, None);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("message");
    let headers = msg.headers.expect("headers");
    assert_eq!(
        headers.get(header::MSG_ID).map(|v| v.as_str()),
        Some("lr_core")
    );
    let got: LeadRecord = serde_json::from_slice(&msg.payload).expect("record JSON");
    assert_eq!(got, l);

    // A sender id that would break the subject is refused for good.
    let mut bad = lead("lr_bad");
    bad.sender = "a.>".into();
    let err = sink.deliver(&bad).await.expect_err("bad subject");
    assert!(err.is_permanent());
    assert_eq!(err.class(), "config");
}

// ---------------------------------------------------------------------------------------------
// sandbox HTTP control API

#[tokio::test]
async fn sandbox_http_control_api() {
    let sb = sandbox().await;
    let http = reqwest::Client::new();
    let base = sb.url();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move {
            let r = req.send().await.expect("GET");
            r.json::<Value>().await.expect("json")
        }
    };
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
    // A CRM write as the http sink makes it, always for the same key.
    let write = || {
        http.post(format!("{base}/leads"))
            .header("Idempotency-Key", "lr_ctl")
            .json(&json!({"key": "lr_ctl"}))
            .send()
    };

    let faults = json!({"fail_next": 1, "fail_status": 429, "retry_after_secs": 9});
    let r = post("/_sandbox/faults?scope=crm", faults)
        .await
        .expect("set faults");
    assert_eq!(r.status(), 200);
    let faults = get("/_sandbox/faults").await;
    assert_eq!(faults["crm"]["fail_next"], 1);
    assert_eq!(faults["analytics"]["fail_next"], 0);

    let r = write().await.expect("post");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "9");
    let r = write().await.expect("post");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body, json!({"id": "crm_1", "created": true}));
    let r = write().await.expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"id": "crm_1", "created": false})
    );

    let k = get("/_sandbox/keys/lr_ctl").await;
    assert_eq!(
        (
            k["requests"].as_u64(),
            k["writes"].as_u64(),
            k["created"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );

    let r = post("/_sandbox/idempotency", json!({"mode": "ignore"}))
        .await
        .expect("idempotency");
    assert_eq!(r.status(), 200);
    assert_eq!(sb.idempotency(), IdempotencyMode::Ignore);

    let r = post("/_sandbox/faults", json!({"mode": "explode"}))
        .await
        .expect("bad faults");
    assert_eq!(r.status(), 400);

    let stats = get("/_sandbox/stats").await;
    assert_eq!(stats["records"], 1);
    assert_eq!(stats["writes"], 2);
    assert_eq!(stats["faults_injected"], 1);
    assert_eq!(stats["idempotency"], "ignore");

    let records = get("/_sandbox/records").await;
    assert_eq!(records[0]["id"], "crm_1");

    let r = http
        .post(format!("{base}/_sandbox/reset"))
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 200);
    assert_eq!(sb.stats().records, 0);
    assert_eq!(sb.idempotency(), IdempotencyMode::Honor);
    assert!(sb.record("lr_ctl").is_none());

    sb.stop().await;
    assert!(reqwest::get(format!("{base}/_sandbox/stats"))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_takes_a_concurrent_burst_with_redeliveries() {
    use futures::StreamExt as _;
    let sb = sandbox().await;
    let sink = http_sink(&sb).await;
    let started = Instant::now();
    // 1000 leads, each delivered twice, 50 in flight: the redeliveries must create nothing.
    let results: Vec<_> = futures::stream::iter((0..2000).map(|i| {
        let sink = sink.clone();
        async move { sink.deliver(&lead(&format!("lr_burst_{}", i % 1000))).await }
    }))
    .buffer_unordered(50)
    .collect()
    .await;
    let took = started.elapsed();
    assert!(results.iter().all(Result::is_ok));
    let stats = sb.stats();
    assert_eq!(stats.records, 1000);
    assert_eq!(stats.writes, 2000);
    assert_eq!(stats.duplicate_keys, 0);
    assert_eq!(stats.keys, 1000);
    tracing::info!(?took, "2000 deliveries");
    assert!(took < Duration::from_secs(20), "{took:?}");
}
