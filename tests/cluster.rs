//! A router on a real 3-node nats-server cluster (R3 streams and buckets) loses a NATS node
//! under load: the leader of `LEADS`, and in a second run the leaders of the partition consumers
//! and the idempotency bucket. An election is an outage to wait out: every lead answered 202
//! reaches the CRM exactly once, none is dead-lettered, and intake answers 503 (never a false
//! 202) only while the cluster elects.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::upsert_crm::UpsertCrm;
use futures::StreamExt;
use leadrouter::devtools::harness::{self, HandlersSection, NatsCluster, RaftGroup, RouterProcess};
use leadrouter::intake::schemes::Verifier;
use serde_json::json;

const LEADS: usize = 2_000;
const DLQ_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn env() -> HashMap<String, String> {
    let mut e = common::test_env();
    e.insert("TEST_DLQ_KEY".into(), DLQ_KEY.into());
    e
}

/// What the vendor side saw.
#[derive(Default)]
struct Answers {
    accepted: AtomicU64,
    unavailable: AtomicU64,
    /// First and last 503, to size the outage the vendor saw.
    window: Mutex<Option<(Instant, Instant)>>,
}

async fn post_until_accepted(
    http: &reqwest::Client,
    verifier: &Verifier,
    base: &str,
    n: usize,
    answers: &Answers,
) {
    let email = format!("cluster{n}@example.com");
    let body = serde_json::to_vec(&json!({"email": email, "first_name": "v1"})).unwrap();
    let event_id = format!("cluster-{n}");
    let url = format!("{base}/v1/intake/demo");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "lead {n} never accepted");
        let sent = harness::post_signed(
            http,
            verifier,
            &url,
            &event_id,
            &body,
            Duration::from_secs(10),
        )
        .await;
        match sent {
            Ok(r) if r.status().as_u16() == 202 => {
                answers.accepted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) if r.status().as_u16() == 503 => {
                answers.unavailable.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let mut w = answers.window.lock().unwrap();
                *w = Some(w.map_or((now, now), |(first, _)| (first, now)));
            }
            Ok(r) => panic!("lead {n}: unexpected {}", r.status()),
            Err(e) => panic!("lead {n}: the router itself must stay up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which leaders to kill mid-load.
#[derive(Clone, Copy, Debug)]
enum Victim {
    StreamLeader,
    ConsumerAndKvLeaders,
}

async fn lose_a_node_under_load(victim: Victim) {
    let mut cluster = NatsCluster::start_ready(Duration::from_secs(60))
        .await
        .expect("3-node cluster");
    let crm = UpsertCrm::start(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = crm
        .router_config(&dir.path().join("data"))
        .nats_url(cluster.urls())
        .replicas(3)
        .publish_timeout(Duration::from_secs(2))
        .handlers(HandlersSection {
            pool_size: Some(8),
            // The shipped attempt budget: an election must not spend it.
            max_deliver: Some(5),
            ack_wait: Some(Duration::from_secs(5)),
            schemas_dir: Some(common::manifest_dir().join("config/schemas")),
            ownership_timeout: Some(Duration::from_secs(3)),
            ..HandlersSection::default()
        });
    let mut router = RouterProcess::for_config(
        env!("CARGO_BIN_EXE_leadrouter"),
        &cfg,
        dir.path().join("router.toml"),
    )
    .expect("config")
    .envs(env())
    .env("LEADROUTER_TOOLS_DIR", harness::tools_dir());
    router
        .start(Duration::from_secs(60))
        .await
        .expect("router ready");

    let client = cluster.client().await.expect("client");
    let js = async_nats::jetstream::new(client);
    let answers = Arc::new(Answers::default());
    let base = router.intake_url();
    let traffic = {
        let (answers, base) = (answers.clone(), base.clone());
        tokio::spawn(async move {
            let http = common::http_client();
            let verifier = harness::standard_webhooks_signer(common::DEMO_SECRET).expect("signer");
            futures::stream::iter(0..LEADS)
                .for_each_concurrent(32, |n| {
                    let (http, verifier, answers, base) = (&http, &verifier, &answers, &base);
                    async move { post_until_accepted(http, verifier, base, n, answers).await }
                })
                .await;
        })
    };
    // Mid-load: a quarter of the leads written.
    crm.wait_until("a quarter of the leads", Duration::from_secs(120), |c| {
        c.len() >= LEADS / 4
    })
    .await;
    let group = match victim {
        Victim::StreamLeader => RaftGroup::Stream("LEADS"),
        Victim::ConsumerAndKvLeaders => RaftGroup::Kv("leads_idempotency"),
    };
    let leader = cluster.leader(&js, group).await.expect("a leader");
    // The node leading the idempotency bucket usually leads some partition consumers too (the
    // cluster spreads leaders over nodes): count them, as the run's record.
    let mut consumers_led = 0;
    for p in 0..16u16 {
        let c = leadrouter::queue::partition::consumer_name(p);
        let l = cluster
            .leader(
                &js,
                RaftGroup::Consumer {
                    stream: "LEADS",
                    consumer: &c,
                },
            )
            .await;
        consumers_led += usize::from(l.as_deref() == Some(leader.as_str()));
    }
    let killed = [leader];
    let i = cluster.index_of(&killed[0]).expect("node");
    let killed_at = Instant::now();
    cluster.kill(i).expect("kill -9");
    let new = cluster
        .wait_leader_other_than(&js, group, &killed[0], Duration::from_secs(60))
        .await
        .expect("re-election");
    eprintln!(
        "{victim:?}: killed {} (leader for {:?}, and of {consumers_led}/16 partition consumers); {new} took over after {:.2} s",
        killed[0],
        victim,
        killed_at.elapsed().as_secs_f64()
    );
    traffic.await.expect("traffic");

    // Every accepted lead written exactly once.
    crm.wait_until("every lead written", Duration::from_secs(180), |c| {
        c.len() == LEADS
    })
    .await;
    assert!(
        crm.keys_applied_twice().is_empty(),
        "{:?}",
        crm.keys_applied_twice()
    );
    let dlq = js
        .get_stream("LEADS_DLQ")
        .await
        .expect("DLQ stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(dlq, 0, "an election dead-lettered good leads");
    assert_eq!(answers.accepted.load(Ordering::Relaxed), LEADS as u64);
    let outage = answers
        .window
        .lock()
        .unwrap()
        .map(|(a, b)| (b - a).as_secs_f64());
    eprintln!(
        "{victim:?}: {} x 503 while the cluster elected (first to last: {outage:?} s), then all {LEADS} accepted and written once, 0 dead-lettered",
        answers.unavailable.load(Ordering::Relaxed)
    );
    let warns = router
        .log_lines()
        .iter()
        .filter(|l| l.contains("\"WARN\""))
        .count();
    eprintln!("{victim:?}: {warns} WARN lines in the router's log");
    router.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_leads_stream_leader_dead_letters_nothing() {
    lose_a_node_under_load(Victim::StreamLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_consumer_and_kv_leaders_dead_letters_nothing() {
    lose_a_node_under_load(Victim::ConsumerAndKvLeaders).await;
}
