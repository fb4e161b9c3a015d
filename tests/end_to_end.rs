//! One lead through the whole service: signed intake, JetStream, handler pool, CRM stand-in.

mod common;

use std::time::{Duration, Instant};

use common::{demo_sender_toml, App, NatsServer};
use leadrouter::devtools::sandbox_crm::SandboxCrm;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_lead_reaches_the_crm_enriched_and_without_unmapped_fields() {
    let nats = NatsServer::start();
    let crm = SandboxCrm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sinks = format!(
        "{}\n[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"{}/leads\"\n[[sinks]]\nname = \"leads-file\"\nkind = \"file\"\n",
        demo_sender_toml(),
        crm.url()
    );
    let app = App::start(&nats.url(), &sinks).await;
    let stats = app.service.pipeline_stats().expect("pool runs").clone();
    let mut progress = stats.subscribe();

    let body = serde_json::to_vec(&json!({
        "email": "Grace.Hopper@Example.COM",
        "first_name": "Grace",
        "phone": "(757) 555-0142",
        "ssn": "078-05-1120",
    }))
    .unwrap();
    let (status, answer, _) = app.post_signed("demo", "evt-e2e", &body).await;
    assert_eq!(status, 202, "{answer}");
    let key = answer["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.delivered() < 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "lead not delivered in time");
        let _ = tokio::time::timeout(left, progress.changed()).await;
    }

    let rec = crm
        .record(&key)
        .expect("the CRM got the lead under its idempotency key");
    assert_eq!((rec.requests, rec.created), (1, 1));
    let lead = rec.latest_body.unwrap();
    assert_eq!(lead["fields"]["email"], "grace.hopper@example.com");
    assert_eq!(lead["fields"]["phone"], "+17575550142");
    assert_eq!(lead["source_event_id"], "evt-e2e");
    assert!(
        !lead.to_string().contains("078-05-1120"),
        "unmapped PII never travels"
    );
    let file = std::fs::read_to_string(app.data.path().join("sinks/leads.jsonl")).unwrap();
    assert!(file.contains(&key));
    let p95 = stats
        .latency
        .percentile(Duration::from_secs(900), 0.95)
        .latency_ms
        .expect("end-to-end latency recorded");
    assert!(p95 >= 0.0);
    app.service.shutdown().await;
}
