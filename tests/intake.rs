//! The intake edge against a real nats-server: every status of the HTTP contract, dedupe,
//! allowlisting, independent rate limits, and no acked lead lost when NATS crashes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use common::{demo_config, stream_messages, App, NatsServer, RouterConfig, SenderSpec};
use serde_json::json;

fn lead(email: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "email": email,
        "first_name": "Ada",
        "phone": "+44 20 7946 0000",
        "favourite_colour": "SECRET-UNMAPPED-VALUE",
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_lead_is_stored_with_only_allowlisted_fields() {
    let nats = NatsServer::start();
    let app = App::start(&nats.url(), demo_config()).await;

    let (status, body, _) = app
        .post_signed("demo", "evt_1", &lead("Ada@Example.com"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["duplicate"], false);
    let id = body["id"].as_str().expect("id").to_string();

    let msgs = stream_messages(&nats.url(), "LEADS").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, id, "Nats-Msg-Id is the idempotency key");
    let stored = String::from_utf8(msgs[0].1.clone()).unwrap();
    assert!(!stored.contains("SECRET-UNMAPPED-VALUE"), "{stored}");
    assert!(!stored.contains("favourite_colour"), "{stored}");
    let env: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(env["schema"], "lead.v1");
    assert_eq!(env["sender"], "demo");
    assert_eq!(env["source_event_id"], "evt_1");
    assert_eq!(env["fields"]["email"], "Ada@Example.com");
    assert!(chrono::DateTime::parse_from_rfc3339(env["received_at"].as_str().unwrap()).is_ok());
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_twice_is_one_message_and_duplicate() {
    let nats = NatsServer::start();
    let app = App::start(&nats.url(), demo_config()).await;
    let body = lead("dup@example.com");
    let (s1, b1, _) = app.post_signed("demo", "evt_dup", &body).await;
    let (s2, b2, _) = app.post_signed("demo", "evt_dup", &body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1["duplicate"], false);
    assert_eq!(b2["duplicate"], true);
    assert_eq!(b1["id"], b2["id"]);
    assert_eq!(stream_messages(&nats.url(), "LEADS").await.len(), 1);
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_contract_statuses() {
    let nats = NatsServer::start();
    let hooks = SenderSpec::new("hooks", "hmac-sha256")
        .secret_env("TEST_DEMO_SECRET")
        .event_id_pointer("/event_id")
        .field("email", "$.email");
    let app = App::start(&nats.url(), demo_config().sender(hooks)).await;
    let post = |path: &str, content_type: &str| {
        app.http
            .post(format!("{}{path}", app.base))
            .header("content-type", content_type)
    };
    let demo = |content_type: &str| post("/v1/intake/demo", content_type);

    // Signed, and still refused: what is in the body, or when it was signed.
    let old = SystemTime::now() - Duration::from_secs(600);
    let signed = [
        // Not JSON.
        (
            app.post_signed("demo", "e1", b"{not json").await,
            400,
            "invalid_body",
        ),
        // The configured event id is absent.
        (
            app.post_signed("hooks", "ignored", br#"{"email":"a@b.c"}"#)
                .await,
            400,
            "missing_event_id",
        ),
        // Stale: a correct signature, ten minutes old.
        (
            app.post_signed_at("demo", "e3", &lead("x@y.z"), old).await,
            401,
            "signature_stale",
        ),
    ];
    for ((s, b, _), status, error) in signed {
        assert_eq!((s, b["error"].as_str()), (status, Some(error)), "{b}");
    }

    // Unsigned or forged, too big, or of the wrong type.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..80).map(|_| Ok(vec![b'a'; 1024])).collect();
    let unsigned = [
        (
            "no signature at all",
            demo("application/json").body(lead("x@y.z")),
            401,
            "signature_missing",
        ),
        (
            "wrong signature",
            forged(
                demo("application/json"),
                "e2",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            )
            .body(lead("x@y.z")),
            401,
            "signature_invalid",
        ),
        (
            "unknown sender",
            post("/v1/intake/nobody", "application/json").body("{}"),
            404,
            "unknown_sender",
        ),
        (
            "declared length over the limit",
            demo("application/json").body(vec![b'a'; 70 * 1024]),
            413,
            "body_too_large",
        ),
        (
            "chunked body (no Content-Length) that grows over the limit",
            demo("application/json")
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
            413,
            "body_too_large",
        ),
        (
            "wrong content type",
            demo("text/plain").body("hello"),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, req, status, error) in unsigned {
        let (s, b, _) = common::send(req).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(error)),
            "{what}: {b}"
        );
    }

    // Nothing of the above reached the stream.
    assert_eq!(stream_messages(&nats.url(), "LEADS").await.len(), 0);
    app.service.shutdown().await;
}

/// `req` with Standard Webhooks headers for `event_id`, signed now with `signature`: what a
/// forger sends.
fn forged(
    req: reqwest::RequestBuilder,
    event_id: &str,
    signature: &str,
) -> reqwest::RequestBuilder {
    req.header("webhook-id", event_id)
        .header("webhook-timestamp", now_secs().to_string())
        .header("webhook-signature", signature)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_sender_and_answer_429_with_retry_after() {
    let nats = NatsServer::start();
    let limited = |id| {
        SenderSpec::standard_webhooks(id, "TEST_DEMO_SECRET")
            .rate(1, 2)
            .field("email", "$.email")
    };
    let cfg = RouterConfig::new()
        .sender(limited("alpha"))
        .sender(limited("beta"));
    let app = App::start(&nats.url(), cfg).await;
    let body = lead("rate@example.com");
    for i in 0..2 {
        let (s, b, _) = app.post_signed("alpha", &format!("a{i}"), &body).await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, b, h) = app.post_signed("alpha", "a2", &body).await;
    assert_eq!((s, b["error"].as_str()), (429, Some("rate_limited")), "{b}");
    let retry: u64 = h
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // beta's bucket is its own.
    for i in 0..2 {
        let (s, b, _) = app.post_signed("beta", &format!("b{i}"), &body).await;
        assert_eq!(s, 202, "{b}");
    }
    assert_eq!(stream_messages(&nats.url(), "LEADS").await.len(), 4);
    let stats = app
        .service
        .intake()
        .sender_actors()
        .stats("alpha")
        .await
        .unwrap();
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.rate_limited, 1);
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_without_secret_fails_closed_with_503() {
    let nats = NatsServer::start();
    let app = App::start_with(&nats.url(), demo_config(), std::collections::HashMap::new()).await;
    let req = app
        .http
        .post(app.intake_url("demo"))
        .header("content-type", "application/json");
    let (s, b, h) = common::send(forged(req, "x", "v1,AAAA").body(lead("x@y.z"))).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("sender_unconfigured")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("TEST_DEMO_SECRET"));
    assert!(h.contains_key("retry-after"));
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_down_answers_503_and_health_endpoints_tell() {
    let mut nats = NatsServer::start();
    let app = App::start(&nats.url(), demo_config()).await;
    let probe = |path: &str| common::send(app.http.get(format!("{}{path}", app.base)));
    assert_eq!(probe("/readyz").await.0, 200);

    nats.kill();
    let (s, b, h) = app
        .post_signed("demo", "down1", &lead("down@example.com"))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("queue_unavailable")),
        "{b}"
    );
    assert!(h.contains_key("retry-after"));
    assert_eq!(probe("/readyz").await.0, 503);
    assert_eq!(probe("/healthz").await.0, 200);

    // Back up: the vendor's retry of the 503'd request is stored once.
    nats.restart();
    let mut accepted = None;
    for _ in 0..100 {
        let (s, b, _) = app
            .post_signed("demo", "down1", &lead("down@example.com"))
            .await;
        if s == 202 {
            accepted = Some(b);
            break;
        }
        assert_eq!(s, 503, "{b}");
        // The vendor's own retry delay; the client reconnects in the background meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted.is_some(), "intake recovered after NATS came back");
    let msgs = stream_messages(&nats.url(), "LEADS").await;
    let ids: HashSet<_> = msgs.iter().map(|m| m.0.clone()).collect();
    assert_eq!(ids.len(), msgs.len(), "no lead stored twice");
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_202_survives_a_nats_crash_while_posting() {
    let mut nats = NatsServer::start();
    let app = std::sync::Arc::new(App::start(&nats.url(), demo_config()).await);

    // Each request during the outage waits out the 1 s publish timeout, so keep that window short.
    let total = 240usize;
    let (kill_at, restart_at) = (80usize, 92usize);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poster = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = 0usize;
            for i in 0..total {
                let (s, b, _) = app
                    .post_signed(
                        "demo",
                        &format!("crash-{i}"),
                        &lead(&format!("c{i}@example.com")),
                    )
                    .await;
                match s {
                    202 => accepted.push(b["id"].as_str().unwrap().to_string()),
                    503 => refused += 1,
                    other => panic!("unexpected status {other}: {b}"),
                }
                let _ = tx.send(i);
            }
            (accepted, refused)
        })
    };
    while let Some(i) = rx.recv().await {
        if i == kill_at {
            nats.kill();
        }
        if i == restart_at {
            nats.restart();
            break;
        }
    }
    let (accepted, refused) = poster.await.unwrap();
    assert!(refused > 0, "the crash window produced refusals");
    assert!(
        accepted.len() > total / 2,
        "intake accepted before and after the crash"
    );

    let stored: HashSet<String> = stream_messages(&nats.url(), "LEADS")
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    let lost: Vec<_> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acked leads lost: {lost:?}", lost.len());
    match std::sync::Arc::try_unwrap(app) {
        Ok(app) => app.service.shutdown().await,
        Err(_) => panic!("app still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_idempotent_and_applies_changes() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut cfg = leadrouter::config::StreamsConfig::default();
    use leadrouter::queue::topology::{ensure, Change};
    let first = ensure(&js, &cfg, &[]).await.unwrap();
    assert!(
        first.iter().all(|c| matches!(c, Change::Created(_))),
        "{first:?}"
    );
    let again = ensure(&js, &cfg, &[]).await.unwrap();
    assert!(
        again.iter().all(|c| matches!(c, Change::Unchanged(_))),
        "{again:?}"
    );

    cfg.max_age = Duration::from_secs(14 * 86400);
    let changed = ensure(&js, &cfg, &[]).await.unwrap();
    assert!(
        matches!(&changed[0], Change::Updated("stream LEADS", d) if d[0].contains("max_age")),
        "{changed:?}"
    );
    let mut s = js.get_stream("LEADS").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(14 * 86400));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
}
