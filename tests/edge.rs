//! Edge deployments, as real processes on loopback: a hub router with its nats-server, and edge
//! routers (`serve` with `[edge]`) whose embedded nats-servers are leaf nodes of the hub with
//! JetStream domains of their own. The hub writes to the sandbox CRM, which keeps one record
//! per idempotency key: a lead is at the sink exactly once when its key has one record.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::NatsServer;
use futures::StreamExt;
use leadrouter::devtools::harness::{
    self, EdgeSection, NatsOptions, RouterConfig, RouterProcess, SenderSpec,
};
use leadrouter::devtools::sandbox_crm::SandboxCrm;
use leadrouter::intake::schemes::Verifier;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(5);

const ADMIN_TOKEN: &str = "edge-test-admin-token-0123456789";

fn env() -> HashMap<String, String> {
    let mut e = common::test_env();
    e.insert("LEADROUTER_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    e
}

fn sender() -> SenderSpec {
    SenderSpec::standard_webhooks("demo", "TEST_DEMO_SECRET")
        .rate(10_000, 10_000)
        .fields(&["email", "first_name"])
}

/// A hub's nats-server, run by the test so that the test can stop it: JetStream with no
/// domain, and a leaf listener for the edges.
fn hub_nats(leaf_port: u16, dir: &Path) -> NatsServer {
    let inner = harness::NatsServer::with_options(NatsOptions::new().dir(dir).extra(format!(
        "leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"
    )))
    .expect("hub nats-server");
    NatsServer::wrap(inner)
}

fn hub_config(dir: &Path, crm: &SandboxCrm, edges: &[&str]) -> RouterConfig {
    RouterConfig::new()
        .data_dir(dir.join("hub"))
        .intake_listen(common::free_addr())
        .admin_token_env("TEST_NO_ADMIN_TOKEN")
        .sender(sender())
        .sink(common::crm_sink(&crm.url()))
        .handlers(leadrouter::devtools::harness::HandlersSection {
            schemas_dir: Some(common::shipped_schemas()),
            ..Default::default()
        })
        .hub_edges(edges)
}

/// An edge named `name` on its embedded server, a leaf of the hub's listener on `leaf_port`.
fn edge_config(dir: &Path, name: &str, leaf_port: u16) -> RouterConfig {
    RouterConfig::new()
        .data_dir(dir.join(name))
        .embedded_nats(
            harness::free_port().expect("port"),
            common::manifest_dir().join("nats"),
        )
        .intake_listen(common::free_addr())
        .sender(sender())
        .edge(EdgeSection::new(
            name,
            format!("nats-leaf://127.0.0.1:{leaf_port}"),
        ))
}

async fn start(dir: &Path, name: &str, cfg: &RouterConfig) -> RouterProcess {
    let r = RouterProcess::for_config(
        env!("CARGO_BIN_EXE_leadrouter"),
        cfg,
        dir.join(format!("{name}.toml")),
    )
    .expect("router config")
    .log(dir.join(format!("{name}.log")))
    .envs(env())
    .env("LEADROUTER_TOOLS_DIR", harness::tools_dir());
    common::serve(r).await
}

struct Vendor {
    http: reqwest::Client,
    signer: Verifier,
}

impl Vendor {
    fn new() -> Vendor {
        Vendor {
            http: common::http_client(),
            signer: harness::standard_webhooks_signer(common::DEMO_SECRET).expect("signer"),
        }
    }

    /// One signed lead; the HTTP status and body.
    async fn post(&self, router: &RouterProcess, event_id: &str, email: &str) -> (u16, String) {
        let url = format!("{}/v1/intake/demo", router.intake_url());
        let body = serde_json::to_vec(&json!({"email": email, "first_name": "Edge"})).unwrap();
        match harness::post_signed(&self.http, &self.signer, &url, event_id, &body, TIMEOUT).await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// Posts leads `range` (event id `{prefix}-{n}`), `concurrency` at a time; every answer
    /// must be a 202. Returns the leads' idempotency keys.
    async fn post_all(
        &self,
        router: &RouterProcess,
        prefix: &str,
        range: std::ops::Range<usize>,
        concurrency: usize,
    ) -> Vec<String> {
        futures::stream::iter(range)
            .map(|n| async move {
                let event_id = format!("{prefix}-{n}");
                let (status, body) = self
                    .post(router, &event_id, &format!("{prefix}{n}@example.com"))
                    .await;
                assert_eq!(status, 202, "{event_id}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("202 body");
                v["id"].as_str().expect("id").to_string()
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}

/// Waits until every key in `keys` has exactly one record at the CRM, then checks that no
/// key has more and no stranger is there.
async fn all_at_crm_once(
    crm: &SandboxCrm,
    keys: &[String],
    limit: Duration,
    routers: &[&RouterProcess],
) {
    let deadline = Instant::now() + limit;
    loop {
        let stats: HashMap<String, u64> =
            crm.keys().into_iter().map(|k| (k.key, k.created)).collect();
        let missing = keys.iter().filter(|k| !stats.contains_key(*k)).count();
        if missing == 0 {
            let twice: Vec<_> = stats.iter().filter(|(_, c)| **c != 1).collect();
            assert!(twice.is_empty(), "written more than once: {twice:?}");
            assert_eq!(stats.len(), keys.len(), "records of no lead at the CRM");
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = routers
                .iter()
                .map(|r| format!("{}:\n{}", r.config_path().display(), r.log_tail(40)))
                .collect();
            panic!(
                "{missing} of {} leads not at the hub's sink after {limit:?}\n{}",
                keys.len(),
                logs.join("\n\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A JetStream context on the edge's own server (its embedded one, by the configured port).
async fn edge_js(cfg: &RouterConfig) -> async_nats::jetstream::Context {
    let port = cfg.nats.embedded.port.expect("embedded port");
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .expect("connect to the edge's server");
    async_nats::jetstream::new(client)
}

async fn edge_waiting(js: &async_nats::jetstream::Context) -> u64 {
    let mut s = js.get_stream("LEADS_EDGE").await.expect("LEADS_EDGE");
    s.info().await.expect("info").state.messages
}

/// Waits until the edge's stream holds nothing: work-queue retention removes what the hub
/// stored.
async fn edge_emptied(js: &async_nats::jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while edge_waiting(js).await > 0 {
        assert!(Instant::now() < deadline, "leads left at the edge");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of one sample of `/metrics`, e.g. `leadrouter_edge_waiting_leads{edge="eu1"}`.
async fn metric(router: &RouterProcess, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", router.intake_url()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

/// Polls `/metrics` until `sample` satisfies `cond`.
async fn wait_metric(
    router: &RouterProcess,
    sample: &str,
    limit: Duration,
    cond: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = metric(router, sample).await.filter(|v| cond(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never as expected within {limit:?} (now {:?})",
            metric(router, sample).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_leads_posted_to_an_edge_reach_the_hub_sink_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crm = common::sandbox_crm().await;
    let leaf_port = harness::free_port().expect("port");
    // The hub on its embedded server, accepting the edge's leaf connection.
    let mut hub_cfg = hub_config(dir.path(), &crm, &["eu1"])
        .embedded_nats(
            harness::free_port().expect("port"),
            common::manifest_dir().join("nats"),
        )
        .leafnode_port(leaf_port)
        .admin_listen(common::free_addr());
    hub_cfg.admin.token_env = Some("LEADROUTER_ADMIN_TOKEN".into());
    let hub = start(dir.path(), "hub", &hub_cfg).await;
    let edge_cfg = edge_config(dir.path(), "eu1", leaf_port);
    let edge = start(dir.path(), "eu1", &edge_cfg).await;

    let vendor = Vendor::new();
    let keys = vendor.post_all(&edge, "a", 0..2000, 32).await;
    all_at_crm_once(&crm, &keys, Duration::from_secs(60), &[&hub, &edge]).await;

    // Work-queue retention: what the hub stored left the edge.
    let js = edge_js(&edge_cfg).await;
    edge_emptied(&js).await;
    // The edge's 202 came from its own store, in its own domain.
    let account = js.query_account().await.expect("account");
    assert_eq!(account.domain.as_deref(), Some("edge-eu1"));
    // The hub sees the edge: link up, nothing waiting, and every lead's edge -> hub delay.
    wait_metric(
        &hub,
        "leadrouter_edge_link_up{edge=\"eu1\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    )
    .await;
    wait_metric(
        &hub,
        "leadrouter_edge_waiting_leads{edge=\"eu1\"}",
        Duration::from_secs(20),
        |v| v == 0.0,
    )
    .await;
    let delays = metric(&hub, "leadrouter_edge_delay_seconds_count{edge=\"eu1\"}").await;
    assert_eq!(delays, Some(2000.0));
    // The edge sees its link to the hub too.
    wait_metric(
        &edge,
        "leadrouter_edge_link_up{edge=\"eu1\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    )
    .await;

    // `leadrouter stats` and the console overview show the edge.
    let admin = format!("http://{}", hub_cfg.admin_addr());
    let http = common::http_client();
    let get = |path: &str| {
        http.get(format!("{admin}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let stats: serde_json::Value = get("/api/stats")
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["edges"][0]["name"], "eu1", "{stats}");
    assert_eq!(stats["edges"][0]["link_up"], true, "{stats}");
    assert_eq!(stats["edges"][0]["waiting"], 0, "{stats}");
    let overview: serde_json::Value = get("/api/overview?window=15m")
        .await
        .expect("overview")
        .json()
        .await
        .expect("JSON");
    assert_eq!(overview["edges"][0]["name"], "eu1", "{overview}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .args(["stats", "--config"])
        .arg(hub.config_path())
        .envs(env())
        .output()
        .expect("stats runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("edges")
            && l.contains("eu1")
            && l.contains("link up · 0 waiting")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_keeps_answering_202_through_a_30_s_hub_outage_and_delivers_everything_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crm = common::sandbox_crm().await;
    let leaf_port = harness::free_port().expect("port");
    let mut hub_nats = hub_nats(leaf_port, &dir.path().join("hub-nats"));
    let hub_cfg = hub_config(dir.path(), &crm, &["eu1"]).nats_url(hub_nats.url());
    let hub = start(dir.path(), "hub", &hub_cfg).await;
    let edge_cfg = edge_config(dir.path(), "eu1", leaf_port);
    let edge = start(dir.path(), "eu1", &edge_cfg).await;
    let vendor = Vendor::new();
    let mut keys = vendor.post_all(&edge, "before", 0..100, 8).await;
    all_at_crm_once(&crm, &keys, Duration::from_secs(60), &[&hub, &edge]).await;

    // The hub's nats-server goes away for 30 s; the edge keeps taking leads, 10 a second.
    hub_nats.kill();
    let js = edge_js(&edge_cfg).await;
    let outage = Instant::now();
    let mut n = 0;
    let mut peak = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        let batch = vendor.post_all(&edge, "during", n..n + 10, 10).await;
        n += 10;
        keys.extend(batch);
        peak = peak.max(edge_waiting(&js).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        peak >= (n as u64) - 10,
        "the leads waited at the edge: {peak} of {n}"
    );
    // The edge's own gauge saw them wait.
    wait_metric(
        &edge,
        "leadrouter_edge_waiting_leads{edge=\"eu1\"}",
        Duration::from_secs(15),
        |v| v > 0.0,
    )
    .await;
    wait_metric(
        &edge,
        "leadrouter_edge_link_up{edge=\"eu1\"}",
        Duration::from_secs(15),
        |v| v == 0.0,
    )
    .await;

    hub_nats.restart();
    all_at_crm_once(&crm, &keys, Duration::from_secs(180), &[&hub, &edge]).await;
    edge_emptied(&js).await;
    wait_metric(
        &edge,
        "leadrouter_edge_waiting_leads{edge=\"eu1\"}",
        Duration::from_secs(15),
        |v| v == 0.0,
    )
    .await;
    wait_metric(
        &hub,
        "leadrouter_edge_link_up{edge=\"eu1\"}",
        Duration::from_secs(30),
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_killed_during_an_outage_delivers_its_waiting_leads_after_its_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crm = common::sandbox_crm().await;
    let leaf_port = harness::free_port().expect("port");
    let mut hub_nats = hub_nats(leaf_port, &dir.path().join("hub-nats"));
    let hub_cfg = hub_config(dir.path(), &crm, &["eu1"]).nats_url(hub_nats.url());
    let _hub = start(dir.path(), "hub", &hub_cfg).await;
    let edge_cfg = edge_config(dir.path(), "eu1", leaf_port);
    let mut edge = start(dir.path(), "eu1", &edge_cfg).await;

    hub_nats.kill();
    let vendor = Vendor::new();
    let keys = vendor.post_all(&edge, "held", 0..50, 8).await;
    // kill -9: the edge's nats-server goes down with it (PR_SET_PDEATHSIG).
    edge.kill9();
    edge.start(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("edge restarts: {e}\n{}", edge.log_text()));
    let js = edge_js(&edge_cfg).await;
    assert_eq!(
        edge_waiting(&js).await,
        50,
        "the store kept every 202'd lead"
    );

    hub_nats.restart();
    all_at_crm_once(&crm, &keys, Duration::from_secs(180), &[&_hub, &edge]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_vendor_event_posted_to_two_edges_is_one_lead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crm = common::sandbox_crm().await;
    let leaf_port = harness::free_port().expect("port");
    let _hub_nats = hub_nats(leaf_port, &dir.path().join("hub-nats"));
    let hub_cfg = hub_config(dir.path(), &crm, &["eu1", "us1"]).nats_url(_hub_nats.url());
    let _hub = start(dir.path(), "hub", &hub_cfg).await;
    // eu1 fsyncs before its 202 (group commit on its own store), us1 is lazy: an edge's 202
    // means what it means on any router.
    let eu_cfg = edge_config(dir.path(), "eu1", leaf_port).durability("fsync");
    let eu = start(dir.path(), "eu1", &eu_cfg).await;
    assert!(
        eu.log_text().contains("fsync before the ack"),
        "{}",
        eu.log_tail(20)
    );
    let us = start(
        dir.path(),
        "us1",
        &edge_config(dir.path(), "us1", leaf_port),
    )
    .await;
    let vendor = Vendor::new();

    // A vendor's retry lands on the other site: the same event to both edges.
    let mut keys = Vec::new();
    for n in 0..20 {
        let id = format!("both-{n}");
        let email = format!("both{n}@example.com");
        let (s1, b1) = vendor.post(&eu, &id, &email).await;
        let (s2, b2) = vendor.post(&us, &id, &email).await;
        assert_eq!((s1, s2), (202, 202), "{b1} / {b2}");
        let k1: serde_json::Value = serde_json::from_str(&b1).unwrap();
        let k2: serde_json::Value = serde_json::from_str(&b2).unwrap();
        assert_eq!(k1["id"], k2["id"], "one event, one key");
        keys.push(k1["id"].as_str().unwrap().to_string());
    }
    keys.extend(vendor.post_all(&eu, "eu", 0..20, 8).await);
    keys.extend(vendor.post_all(&us, "us", 0..20, 8).await);
    all_at_crm_once(&crm, &keys, Duration::from_secs(120), &[&_hub, &eu, &us]).await;
    // One lead, not one absorbed repeat: the hub's duplicate window dropped the second copy,
    // so the CRM was asked once.
    for k in &keys[..20] {
        let rec = crm.record(k).expect("record");
        assert_eq!(rec.requests, 1, "{k} was sent {} times", rec.requests);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_edge_store_answers_503_and_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crm = common::sandbox_crm().await;
    let leaf_port = harness::free_port().expect("port");
    // No hub yet: the link is down from the start. The store holds 1 s at 5 leads/s.
    let mut edge_section = EdgeSection::new("eu1", format!("nats-leaf://127.0.0.1:{leaf_port}"));
    edge_section.outage = Some(Duration::from_secs(1));
    edge_section.rate = Some(5.0);
    let mut edge_cfg = edge_config(dir.path(), "eu1", leaf_port);
    edge_cfg.edge = Some(edge_section);
    let edge = start(dir.path(), "eu1", &edge_cfg).await;
    let vendor = Vendor::new();
    let keys = vendor.post_all(&edge, "fits", 0..5, 1).await;
    let url = format!("{}/v1/intake/demo", edge.intake_url());
    let body = serde_json::to_vec(&json!({"email": "overflow@example.com"})).unwrap();
    let full = harness::post_signed(
        &vendor.http,
        &vendor.signer,
        &url,
        "overflow",
        &body,
        TIMEOUT,
    )
    .await
    .expect("answered");
    assert_eq!(full.status().as_u16(), 503);
    assert_eq!(
        full.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("30"),
        "a full store frees room only as the hub catches up"
    );
    let err: serde_json::Value = full.json().await.expect("JSON error");
    assert_eq!(err["error"], "queue_unavailable", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("store is full"),
        "{err}"
    );
    // A vendor's retry of a stored lead while the store is full: a duplicate, or a 503 when
    // nats-server checks the limits first (it does, at times). Its lead is safe either way,
    // and the retry after the drain below is answered as a duplicate.
    let (status, body) = vendor.post(&edge, "fits-0", "fits0@example.com").await;
    assert!(
        status == 503 || (status == 202 && body.contains("\"duplicate\":true")),
        "{status} {body}"
    );

    // The hub comes up: the five reach its sink, and the edge takes leads again.
    let hub_nats = hub_nats(leaf_port, &dir.path().join("hub-nats"));
    let hub_cfg = hub_config(dir.path(), &crm, &["eu1"]).nats_url(hub_nats.url());
    let _hub = start(dir.path(), "hub", &hub_cfg).await;
    all_at_crm_once(&crm, &keys, Duration::from_secs(120), &[&_hub, &edge]).await;
    let js = edge_js(&edge_cfg).await;
    edge_emptied(&js).await;
    let (status, body) = vendor.post(&edge, "overflow", "overflow@example.com").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = vendor.post(&edge, "fits-0", "fits0@example.com").await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"duplicate\":true"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lead_taken_at_an_edge_is_one_trace_from_the_edge_to_the_hub_s_sink() {
    let receiver = common::otlp::OtlpReceiver::start().await;
    let telemetry = harness::TelemetrySection {
        otlp_endpoint: Some(receiver.endpoint()),
        otlp_protocol: Some("http/protobuf".into()),
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let crm = common::sandbox_crm().await;
    let leaf_port = harness::free_port().expect("port");
    let _hub_nats = hub_nats(leaf_port, &dir.path().join("hub-nats"));
    let traced = |r: RouterProcess, service: &str| {
        r.scrub_env_prefix("OTEL_")
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    };
    let hub_cfg = hub_config(dir.path(), &crm, &["eu1"])
        .nats_url(_hub_nats.url())
        .telemetry(telemetry.clone());
    let edge_cfg = edge_config(dir.path(), "eu1", leaf_port).telemetry(telemetry);
    let mut routers = Vec::new();
    for (name, cfg, service) in [("hub", &hub_cfg, "lr-hub"), ("eu1", &edge_cfg, "lr-edge")] {
        let r = RouterProcess::for_config(
            env!("CARGO_BIN_EXE_leadrouter"),
            cfg,
            dir.path().join(format!("{name}.toml")),
        )
        .expect("router config")
        .log(dir.path().join(format!("{name}.log")))
        .envs(env())
        .env("LEADROUTER_TOOLS_DIR", harness::tools_dir());
        routers.push(common::serve(traced(r, service)).await);
    }
    let edge = &routers[1];
    let keys = Vendor::new().post_all(edge, "traced", 0..1, 1).await;
    all_at_crm_once(&crm, &keys, Duration::from_secs(60), &[&routers[0], edge]).await;

    let spans = receiver
        .wait_for("the hub's sink span", Duration::from_secs(30), |spans| {
            spans
                .iter()
                .any(|s| s.name == "sink" && s.service_name == "lr-hub")
        })
        .await;
    let sink = spans
        .iter()
        .find(|s| s.name == "sink" && s.service_name == "lr-hub")
        .expect("sink span");
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == sink.trace_id)
        .collect();
    let find = |name: &str| {
        trace.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no `{name}` span in the lead's trace: {:#?}",
                common::otlp::brief(&spans)
            )
        })
    };
    let (intake, publish, handle) = (find("intake"), find("publish"), find("handle"));
    assert_eq!(intake.service_name, "lr-edge");
    assert_eq!(publish.service_name, "lr-edge");
    assert_eq!(
        publish.attr("messaging.destination.name"),
        Some(&json!("leads.edge.eu1.demo")),
        "the edge stores on its own subject"
    );
    // The traceparent crossed the leaf link and the hub's filing with the message.
    assert_eq!(handle.service_name, "lr-hub");
    assert_eq!(handle.parent_span_id, publish.span_id);
    assert_eq!(handle.attr("key"), Some(&json!(keys[0])));
    let sent = crm
        .record(&keys[0])
        .and_then(|r| r.last_headers.get("traceparent").cloned());
    assert_eq!(
        sent,
        Some(format!("00-{}-{}-01", sink.trace_id, sink.span_id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_on_a_server_outside_its_domain_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An operator's own server, without `domain: edge-eu1`: its JetStream would be the hub's
    // across a leaf link, and the edge's 202 would depend on the link.
    let nats = NatsServer::start();
    let mut section = EdgeSection::new("eu1", "unused");
    section.hub = None;
    let cfg = RouterConfig::new()
        .data_dir(dir.path().join("eu1"))
        .nats_url(nats.url())
        .intake_listen(common::free_addr())
        .sender(sender())
        .edge(section);
    let mut r = RouterProcess::for_config(
        env!("CARGO_BIN_EXE_leadrouter"),
        &cfg,
        dir.path().join("eu1.toml"),
    )
    .expect("router config")
    .log(dir.path().join("eu1.log"))
    .envs(env())
    .env("LEADROUTER_TOOLS_DIR", harness::tools_dir());
    let started = r.start(Duration::from_secs(30)).await;
    assert!(
        started.is_err(),
        "an edge outside its domain must not serve"
    );
    let log = r.log_text();
    assert!(
        log.contains("needs nats-server's JetStream domain `edge-eu1`")
            && log.contains("no domain"),
        "{log}"
    );
    let exit = match r.last_exit() {
        Some(s) => Some(s),
        None => r.wait_exit(Duration::from_secs(10)).await,
    };
    assert!(
        exit.is_some_and(|s| !s.success()),
        "exits non-zero: {exit:?}"
    );
}
