//! One lead through the whole service: signed intake, JetStream, handler pool, CRM stand-in.

mod common;

use std::time::Duration;

use common::{demo_config, App, NatsServer};
use leadrouter::devtools::harness::{file_sink, http_sink};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_lead_reaches_the_crm_enriched_and_without_unmapped_fields() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    let cfg = demo_config()
        .sink(http_sink("crm", format!("{}/leads", crm.url()), None))
        .sink(file_sink("leads-file", None));
    let app = App::start(&nats.url(), cfg).await;
    let stats = app.service.pipeline_stats().expect("pool runs").clone();

    let body = serde_json::to_vec(&json!({
        "email": "Grace.Hopper@Example.COM",
        "first_name": "Grace",
        "phone": "(757) 555-0142",
        "ssn": "078-05-1120",
    }))
    .unwrap();
    let key = app.accept("demo", "evt-e2e", &body).await;
    app.wait_for("the lead delivered", |s| s.delivered() >= 1)
        .await;

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
