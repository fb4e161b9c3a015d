//! `leadrouter import FILE.jsonl`: historical exports go through the real pipeline (nats-server,
//! handler pool, file sink) idempotently; bad lines are reported, never fatal, never lost.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{demo_config, manifest_dir, test_env, wait_stats, App, NatsServer, RouterConfig};
use leadrouter::cli::import::{self, ImportError, ImportOptions, ImportSummary};
use leadrouter::config::Config;
use leadrouter::devtools::harness::file_sink;
use leadrouter::intake::envelope::{email_hash, idempotency_key};
use leadrouter::pipeline::PipelineStats;
use leadrouter::queue::message::LeadMessage;
use serde_json::{json, Value};

/// `cfg` and a file sink (`{data_dir}/sinks/leads.jsonl`), where imported leads land.
fn with_file_sink(cfg: RouterConfig) -> RouterConfig {
    cfg.sink(file_sink("leads-file", None))
}

/// `n` envelopes of sender `demo`; every other one carries its key, the rest leave it to the
/// importer (which must compute the same one).
fn envelope_export(dir: &Path, name: &str, n: usize) -> PathBuf {
    let mut text = String::with_capacity(n * 200);
    for i in 0..n {
        let fields =
            json!({"email": format!("Lead{i}@Example.com"), "first_name": format!("Lead {i}")});
        let mut env = json!({
            "schema": "lead.v1",
            "sender": "demo",
            "source_event_id": format!("hist-{i}"),
            "received_at": "2025-06-01T12:00:00.000Z",
            "fields": fields,
        });
        if i % 2 == 0 {
            let map = fields.as_object().expect("object");
            env["key"] = json!(idempotency_key(
                "demo",
                &format!("hist-{i}"),
                &email_hash(map)
            ));
        }
        text.push_str(&env.to_string());
        text.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write export");
    path
}

fn quiet(file: &Path) -> ImportOptions {
    let mut o = ImportOptions::new(file);
    o.quiet = true;
    o
}

async fn import_with_harness_client(
    nats: &NatsServer,
    cfg: &Config,
    opts: &ImportOptions,
) -> ImportSummary {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let started = Instant::now();
    let summary = import::import_into(client, cfg, &test_env(), opts)
        .await
        .expect("import runs");
    eprintln!("import took {:?}:\n{summary}", started.elapsed());
    summary
}

/// A running service with the file sink, its pool's stats, and the options importing an
/// export of `n` envelopes (in the returned directory, which the caller keeps).
async fn start_with_export(
    nats: &NatsServer,
    n: usize,
) -> (App, Arc<PipelineStats>, ImportOptions, tempfile::TempDir) {
    let app = App::start(&nats.url(), with_file_sink(demo_config())).await;
    let stats = app.service.pipeline_stats().expect("pool runs").clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = quiet(&envelope_export(dir.path(), "export.jsonl", n));
    (app, stats, opts, dir)
}

/// Keys of the file sink, with how many lines each has.
fn sink_keys(app: &App) -> HashMap<String, usize> {
    let text =
        std::fs::read_to_string(app.data.path().join("sinks/leads.jsonl")).unwrap_or_default();
    let mut keys = HashMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("sink line is JSON");
        let key = v["key"].as_str().expect("key").to_string();
        *keys.entry(key).or_default() += 1;
    }
    keys
}

/// What `leadrouter import` reads: the demo sender on the NATS at `url`.
fn config_on(url: &str) -> Config {
    demo_config()
        .nats_url(url)
        .parse(Path::new("test.toml"), &test_env())
        .expect("config")
}

async fn leads_stream(nats: &NatsServer) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    async_nats::jetstream::new(client)
        .get_stream("LEADS")
        .await
        .expect("LEADS exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimporting_10k_envelopes_writes_each_lead_once() {
    const N: usize = 10_000;
    let nats = NatsServer::start();
    let (app, stats, opts, _export) = start_with_export(&nats, N).await;

    let first = import_with_harness_client(&nats, &app.cfg, &opts).await;
    assert_eq!(
        (
            first.lines_read,
            first.published,
            first.duplicates,
            first.rejected,
            first.failed
        ),
        (N as u64, N as u64, 0, 0, 0),
        "{first}"
    );
    assert!(first.ok && first.aborted.is_none(), "{first}");

    let t = Instant::now();
    wait_stats(&stats, "first import delivered", |s| {
        s.delivered() >= N as u64
    })
    .await;
    eprintln!("pool delivered {N} in {:?} after the import", t.elapsed());

    // Within the dedupe window: every PubAck says duplicate, nothing new is stored.
    let second = import_with_harness_client(&nats, &app.cfg, &opts).await;
    assert_eq!(
        (
            second.lines_read,
            second.published,
            second.duplicates,
            second.rejected
        ),
        (N as u64, 0, N as u64, 0),
        "{second}"
    );
    assert!(second.ok, "{second}");

    let mut stream = leads_stream(&nats).await;
    assert_eq!(stream.info().await.expect("info").state.messages, N as u64);
    // The pool is drained: nothing pending, nothing unacked, so nothing more can reach a sink.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let backlog = leadrouter::queue::backlog::read(&js, 16)
        .await
        .expect("partition consumers");
    assert_eq!((backlog.pending, backlog.ack_pending), (0, 0));
    assert_eq!(stats.delivered(), N as u64);

    let keys = sink_keys(&app);
    assert_eq!(keys.len(), N, "one sink line per lead");
    assert!(keys.values().all(|&n| n == 1), "no key written twice");
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimport_beyond_the_dedupe_window_is_stopped_by_the_idempotency_record() {
    const N: usize = 100;
    let mut nats = NatsServer::start();
    let (app, stats, opts, _export) = start_with_export(&nats, N).await;

    let first = import_with_harness_client(&nats, &app.cfg, &opts).await;
    assert_eq!((first.published, first.rejected), (N as u64, 0), "{first}");
    wait_stats(&stats, "first import delivered", |s| {
        s.delivered() >= N as u64
    })
    .await;

    // The window expiring, without waiting for it: nats-server keeps the dedupe map across a
    // purge but rebuilds it from the stored messages on start, and after the purge there are
    // none.
    leads_stream(&nats).await.purge().await.expect("purge");
    nats.restart();
    let second = import_with_harness_client(&nats, &app.cfg, &opts).await;
    assert_eq!(
        (second.published, second.duplicates, second.rejected),
        (N as u64, 0, 0),
        "the stream takes them again: {second}"
    );
    wait_stats(&stats, "second import short-circuited", |s| {
        s.duplicates() >= N as u64
    })
    .await;
    assert_eq!(stats.delivered(), N as u64);
    let keys = sink_keys(&app);
    assert_eq!(keys.len(), N);
    assert!(keys.values().all(|&n| n == 1));
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_vendor_lines_map_like_the_edge_and_bad_lines_are_reported() {
    let nats = NatsServer::start();
    let typeform_toml =
        std::fs::read_to_string(manifest_dir().join("config/examples/typeform.toml"))
            .expect("typeform example");
    let mut env = test_env();
    env.insert(
        "LEADROUTER_TYPEFORM_SECRET".into(),
        "typeform-test-secret".into(),
    );
    // The shipped example as it is, text and all: that it maps a real Typeform payload the
    // way the edge does is part of what this checks.
    let cfg = with_file_sink(demo_config()).extra(typeform_toml);
    let app = App::start_with(&nats.url(), cfg, env).await;
    let stats = app.service.pipeline_stats().expect("pool runs").clone();

    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir().join("tests/fixtures/vendors/typeform.json"))
            .expect("fixture"),
    )
    .expect("fixture is JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("typeform-export.jsonl");
    let lines = [
        fixture.to_string(),
        "this line is not JSON".to_string(),
        json!({"sender": "ghost", "source_event_id": "x", "fields": {"email": "a@b.co"}})
            .to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").expect("write export");
    let rejects = dir.path().join("rejects.jsonl");
    let mut opts = quiet(&file);
    opts.sender = Some("typeform".into());
    opts.rejects = Some(rejects.clone());
    opts.received_at_pointer = Some("/form_response/submitted_at".into());

    let summary = import_with_harness_client(&nats, &app.cfg, &opts).await;
    assert_eq!(
        (
            summary.lines_read,
            summary.published,
            summary.rejected,
            summary.failed
        ),
        (3, 1, 2, 0),
        "{summary}"
    );
    assert!(!summary.ok, "rejected lines mean a non-zero exit");
    assert_eq!(summary.exit_code(), std::process::ExitCode::FAILURE);
    let listed: Vec<u64> = summary.rejects.iter().map(|r| r.line).collect();
    assert_eq!(listed, vec![2, 3]);
    assert!(summary.rejects[0].error.contains("not JSON"), "{summary}");
    assert!(
        summary.rejects[1].error.contains("unknown sender `ghost`"),
        "{summary}"
    );
    let json = serde_json::to_value(&summary).expect("summary serializes");
    assert_eq!(json["rejected"], 2);
    assert_eq!(json["ok"], false);

    let written: Vec<Value> = std::fs::read_to_string(&rejects)
        .expect("rejects file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("reject line is JSON"))
        .collect();
    assert_eq!(written.len(), 2);
    assert_eq!(
        (written[0]["line"].as_u64(), written[1]["line"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(written.iter().all(|r| r["error"].is_string()));

    // Stored as the edge would have: mapped, allowlisted, the edge's key and headers.
    let mut stream = leads_stream(&nats).await;
    let seq = stream.info().await.expect("info").state.last_sequence;
    let msg = stream.get_raw_message(seq).await.expect("stored lead");
    let lead = LeadMessage::from_stored(&msg).expect("a lead message");
    let envelope = &lead.envelope;
    let fields = envelope.fields.clone();
    let key = idempotency_key(
        "typeform",
        "01JD8M9ZK2Q3R4S5T6V7W8X9YZ",
        &email_hash(&fields),
    );
    assert_eq!(envelope.key, key);
    assert_eq!(envelope.source_event_id, "01JD8M9ZK2Q3R4S5T6V7W8X9YZ");
    assert_eq!(envelope.received_at, "2026-11-20T14:03:27.000Z");
    assert_eq!(fields["company"], "Eckert-Mauchly");
    assert!(
        !msg.payload.windows(5).any(|w| w == b"07700"),
        "unmapped notes never stored"
    );
    let headers = &lead.headers;
    assert_eq!(headers.msg_id.as_deref(), Some(key.as_str()));
    assert_eq!(headers.import.as_deref(), Some("typeform-export.jsonl"));
    assert_eq!(
        headers.received_at.as_deref(),
        Some("2026-11-20T14:03:27.000Z")
    );
    assert_eq!(headers.schema.as_deref(), Some("lead.v1"));
    // The routers' keyed group (the test env's shared key), not a plain hash of the email.
    let group = app
        .service
        .intake()
        .filing()
        .grouping()
        .expect("partitioned")
        .key
        .group_of(&fields);
    assert_eq!(headers.group, Some(group.clone()));
    assert_ne!(group, email_hash(&fields));
    let p = leadrouter::queue::partition::partition_of(&group, 16);
    assert_eq!(lead.partition, Some(p));
    assert_eq!(msg.subject.as_str(), format!("leads.in.typeform.{p}"));

    wait_stats(&stats, "typeform lead delivered", |s| s.delivered() >= 1).await;
    assert_eq!(
        sink_keys(&app).into_keys().collect::<HashSet<_>>(),
        HashSet::from([key])
    );
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nats_is_one_clear_error() {
    // A port nobody listens on.
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("nats://127.0.0.1:{port}");
    let env = test_env();
    let cfg = config_on(&url);
    let file = envelope_export(dir.path(), "export.jsonl", 3);

    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        import::run(&cfg, &env, &quiet(&file)),
    )
    .await
    .expect("gives up in time")
    .expect_err("no NATS, no import");
    assert!(matches!(err, ImportError::Connect(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to NATS") && msg.contains(&url),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    eprintln!("after {:?}: {msg}", started.elapsed());

    // Local mistakes are reported before any connection is tried.
    let mut opts = quiet(&dir.path().join("missing.jsonl"));
    let err = import::run(&cfg, &env, &opts)
        .await
        .expect_err("missing file");
    assert!(matches!(err, ImportError::Input { .. }), "{err:?}");
    opts = quiet(&file);
    opts.sender = Some("ghost".into());
    let err = import::run(&cfg, &env, &opts)
        .await
        .expect_err("unknown sender");
    assert!(matches!(err, ImportError::UnknownSender(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_without_the_leads_stream_is_refused_up_front() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_on(&nats.url());
    let file = envelope_export(dir.path(), "export.jsonl", 3);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let err = import::import_into(client, &cfg, &test_env(), &quiet(&file))
        .await
        .expect_err("no stream");
    assert!(matches!(err, ImportError::StreamMissing), "{err:?}");
    assert!(err.to_string().contains("leadrouter serve"), "{err}");
}

/// The verb itself, as an operator runs it: finds NATS from the same config and env as `serve`,
/// prints a JSON summary, and a second run of the same file stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_finds_nats_from_env_and_prints_a_json_summary() {
    let nats = NatsServer::start();
    // The running service created the streams the import needs.
    let app = App::start(&nats.url(), with_file_sink(demo_config())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = envelope_export(dir.path(), "cli.jsonl", 5);
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadrouter"))
            .args(["import", "--json", "--quiet"])
            .arg(&file)
            .current_dir(manifest_dir())
            .env("LEADROUTER_NATS_URL", nats.url())
            .env("LEADROUTER_DEMO_SECRET", common::DEMO_SECRET)
            // The routers' shared group key (an import hashes leads as they do).
            .env("LEADROUTER_GROUP_KEY", &test_env()["LEADROUTER_GROUP_KEY"])
            .output()
            .expect("run leadrouter import");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("one JSON summary")
    };
    let first = run();
    assert_eq!(
        (first["published"].as_u64(), first["duplicates"].as_u64()),
        (Some(5), Some(0)),
        "{first}"
    );
    let second = run();
    assert_eq!(
        (second["published"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(5)),
        "{second}"
    );
    app.service.shutdown().await;
}
