//! The CRM adapters end to end: the whole service on a real nats-server, leads posted signed to
//! the edge, written by the `hubspot` and `salesforce` sinks into the sandbox's personalities
//! (real HTTP servers that answer as the vendors' documented APIs, limits and errors included).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{App, NatsServer};
use leadrouter::devtools::harness::{hubspot_sink, salesforce_sink, HandlersSection, RouterConfig};
use leadrouter::devtools::sandbox_crm::{HubspotConfig, SalesforceConfig, SandboxCrm};
use leadrouter::ledger::idempotency::{Idempotency, LeadEntry};
use leadrouter::queue::message::header as hdr;
use leadrouter::sinks::{HubspotSinkConfig, SalesforceSinkConfig, SinkConfig};
use serde_json::{json, Value};

const HUBSPOT_TOKEN: &str = "pat-na1-sandbox-token";

fn env() -> HashMap<String, String> {
    let mut env = common::test_env();
    env.insert("HUBSPOT_TOKEN".into(), HUBSPOT_TOKEN.into());
    env.insert("SF_CLIENT_ID".into(), "sandbox-client".into());
    env.insert("SF_CLIENT_SECRET".into(), "sandbox-secret".into());
    env
}

/// Handlers that give up after two attempts, so a throttle that counted as an attempt would
/// show up in the DLQ at once.
fn handlers() -> HandlersSection {
    HandlersSection {
        max_deliver: Some(2),
        ack_wait: Some(Duration::from_secs(5)),
        backoff_base: Some(Duration::from_millis(20)),
        backoff_cap: Some(Duration::from_millis(100)),
        schemas_dir: Some(common::shipped_schemas()),
        ..HandlersSection::default()
    }
}

async fn start(nats: &NatsServer, sink: impl Into<leadrouter::sinks::SinkKind>) -> App {
    let cfg = RouterConfig::new()
        .sender(common::demo_sender())
        .handlers(handlers())
        .sink(SinkConfig::new("crm", sink));
    App::start_with(&nats.url(), cfg, env()).await
}

fn hubspot(crm: &SandboxCrm) -> HubspotSinkConfig {
    HubspotSinkConfig {
        linger: Some(Duration::from_millis(50)),
        ..hubspot_sink(crm.url(), "HUBSPOT_TOKEN")
    }
}

fn body(email: &str, first_name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"email": email, "first_name": first_name})).expect("json")
}

/// Posts `n` leads `lead{i}@{domain}` at once; returns their keys.
async fn post_many(app: &App, prefix: &str, domain: &str, n: usize) -> Vec<String> {
    let posts = (0..n).map(|i| {
        let email = format!("lead{i}@{domain}");
        let event = format!("{prefix}-{i}");
        async move {
            app.accept("demo", &event, &body(&email, &format!("Lead {i}")))
                .await
        }
    });
    futures::future::join_all(posts).await
}

async fn dlq(nats: &NatsServer) -> Vec<async_nats::HeaderMap> {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream("LEADS_DLQ").await.expect("DLQ stream");
    let info = s.info().await.expect("info").clone();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m.headers);
        }
    }
    out
}

/// The lead's idempotency record (per-sink completion, refs, attempts).
async fn lead_entry(nats: &NatsServer, key: &str) -> LeadEntry {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value(leadrouter::queue::KV_IDEMPOTENCY)
        .await
        .expect("bucket");
    Idempotency::new(kv, 10, Duration::from_secs(1), Duration::from_secs(1))
        .get(key)
        .await
        .expect("read")
        .expect("recorded")
        .0
}

fn header<'a>(h: &'a async_nats::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.as_str()).unwrap_or("")
}

async fn metrics(app: &App) -> String {
    let resp = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_record_in_a_batch_of_100_goes_to_the_dlq_and_its_99_neighbours_are_done() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    crm.set_hubspot(HubspotConfig {
        reject_emails: vec!["lead37@bad.example".into()],
        ..HubspotConfig::default()
    });
    // A long linger, so the 100 leads posted at once share one call.
    let sink = HubspotSinkConfig {
        linger: Some(Duration::from_secs(3)),
        ..hubspot_sink(crm.url(), "HUBSPOT_TOKEN")
    };
    let app = start(&nats, sink).await;
    // 37 is the bad one; the others are fine.
    let keys = futures::future::join_all((0..100).map(|i| {
        let domain = if i == 37 {
            "bad.example"
        } else {
            "good.example"
        };
        let email = format!("lead{i}@{domain}");
        let app = &app;
        async move {
            app.accept("demo", &format!("batch-{i}"), &body(&email, "Lead"))
                .await
        }
    }))
    .await;
    app.wait_for("99 delivered and 1 dead", |s| {
        s.delivered() == 99 && s.dead().get("sink_rejected") == Some(&1)
    })
    .await;

    let stats = crm.hubspot_stats();
    assert_eq!(
        stats.max_inputs_in_a_call, 100,
        "one batch of 100: {stats:?}"
    );
    assert_eq!(
        stats.batch_calls, 2,
        "the refused batch, then its 99 good inputs again: {stats:?}"
    );
    let contacts = crm.hubspot_contacts();
    assert_eq!(contacts.len(), 99);
    assert!(contacts.iter().all(|c| c.writes == 1), "each upserted once");
    assert!(crm.hubspot_contact("lead37@bad.example").is_none());
    // The contact records the lead's key for traceability.
    let c = crm.hubspot_contact("lead5@good.example").expect("written");
    assert_eq!(c.properties.get("leadrouter_key"), Some(&json!(keys[5])));

    let dead = dlq(&nats).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], hdr::dlq::REASON), "sink_rejected");
    assert_eq!(header(&dead[0], hdr::dlq::ATTEMPTS), "1");
    let last_error = header(&dead[0], hdr::dlq::LAST_ERROR);
    assert!(
        last_error.contains("HubSpot refused the record"),
        "{last_error}"
    );
    assert!(
        last_error.contains("INVALID_EMAIL"),
        "HubSpot's own words: {last_error}"
    );
    assert!(
        !last_error.contains("lead37@bad.example"),
        "no email in clear: {last_error}"
    );

    // The lead lookup records HubSpot's contact id and that the contact was new.
    let entry = lead_entry(&nats, &keys[5]).await;
    let r = entry.refs.get("crm").expect("a sink ref");
    assert_eq!(r.id, c.id);
    assert_eq!(r.created, Some(true));
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_paced_under_the_window_without_a_single_429() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    // A Starter-like window, scaled down so the test takes seconds: 6 calls per rolling 1 s.
    crm.set_hubspot(HubspotConfig {
        burst_limit: 6,
        interval: Duration::from_secs(1),
        ..HubspotConfig::default()
    });
    let sink = HubspotSinkConfig {
        max_records: Some(10),
        rate_limit: Some(6),
        rate_interval: Some(Duration::from_secs(1)),
        ..hubspot(&crm)
    };
    let app = start(&nats, sink).await;
    let keys = post_many(&app, "burst", "paced.example", 150).await;
    app.wait_for("150 delivered", |s| s.delivered() == 150)
        .await;

    let stats = crm.hubspot_stats();
    assert_eq!(
        stats.rate_limited, 0,
        "paced before the vendor throttles: {stats:?}"
    );
    assert!(stats.batch_calls >= 15, "at most 10 per call: {stats:?}");
    // While the window holds calls back, leads keep joining: full batches, not one per lead.
    assert_eq!(stats.max_inputs_in_a_call, 10, "{stats:?}");
    assert!(
        stats.batch_calls <= 25,
        "batches fill under pacing: {stats:?}"
    );
    let contacts = crm.hubspot_contacts();
    assert_eq!(contacts.len(), keys.len());
    assert!(contacts.iter().all(|c| c.writes == 1), "0 duplicates");
    assert!(dlq(&nats).await.is_empty());
    let m = metrics(&app).await;
    assert!(
        m.contains("leadrouter_sink_batch_leads_count{sink=\"crm\"}"),
        "{m}"
    );
    // 150 leads at 6 calls of 10 per second: most calls waited for the window.
    let paced = m
        .lines()
        .find(|l| l.starts_with("leadrouter_sink_pacing_delay_seconds_sum{sink=\"crm\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(paced > 0.5, "pacing delay recorded: {paced}");
    assert!(
        m.contains("leadrouter_sink_budget_limit{sink=\"crm\",window=\"interval\"} 6"),
        "{m}"
    );
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_anyway_the_batch_waits_for_the_window_and_nothing_reaches_the_dlq() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    crm.set_hubspot(HubspotConfig {
        burst_limit: 10,
        interval: Duration::from_secs(3),
        ..HubspotConfig::default()
    });
    // The config says a bigger tier than the account has (or another app spends the budget):
    // HubSpot answers 429 TEN_SECONDLY_ROLLING, and its headers correct the sink's pace.
    let sink = HubspotSinkConfig {
        max_records: Some(10),
        max_in_flight: Some(4),
        rate_limit: Some(100),
        rate_interval: Some(Duration::from_secs(1)),
        ..hubspot(&crm)
    };
    let app = start(&nats, sink).await;
    // Another app of the account spends the whole window just before our leads come.
    burn_window(&crm, 10).await;
    let keys = post_many(&app, "over", "throttled.example", 120).await;
    app.wait_for("120 delivered", |s| s.delivered() == 120)
        .await;

    let stats = crm.hubspot_stats();
    assert!(
        stats.rate_limited >= 1,
        "the vendor did throttle: {stats:?}"
    );
    let contacts: Vec<_> = crm
        .hubspot_contacts()
        .into_iter()
        .filter(|c| {
            c.email
                .as_deref()
                .is_some_and(|e| e.ends_with("@throttled.example"))
        })
        .collect();
    assert_eq!(contacts.len(), keys.len());
    assert!(contacts.iter().all(|c| c.writes == 1), "0 duplicates");
    assert!(
        dlq(&nats).await.is_empty(),
        "a throttle never spends an attempt"
    );
    let m = metrics(&app).await;
    assert!(
        m.contains("leadrouter_sink_throttled_total{policy=\"TEN_SECONDLY_ROLLING\",sink=\"crm\"}"),
        "{m}"
    );
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_hands_leads_back_without_spending_attempts() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    crm.set_hubspot(HubspotConfig {
        daily_limit: 2,
        ..HubspotConfig::default()
    });
    let sink = HubspotSinkConfig {
        max_records: Some(5),
        ..hubspot(&crm)
    };
    let app = start(&nats, sink).await;
    let _ = post_many(&app, "daily", "daily.example", 5).await;
    app.wait_for("5 written", |_| crm.hubspot_contacts().len() == 5)
        .await;
    // The first answer said 1 of 2 calls left today: within the headroom, the sink stops
    // itself; leads that come now wait for the reset instead of failing.
    let late = post_many(&app, "daily-late", "late.example", 5).await;
    app.wait_for("the late leads handed back", |s| s.throttled() >= 5)
        .await;
    assert!(dlq(&nats).await.is_empty(), "throttled, not dead");
    assert_eq!(crm.hubspot_contacts().len(), 5);
    let entry = lead_entry(&nats, &late[0]).await;
    assert_eq!(entry.attempts, 0, "no attempt spent");
    let last = entry.last_error.unwrap_or_default();
    assert!(last.contains("throttled"), "{last}");
    let m = metrics(&app).await;
    assert!(
        m.contains("leadrouter_retries_total{reason=\"throttled\"}"),
        "{m}"
    );
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_of_one_email_across_batches_end_on_the_later_one() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    let app = start(&nats, hubspot(&crm)).await;
    // v1 of 20 emails, then v2 of each, posted as fast as possible.
    for version in ["One", "Two"] {
        futures::future::join_all((0..20).map(|i| {
            let app = &app;
            async move {
                app.accept(
                    "demo",
                    &format!("order-{i}-{version}"),
                    &body(&format!("same{i}@order.example"), version),
                )
                .await
            }
        }))
        .await;
    }
    app.wait_for("40 delivered", |s| s.delivered() == 40).await;
    for i in 0..20 {
        let c = crm
            .hubspot_contact(&format!("same{i}@order.example"))
            .expect("contact");
        assert_eq!(c.properties.get("firstname"), Some(&json!("Two")), "{c:?}");
        let seen: Vec<&Value> = c
            .history
            .iter()
            .filter_map(|h| h.get("firstname"))
            .collect();
        assert_eq!(seen, [&json!("One"), &json!("Two")], "in order: {c:?}");
    }
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_config_error_that_says_what_to_fix() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    crm.set_hubspot(HubspotConfig {
        token: Some("the-real-token".into()),
        ..HubspotConfig::default()
    });
    let app = start(&nats, hubspot(&crm)).await;
    app.accept("demo", "bad-token-1", &body("who@token.example", "Who"))
        .await;
    app.wait_for("dead", |s| s.dead().get("sink_rejected") == Some(&1))
        .await;
    let dead = dlq(&nats).await;
    let last_error = header(&dead[0], hdr::dlq::LAST_ERROR);
    assert!(last_error.contains("config"), "{last_error}");
    assert!(last_error.contains("token_env"), "{last_error}");
    assert_eq!(crm.hubspot_stats().unauthorized, 1);
    app.service.shutdown().await;
}

/// `n` calls of another private app of the same account (HubSpot's budget is per account).
async fn burn_window(crm: &SandboxCrm, n: usize) {
    let http = common::http_client();
    for i in 0..n {
        let resp = http
            .post(format!("{}/crm/v3/objects/contacts/batch/upsert", crm.url()))
            .bearer_auth("another-apps-token")
            .json(&json!({"inputs": [{"idProperty": "email", "id": format!("other{i}@app.example"), "properties": {}}]}))
            .send()
            .await
            .expect("other app's call");
        assert_eq!(resp.status(), 200);
    }
}

fn salesforce(crm: &SandboxCrm) -> SalesforceSinkConfig {
    SalesforceSinkConfig {
        linger: Some(Duration::from_millis(50)),
        ..salesforce_sink(crm.url())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_salesforce_token_is_refreshed_mid_run_and_nothing_is_lost() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    let app = start(&nats, salesforce(&crm)).await;
    let first = post_many(&app, "sf-a", "sf.example", 30).await;
    app.wait_for("30 delivered", |s| s.delivered() == 30).await;
    assert_eq!(crm.salesforce_stats().tokens_issued, 1);

    crm.expire_salesforce_tokens();
    let second = post_many(&app, "sf-b", "sf2.example", 30).await;
    app.wait_for("60 delivered", |s| s.delivered() == 60).await;

    let stats = crm.salesforce_stats();
    assert_eq!(
        stats.tokens_issued, 2,
        "one new token for the expiry: {stats:?}"
    );
    assert!(stats.unauthorized >= 1, "the expiry was seen: {stats:?}");
    for key in first.iter().chain(&second) {
        let r = crm.salesforce_record(key).expect("upserted by our key");
        assert_eq!(r.writes, 1, "once: {r:?}");
        assert_eq!(r.object, "Lead");
    }
    assert!(dlq(&nats).await.is_empty());
    assert_eq!(
        app.service.pipeline_stats().map(|s| s.retries()),
        Some(0),
        "the batch was not lost or retried: it went again with the new token"
    );
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_record_error_fails_that_lead_alone() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    crm.set_salesforce(SalesforceConfig {
        reject_emails: vec!["lead3@sfbad.example".into()],
        ..SalesforceConfig::default()
    });
    let app = start(&nats, salesforce(&crm)).await;
    let keys = post_many(&app, "sf-bad", "sfbad.example", 10).await;
    app.wait_for("9 delivered, 1 dead", |s| {
        s.delivered() == 9 && s.dead().get("sink_rejected") == Some(&1)
    })
    .await;
    let dead = dlq(&nats).await;
    assert_eq!(dead.len(), 1);
    let last_error = header(&dead[0], hdr::dlq::LAST_ERROR);
    assert!(last_error.contains("INVALID_EMAIL_ADDRESS"), "{last_error}");
    assert_eq!(crm.salesforce_records().len(), 9);
    assert!(crm.salesforce_record(&keys[3]).is_none());
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_near_its_api_limit_stops_before_the_403_and_dead_letters_nothing() {
    let nats = NatsServer::start();
    let crm = common::sandbox_crm().await;
    crm.set_salesforce(SalesforceConfig {
        daily_limit: 1000,
        ..SalesforceConfig::default()
    });
    // Other integrations used 995 of 1000 calls: one call of ours, and the header says we are
    // inside the 5% headroom.
    crm.set_salesforce_usage(995);
    let app = start(&nats, salesforce(&crm)).await;
    let _ = post_many(&app, "sf-limit", "sflimit.example", 5).await;
    app.wait_for("written", |_| crm.salesforce_records().len() == 5)
        .await;
    let late = post_many(&app, "sf-limit-late", "sflate.example", 5).await;
    app.wait_for("handed back", |s| s.throttled() >= 5).await;
    let stats = crm.salesforce_stats();
    assert_eq!(
        stats.collection_calls, 1,
        "no call past the headroom: {stats:?}"
    );
    assert_eq!(
        stats.limit_exceeded, 0,
        "stopped before Salesforce refused: {stats:?}"
    );
    assert!(dlq(&nats).await.is_empty());
    assert!(crm.salesforce_record(&late[0]).is_none());
    app.service.shutdown().await;
}
