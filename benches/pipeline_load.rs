//! End-to-end pipeline benchmark: signed intake -> JetStream -> handler pool -> sandbox CRM.
//!
//! Run: `cargo bench --bench pipeline_load` (BENCH_LEADS to change the count per scenario).
//! 1. 1,000 leads/s offered for BENCH_LEADS leads with a 5 ms CRM: end-to-end latency
//!    (received_at -> CRM confirmed) p50/p95/p99. Target p95 <= 50 ms.
//! 2. Max sustained throughput with a 0 ms CRM: BENCH_LEADS envelopes published straight to
//!    JetStream, timed until every one is confirmed by the CRM.
//!
//! Writes the table to `target/bench/pipeline_load.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use leadrouter::config::Config;
use leadrouter::intake::envelope::{email_hash, idempotency_key, LeadEnvelope};
use leadrouter::intake::schemes::{SignInput, Verifier};
use leadrouter::sandbox_crm::{Faults, SandboxCrm};
use leadrouter::service::Service;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn start(crm_url: &str, data: &Path, pool: usize) -> (Service, Config) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        r#"
data_dir = {data:?}
[nats]
url = "embedded"
[nats.embedded]
port = {port}
template_dir = {tmpl:?}
[intake]
listen = "127.0.0.1:0"
[handlers]
pool_size = {pool}
schemas_dir = {schemas:?}
[[sinks]]
name = "crm"
kind = "http"
url = "{crm_url}/leads"
[[senders]]
id = "demo"
scheme = "standard-webhooks"
secret_env = ["BENCH_SECRET"]
event_id = {{ header = "webhook-id" }}
rate = {{ per_second = 1000000, burst = 1000000 }}
[senders.mapping.fields]
email = "$.email"
first_name = "$.first_name"
phone = "$.phone"
"#,
        data = data.display().to_string(),
        tmpl = root.join("nats").display().to_string(),
        schemas = root.join("config/schemas").display().to_string(),
    );
    let env = HashMap::from([("BENCH_SECRET".to_string(), SECRET.to_string())]);
    std::env::set_var("LEADROUTER_TOOLS_DIR", root.join(".tools"));
    let cfg = Config::from_toml(&text, Path::new("bench.toml"), &env).expect("config");
    let service = Service::start(&cfg, &env).await.expect("service");
    (service, cfg)
}

async fn wait_delivered(service: &Service, n: u64) {
    let stats = service.pipeline_stats().unwrap().clone();
    let mut rx = stats.subscribe();
    while stats.delivered.load(Ordering::Relaxed) < n {
        let _ = tokio::time::timeout(Duration::from_secs(60), rx.changed()).await;
    }
}

fn pct(stats: &leadrouter::pipeline::PipelineStats, p: f64) -> f64 {
    stats.e2e_percentile(p).unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("BENCH_LEADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let mut table = String::from("| scenario | leads | result |\n|---|---:|---|\n");

    // 1. Open loop at 1,000 leads/s through the edge, 5 ms CRM.
    {
        let crm = SandboxCrm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut f = Faults::healthy();
        f.latency = Duration::from_millis(5);
        crm.set_faults(f);
        let data = tempfile::tempdir().unwrap();
        let (service, cfg) = start(&crm.url(), data.path(), 32).await;
        let url = format!("http://{}/v1/intake/demo", service.intake_addr());
        let s = cfg.sender("demo").unwrap();
        let verifier =
            Verifier::new(s.scheme, &s.signature, vec![SECRET.into()], s.tolerance).unwrap();
        let http = reqwest::Client::new();
        let start = Instant::now();
        let interval = Duration::from_micros(1_000);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            let body = format!(
                r#"{{"email":"e2e{i}@example.com","first_name":"B","phone":"+16505550{:03}"}}"#,
                i % 1000
            )
            .into_bytes();
            let signed = verifier
                .sign(&SignInput {
                    body: &body,
                    now: SystemTime::now(),
                    event_id: &format!("e2e-{i}"),
                    method: "POST",
                    url: &url,
                })
                .unwrap();
            let mut req = http.post(&url).header("content-type", "application/json");
            for (k, v) in &signed.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            tasks.push(tokio::spawn(req.body(body).send()));
        }
        let mut accepted = 0;
        for t in tasks {
            if matches!(t.await, Ok(Ok(r)) if r.status().as_u16() == 202) {
                accepted += 1;
            }
        }
        wait_delivered(&service, accepted).await;
        let stats = service.pipeline_stats().unwrap();
        table.push_str(&format!(
            "| 1,000 leads/s offered, 5 ms CRM: end-to-end latency | {accepted} | p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms |\n",
            pct(stats, 0.50), pct(stats, 0.95), pct(stats, 0.99)
        ));
        assert_eq!(crm.stats().duplicate_keys, 0);
        service.shutdown().await;
        crm.stop().await;
    }

    // 2. Max sustained throughput, 0 ms CRM: a backlog drained by the pool.
    {
        let crm = SandboxCrm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let (service, _) = start(&crm.url(), data.path(), 32).await;
        let client = async_nats::connect(service.nats_url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let start = Instant::now();
        let mut acks = Vec::with_capacity(n);
        for i in 0..n {
            let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
                &format!(r#"{{"email":"t{i}@example.com","first_name":"T"}}"#),
            )
            .unwrap();
            let key = idempotency_key("demo", &format!("tp-{i}"), &email_hash(&fields));
            let env = LeadEnvelope {
                schema: "lead.v1".into(),
                sender: "demo".into(),
                source_event_id: format!("tp-{i}"),
                received_at: chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                key: key.clone(),
                fields,
            };
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", key.as_str());
            h.insert("Leadrouter-Group", email_hash(&env.fields).as_str());
            acks.push(
                js.publish_with_headers(
                    "leads.in.demo",
                    h,
                    serde_json::to_vec(&env).unwrap().into(),
                )
                .await
                .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
        wait_delivered(&service, n as u64).await;
        let secs = start.elapsed().as_secs_f64();
        table.push_str(&format!(
            "| max sustained throughput, 0 ms CRM (pool 32) | {n} | {:.0} leads/s delivered |\n",
            n as f64 / secs
        ));
        assert_eq!(crm.stats().duplicate_keys, 0);
        service.shutdown().await;
        crm.stop().await;
    }

    println!("\n{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("pipeline_load.md"), &table);
}
