//! OTLP traces, end to end: the real `leadrouter serve` binary (tracing is process-global, so
//! each test runs its own child process) exporting to a real OTLP receiver that decodes the
//! protobuf export (tests/common/otlp.rs).

mod common;

use std::time::Duration;

use common::otlp::{brief, OtlpReceiver, SpanRecord};
use common::NatsServer;
use leadrouter::devtools::harness::{self, RouterProcess, TelemetrySection};
use leadrouter::devtools::sandbox_crm::{Faults, SandboxCrm};
use leadrouter::intake::schemes::Verifier;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-traces-0123";
const WAIT: Duration = Duration::from_secs(30);
const EMAIL: &str = "ada.traced@example.org";
const NAME: &str = "Adalind";

/// `leadrouter serve` as a child process, with a NATS server and a sandbox CRM sink of its own.
struct Served {
    router: RouterProcess,
    admin: String,
    signer: Verifier,
    _dir: tempfile::TempDir,
    crm: SandboxCrm,
    nats: NatsServer,
    http: reqwest::Client,
}

/// The `[telemetry]` table exporting to `endpoint` over `protocol`.
fn otlp(endpoint: String, protocol: &str) -> TelemetrySection {
    TelemetrySection {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// `telemetry`: the `[telemetry]` table; `env`: extra variables for the child.
async fn serve(telemetry: TelemetrySection, env: &[(&str, &str)]) -> Served {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::served_config(dir.path(), &nats.url(), &crm.url()).telemetry(telemetry);
    let parsed = cfg
        .parse(&dir.path().join("leadrouter.toml"), &common::test_env())
        .expect("valid config");
    let signer = harness::sender_signer(&parsed, "demo", &common::test_env()).expect("signer");
    let router = common::served(&cfg, dir.path())
        .log(dir.path().join("serve.log"))
        // Nothing from the developer's shell decides where spans go.
        .scrub_env_prefix("OTEL_")
        .env("TEST_DEMO_SECRET", common::DEMO_SECRET)
        .env("LEADROUTER_ADMIN_TOKEN", TOKEN)
        // Spans do not depend on the log filter: the logs are quiet, the traces complete.
        .env("LEADROUTER_LOG", "warn")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Served {
        router: common::serve(router).await,
        admin: format!("http://{}", cfg.admin_addr()),
        signer,
        _dir: dir,
        crm,
        nats,
        http: common::http_client(),
    }
}

impl Served {
    fn intake(&self) -> String {
        format!("{}/v1/intake/demo", self.router.intake_url())
    }

    /// Signs `body` as the demo vendor would and posts it, with a vendor `traceparent` if given.
    async fn post(&self, event_id: &str, body: &[u8], traceparent: Option<&str>) -> (u16, Value) {
        let url = self.intake();
        let headers = harness::signed_headers(&self.signer, &url, event_id, body).unwrap();
        let mut req = self.http.post(&url).headers(headers);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let (st, b, _) = common::send(req.body(body.to_vec())).await;
        (st, b)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (st, b, _) = common::send(req).await;
        assert_eq!(st, 200, "{path}: {b}");
        b
    }

    /// SIGTERM, as an orchestrator stops it; returns once the process exited.
    async fn stop(&mut self) {
        common::stop_cleanly(&mut self.router).await;
    }
}

fn lead() -> Vec<u8> {
    serde_json::to_vec(&json!({"email": EMAIL, "first_name": NAME, "phone": "+1 650 555 4567"}))
        .unwrap()
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> Vec<&'a SpanRecord> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanRecord], name: &str, trace: &str) -> &'a SpanRecord {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.trace_id == trace)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one `{name}` span in trace {trace}: {:#?}",
        brief(spans)
    );
    found[0]
}

/// The CRM's last request for `key` carried `sink`'s context as its `traceparent`.
fn assert_crm_saw(crm: &SandboxCrm, key: &str, sink: &SpanRecord) {
    let sent = crm
        .record(key)
        .and_then(|r| r.last_headers.get("traceparent").cloned());
    assert_eq!(
        sent,
        Some(format!("00-{}-{}-01", sink.trace_id, sink.span_id)),
        "the CRM sees the lead's trace"
    );
}

fn has(spans: &[SpanRecord], name: &str, pred: impl Fn(&SpanRecord) -> bool) -> bool {
    spans.iter().any(|s| s.name == name && pred(s))
}

/// The spans of one delivered lead: intake, verify, publish, handle, validate, enrich, sink.
const LEAD_SPANS: usize = 7;

/// Whether some trace that `root` (by name) belongs to has `n` spans.
fn complete(spans: &[SpanRecord], root: &str, n: usize) -> bool {
    spans
        .iter()
        .filter(|s| s.name == root)
        .any(|r| spans.iter().filter(|s| s.trace_id == r.trace_id).count() >= n)
}

/// Spans carry ids and codes, never the lead's fields.
fn assert_no_pii(spans: &[SpanRecord]) {
    for s in spans {
        let text = format!("{:?}", s.attributes);
        for needle in [EMAIL, NAME, "555 4567", "6505554567"] {
            assert!(
                !text.contains(needle),
                "`{needle}` in span {}: {text}",
                s.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lead_is_one_trace_from_the_edge_to_the_sink_over_http_protobuf() {
    let receiver = OtlpReceiver::start().await;
    let telemetry = otlp(receiver.endpoint(), "http/protobuf");
    let mut s = serve(telemetry, &[("OTEL_SERVICE_NAME", "lr-traces-test")]).await;

    let (st, b) = s.post("evt-trace-1", &lead(), None).await;
    assert_eq!(st, 202, "{b}");
    let key = b["id"].as_str().unwrap().to_string();
    let spans = receiver
        .wait_for("the lead's spans", WAIT, |spans| {
            complete(spans, "intake", LEAD_SPANS)
        })
        .await;

    let intake = named(&spans, "intake")[0];
    let trace = intake.trace_id.clone();
    assert_eq!(
        intake.parent_span_id, "",
        "no vendor traceparent: a new trace"
    );
    assert_eq!(intake.kind, 2, "server span");
    assert_eq!(intake.attr("sender"), Some(&json!("demo")));
    assert_eq!(intake.attr("key"), Some(&json!(key)));
    assert_eq!(intake.attr("http.response.status_code"), Some(&json!(202)));
    assert_eq!(intake.service_name, "lr-traces-test");
    assert_eq!(intake.protocol, "http/protobuf");

    let verify = one(&spans, "verify", &trace);
    let publish = one(&spans, "publish", &trace);
    let handle = one(&spans, "handle", &trace);
    let validate = one(&spans, "validate", &trace);
    let enrich = one(&spans, "enrich", &trace);
    let sink = one(&spans, "sink", &trace);
    assert_eq!(verify.parent_span_id, intake.span_id);
    assert_eq!(publish.parent_span_id, intake.span_id);
    assert_eq!(publish.kind, 4, "producer span");
    // `leads.in.{sender}.{partition}`: the partition follows from the lead's group key.
    let destination = publish
        .attr("messaging.destination.name")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    assert_eq!(
        leadrouter::queue::partition::parse_subject(destination).map(|s| s.sender),
        Some("demo"),
        "{destination}"
    );
    assert!(
        leadrouter::queue::partition::parse_subject(destination)
            .and_then(|s| s.partition)
            .is_some(),
        "{destination}"
    );
    // The traceparent travelled in the NATS headers: the handler continues the edge's trace.
    assert_eq!(handle.parent_span_id, publish.span_id);
    assert_eq!(handle.attr("key"), Some(&json!(key)));
    assert_eq!(handle.attr("leadrouter.replay"), Some(&json!(false)));
    assert_eq!(handle.attr("attempt"), Some(&json!(1)));
    assert_eq!(handle.attr("leadrouter.outcome"), Some(&json!("delivered")));
    for child in [validate, enrich, sink] {
        assert_eq!(child.parent_span_id, handle.span_id, "{}", child.name);
    }
    assert_eq!(sink.attr("sink"), Some(&json!("crm")));
    assert_eq!(sink.kind, 3, "client span");
    assert_ne!(sink.status, 2, "the CRM took it");
    // Only spans (no log events) and nothing from other crates.
    let all: Vec<_> = spans.iter().filter(|s| s.trace_id == trace).collect();
    assert_eq!(all.len(), LEAD_SPANS, "{:#?}", brief(&spans));
    assert_no_pii(&spans);
    assert_eq!(s.crm.record(&key).map(|r| r.writes), Some(1));
    // The CRM request carried the lead's trace: its parent is the lead's sink span.
    assert_crm_saw(&s.crm, &key, sink);

    // A vendor that traces its webhooks: the edge continues the vendor's trace.
    let vendor_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let vendor_span = "00f067aa0ba902b7";
    let tp = format!("00-{vendor_trace}-{vendor_span}-01");
    let body = serde_json::to_vec(&json!({"email": "grace.traced@example.org"})).unwrap();
    let (st, b) = s.post("evt-trace-2", &body, Some(&tp)).await;
    assert_eq!(st, 202, "{b}");
    let spans = receiver
        .wait_for("the vendor-parented trace", WAIT, |spans| {
            spans.iter().filter(|s| s.trace_id == vendor_trace).count() >= LEAD_SPANS
        })
        .await;
    let intake = one(&spans, "intake", vendor_trace);
    assert_eq!(intake.parent_span_id, vendor_span);
    let handle = one(&spans, "handle", vendor_trace);
    let publish = one(&spans, "publish", vendor_trace);
    assert_eq!(handle.parent_span_id, publish.span_id);

    // A rejected request is traced too, with its error code and no lead data.
    let unsigned = s
        .http
        .post(s.intake())
        .header("content-type", "application/json")
        .body(lead());
    assert_eq!(common::send(unsigned).await.0, 401);
    let spans = receiver
        .wait_for("the rejected request's span", WAIT, |spans| {
            has(spans, "intake", |s| {
                s.attr("http.response.status_code") == Some(&json!(401))
            })
        })
        .await;
    let rejected = spans
        .iter()
        .find(|s| s.name == "intake" && s.attr("http.response.status_code") == Some(&json!(401)))
        .unwrap();
    assert_eq!(
        rejected.attr("error.type"),
        Some(&json!("signature_missing"))
    );
    assert_no_pii(&spans);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_a_new_trace_linked_to_the_original_over_grpc() {
    let receiver = OtlpReceiver::start().await;
    let telemetry = otlp(receiver.endpoint(), "grpc");
    let mut s = serve(telemetry, &[]).await;
    s.crm.set_faults(Faults::fail_next(1000, 500));

    let (st, b) = s.post("evt-trace-dlq", &lead(), None).await;
    assert_eq!(st, 202, "{b}");
    let key = b["id"].as_str().unwrap().to_string();
    let spans = receiver
        .wait_for("the dead-lettering attempt", WAIT, |spans| {
            has(spans, "handle", |s| {
                s.attr("leadrouter.outcome") == Some(&json!("dead"))
            })
        })
        .await;
    let dead = spans
        .iter()
        .find(|s| s.name == "handle" && s.attr("leadrouter.outcome") == Some(&json!("dead")))
        .unwrap();
    let original = dead.trace_id.clone();
    assert_eq!(dead.protocol, "grpc");
    assert_eq!(dead.status, 2, "a dead-lettered lead is an error");
    assert_eq!(
        one(&spans, "intake", &original).attr("key"),
        Some(&json!(key))
    );
    // Both attempts belong to the lead's one trace; the failed sink calls are errors.
    assert_eq!(
        named(&spans, "handle")
            .iter()
            .filter(|h| h.trace_id == original)
            .count(),
        2,
        "{:#?}",
        brief(&spans)
    );
    assert!(named(&spans, "sink")
        .iter()
        .all(|s| s.trace_id == original && s.status == 2 && s.attr("error.type").is_some()));
    assert!(has(&spans, "dead_letter", |s| s.trace_id == original));

    let list = s
        .admin(
            reqwest::Method::GET,
            "/api/dlq?reason=retries_exhausted",
            None,
        )
        .await;
    let id = list["entries"][0]["id"].as_u64().expect("a DLQ entry");
    s.crm.heal();
    let r = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/dlq/{id}/replay"),
            Some(json!({"reason": "CRM back up"})),
        )
        .await;
    assert_eq!(r["outcome"], "replayed", "{r}");

    let spans = receiver
        .wait_for("the replay's trace", WAIT, |spans| {
            // replay, handle, validate, enrich, sink: the replay span may end last.
            has(spans, "handle", |s| {
                s.attr("leadrouter.replay") == Some(&json!(true))
                    && s.attr("leadrouter.outcome") == Some(&json!("delivered"))
            }) && complete(spans, "replay", 5)
        })
        .await;
    let handle = spans
        .iter()
        .find(|s| s.name == "handle" && s.attr("leadrouter.replay") == Some(&json!(true)))
        .unwrap();
    assert_ne!(handle.trace_id, original, "a replay starts a new trace");
    assert_eq!(handle.attr("key"), Some(&json!(key)), "same lead");
    assert_eq!(
        handle.attr("leadrouter.replay_of"),
        Some(&json!(id.to_string()))
    );
    assert!(
        handle.links.iter().any(|(t, _)| *t == original),
        "the replayed handle span links to the original trace: {:?}",
        handle.links
    );
    // The new trace's root is the replay, linked to the original; the handler is its child.
    let replay = one(&spans, "replay", &handle.trace_id);
    assert_eq!(replay.parent_span_id, "", "a root span");
    assert_eq!(replay.attr("leadrouter.dlq_id"), Some(&json!(id as i64)));
    assert_eq!(replay.attr("leadrouter.replay"), Some(&json!(true)));
    assert!(replay.links.iter().any(|(t, _)| *t == original));
    assert_eq!(handle.parent_span_id, replay.span_id);
    let sink = one(&spans, "sink", &handle.trace_id);
    assert_eq!(sink.parent_span_id, handle.span_id);
    assert_ne!(sink.status, 2);
    assert_no_pii(&spans);
    assert_eq!(s.crm.record(&key).map(|r| r.writes), Some(1));
    // The replayed write carries the replay's trace.
    assert_crm_saw(&s.crm, &key, sink);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_spans_still_buffered() {
    let receiver = OtlpReceiver::start().await;
    let telemetry = otlp(receiver.endpoint(), "http/protobuf");
    // A batch delay far beyond the test: only the shutdown flush can deliver the spans.
    let mut s = serve(telemetry, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;
    let (st, b) = s.post("evt-trace-flush", &lead(), None).await;
    assert_eq!(st, 202, "{b}");
    assert!(receiver.spans().is_empty());
    s.stop().await;
    // The process has exited: whatever it exported is already here.
    let spans = receiver.spans();
    assert!(
        has(&spans, "intake", |s| s.attr("key") == Some(&b["id"])),
        "{:#?}",
        brief(&spans)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_no_export_and_no_trace_headers() {
    let receiver = OtlpReceiver::start().await;
    // No endpoint in the file or the environment: a receiver listening changes nothing.
    let mut s = serve(TelemetrySection::default(), &[]).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (st, b) = s.post("evt-trace-off", &lead(), Some(tp)).await;
    assert_eq!(st, 202, "{b}");
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("LEADS").await.unwrap();
    let m = stream.get_raw_message(1).await.unwrap();
    assert!(
        m.headers
            .get(leadrouter::queue::message::header::TRACEPARENT)
            .is_none(),
        "{:?}",
        m.headers
    );
    s.stop().await;
    assert_eq!(receiver.requests(), 0);
}

/// `leadrouter import` starts a trace per imported lead, and the handler continues it (so an
/// imported lead is as traceable as one that came in over HTTP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_lead_starts_its_own_trace_that_the_handler_continues() {
    let receiver = OtlpReceiver::start().await;
    let mut s = serve(otlp(receiver.endpoint(), "http/protobuf"), &[]).await;
    let file = s._dir.path().join("import.jsonl");
    let lines: String = (0..2)
        .map(|i| {
            json!({
                "schema": "lead.v1",
                "sender": "demo",
                "source_event_id": format!("imported-{i}"),
                "received_at": "2026-06-01T12:00:00.000Z",
                "fields": {"email": format!("imported{i}@example.org")},
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .args(["import", "--json", "--quiet", "--config"])
        .arg(s._dir.path().join("leadrouter.toml"))
        .arg(&file)
        .current_dir(common::manifest_dir())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("TEST_DEMO_SECRET", common::DEMO_SECRET)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .output()
        .expect("run leadrouter import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["published"], 2, "{summary}");
    let spans = receiver
        .wait_for("two imported leads, each handled", WAIT, |spans| {
            let imports: Vec<_> = spans.iter().filter(|s| s.name == "import").collect();
            imports.len() >= 2
                && imports.iter().all(|i| {
                    spans
                        .iter()
                        .any(|h| h.name == "handle" && h.parent_span_id == i.span_id)
                })
        })
        .await;
    let imports = named(&spans, "import");
    assert_eq!(imports.len(), 2);
    assert_ne!(
        imports[0].trace_id, imports[1].trace_id,
        "one trace per lead"
    );
    for i in imports {
        assert_eq!(i.parent_span_id, "", "a new trace");
        assert_eq!(i.attr("sender"), Some(&json!("demo")));
        let handle = one(&spans, "handle", &i.trace_id);
        assert_eq!(handle.parent_span_id, i.span_id);
        one(&spans, "sink", &i.trace_id);
    }
    s.stop().await;
}
