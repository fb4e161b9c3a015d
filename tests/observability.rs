//! What operators see: the real `serve` binary's logs never carry a lead's personal data on any
//! path (success, retry, DLQ, replay, bad signature), and `latency` / `stats` answer from the
//! running service.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{NatsServer, DEMO_SECRET};
use leadrouter::devtools::harness::RouterProcess;
use leadrouter::devtools::sandbox_crm::{Faults, SandboxCrm};
use serde_json::{json, Value};

const TOKEN: &str = "observability-admin-token-42";
const DLQ_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const WAIT: Duration = Duration::from_secs(30);

/// Values no log line may hold in clear.
const PII: &[&str] = &[
    "zanzibar.quokka@example.org",
    "yvaine.marchbanks@example.net",
    "xerxes.oddlyname@example.com",
    "415 555 0199",
    "4155550199",
    "Xiomara",
    "Quillfeather",
    "203.0.113.77",
    "Wolfgangina",
];

struct Serve {
    router: RouterProcess,
    config: std::path::PathBuf,
    intake: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    async fn start(nats: &NatsServer, crm: &SandboxCrm) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::served_config(dir.path(), &nats.url(), &crm.url())
            .dlq_key("k1", "TEST_DLQ_KEY");
        let router = common::served(&cfg, dir.path())
            .env("TEST_DEMO_SECRET", DEMO_SECRET)
            .env("TEST_DLQ_KEY", DLQ_KEY)
            .env("LEADROUTER_ADMIN_TOKEN", TOKEN)
            // Everything the code emits, down to debug, goes through the mask.
            .env(
                "LEADROUTER_LOG",
                "debug,async_nats=info,hyper=info,hyper_util=info,warp=info,reqwest=info",
            );
        let router = common::serve(router).await;
        let serve = Serve {
            config: router.config_path().to_path_buf(),
            intake: router.intake_url(),
            router,
            _dir: dir,
        };
        tokio::task::block_in_place(|| {
            serve.wait_for("serve ready", |v| v["message"] == "leadrouter serving")
        });
        serve
    }

    /// Polls the child's log (JSON lines) until a line matches `pred`; each line is looked at
    /// once, a line still being written not before it is complete.
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = 0;
        loop {
            let lines = self.router.log_lines();
            for l in &lines[seen.min(lines.len())..] {
                if let Ok(v) = serde_json::from_str::<Value>(l) {
                    if pred(&v) {
                        return v;
                    }
                }
            }
            seen = lines.len();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `leadrouter send`, as a newcomer would post a lead; returns the lead key.
    fn send(&self, event_id: &str, lead: &Value) -> String {
        let file = self._dir.path().join(format!("{event_id}.json"));
        std::fs::write(&file, lead.to_string()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
            .args(["--config"])
            .arg(&self.config)
            .args([
                "send",
                "--sender",
                "demo",
                "--event-id",
                event_id,
                "--url",
                &self.intake,
            ])
            .arg(&file)
            .env("TEST_DEMO_SECRET", DEMO_SECRET)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.starts_with("HTTP 202"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_str(text.lines().nth(1).unwrap_or("")).expect(&text);
        body["id"].as_str().unwrap().to_string()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_leadrouter"))
            .args(["--config"])
            .arg(&self.config)
            .args(args)
            .env("LEADROUTER_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    }

    /// SIGTERM and wait; returns the whole log, the last lines flushed by the exit.
    async fn stop(mut self) -> String {
        common::stop_cleanly(&mut self.router).await
    }
}

fn lead(email: &str) -> Value {
    json!({
        "email": email,
        "first_name": "Xiomara",
        "last_name": "Quillfeather",
        "phone": "+1 415 555 0199",
        "ip": "203.0.113.77",
        "notes": "ask for Wolfgangina, or call 4155550199",
        "utm_source": "google"
    })
}

fn is_key(v: &Value, key: &str) -> bool {
    v["span"]["key"] == key || v["key"] == key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_a_leads_personal_data_and_operators_get_latency_and_stats() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    let serve = Serve::start(&nats, &crm).await;
    let http = common::http_client();

    // Bad signature: 401, and the body (full of PII) is not logged.
    let r = http
        .post(format!("{}/v1/intake/demo", serve.intake))
        .header("content-type", "application/json")
        .header("webhook-id", "evt-forged")
        .header("webhook-timestamp", "1700000000")
        .header("webhook-signature", "v1,Zm9yZ2Vk")
        .body(lead("xerxes.oddlyname@example.com").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    tokio::task::block_in_place(|| {
        // Success.
        let ok = serve.send("evt-ok", &lead("zanzibar.quokka@example.org"));
        serve.wait_for("delivered", |v| {
            is_key(v, &ok) && v["outcome"] == "delivered"
        });
        // A retry, then success.
        crm.set_faults(Faults::fail_next(1, 503));
        let retried = serve.send("evt-retry", &lead("yvaine.marchbanks@example.net"));
        serve.wait_for("retried", |v| {
            is_key(v, &retried) && v["outcome"] == "retry"
        });
        serve.wait_for("delivered after a retry", |v| {
            is_key(v, &retried) && v["outcome"] == "delivered"
        });
        // Dead-lettered, then replayed after the fix.
        crm.set_faults(Faults::fail_next(1000, 500));
        let dead = serve.send("evt-dead", &lead("xerxes.oddlyname@example.com"));
        serve.wait_for("dead-lettered", |v| {
            is_key(v, &dead) && v["outcome"] == "dead"
        });
        // A phone number typed into the email field: the log line says which field failed
        // and why, never the value (and the mask would catch it if it did).
        let mut typo = lead("unused@example.org");
        typo["email"] = json!("+1 415 555 0199");
        let typo_key = serve.send("evt-typo", &typo);
        let invalid = serve.wait_for("schema mismatch logged", |v| {
            is_key(v, &typo_key) && v["outcome"] == "invalid"
        });
        assert!(
            invalid["error"].as_str().unwrap_or("").contains("/email"),
            "the validation error is logged: {invalid}"
        );
        crm.heal();
        let out = serve.cli(&[
            "replay",
            "--filter-reason",
            "retries_exhausted",
            "--reason",
            "crm fixed",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serve.wait_for("replay delivered", |v| {
            is_key(v, &dead) && v["outcome"] == "delivered" && v["span"]["replay"] == true
        });

        // The operator commands answer from the running service.
        let out = serve.cli(&["latency", "--window", "15m", "--percentile", "95", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lat: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(lat["samples"], 3, "{lat}");
        assert!(lat["latency_ms"].as_f64().unwrap() > 0.0, "{lat}");
        let out = serve.cli(&["latency", "--window", "15m", "--percentile", "99"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("p99 end-to-end latency over the last 15m: "),
            "{text}"
        );
        let out = serve.cli(&["stats", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["intake"]["accepted"], 4, "{st}");
        assert_eq!(st["deliveries"]["delivered"], 3, "{st}");
        assert_eq!(st["deliveries"]["dead"], 2, "{st}");
        assert_eq!(st["dlq_by_reason"]["retries_exhausted"], 1, "{st}");
        assert_eq!(st["dlq_by_reason"]["schema_mismatch"], 1, "{st}");
        assert_eq!(st["queue"]["pending"], 0, "{st}");
        let rate = st["success_rate"].as_f64().unwrap();
        assert!(rate > 0.0 && rate < 1.0, "failures were counted: {st}");
        let out = serve.cli(&["stats"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("1 retries_exhausted"), "{text}");
        assert!(text.contains("1 schema_mismatch"), "{text}");
        let out = serve.cli(&["latency", "--window", "2d"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("between 1s and 24h"));
    });

    let log = serve.stop().await;
    // The paths ran and were logged (the mask did not just swallow everything).
    for needle in [
        "\"outcome\":\"rejected\"",
        "\"outcome\":\"retry\"",
        "\"outcome\":\"dead\"",
        "\"stage\":\"sink\"",
        "\"replay\":true",
    ] {
        assert!(log.contains(needle), "no {needle} in the log:\n{log}");
    }
    for pii in PII {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(pii)).collect();
        assert!(hits.is_empty(), "{pii:?} in the log:\n{}", hits.join("\n"));
    }
    // Every line is JSON, so log pipelines can parse them.
    for l in log.lines() {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}
