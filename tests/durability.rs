//! `streams.durability = "fsync"` against real nats-servers: the atomic batch publisher, the
//! group committer, the start-up check of the server's sync mode, and no false 202.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use leadrouter::devtools::harness::{self, NatsOptions};
use leadrouter::queue::batch::{self, BatchError, Outbound};

fn outbound(subject: &str, msg_id: &str) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    Outbound {
        subject: subject.to_string(),
        headers,
        payload: Bytes::from(format!("{{\"id\":\"{msg_id}\"}}")),
    }
}

/// One atomic batch under a fresh id, 5 s to be acknowledged.
async fn publish_batch(
    client: &async_nats::Client,
    msgs: &[Outbound],
) -> Result<batch::BatchAck, BatchError> {
    batch::publish(client, &batch::new_batch_id(), msgs, Duration::from_secs(5)).await
}

async fn stream_with(js: &jetstream::Context, name: &str, atomic: bool) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        allow_atomic_publish: atomic,
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_batch_stores_all_or_nothing() {
    let nats = harness::NatsServer::with_options(
        NatsOptions::new().jetstream_extra("sync_interval: always"),
    )
    .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let mut s = stream_with(&js, "ATOM", true).await;

    let msgs: Vec<_> = (0..100)
        .map(|i| outbound("atom.x", &format!("m{i}")))
        .collect();
    let ack = publish_batch(&client, &msgs).await.unwrap();
    assert_eq!(
        (ack.stream.as_str(), ack.last_sequence, ack.count),
        ("ATOM", 100, 100)
    );
    assert_eq!(s.info().await.unwrap().state.messages, 100);

    // A batch holding one id already stored: nothing of it is stored.
    let msgs = vec![
        outbound("atom.x", "new1"),
        outbound("atom.x", "m5"),
        outbound("atom.x", "new2"),
    ];
    let r = publish_batch(&client, &msgs).await;
    assert!(matches!(r, Err(BatchError::DuplicateMsgId)), "{r:?}");
    // An id repeated inside the batch: the same.
    let msgs = vec![outbound("atom.x", "new3"), outbound("atom.x", "new3")];
    let r = publish_batch(&client, &msgs).await;
    assert!(matches!(r, Err(BatchError::DuplicateMsgId)), "{r:?}");
    assert_eq!(s.info().await.unwrap().state.messages, 100);

    // A batch of one is its own commit.
    let ack = publish_batch(&client, &[outbound("atom.x", "solo")])
        .await
        .unwrap();
    assert_eq!((ack.last_sequence, ack.count), (101, 1));

    // A stream without allow_atomic_publish refuses, and says why.
    stream_with(&js, "PLAIN", false).await;
    let r = publish_batch(
        &client,
        &[outbound("plain.x", "a"), outbound("plain.x", "b")],
    )
    .await;
    match r {
        Err(BatchError::Refused { err_code, .. }) => assert_eq!(err_code, 10174),
        other => panic!("{other:?}"),
    }
}

use common::{demo_config, free_port, stream_messages, App, RouterConfig};
use leadrouter::devtools::harness::GroupCommitSection;
use leadrouter::queue::durability::DurabilityError;
use leadrouter::service::{Service, ServiceError};
use serde_json::json;

/// A nats-server that fsyncs before it acks, with its monitoring port for the start-up check.
fn synced_server() -> harness::NatsServer {
    harness::NatsServer::with_options(
        NatsOptions::new()
            .http_port(free_port())
            .jetstream_extra("sync_interval: always"),
    )
    .unwrap()
}

fn fsync_config(nats: &harness::NatsServer) -> common::RouterConfig {
    demo_config()
        .durability("fsync")
        .monitor_url(nats.monitor_url().unwrap())
}

fn lead(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({"email": format!("lead{i}@example.com"), "first_name": "Ada"}))
        .unwrap()
}

fn commits(kind: &str) -> u64 {
    leadrouter::telemetry::metrics::metrics()
        .publish_commits
        .with_label_values(&[kind])
        .get()
}

/// `cfg` under `fsync`, parsed as `serve` would, with a data dir and intake port of its own.
fn fsync_on(cfg: RouterConfig, data: &std::path::Path) -> leadrouter::config::Config {
    cfg.durability("fsync")
        .data_dir(data)
        .intake_listen(common::any_port())
        .parse(std::path::Path::new("test.toml"), &common::test_env())
        .unwrap()
}

/// Why `serve` refused to start on `cfg`; panics if it started, or refused for another reason.
async fn refusal(cfg: &leadrouter::config::Config) -> DurabilityError {
    match Service::start(cfg, &common::test_env()).await {
        Err(ServiceError::Durability(e)) => e,
        Err(other) => panic!("refused for another reason: {other:?}"),
        Ok(_) => panic!("started under fsync"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_against_a_server_that_does_not_fsync_refuses_to_start() {
    let lazy =
        harness::NatsServer::with_options(NatsOptions::new().http_port(free_port())).unwrap();
    let data = tempfile::tempdir().unwrap();
    let env = common::test_env();
    let external = || demo_config().nats_url(lazy.url());

    let cfg = fsync_on(
        external().monitor_url(lazy.monitor_url().unwrap()),
        data.path(),
    );
    let err = refusal(&cfg).await;
    assert!(matches!(err, DurabilityError::NotSynced { .. }), "{err:?}");
    let text = leadrouter::error_chain::chain(&err);
    assert!(text.contains("sync_interval: always"), "{text}");
    assert!(text.contains(&lazy.monitor_url().unwrap()), "{text}");

    // An unreachable monitor is no proof either.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let cfg = fsync_on(external().monitor_url(unreachable), data.path());
    let err = refusal(&cfg).await;
    assert!(
        matches!(err, DurabilityError::Unreachable { .. }),
        "{err:?}"
    );

    // Without a monitoring URL there is nothing to ask: it starts, and warns that it cannot
    // verify (docs/durability.md).
    let cfg = fsync_on(external(), data.path());
    let service = Service::start(&cfg, &env).await.expect("starts unverified");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_template_without_the_sync_placeholder_refuses_fsync() {
    let templates = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(common::manifest_dir().join("nats/nats-server.conf.tmpl")).unwrap();
    assert!(shipped.contains("{{jetstream_sync}}"));
    std::fs::write(
        templates.path().join("nats-server.conf.tmpl"),
        shipped.replace("{{jetstream_sync}}", ""),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let cfg = fsync_on(
        demo_config()
            .embedded_nats(free_port(), templates.path())
            .embedded_nats_binary(common::nats_server_bin()),
        data.path(),
    );
    let err = refusal(&cfg).await;
    assert!(matches!(err, DurabilityError::NotSynced { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_202_under_group_commit_is_in_the_stream() {
    let nats = synced_server();
    let app = App::start(&nats.url(), fsync_config(&nats)).await;
    let batches_before = commits("batch");

    let n = 400;
    let answers = futures::future::join_all((0..n).map(|i| {
        let app = &app;
        async move { app.post_signed("demo", &format!("evt_{i}"), &lead(i)).await }
    }))
    .await;
    for (i, (status, body, _)) in answers.iter().enumerate() {
        assert_eq!(*status, 202, "lead {i}: {body}");
        assert_eq!(body["duplicate"], false, "lead {i}: {body}");
    }
    let stored = stream_messages(&nats.url(), "LEADS").await;
    let ids: std::collections::HashSet<_> = stored.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(stored.len(), n, "one message per 202");
    assert_eq!(ids.len(), n);
    // 400 requests at once on 2 cores: they were coalesced, not published one by one.
    assert!(
        commits("batch") > batches_before,
        "no atomic batch was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_inside_one_batch_window_store_one_and_answer_all() {
    let nats = synced_server();
    // Batches from two leads up, so a burst of duplicates surely meets a batch.
    let cfg = fsync_config(&nats)
        .group_commit(GroupCommitSection {
            min_batch: Some(2),
            ..Default::default()
        })
        // Two routers on one account share their DLQ key.
        .dlq_key("k1", "TEST_DLQ_KEY");
    let mut env = common::test_env();
    env.insert(
        "TEST_DLQ_KEY".into(),
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
    );
    let app = App::start_with(&nats.url(), cfg.clone(), env.clone()).await;

    // 32 copies of one event and 32 other events, all at once.
    let answers = futures::future::join_all((0..64).map(|i| {
        let id = if i % 2 == 0 {
            "evt_same".to_string()
        } else {
            format!("evt_{i}")
        };
        let body = if i % 2 == 0 { lead(0) } else { lead(i) };
        let app = &app;
        async move { (i, app.post_signed("demo", &id, &body).await) }
    }))
    .await;
    let mut first = 0;
    for (i, (status, body, _)) in &answers {
        assert_eq!(*status, 202, "request {i}: {body}");
        if i % 2 == 0 && body["duplicate"] == false {
            first += 1;
        }
        if i % 2 == 1 {
            assert_eq!(body["duplicate"], false, "request {i}: {body}");
        }
    }
    assert_eq!(first, 1, "exactly one copy is the stored one");
    let stored = stream_messages(&nats.url(), "LEADS").await;
    assert_eq!(
        stored.len(),
        33,
        "one message for the repeated event, one for each other"
    );

    // A second router has never seen the ids the first stored: its batch holding a retry of
    // one is refused by the server (10201), and it falls back to one publish per lead.
    let other = App::start_with(&nats.url(), cfg, env).await;
    let fallbacks = commits("fallback");
    // Every third request retries an event the first router stored (evt_1, evt_3, ...: a
    // vendor retry is the same request again), so every batch of this burst holds one.
    let retry = |i: usize| i % 3 == 0;
    let answers = futures::future::join_all((0..48).map(|i| {
        let (id, body) = if retry(i) {
            let stored = 2 * (i / 3) + 1;
            (format!("evt_{stored}"), lead(stored))
        } else {
            (format!("evt_second_{i}"), lead(i))
        };
        let other = &other;
        async move { (i, other.post_signed("demo", &id, &body).await) }
    }))
    .await;
    for (i, (status, body, _)) in &answers {
        assert_eq!(*status, 202, "request {i}: {body}");
        assert_eq!(body["duplicate"], retry(*i), "request {i}: {body}");
    }
    assert_eq!(stream_messages(&nats.url(), "LEADS").await.len(), 33 + 32);
    assert!(
        commits("fallback") > fallbacks,
        "the retry's batch was refused and re-sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_mid_batch_gives_no_false_202() {
    let mut nats = synced_server();
    let url = nats.url();
    let app = std::sync::Arc::new(App::start(&url, fsync_config(&nats)).await);

    // Vendors keep posting from 64 connections while the server dies under them.
    let (first_202, mut seen_202) = tokio::sync::watch::channel(0usize);
    let first_202 = std::sync::Arc::new(first_202);
    let (first_503, mut seen_503) = tokio::sync::watch::channel(0usize);
    let first_503 = std::sync::Arc::new(first_503);
    let mut tasks = Vec::new();
    for w in 0..64 {
        let app = app.clone();
        let (first_202, first_503) = (first_202.clone(), first_503.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = 0;
            for i in 0..40 {
                let id = format!("evt_{w}_{i}");
                let (status, body, _) = app.post_signed("demo", &id, &lead(i)).await;
                match status {
                    202 => {
                        accepted.push(
                            body["id"]
                                .as_str()
                                .expect("a 202 names the key")
                                .to_string(),
                        );
                        first_202.send_modify(|n| *n += 1);
                    }
                    503 => {
                        refused += 1;
                        first_503.send_modify(|n| *n += 1);
                    }
                    other => panic!("{id}: {other} {body}"),
                }
            }
            (accepted, refused)
        }));
    }
    // Kill it once leads are flowing, so batches are in flight.
    seen_202.wait_for(|n| *n >= 200).await.unwrap();
    nats.kill();
    // Down until the outage has been answered: what was in flight and what came meanwhile.
    seen_503.wait_for(|n| *n >= 1).await.unwrap();
    let before_restart = *seen_202.borrow();
    nats.restart().unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (a, r) = t.await.unwrap();
        accepted.extend(a);
        refused += r;
    }
    let stored: std::collections::HashSet<_> = stream_messages(&url, "LEADS")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let missing: Vec<_> = accepted
        .iter()
        .filter(|key| !stored.contains(key.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} leads got a 202 and are not stored: {missing:?}",
        missing.len()
    );
    assert!(refused > 0, "the outage was answered 503");
    assert!(
        accepted.len() > before_restart,
        "leads were accepted again after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_runs_with_sync_always_under_fsync() {
    let data = tempfile::tempdir().unwrap();
    let env = common::test_env();
    let cfg = fsync_on(
        demo_config()
            .embedded_nats(free_port(), common::manifest_dir().join("nats"))
            .embedded_nats_binary(common::nats_server_bin()),
        data.path(),
    );
    let app = App::start_cfg(cfg, env, data).await;
    let monitor = app
        .service
        .embedded()
        .and_then(|e| e.monitor_url())
        .expect("the embedded server has a monitoring endpoint");
    let varz: serde_json::Value = reqwest::get(format!("{monitor}/varz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(varz["jetstream"]["config"]["sync_always"], true, "{varz}");
    app.accept("demo", "evt_embedded", &lead(1)).await;
    let rendered =
        std::fs::read_to_string(app.cfg.nats_store_dir().join("nats-server.conf")).unwrap();
    assert!(rendered.contains("sync_interval: always"), "{rendered}");
}
