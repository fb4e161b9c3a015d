//! Several routers on one NATS: real `leadrouter serve` processes, a CRM stand-in that upserts
//! by email and refuses 30% of first attempts, 300 leads sent as v1 then v2 right after v1's
//! 202. Whatever happens to the routers, every contact ends on v2, no older event is written
//! after a newer one, nothing is written twice, and nothing is left waiting.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::upsert_crm::{verdict, UpsertCrm};
use common::NatsServer;
use futures::StreamExt;
use leadrouter::devtools::harness::{self, HandlersSection, RouterConfig, RouterProcess};
use leadrouter::intake::schemes::Verifier;
use leadrouter::pipeline::ownership::members;
use serde_json::json;

const PARTITIONS: u16 = 16;
/// A vendor's request timeout.
const TIMEOUT: Duration = Duration::from_secs(5);
const EMAILS: usize = 300;
const DLQ_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const GROUP_KEY: &str = "scale-out-test-group-key-shared";

fn env() -> HashMap<String, String> {
    let mut e = common::test_env();
    e.insert("TEST_DLQ_KEY".into(), DLQ_KEY.into());
    e.insert("LEADROUTER_GROUP_KEY".into(), GROUP_KEY.into());
    e
}

struct Fleet {
    nats: NatsServer,
    crm: UpsertCrm,
    dir: tempfile::TempDir,
    /// Locked only for a moment (never across an await).
    routers: Mutex<Vec<RouterProcess>>,
    verifier: Verifier,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(n: usize) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet {
            nats: NatsServer::start(),
            crm: UpsertCrm::start(30).await,
            dir: tempfile::tempdir().expect("tempdir"),
            routers: Mutex::new(Vec::new()),
            verifier: harness::standard_webhooks_signer(common::DEMO_SECRET).expect("signer"),
            http: common::http_client(),
        });
        for _ in 0..n {
            fleet.add_router().await;
        }
        fleet
    }

    fn config(&self, i: usize) -> RouterConfig {
        self.crm
            .router_config(&self.dir.path().join(format!("r{i}")))
            .nats_url(self.nats.url())
            .handlers(HandlersSection {
                pool_size: Some(4),
                max_deliver: Some(20),
                ack_wait: Some(Duration::from_secs(4)),
                backoff_base: Some(Duration::from_millis(50)),
                backoff_cap: Some(Duration::from_millis(400)),
                schemas_dir: Some(common::manifest_dir().join("config/schemas")),
                partitions: Some(u32::from(PARTITIONS)),
                ownership_timeout: Some(Duration::from_secs(3)),
                ..HandlersSection::default()
            })
    }

    /// Starts one more `serve` process and waits for its `/readyz`.
    async fn add_router(&self) -> usize {
        let i = self.routers.lock().unwrap().len();
        let cfg = self.config(i);
        let r = RouterProcess::for_config(
            env!("CARGO_BIN_EXE_leadrouter"),
            &cfg,
            self.dir.path().join(format!("r{i}.toml")),
        )
        .expect("router config")
        .envs(env())
        .env("LEADROUTER_TOOLS_DIR", harness::tools_dir());
        let r = common::serve(r).await;
        let mut routers = self.routers.lock().unwrap();
        routers.push(r);
        routers.len() - 1
    }

    /// kill -9, as a crashed host.
    fn kill(&self, i: usize) {
        self.routers.lock().unwrap()[i].kill9();
    }

    fn pid(&self, i: usize) -> u32 {
        self.routers.lock().unwrap()[i].pid().expect("running")
    }

    /// (intake URL, alive) of every router.
    fn targets(&self) -> Vec<(String, bool)> {
        self.routers
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.intake_url(), r.is_alive()))
            .collect()
    }

    /// Posts one signed lead to the live routers, moving to the next one when a router is gone
    /// or answers 5xx, as a vendor retries: until a 202.
    async fn send(&self, start: usize, email: &str, version: &str) {
        let body = serde_json::to_vec(&json!({"email": email, "first_name": version})).unwrap();
        let event_id = format!("{email}-{version}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = start;
        loop {
            assert!(Instant::now() < deadline, "no router took {event_id}");
            let targets = self.targets();
            let (base, alive) = &targets[i % targets.len()];
            i += 1;
            if !alive {
                continue;
            }
            let url = format!("{base}/v1/intake/demo");
            let sent =
                harness::post_signed(&self.http, &self.verifier, &url, &event_id, &body, TIMEOUT)
                    .await;
            match sent {
                Ok(resp) if resp.status().as_u16() == 202 => return,
                Ok(resp) if resp.status().is_server_error() => {}
                Ok(resp) => panic!("{event_id}: {}", resp.status()),
                // The router died under us: the vendor retries elsewhere.
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each email as v1, then v2 right after v1's 202; 16 emails in flight.
    async fn send_all(self: &Arc<Self>, emails: std::ops::Range<usize>) {
        futures::stream::iter(emails)
            .for_each_concurrent(16, |n| {
                let fleet = self.clone();
                async move {
                    let email = format!("lead{n}@example.com");
                    fleet.send(n, &email, "v1").await;
                    fleet.send(n + 1, &email, "v2").await;
                }
            })
            .await;
    }

    /// Starts sending every email in the background and returns once a third of the contacts
    /// have a write: "mid-run" for the faults.
    async fn traffic_a_third_written(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let f = self.clone();
        let traffic = tokio::spawn(async move { f.send_all(0..EMAILS).await });
        self.crm
            .wait_until("a third of the traffic", Duration::from_secs(120), |c| {
                c.len() >= EMAILS / 3
            })
            .await;
        traffic
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.expect("connect"))
    }

    /// The index of the router whose instance id is `instance` (instance ids carry the pid).
    fn index_of(&self, instance: &str) -> usize {
        let routers = self.routers.lock().unwrap();
        routers
            .iter()
            .position(|r| {
                r.pid()
                    .is_some_and(|pid| instance.contains(&format!("-{pid}-")))
            })
            .expect("an instance of ours")
    }
}

/// Every partition owned exactly once, by exactly `routers` routers that each own some.
fn settled(owners: &BTreeMap<String, Vec<u16>>, routers: usize) -> bool {
    let mut seen = BTreeSet::new();
    let all_disjoint = owners.values().flatten().all(|p| seen.insert(*p));
    owners.len() == routers
        && owners.values().all(|o| !o.is_empty())
        && all_disjoint
        && seen.len() == usize::from(PARTITIONS)
}

async fn wait_settled(js: &async_nats::jetstream::Context, routers: usize) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        let o = members(js).await;
        if settled(&o, routers) {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "partitions never settled on {routers} routers: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The instance that owns the most partitions.
fn biggest_owner(owners: &BTreeMap<String, Vec<u16>>) -> String {
    owners
        .iter()
        .max_by_key(|(_, o)| o.len())
        .map(|(i, _)| i.clone())
        .expect("some owner")
}

/// Each partition consumer has a pinned client (the server's side of "one owner"). A pin is
/// given with a delivery, so this holds only for partitions that had traffic since their last
/// owner change.
async fn every_partition_pinned(js: &async_nats::jetstream::Context) {
    let stream = js.get_stream("LEADS").await.expect("LEADS");
    for p in 0..PARTITIONS {
        let name = leadrouter::queue::partition::consumer_name(p);
        let info = stream.consumer_info(&name).await.expect("consumer");
        let pinned = info
            .priority_groups
            .iter()
            .any(|g| g.pinned_client_id.is_some());
        assert!(
            pinned,
            "{name} has no pinned client: {:?}",
            info.priority_groups
        );
    }
}

/// Waits until every contact ends on v2 and the consumers hold nothing unacknowledged, then
/// checks the contract: no inversion, no key applied twice, every v1 applied or recorded as
/// superseded. Returns how many v1s were superseded.
async fn settle_and_check(fleet: &Fleet) -> usize {
    fleet
        .crm
        .wait_until("every contact on v2", Duration::from_secs(180), |c| {
            c.len() == EMAILS && c.values().all(|w| verdict(w).0.as_deref() == Some("v2"))
        })
        .await;
    let js = fleet.js().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b = leadrouter::queue::backlog::read(&js, PARTITIONS)
            .await
            .expect("backlog");
        if b.pending == 0 && b.ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "leads left waiting: {b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let contacts = fleet.crm.contacts();
    let mut inversions = 0;
    let mut v1_written = 0;
    for writes in contacts.values() {
        let (last, inv) = verdict(writes);
        assert_eq!(last.as_deref(), Some("v2"));
        inversions += inv;
        v1_written += writes.iter().filter(|w| w.version == "v1").count().min(1);
    }
    assert_eq!(
        inversions, 0,
        "an older event was written after a newer one"
    );
    assert!(
        fleet.crm.keys_applied_twice().is_empty(),
        "written twice: {:?}",
        fleet.crm.keys_applied_twice()
    );
    // A v1 that was not written must be on record as superseded, never silently dropped.
    let kv = js.get_key_value("leads_idempotency").await.expect("kv");
    let mut superseded = 0;
    for n in 0..EMAILS {
        let email = format!("lead{n}@example.com");
        if contacts[&email].iter().any(|w| w.version == "v1") {
            continue;
        }
        let fields = json!({"email": email}).as_object().cloned().unwrap();
        let key = leadrouter::intake::envelope::idempotency_key(
            "demo",
            &format!("{email}-v1"),
            &leadrouter::intake::envelope::email_hash(&fields),
        );
        let entry = kv
            .get(&key)
            .await
            .expect("kv get")
            .expect("v1 has a record");
        let entry: leadrouter::ledger::idempotency::LeadEntry =
            serde_json::from_slice(&entry).expect("entry");
        assert!(
            entry.superseded_by.is_some(),
            "{email}'s v1 neither written nor recorded as superseded: {entry:?}"
        );
        superseded += 1;
    }
    assert_eq!(v1_written + superseded, EMAILS);
    let (requests, repeats, refusals) = fleet.crm.summary();
    eprintln!(
        "CRM: {requests} requests, {refusals} refused first attempts, {repeats} honoured repeats; {superseded} v1 superseded"
    );
    superseded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_routers_keep_each_leads_order_and_leave_nothing_waiting() {
    let fleet = Fleet::start(3).await;
    let js = fleet.js().await;
    wait_settled(&js, 3).await;
    fleet.send_all(0..EMAILS).await;
    let superseded = settle_and_check(&fleet).await;
    // Ownership never moved, so nothing had to be skipped: every v1 was written before its v2.
    assert_eq!(superseded, 0);
    every_partition_pinned(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_biggest_owner_loses_nothing_and_its_partitions_move() {
    let fleet = Fleet::start(3).await;
    let js = fleet.js().await;
    wait_settled(&js, 3).await;
    let victim = fleet.index_of(&biggest_owner(&members(&js).await));
    let traffic = fleet.traffic_a_third_written().await;
    let pid = fleet.pid(victim);
    fleet.kill(victim);
    let moved = wait_settled(&js, 2).await;
    eprintln!(
        "kill -9 of router pid {pid} (the owner of the most partitions): all {PARTITIONS} partitions owned again by the 2 survivors after {:.2} s",
        moved.as_secs_f64()
    );
    traffic.await.expect("traffic");
    settle_and_check(&fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_that_joins_mid_run_takes_its_share() {
    let fleet = Fleet::start(3).await;
    let js = fleet.js().await;
    wait_settled(&js, 3).await;
    let before: BTreeSet<String> = members(&js).await.into_keys().collect();
    let traffic = fleet.traffic_a_third_written().await;
    fleet.add_router().await;
    let took = wait_settled(&js, 4).await;
    let after = members(&js).await;
    let joiner: Vec<_> = after.keys().filter(|k| !before.contains(*k)).collect();
    assert_eq!(joiner.len(), 1, "{after:?}");
    let share = after[joiner[0]].len();
    assert!(share >= 1, "the joiner owns nothing: {after:?}");
    eprintln!(
        "a 4th router joined: {share} partitions after {:.2} s, none owned twice",
        took.as_secs_f64()
    );
    traffic.await.expect("traffic");
    settle_and_check(&fleet).await;

    // SIGTERM: the router leaves the membership itself (its record is deleted, not left to age
    // out as a killed router's is) and hands its partitions over before it exits.
    let leaving = fleet.index_of(&biggest_owner(&members(&js).await));
    let pid = fleet.pid(leaving);
    let signalled = Instant::now();
    let mut router = fleet.routers.lock().unwrap().remove(leaving);
    let how = router.stop(Duration::from_secs(30)).await;
    assert!(
        matches!(how, harness::Stopped::Exited(s) if s.success()),
        "graceful stop: {how:?}"
    );
    let left = members(&js).await;
    assert!(
        !left.keys().any(|i| i.contains(&format!("-{pid}-"))),
        "a stopped router deletes its record: {left:?}"
    );
    wait_settled(&js, 3).await;
    eprintln!(
        "SIGTERM: router pid {pid} exited and its partitions were owned again {:.2} s after the signal",
        signalled.elapsed().as_secs_f64()
    );
}

/// A second router that does not share the first one's secrets or partition count is refused
/// at start, with the cause and the fix in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_does_not_match_the_others_is_refused_with_the_reason() {
    use leadrouter::service::Service;
    let nats = NatsServer::start();
    // `partitions`: unset is the default (16).
    let start = |data: &Path, partitions: Option<u32>, env: &HashMap<String, String>| {
        let cfg = RouterConfig::new()
            .data_dir(data)
            .nats_url(nats.url())
            .intake_listen(common::any_port())
            .handlers(HandlersSection {
                schemas_dir: Some(common::shipped_schemas()),
                partitions,
                ..HandlersSection::default()
            })
            .parse(Path::new("t.toml"), env)
            .expect("config");
        let env = env.clone();
        async move { Service::start(&cfg, &env).await }
    };
    // The shipped defaults: a generated DLQ key and group key in each data dir.
    let bare: HashMap<String, String> = HashMap::new();
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first = start(a.path(), None, &bare)
        .await
        .expect("the first router starts");
    let err = match start(b.path(), None, &bare).await {
        Ok(_) => panic!("a router with another group key must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("group key"), "{err}");
    assert!(
        err.contains("group.key") && err.contains("LEADROUTER_GROUP_KEY"),
        "{err}"
    );
    // With the group key shared but its own generated DLQ key.
    std::fs::copy(a.path().join("group.key"), b.path().join("group.key")).unwrap();
    let err = match start(b.path(), None, &bare).await {
        Ok(_) => panic!("a second router with its own generated DLQ key must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("must share [dlq] keys"), "{err}");
    assert!(err.contains("dlq.key"), "{err}");
    std::fs::copy(a.path().join("dlq.key"), b.path().join("dlq.key")).unwrap();
    // Both shared: it starts.
    let second = start(b.path(), None, &bare)
        .await
        .expect("a matching router starts");
    // A different partition count is refused: the count is fixed once the stream exists.
    std::fs::copy(a.path().join("dlq.key"), c.path().join("dlq.key")).unwrap();
    std::fs::copy(a.path().join("group.key"), c.path().join("group.key")).unwrap();
    let err = match start(c.path(), Some(8), &bare).await {
        Ok(_) => panic!("another partition count must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("handlers.partitions") && err.contains("16"),
        "{err}"
    );
    second.shutdown().await;
    first.shutdown().await;
}
