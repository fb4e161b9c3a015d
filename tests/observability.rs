//! What operators see: the real `serve` binary's logs never carry a lead's personal data on any
//! path (success, retry, DLQ, replay, bad signature), and `latency` / `stats` answer from the
//! running service.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{manifest_dir, NatsServer, DEMO_SECRET};
use leadrouter::sandbox_crm::{Faults, SandboxCrm};
use serde_json::{json, Value};

const TOKEN: &str = "observability-admin-token-42";
const DLQ_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

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

use common::free_port;

/// The child's log lines, as they arrive, with a way to await one.
#[derive(Clone, Default)]
struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, l: String) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().push(l);
        cv.notify_all();
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let (m, cv) = &*self.0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        let mut g = m.lock().unwrap();
        loop {
            for l in &g[seen..] {
                if let Ok(v) = serde_json::from_str::<Value>(l) {
                    if pred(&v) {
                        return v;
                    }
                }
            }
            seen = g.len();
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; log:\n{}",
                g.join("\n")
            );
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    fn all(&self) -> String {
        self.0 .0.lock().unwrap().join("\n")
    }
}

struct Serve {
    child: Child,
    lines: Lines,
    reader: Option<std::thread::JoinHandle<()>>,
    config: std::path::PathBuf,
    intake: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(nats: &NatsServer, crm: &SandboxCrm) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let (ip, ap) = (free_port(), free_port());
        let config = dir.path().join("leadrouter.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[nats]\nurl = {:?}\n[intake]\nlisten = \"127.0.0.1:{ip}\"\n[admin]\nlisten = \"127.0.0.1:{ap}\"\n[handlers]\nmax_deliver = 2\nack_wait = \"3s\"\nbackoff_base = \"20ms\"\nbackoff_cap = \"50ms\"\nschemas_dir = {:?}\n[dlq]\nkeys = [{{ id = \"k1\", env = \"TEST_DLQ_KEY\" }}]\n{}\n[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"{}/leads\"\ntimeout = \"2s\"\n",
                dir.path().join("data").display().to_string(),
                nats.url(),
                manifest_dir().join("config/schemas").display().to_string(),
                common::demo_sender_toml(),
                crm.url(),
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
            .args(["--config"])
            .arg(&config)
            .arg("serve")
            .current_dir(manifest_dir())
            .env("TEST_DEMO_SECRET", DEMO_SECRET)
            .env("TEST_DLQ_KEY", DLQ_KEY)
            .env("LEADROUTER_ADMIN_TOKEN", TOKEN)
            // Everything the code emits, down to debug, goes through the mask.
            .env(
                "LEADROUTER_LOG",
                "debug,async_nats=info,hyper=info,warp=info,reqwest=info",
            )
            .env_remove("LEADROUTER_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("leadrouter serve starts");
        let lines = Lines::default();
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.push(l);
            }
        });
        lines.wait_for("serve ready", |v| v["message"] == "leadrouter serving");
        Serve {
            child,
            lines,
            reader: Some(reader),
            config,
            intake: format!("http://127.0.0.1:{ip}"),
            _dir: dir,
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

    /// SIGTERM and wait: the last lines are flushed before the reader ends.
    fn stop(mut self) -> Lines {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.lines.clone()
    }
}

impl Drop for Serve {
    /// A failed assertion must not leave `serve` running after the test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let crm = SandboxCrm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let serve = tokio::task::block_in_place(|| Serve::start(&nats, &crm));
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
        serve.lines.wait_for("delivered", |v| {
            is_key(v, &ok) && v["outcome"] == "delivered"
        });
        // A retry, then success.
        crm.set_faults(Faults::fail_next(1, 503));
        let retried = serve.send("evt-retry", &lead("yvaine.marchbanks@example.net"));
        serve.lines.wait_for("retried", |v| {
            is_key(v, &retried) && v["outcome"] == "retry"
        });
        serve.lines.wait_for("delivered after a retry", |v| {
            is_key(v, &retried) && v["outcome"] == "delivered"
        });
        // Dead-lettered, then replayed after the fix.
        crm.set_faults(Faults::fail_next(1000, 500));
        let dead = serve.send("evt-dead", &lead("xerxes.oddlyname@example.com"));
        serve.lines.wait_for("dead-lettered", |v| {
            is_key(v, &dead) && v["outcome"] == "dead"
        });
        // A phone number typed into the email field: the log line says which field failed
        // and why, never the value (and the mask would catch it if it did).
        let mut typo = lead("unused@example.org");
        typo["email"] = json!("+1 415 555 0199");
        let typo_key = serve.send("evt-typo", &typo);
        let invalid = serve.lines.wait_for("schema mismatch logged", |v| {
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
        serve.lines.wait_for("replay delivered", |v| {
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

    let lines = tokio::task::block_in_place(|| serve.stop());
    let log = lines.all();
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
