//! `GET /metrics`: every stage counted with bounded labels, and the alert rules in
//! `config/alerts.yml` well-formed, linked to the runbook and built on metrics that exist.
//!
//! The registry is process-wide, so one test drives all the traffic and asserts exact values;
//! the other only reads files.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use common::admin::AdminApp;
use common::{HandlersSection, NatsServer, RouterConfig, SenderSpec};
use leadrouter::devtools::sandbox_crm::Faults;
use leadrouter::queue::message::{self, LeadHeaders};
use leadrouter::telemetry::metrics::metrics;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-metrics-0123456789";
const RUNBOOK_BASE: &str = "https://github.com/leadrouter/leadrouter/blob/main/docs/runbook.md#";

/// One parsed exposition: (metric name, labels, value) per sample line.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().expect("numeric sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = BTreeMap::new();
                    for pair in split_labels(body) {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted label value");
                        labels.insert(k.to_string(), v.replace("\\\"", "\"").replace("\\\\", "\\"));
                    }
                    (name.to_string(), labels)
                }
            };
            out.push((name, labels, value));
        }
        Scrape(out)
    }

    /// The sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics"))
    }

    fn has_name(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }

    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, l, _)| l.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < body.len() {
        parts.push(&body[start..]);
    }
    parts
}

/// A sender with a bucket of `per_second` tokens a second and as many in a burst.
fn sender(id: &str, per_second: u32) -> SenderSpec {
    SenderSpec::standard_webhooks(id, "TEST_DEMO_SECRET")
        .rate(per_second, per_second)
        .fields(&["email", "first_name"])
}

fn lead(email: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"email": email, "first_name": "Mira"})).unwrap()
}

/// A sample's name, labels and value.
type Sample<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// A sample as the process exports it (the pool counters are summed at each scrape).
fn exported(name: &str, labels: &[(&str, &str)]) -> u64 {
    Scrape::parse(&metrics().encode())
        .get(name, labels)
        .unwrap_or(0.0) as u64
}

fn delivered(replay: &str) -> u64 {
    exported("leadrouter_delivered_total", &[("replay", replay)])
}

fn dead(reason: &str) -> u64 {
    exported("leadrouter_dlq_placements_total", &[("reason", reason)])
}

/// A replay through the admin API, as `actor` when given; the answer of a 200.
async fn admin_post(s: &AdminApp, path: &str, actor: Option<&str>, body: Value) -> Value {
    let mut req = s.http.post(s.url(path)).bearer_auth(TOKEN).json(&body);
    if let Some(a) = actor {
        req = req.header("x-leadrouter-actor", a);
    }
    let (st, b, _) = common::send(req).await;
    assert_eq!(st, 200, "{path}: {b}");
    b
}

async fn dlq_ids(s: &AdminApp, reason: &str) -> Vec<u64> {
    let (st, b, _) = s.get(&format!("/api/dlq?reason={reason}")).await;
    assert_eq!(st, 200, "{b}");
    b["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_stage_with_bounded_labels() {
    let mut env = common::test_env();
    env.insert("LEADROUTER_ADMIN_TOKEN".into(), TOKEN.into());
    let cfg = RouterConfig::new()
        .admin_listen(common::any_port())
        .handlers(HandlersSection {
            max_ack_pending: Some(100),
            ..common::quick_handlers(&common::shipped_schemas())
        })
        .sender(sender("m-main", 1000))
        .sender(sender("m-limited", 1))
        // A hub of one edge that never connects: its link gauges (the edge alert's inputs).
        .hub_edges(&["m-edge"]);
    let s = AdminApp::start(NatsServer::start(), common::sandbox_crm().await, cfg, env).await;
    let (app, crm, nats) = (&s.app, &s.crm, &s.nats);

    // Three leads, delivered.
    let mut keys = Vec::new();
    for i in 1..=3 {
        let email = format!("a{i}@example.com");
        keys.push(
            app.accept("m-main", &format!("evt-a{i}"), &lead(&email))
                .await,
        );
    }
    s.wait("3 delivered", |_| delivered("false") == 3).await;

    // The vendor retries the first: the edge's dedupe window answers duplicate.
    let (st, b, _) = app
        .post_signed("m-main", "evt-a1", &lead("a1@example.com"))
        .await;
    assert_eq!((st, b["duplicate"].as_bool()), (202, Some(true)), "{b}");

    // The same lead stored again under another Nats-Msg-Id: the handler's idempotency record
    // short-circuits it.
    let stored = common::stream_messages(&nats.url(), "LEADS").await;
    let (_, payload) = stored
        .iter()
        .find(|(id, _)| id == &keys[0])
        .expect("first lead in LEADS");
    {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let copy = LeadHeaders {
            msg_id: Some("metrics-test-copy-1".into()),
            ..LeadHeaders::default()
        };
        let (subject, h, body) =
            message::encode_stored("m-main", None, &copy, payload.clone().into());
        js.publish_with_headers(subject, h, body)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    s.wait("handler duplicate", |_| {
        exported("leadrouter_handler_duplicates_total", &[]) == 1
    })
    .await;

    // A stale signature (401) and an unknown sender (404).
    let (st, b, _) = app
        .post_signed_at(
            "m-main",
            "evt-stale",
            &lead("stale@example.com"),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .await;
    assert_eq!(
        (st, b["error"].as_str()),
        (401, Some("signature_stale")),
        "{b}"
    );
    let req = app
        .http
        .post(app.intake_url("no-such-sender"))
        .header("content-type", "application/json")
        .body("{}");
    assert_eq!(common::send(req).await.0, 404);

    // Rate limited: a bucket of one token.
    let (mut limited_ok, mut limited_429) = (0u64, 0u64);
    for i in 0..3 {
        let (st, b, _) = app
            .post_signed(
                "m-limited",
                &format!("evt-l{i}"),
                &lead(&format!("l{i}@example.com")),
            )
            .await;
        match st {
            202 => limited_ok += 1,
            429 => limited_429 += 1,
            _ => panic!("unexpected {st}: {b}"),
        }
    }
    assert!(
        limited_429 >= 1,
        "three requests at once overrun a one-token bucket"
    );
    s.wait("rate-limited sender's leads delivered", |_| {
        delivered("false") == 3 + limited_ok
    })
    .await;

    // One sink failure, then the retry succeeds.
    crm.set_faults(Faults::fail_next(1, 500));
    app.accept("m-main", "evt-a4", &lead("a4@example.com"))
        .await;
    s.wait("retried lead delivered", |_| {
        delivered("false") == 4 + limited_ok
    })
    .await;

    // A CRM that keeps failing: the lead is dead-lettered after max_deliver = 2 attempts.
    crm.set_faults(Faults::fail_next(1000, 500));
    app.accept("m-main", "evt-a5", &lead("a5@example.com"))
        .await;
    s.wait("retries exhausted", |_| dead("retries_exhausted") == 1)
        .await;

    // Fixed; replayed through the admin API: delivered as a replay.
    crm.heal();
    let ids = dlq_ids(&s, "retries_exhausted").await;
    assert_eq!(ids.len(), 1);
    let path = format!("/api/dlq/{}/replay", ids[0]);
    let r = admin_post(&s, &path, None, json!({"reason": "CRM back"})).await;
    assert_eq!(r["outcome"], "replayed", "{r}");
    s.wait("replay delivered", |_| delivered("true") == 1).await;

    // A schema failure, replayed (unfixed) through the NATS service and then the CLI's way
    // (the admin API with `x-leadrouter-actor: cli:<user>`): it comes back each time.
    app.accept("m-main", "evt-a6", &lead("not-an-email")).await;
    s.wait("schema mismatch", |_| dead("schema_mismatch") == 1)
        .await;
    let id = dlq_ids(&s, "schema_mismatch").await[0];
    let client = async_nats::connect(nats.url()).await.unwrap();
    let reply = client
        .request(
            "leadrouter.dlq.replay",
            serde_json::to_vec(&json!({"id": id, "reason": "try again"}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["outcome"], "replayed", "{reply}");
    s.wait("back in the DLQ", |_| dead("schema_mismatch") == 2)
        .await;
    let path = format!("/api/dlq/{id}/replay");
    let r = admin_post(
        &s,
        &path,
        Some("cli:tester"),
        json!({"reason": "and again"}),
    )
    .await;
    assert_eq!(r["outcome"], "replayed", "{r}");
    s.wait("back in the DLQ again", |_| dead("schema_mismatch") == 3)
        .await;

    // Queue gauges, read the way the service's 5 s poller reads them.
    let js = async_nats::jetstream::new(client.clone());
    leadrouter::queue::gauges::refresh_queue_gauges(&js, 16)
        .await
        .expect("router consumer info");

    // A batching sink's budget gauges exist once one is configured (an alert reads them):
    // build one here, in the same process-wide registry the service exports.
    let _hubspot = leadrouter::sinks::build(
        0,
        &leadrouter::sinks::SinkConfig::new(
            "hubspot",
            leadrouter::devtools::harness::hubspot_sink(crm.url(), "HUBSPOT_TOKEN"),
        ),
        &leadrouter::sinks::SinkContext {
            data_dir: app.data.path().to_path_buf(),
            nats: None,
            env: [("HUBSPOT_TOKEN".to_string(), "t".to_string())].into(),
        },
    )
    .await
    .expect("a hubspot sink builds");

    // The hub asked its edge (first poll at start, 2 s to answer) and counts it down: a
    // timer's gauge, polled.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while Scrape::parse(&metrics().encode())
        .get("leadrouter_edge_link_down_seconds", &[("edge", "m-edge")])
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge was never polled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        exported("leadrouter_edge_link_up", &[("edge", "m-edge")]),
        0
    );

    // Scrape the public listener.
    let resp = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.unwrap();
    let m = Scrape::parse(&text);

    let ok = 4.0 + limited_ok as f64;
    let (limited_ok, limited_429) = (limited_ok as f64, limited_429 as f64);
    let main = |status| [("sender", "m-main"), ("status", status)];
    let limited = |status| [("sender", "m-limited"), ("status", status)];
    let sink = |outcome, class, replay| {
        [
            ("sink", "crm"),
            ("outcome", outcome),
            ("class", class),
            ("replay", replay),
        ]
    };
    // Each sample's exact value.
    let exact: &[Sample] = &[
        // a1..a6 and the duplicate: 7 accepted; the stale signature.
        ("leadrouter_intake_requests_total", &main("202"), 7.0),
        ("leadrouter_intake_requests_total", &main("401"), 1.0),
        ("leadrouter_intake_requests_total", &main("503"), 0.0),
        (
            "leadrouter_intake_requests_total",
            &limited("202"),
            limited_ok,
        ),
        (
            "leadrouter_intake_requests_total",
            &limited("429"),
            limited_429,
        ),
        (
            "leadrouter_intake_requests_total",
            &[("sender", "_unknown"), ("status", "404")],
            1.0,
        ),
        (
            "leadrouter_intake_duration_seconds_count",
            &[("sender", "m-main")],
            8.0,
        ),
        (
            "leadrouter_intake_duration_seconds_bucket",
            &[("sender", "m-main"), ("le", "+Inf")],
            8.0,
        ),
        (
            "leadrouter_intake_rate_limited_total",
            &[("sender", "m-limited")],
            limited_429,
        ),
        (
            "leadrouter_intake_rate_limited_total",
            &[("sender", "m-main")],
            0.0,
        ),
        (
            "leadrouter_intake_signature_failures_total",
            &[("sender", "m-main"), ("reason", "signature_stale")],
            1.0,
        ),
        (
            "leadrouter_intake_duplicates_total",
            &[("sender", "m-main")],
            1.0,
        ),
        ("leadrouter_handler_duplicates_total", &[], 1.0),
        // Sinks: a1-a4 and the limited sender's leads ok; a4 failed once, a5 twice; the replay
        // ok.
        (
            "leadrouter_sink_requests_total",
            &sink("ok", "none", "false"),
            ok,
        ),
        (
            "leadrouter_sink_requests_total",
            &sink("ok", "none", "true"),
            1.0,
        ),
        (
            "leadrouter_sink_requests_total",
            &sink("failed", "http_5xx", "false"),
            3.0,
        ),
        (
            "leadrouter_handler_stage_duration_seconds_count",
            &[("stage", "sink"), ("sink", "crm")],
            ok + 1.0 + 3.0,
        ),
        // a4's first attempt and a5's first attempt were NAKed for a retry.
        ("leadrouter_retries_total", &[("reason", "sink")], 2.0),
        (
            "leadrouter_dlq_placements_total",
            &[("reason", "retries_exhausted")],
            1.0,
        ),
        (
            "leadrouter_dlq_placements_total",
            &[("reason", "schema_mismatch")],
            3.0,
        ),
        (
            "leadrouter_dlq_placements_total",
            &[("reason", "max_deliveries")],
            0.0,
        ),
        ("leadrouter_replays_total", &[("source", "admin")], 1.0),
        ("leadrouter_replays_total", &[("source", "nats")], 1.0),
        ("leadrouter_replays_total", &[("source", "cli")], 1.0),
        ("leadrouter_delivered_total", &[("replay", "false")], ok),
        ("leadrouter_delivered_total", &[("replay", "true")], 1.0),
        (
            "leadrouter_e2e_latency_seconds_count",
            &[("replay", "false")],
            ok,
        ),
        (
            "leadrouter_e2e_latency_seconds_count",
            &[("replay", "true")],
            1.0,
        ),
        (
            "leadrouter_e2e_latency_seconds_bucket",
            &[("replay", "false"), ("le", "+Inf")],
            ok,
        ),
        // Queue gauges: everything handled, the limit as configured, four DLQ entries.
        ("leadrouter_queue_info_up", &[], 1.0),
        ("leadrouter_queue_pending_messages", &[], 0.0),
        ("leadrouter_queue_max_ack_pending", &[], 100.0),
        ("leadrouter_queue_oldest_unacked_seconds", &[], 0.0),
        // The only router owns every partition.
        ("leadrouter_partitions_owned", &[], 16.0),
        ("leadrouter_dlq_messages", &[], 4.0),
        ("leadrouter_handler_restarts_total", &[], 0.0),
        (
            "leadrouter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        ),
    ];
    for (name, labels, want) in exact {
        assert_eq!(m.value(name, labels), *want, "{name}{labels:?}");
    }
    // The caller's path segment never becomes a label value.
    assert_eq!(
        m.label_values("leadrouter_intake_requests_total", "sender"),
        ["_unknown", "m-limited", "m-main"]
    );
    let present = |name: &str, labels: &[(&str, &str)]| m.get(name, labels).is_some();
    assert!(present(
        "leadrouter_intake_duration_seconds_bucket",
        &[("sender", "m-main"), ("le", "0.0005")]
    ));
    for stage in ["claim", "validate", "enrich"] {
        assert!(
            m.value(
                "leadrouter_handler_stage_duration_seconds_count",
                &[("stage", stage), ("sink", "")]
            ) >= ok,
            "{stage}"
        );
    }
    // Fine enough for the 2 s SLO and for milliseconds.
    for le in ["0.001", "0.005", "1.5", "2", "2.5", "+Inf"] {
        assert!(
            present(
                "leadrouter_e2e_latency_seconds_bucket",
                &[("replay", "false"), ("le", le)]
            ),
            "bucket {le}"
        );
    }
    assert!(m.value("leadrouter_queue_ack_pending_messages", &[]) >= 0.0);

    // No lead data in any label.
    for needle in ["@example.com", "lr_", "evt-", "127.0.0.1", "no-such-sender"] {
        assert!(!text.contains(needle), "`{needle}` in /metrics:\n{text}");
    }
    // Conventions: counters end in _total, durations are in seconds, sizes name their unit.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("leadrouter_"), "{line}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
        if kind == "histogram" {
            assert!(
                name.ends_with("_seconds") || name.ends_with("_leads"),
                "{line}"
            );
        }
    }

    // promtool's linter (naming, units, HELP), when promtool is installed.
    if let Some(promtool) = promtool() {
        use std::io::Write;
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every metric an alert reads is exported.
    for name in alert_metric_names() {
        assert!(
            m.has_name(&name),
            "alert rule reads `{name}`, which /metrics does not export"
        );
    }

    s.shutdown().await;
}

fn alerts() -> serde_norway::Value {
    let text = std::fs::read_to_string(common::manifest_dir().join("config/alerts.yml"))
        .expect("config/alerts.yml");
    serde_norway::from_str(&text).expect("alerts.yml is YAML")
}

fn rules() -> Vec<serde_norway::Value> {
    let doc = alerts();
    let groups = doc["groups"].as_sequence().expect("groups: [...]");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| {
            assert!(g["name"].as_str().is_some(), "every group has a name");
            g["rules"].as_sequence().expect("rules: [...]").clone()
        })
        .collect()
}

/// Every `leadrouter_*` name in the rules' expressions.
fn alert_metric_names() -> Vec<String> {
    let mut names = Vec::new();
    for rule in rules() {
        let expr = rule["expr"].as_str().unwrap();
        let mut rest = expr;
        while let Some(i) = rest.find("leadrouter_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    names
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn alert_rules_are_complete_and_link_runbook_sections() {
    let runbook = std::fs::read_to_string(common::manifest_dir().join("docs/runbook.md"))
        .expect("docs/runbook.md");
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let rules = rules();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        *seen.entry(name.to_string()).or_default() += 1;
        let expr = rule["expr"].as_str().unwrap_or_default();
        assert!(
            expr.contains("leadrouter_"),
            "{name}: expr reads leadrouter metrics"
        );
        let r#for = rule["for"].as_str().unwrap_or_default();
        assert!(
            humantime::parse_duration(r#for).is_ok(),
            "{name}: `for` is a duration, got {:?}",
            rule["for"]
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                !rule["annotations"][key]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{name}: annotation {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let section = url.strip_prefix(RUNBOOK_BASE).unwrap_or_else(|| {
            panic!("{name}: runbook_url {url:?} is not {RUNBOOK_BASE}<section>")
        });
        assert!(
            anchors.iter().any(|a| a == section),
            "{name}: docs/runbook.md has no `## ` heading for #{section} (has {anchors:?})"
        );
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "alert names are unique: {seen:?}"
    );
    // The rules the issue asks for.
    for (needle, what) in [
        ("leadrouter_dlq_placements_total", "DLQ growth"),
        ("leadrouter_e2e_latency_seconds_bucket", "p95 over the SLO"),
        ("leadrouter_queue_pending_messages", "queue depth growing"),
        ("status=~\"5..\"", "intake 5xx"),
        (
            "leadrouter_queue_max_ack_pending",
            "ack pending at its limit",
        ),
        (
            "leadrouter_queue_oldest_unacked_seconds",
            "the oldest unacknowledged lead's age",
        ),
    ] {
        assert!(
            rules
                .iter()
                .any(|r| r["expr"].as_str().unwrap_or_default().contains(needle)),
            "no rule for {what}"
        );
    }
    let slo = rules
        .iter()
        .find(|r| {
            r["expr"]
                .as_str()
                .unwrap_or_default()
                .contains("leadrouter_e2e_latency_seconds_bucket")
        })
        .unwrap()["expr"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        slo.contains("histogram_quantile(0.95") && slo.contains("> 2"),
        "{slo}"
    );

    // promtool, when it is installed, checks the PromQL itself.
    if let Some(promtool) = promtool() {
        let out = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .arg(common::manifest_dir().join("config/alerts.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `PROMTOOL` or `promtool` on the PATH; the checks that need it are skipped (with a note)
/// where it is not installed.
fn promtool() -> Option<std::ffi::OsString> {
    let bin = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let found = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "promtool not found: PromQL and exposition lint skipped (set PROMTOOL to run them)"
        );
    }
    found.then_some(bin)
}
