//! The DLQ operators trust: encrypted at rest, replayed by id or by filter from the admin API,
//! the CLI and any NATS client, safely twice.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::admin::{admin_config, admin_env, schemas, AdminApp};
use common::{NatsServer, RouterConfig};
use leadrouter::devtools::harness::segment_sink;
use leadrouter::devtools::sandbox_crm::{Faults, Scope};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

fn env() -> HashMap<String, String> {
    let mut e = admin_env(TOKEN);
    e.insert("TEST_SEGMENT_KEY".into(), "seg-write-key".into());
    e
}

/// DLQ keys as (id, env var); the first seals.
type Keys<'a> = &'a [(&'a str, &'a str)];

const ONE_KEY: Keys = &[("k1", "TEST_DLQ_KEY")];

/// The demo sender and the DLQ `keys` on top of the shared admin set-up.
fn config(schemas_dir: &Path, keys: Keys) -> RouterConfig {
    with_keys(
        admin_config(schemas_dir).sender(common::demo_sender()),
        keys,
    )
}

/// `cfg` with exactly the DLQ `keys`.
fn with_keys(mut cfg: RouterConfig, keys: Keys) -> RouterConfig {
    cfg.dlq.keys.clear();
    for (id, var) in keys {
        cfg = cfg.dlq_key(*id, *var);
    }
    cfg
}

async fn setup(schemas_dir: &Path) -> AdminApp {
    setup_on(NatsServer::start(), config(schemas_dir, ONE_KEY), env()).await
}

async fn setup_on(nats: NatsServer, cfg: RouterConfig, env: HashMap<String, String>) -> AdminApp {
    AdminApp::start(nats, common::sandbox_crm().await, cfg, env).await
}

/// The `leadrouter` binary pointed at the admin API at `admin`, as an operator runs it.
fn cli_command(admin: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_leadrouter"));
    cmd.args(args)
        .current_dir(common::manifest_dir())
        .env(
            "LEADROUTER_ADMIN_LISTEN",
            admin.trim_start_matches("http://"),
        )
        .env("LEADROUTER_ADMIN_TOKEN", TOKEN);
    cmd
}

fn cli_at(admin: &str, args: &[&str]) -> std::process::Output {
    cli_command(admin, args).output().expect("run leadrouter")
}

fn cli(s: &AdminApp, args: &[&str]) -> std::process::Output {
    cli_at(&s.admin, args)
}

fn lead(email: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"email": email, "first_name": "Zelda", "phone": "+1 650 555 4567"}))
        .unwrap()
}

/// Posts a lead while the CRM fails for good, and waits until it is the `n`th dead letter.
async fn dead_letter(s: &AdminApp, event_id: &str, email: &str, n: u64) -> String {
    s.crm.set_faults(Faults::fail_next(1000, 500));
    let key = s.app.accept("demo", event_id, &lead(email)).await;
    s.wait("dead-lettered", |_| s.dead("retries_exhausted") == n)
        .await;
    key
}

/// A JSON summary printed by a CLI run that succeeded.
fn summary(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_is_encrypted_at_rest_and_replays_once_after_the_fix() {
    let dir = schemas();
    let s = setup(dir.path()).await;
    let email = "zelda.distinctive@example.org";
    let key = dead_letter(&s, "evt-dlq-1", email, 1).await;

    // Encrypted at rest: no field of the lead in clear in the DLQ stream's files.
    let mut found = Vec::new();
    for entry in common::walk(s.nats.store_dir()) {
        if entry.to_string_lossy().contains("LEADS_DLQ") {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            // The masked preview keeps the last four digits by design (`+1 *** *** 4567`), so
            // the phone is searched for in the forms that would identify it.
            for needle in [email, "Zelda", "555 4567", "6505554567"] {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push((entry.clone(), needle));
                }
            }
        }
    }
    assert!(found.is_empty(), "plaintext in the DLQ store: {found:?}");

    // Listed with reason, masked preview, no clear PII.
    let (st, list, _) = s.get("/api/dlq?reason=retries_exhausted").await;
    assert_eq!(st, 200, "{list}");
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["key"], key.as_str());
    assert!(e["last_error"].as_str().unwrap().contains("500"));
    // Two attempts 20 ms or more apart: the first attempt time is the first claim's.
    assert!(
        e["first_attempt_at"].as_str().unwrap() < e["last_attempt_at"].as_str().unwrap(),
        "{e}"
    );
    assert!(e["preview"].as_array().unwrap().len() >= 5, "{e}");
    let preview = e["preview"].to_string();
    assert!(
        !preview.contains(email) && !preview.contains("Zelda"),
        "{preview}"
    );
    assert!(preview.contains("z***@e***.org"), "{preview}");
    let id = e["id"].as_u64().unwrap();

    // A replay needs a reason.
    let (st, _) = s.post(&format!("/api/dlq/{id}/replay"), json!({})).await;
    assert_eq!(st, 400);

    // Fix the CRM, replay twice: one write.
    s.crm.heal();
    let (st, r) = s.replay(id, "CRM back up").await;
    assert_eq!((st, r["outcome"].as_str()), (200, Some("replayed")), "{r}");
    s.wait("replay delivered", |st| st.delivered() == 1).await;
    // The replay went straight to the lead's partition (not the un-partitioned form).
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let copy = js
        .get_stream("LEADS")
        .await
        .unwrap()
        .get_raw_message(r["new_seq"].as_u64().expect("new_seq"))
        .await
        .unwrap();
    let subject =
        leadrouter::queue::partition::parse_subject(&copy.subject).expect("a lead subject");
    assert_eq!(subject.sender, "demo");
    assert!(subject.partition.is_some(), "{}", copy.subject);
    let (st, r2) = s.replay(id, "again").await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(
        r2["outcome"], "skipped",
        "a delivered lead is not replayed again: {r2}"
    );
    let rec = s.crm.record(&key).unwrap();
    assert_eq!(rec.created, 1);
    assert_eq!(rec.writes, 1);

    // The entry stays, marked.
    let (_, shown, _) = s.get(&format!("/api/dlq/{id}")).await;
    assert_eq!(shown["replays"][0]["reason"], "CRM back up");
    let (_, hidden, _) = s.get("/api/dlq?hide_replayed=true").await;
    assert_eq!(hidden["entries"].as_array().unwrap().len(), 0);
    assert!(s.app.service.pipeline_stats().unwrap().replayed() >= 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_fix_then_batch_replay_delivers_and_failures_return_with_new_reason() {
    let dir = schemas();
    // A stricter schema: company required.
    let path = dir.path().join("lead.v1.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    schema["required"] = json!(["email", "company"]);
    std::fs::write(&path, serde_json::to_vec(&schema).unwrap()).unwrap();
    let s = setup(dir.path()).await;

    for i in 0..3 {
        let email = format!("s{i}@example.com");
        s.app
            .accept("demo", &format!("evt-schema-{i}"), &lead(&email))
            .await;
    }
    s.wait("three schema dead letters", |_| {
        s.dead("schema_mismatch") == 3
    })
    .await;

    // Batch replay before the fix: each fails again and returns with its reason.
    let (st, sum) = s
        .post(
            "/api/replay",
            json!({"filter": {"reason": "schema_mismatch"}, "reason": "try"}),
        )
        .await;
    assert_eq!((st, sum["replayed"].as_u64()), (200, Some(3)), "{sum}");
    s.wait("back in the DLQ", |_| s.dead("schema_mismatch") == 6)
        .await;

    // Fix the schema (picked up without restart) and replay the new entries by filter.
    schema["required"] = json!(["email"]);
    std::fs::write(&path, serde_json::to_vec(&schema).unwrap()).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    drop(f);
    let (st, sum) = s
        .post(
            "/api/replay",
            json!({"filter": {"reason": "schema_mismatch"}, "reason": "schema fixed"}),
        )
        .await;
    assert_eq!(st, 200, "{sum}");
    assert_eq!(
        sum["replayed"], 3,
        "only the not-yet-replayed entries: {sum}"
    );
    assert_eq!(sum["skipped"], 3, "{sum}");
    s.wait("delivered", |st| st.delivered() == 3).await;
    assert_eq!(s.crm.stats().records, 3);

    // The same sweep from the CLI: everything was replayed before, so all skipped, none sent.
    let sum = summary(&cli(
        &s,
        &[
            "replay",
            "--filter-reason",
            "schema_mismatch",
            "--reason",
            "again",
            "--json",
        ],
    ));
    assert_eq!(
        (sum["replayed"].as_u64(), sum["skipped"].as_u64()),
        (Some(0), Some(6)),
        "{sum}"
    );
    assert_eq!(s.crm.stats().records, 3);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_nats_service_answers_plain_requests() {
    let dir = schemas();
    let s = setup(dir.path()).await;
    dead_letter(&s, "evt-nats", "n@example.com", 1).await;

    for path in ["/api/dlq", "/api/dlq/1", "/api/stats"] {
        for (token, why) in [
            (None, "without token"),
            (Some("wrong"), "with a wrong token"),
        ] {
            let mut req = s.http.get(s.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let (st, _, _) = common::send(req).await;
            assert_eq!(st, 401, "{path} {why}");
        }
    }

    // Clear errors for the wrong route, method and body type.
    let form = s
        .http
        .post(s.url("/api/dlq/1/replay"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=x");
    for (req, want) in [
        (s.http.get(s.url("/api/nope")), 404),
        (s.http.delete(s.url("/api/dlq")), 405),
        (form, 415),
    ] {
        let (st, _, _) = common::send(req.bearer_auth(TOKEN)).await;
        assert_eq!(st, want);
    }

    // Any NATS client: list, stats, replay, and a micro error for a bad request.
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let list = client
        .request("leadrouter.dlq.list", "{}".into())
        .await
        .unwrap();
    let list: Value = serde_json::from_slice(&list.payload).unwrap();
    let id = list["entries"][0]["id"]
        .as_u64()
        .expect("entry listed over NATS");
    let stats = client.request("leadrouter.stats", "".into()).await.unwrap();
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    assert_eq!(stats["dead_by_reason"]["retries_exhausted"], 1);
    let bad = client
        .request("leadrouter.dlq.replay", format!("{{\"id\":{id}}}").into())
        .await
        .unwrap();
    let h = bad.headers.expect("micro error headers");
    assert_eq!(
        h.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    s.crm.heal();
    let ok = client
        .request(
            "leadrouter.dlq.replay",
            format!("{{\"id\":{id},\"reason\":\"fixed over NATS\"}}").into(),
        )
        .await
        .unwrap();
    let ok: Value = serde_json::from_slice(&ok.payload).unwrap();
    assert_eq!(ok["outcome"], "replayed", "{ok}");
    s.wait("delivered", |st| st.delivered() == 1).await;

    // The CLI finds the service from env and prints JSON lines.
    let out = cli(&s, &["dlq", "tail"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["reason"], "retries_exhausted");
    assert_eq!(lines[0]["replayed"], true);

    // Unreachable service: one line, non-zero.
    let out = cli_at("127.0.0.1:1", &["dlq", "tail"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not reachable") && err.trim().lines().count() == 1,
        "{err}"
    );
    s.shutdown().await;
}

/// A lead that reached the CRM but not analytics is dead-lettered; the replay (from the CLI)
/// writes analytics only: the CRM, which already had it, is not written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_lead_that_reached_a_sink_writes_only_what_is_missing() {
    let dir = schemas();
    // The sandbox CRM answers Segment's API too (its analytics scope), so it is both sinks.
    let crm = common::sandbox_crm().await;
    let analytics = segment_sink(
        "analytics",
        "TEST_SEGMENT_KEY",
        crm.url(),
        Some(Duration::from_secs(2)),
    );
    let cfg = config(dir.path(), ONE_KEY).sink(analytics);
    let s = AdminApp::start(NatsServer::start(), crm, cfg, env()).await;
    s.crm
        .set_faults_for(Scope::Analytics, Faults::fail_next(1000, 500));
    let key = s
        .app
        .accept("demo", "evt-half", &lead("half@example.com"))
        .await;
    s.wait("dead-lettered", |_| s.dead("retries_exhausted") == 1)
        .await;
    assert_eq!(s.crm.record(&key).expect("CRM has it").created, 1);

    s.crm.heal();
    let (_, list, _) = s.get("/api/dlq").await;
    let id = list["entries"][0]["id"].as_u64().expect("listed");
    let sum = summary(&cli(
        &s,
        &[
            "replay",
            "--id",
            &id.to_string(),
            "--reason",
            "analytics fixed",
            "--json",
        ],
    ));
    assert_eq!(sum["replayed"], 1, "{sum}");
    s.wait("replay delivered", |st| st.delivered() == 1).await;

    let rec = s.crm.record(&key).unwrap();
    assert_eq!(
        (rec.created, rec.writes),
        (1, 1),
        "the CRM is not written again"
    );
    let identify = s.crm.message(&key).expect("analytics got it");
    assert_eq!(identify.calls, 1);
    s.shutdown().await;
}

/// Rotation: a new key seals new entries while the old one still opens old entries. A key
/// dropped from the config leaves its entries listed but unreplayable, with the reason; a key
/// whose material changed under the same id stops the service at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_keys_rotate_and_a_changed_key_is_refused_at_start() {
    let dir = schemas();
    let s = setup(dir.path()).await;
    dead_letter(&s, "evt-old", "old@example.com", 1).await;
    let nats = s.shutdown().await;

    // k2 is new and seals; k1 is kept to open what it sealed.
    let rotated: Keys = &[("k2", "TEST_DLQ_KEY2"), ("k1", "TEST_DLQ_KEY")];
    let mut e2 = env();
    e2.insert("TEST_DLQ_KEY2".into(), "a".repeat(64));
    let s = setup_on(nats, config(dir.path(), rotated), e2.clone()).await;
    dead_letter(&s, "evt-new", "new@example.com", 1).await;
    let (_, list, _) = s.get("/api/dlq").await;
    let ids: Vec<(u64, String)> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap(),
                e["key_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert_eq!((ids[0].1.as_str(), ids[1].1.as_str()), ("k1", "k2"));
    s.crm.heal();
    for (id, _) in &ids {
        let (st, r) = s.replay(*id, "rotation check").await;
        assert_eq!((st, r["outcome"].as_str()), (200, Some("replayed")), "{r}");
    }
    s.wait("both delivered", |st| st.delivered() == 2).await;
    let nats = s.shutdown().await;

    // k1 dropped: its entry is still listed, says why it cannot be opened, and a replay fails
    // with that reason instead of losing anything.
    let only_k2: Keys = &[("k2", "TEST_DLQ_KEY2")];
    let s = setup_on(nats, config(dir.path(), only_k2), e2.clone()).await;
    let old = ids[0].0;
    let (st, shown, _) = s.get(&format!("/api/dlq/{old}")).await;
    assert_eq!(st, 200, "{shown}");
    assert!(
        shown["unreadable"].as_str().unwrap_or("").contains("k1"),
        "{shown}"
    );
    let (_, r) = s.replay(old, "without its key").await;
    assert_eq!(r["outcome"], "failed", "{r}");
    let nats = s.shutdown().await;

    // Same id, other material: refused at start, naming the key.
    let mut wrong = e2.clone();
    wrong.insert("TEST_DLQ_KEY".into(), "b".repeat(64));
    let data = tempfile::tempdir().unwrap();
    let cfg = with_keys(common::demo_config(), rotated)
        .data_dir(data.path())
        .nats_url(nats.url())
        .intake_listen(common::any_port())
        .parse(Path::new("t.toml"), &wrong)
        .unwrap();
    let err = match leadrouter::service::Service::start(&cfg, &wrong).await {
        Ok(_) => panic!("started with a changed DLQ key"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("`k1`") && err.contains("material changed"),
        "{err}"
    );
}

/// `dlq tail --follow` prints what is there, then each new entry as it is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_tail_follow_streams_new_entries() {
    use std::io::BufRead;
    let dir = schemas();
    let s = setup(dir.path()).await;
    dead_letter(&s, "evt-f1", "f1@example.com", 1).await;

    let mut child = cli_command(&s.admin, &["dlq", "tail", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx
                .send(serde_json::from_str(&l).expect("a JSON line"))
                .is_err()
            {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no line for {what}"))
    };
    let first = tokio::task::block_in_place(|| next("the existing entry"));
    assert_eq!(first["reason"], "retries_exhausted");

    dead_letter(&s, "evt-f2", "f2@example.com", 2).await;
    let second = tokio::task::block_in_place(|| next("the new entry"));
    assert!(second["id"].as_u64() > first["id"].as_u64(), "{second}");
    assert_eq!(second["replayed"], false);
    let _ = child.kill();
    let _ = child.wait();
    s.shutdown().await;
}
