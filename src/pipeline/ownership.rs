//! Which router consumes which partition.
//!
//! Two NATS mechanisms do the work:
//! - **Membership** is a KV bucket, `leads_routers`: each router puts its record every quarter
//!   of `handlers.ownership_timeout` and deletes it when it stops. Every router watches the
//!   bucket, so all of them see the same members; one whose records stop arriving for the
//!   timeout (kill -9, a lost host) is gone.
//! - **Exclusivity** is JetStream's: each partition has its own durable consumer `router-p{N}`
//!   with the `pinned_client` priority policy (ADR-42), so the server delivers a partition to one
//!   pulling client at a time, whatever the routers believe.
//!
//! From the member list every router computes the same assignment (rendezvous hashing, capped at
//! an even share), and pulls only the partitions assigned to it. A router that joins takes its
//! share as soon as the others see it; they hand those partitions over (finish what is with a
//! handler, NAK what waits, unpin). A stopped router deletes its record and unpins, so its
//! partitions move at once; a killed one's move after the timeout, when its record is stale and
//! its pin has expired. ADR-42 allows two clients to both believe they are pinned for a moment;
//! the per-lead fence (`pipeline::fence`) keeps the order through that window.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use super::dispatch::DispatchMsg;
use crate::backoff::Retries;
use crate::error_chain::chain;
use crate::queue::partition::{self, PRIORITY_GROUP};
use crate::queue::pull::{pull_forever, Pull};
use crate::queue::{KV_ROUTERS, STREAM_LEADS};

/// What the ownership loop needs from `[handlers]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub partitions: u16,
    pub timeout: Duration,
    pub instance: String,
    pub ack_wait: Duration,
    pub max_redeliveries: u32,
    /// `handlers.max_ack_pending` (shared out over the partitions) and `handlers.prefetch`.
    pub max_ack_pending: usize,
    pub prefetch: usize,
    /// How long a partition being handed over may wait for its in-flight leads.
    pub handover_grace: Duration,
    /// `streams.replicas`, for the membership bucket (R3 on a cluster, like everything else).
    pub replicas: usize,
    /// The only router there can be (the embedded nats-server listens on loopback for this
    /// process): it owns every partition from the start, with no membership to wait for. A
    /// restart after kill -9 would otherwise see its own previous record, still fresh, and
    /// leave half the partitions to a ghost until the record aged out.
    pub solo: bool,
}

impl Settings {
    /// (max_ack_pending, prefetch) of partition `p`. Each partition's consumer gets an equal
    /// share of `max_ack_pending` (the remainder to the first ones), so the shares add up to the
    /// configured budget: one router that owns every partition has the budget it had before
    /// partitioning. A pull never asks for more than its share.
    fn share(&self, p: u16) -> (usize, usize) {
        let n = usize::from(self.partitions.max(1));
        let extra = usize::from(usize::from(p) < self.max_ack_pending % n);
        let pending = (self.max_ack_pending / n + extra).max(1);
        (pending, self.prefetch.min(pending).max(1))
    }
}

/// A router's record in `leads_routers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub instance: String,
    /// The partitions this router pulls right now.
    pub owned: Vec<u16>,
    pub since_ms: u64,
}

/// Every router's record in `leads_routers` (instance -> partitions it pulls), for operators,
/// tests and benches. A record of a router that died stays until it ages out
/// (2 x `ownership_timeout`); an unreadable bucket reads as empty.
pub async fn members(js: &jetstream::Context) -> BTreeMap<String, Vec<u16>> {
    let mut out = BTreeMap::new();
    let Ok(kv) = js.get_key_value(KV_ROUTERS).await else {
        return out;
    };
    let Ok(mut keys) = kv.keys().await else {
        return out;
    };
    while let Some(Ok(k)) = keys.next().await {
        if let Ok(Some(v)) = kv.get(&k).await {
            if let Ok(r) = serde_json::from_slice::<MemberRecord>(&v) {
                out.insert(r.instance, r.owned);
            }
        }
    }
    out
}

/// The consumer of one partition, derived from config so every router creates the same one.
pub fn consumer_config(s: &Settings, p: u16) -> consumer::pull::Config {
    consumer::pull::Config {
        max_ack_pending: s.share(p).0 as i64,
        durable_name: Some(partition::consumer_name(p)),
        description: Some(format!("leadrouter partition {p}")),
        filter_subject: partition::filter_subject(p),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        max_deliver: i64::from(s.max_redeliveries),
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![PRIORITY_GROUP.into()],
        priority_timeout: s.timeout,
        // No `backoff` here on purpose: it would skew the explicit NAK delays.
        ..Default::default()
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; instance ids are host names and numbers.
fn member_key(instance: &str) -> String {
    instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn score(member: &str, p: u16) -> u64 {
    let d = Sha256::new()
        .chain_update(member.as_bytes())
        .chain_update([0x1f])
        .chain_update(p.to_be_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Partition -> member. Rendezvous hashing (each partition prefers the member with the highest
/// score, so a join or leave moves few partitions), capped at ceil(P/n) per member so the load
/// stays even. Deterministic: every router computes the same map from the same members.
pub fn assign(members: &BTreeSet<String>, partitions: u16) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let cap = usize::from(partitions).div_ceil(members.len());
    let mut load: HashMap<&str, usize> = HashMap::new();
    // Place the partitions with the strongest preference first: fewer forced moves.
    let mut ranked: Vec<(u16, Vec<(u64, &str)>)> = (0..partitions)
        .map(|p| {
            let mut r: Vec<(u64, &str)> =
                members.iter().map(|m| (score(m, p), m.as_str())).collect();
            r.sort_by(|a, b| b.cmp(a));
            (p, r)
        })
        .collect();
    ranked.sort_by(|a, b| b.1[0].0.cmp(&a.1[0].0).then(a.0.cmp(&b.0)));
    for (p, prefs) in ranked {
        for (_, m) in prefs {
            let l = load.entry(m).or_default();
            if *l < cap {
                *l += 1;
                out.insert(p, m.to_string());
                break;
            }
        }
    }
    out
}

/// Reports what this router owns, for metrics, stats and tests.
pub type Owned = watch::Receiver<BTreeSet<u16>>;

struct PartitionTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs until `stop` turns true; then hands every partition over before returning.
pub async fn run(
    js: jetstream::Context,
    s: Settings,
    dispatcher: ActorRef<DispatchMsg>,
    mut stop: watch::Receiver<bool>,
    report: watch::Sender<BTreeSet<u16>>,
) {
    if s.solo {
        return run_solo(js, s, dispatcher, stop, report).await;
    }
    let beat = (s.timeout / 4).max(Duration::from_millis(200));
    let me = member_key(&s.instance);
    let since_ms = crate::ledger::idempotency::now_ms();
    let mut tasks: BTreeMap<u16, PartitionTask> = BTreeMap::new();
    // Partitions on their way out (the hand-over waits for in-flight leads).
    let mut handing: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    // The last assignment this router computed: who held a partition before it moved here.
    let mut last_view: BTreeMap<u16, String> = BTreeMap::new();
    let mut retries = Retries::new(Duration::from_millis(200), Duration::from_secs(5));
    'session: loop {
        if *stop.borrow() {
            break;
        }
        let kv = match ensure_bucket(&js, s.timeout, s.replicas).await {
            Ok(kv) => kv,
            Err(e) => {
                let backoff = retries.failed();
                tracing::warn!(error = %chain(&e), retry_in = ?backoff, "membership bucket unavailable");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                let backoff = retries.failed();
                tracing::warn!(error = %chain(&e), retry_in = ?backoff, "cannot watch the membership bucket yet");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        retries.succeeded();
        // Member -> when its last record arrived (our clock: no skew between hosts).
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let mut synced = false;
        let mut last_put_ok = Instant::now();
        let mut tick = tokio::time::interval(beat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break 'session,
                entry = watch.next() => match entry {
                    Some(Ok(e)) => {
                        match e.operation {
                            kv::Operation::Put => {
                                // A record from before this watch started is as old as it says.
                                let age = age_of(&e.created);
                                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                                if e.key == me {
                                    synced = true;
                                }
                                seen.insert(e.key.clone(), at);
                            }
                            kv::Operation::Delete | kv::Operation::Purge => {
                                seen.remove(&e.key);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %chain(&e), "membership watch failed; re-watching");
                        continue 'session;
                    }
                    None => continue 'session,
                },
                _ = tick.tick() => {
                    let record = MemberRecord {
                        instance: s.instance.clone(),
                        owned: tasks.keys().copied().collect(),
                        since_ms,
                    };
                    match kv.put(&me, serde_json::to_vec(&record).unwrap_or_default().into()).await {
                        Ok(_) => last_put_ok = Instant::now(),
                        Err(e) => tracing::debug!(error = %chain(&e), "membership heartbeat failed"),
                    }
                    // Until our own first record came back through the watch, the list is
                    // not complete; and while our own records fail, NATS is away for us and
                    // the list says nothing about the others: keep what we have.
                    if !synced || last_put_ok.elapsed() > s.timeout / 2 {
                        continue;
                    }
                    seen.retain(|_, at| at.elapsed() < s.timeout);
                    let mut members: BTreeSet<String> = seen.keys().cloned().collect();
                    members.insert(me.clone());
                    let view = assign(&members, s.partitions);
                    let want: BTreeSet<u16> = view
                        .iter()
                        .filter(|(_, m)| **m == me)
                        .map(|(p, _)| *p)
                        .collect();
                    let have: BTreeSet<u16> = tasks.keys().copied().collect();
                    // Hand-overs run beside the heartbeat: one waiting for a slow sink must
                    // not stop this router's records, or the others would think it dead.
                    handing.retain(|_, h: &mut tokio::task::JoinHandle<()>| !h.is_finished());
                    let leaving: Vec<u16> = have.difference(&want).copied().collect();
                    for p in leaving {
                        if let Some(t) = tasks.remove(&p) {
                            let (js, dispatcher, grace) =
                                (js.clone(), dispatcher.clone(), s.handover_grace);
                            handing.insert(
                                p,
                                tokio::spawn(async move {
                                    hand_over(&js, &dispatcher, p, t, grace).await;
                                }),
                            );
                        }
                    }
                    // A partition still being handed over is taken back only once that is done
                    // (its release must reach the dispatcher before the new claim).
                    let want: BTreeSet<u16> = want
                        .into_iter()
                        .filter(|p| !handing.contains_key(p))
                        .collect();
                    for p in want.difference(&have) {
                        // Its previous holder is gone: its pin would only expire after the
                        // timeout, so take the partition now.
                        if let Some(prev) = last_view.get(p) {
                            if *prev != me && !members.contains(prev) {
                                unpin(&js, *p).await;
                            }
                        }
                        tasks.insert(*p, take(&js, &s, &dispatcher, *p));
                    }
                    if have != want {
                        tracing::info!(owned = ?want, members = members.len(), "partitions rebalanced");
                        report.send_replace(want.clone());
                        crate::telemetry::metrics::metrics()
                            .partitions_owned
                            .set(want.len() as i64);
                    }
                    last_view = view;
                }
            }
        }
    }
    // Stopping: leave the membership first so the others start taking over, then hand over.
    if let Ok(kv) = js.get_key_value(KV_ROUTERS).await {
        let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(&me)).await;
    }
    for (_, h) in std::mem::take(&mut handing) {
        let _ = h.await;
    }
    hand_over_all(&js, &dispatcher, tasks, s.handover_grace, &report).await;
}

async fn run_solo(
    js: jetstream::Context,
    s: Settings,
    dispatcher: ActorRef<DispatchMsg>,
    mut stop: watch::Receiver<bool>,
    report: watch::Sender<BTreeSet<u16>>,
) {
    let mut tasks = BTreeMap::new();
    for p in 0..s.partitions {
        // A pin left by this router's previous life would hold the partition until
        // priority_timeout.
        unpin(&js, p).await;
        tasks.insert(p, take(&js, &s, &dispatcher, p));
    }
    let all: BTreeSet<u16> = tasks.keys().copied().collect();
    crate::telemetry::metrics::metrics()
        .partitions_owned
        .set(all.len() as i64);
    report.send_replace(all);
    let _ = stop.changed().await;
    hand_over_all(&js, &dispatcher, tasks, s.handover_grace, &report).await;
}

/// Stopping: every partition handed over at once, so the whole stop is bounded by one grace,
/// not one per partition.
async fn hand_over_all(
    js: &jetstream::Context,
    dispatcher: &ActorRef<DispatchMsg>,
    tasks: BTreeMap<u16, PartitionTask>,
    grace: Duration,
    report: &watch::Sender<BTreeSet<u16>>,
) {
    futures::future::join_all(
        tasks
            .into_iter()
            .map(|(p, t)| hand_over(js, dispatcher, p, t, grace)),
    )
    .await;
    report.send_replace(BTreeSet::new());
    crate::telemetry::metrics::metrics().partitions_owned.set(0);
}

fn age_of(created: &time::OffsetDateTime) -> Duration {
    let now = time::OffsetDateTime::now_utc();
    let d = now - *created;
    d.try_into().unwrap_or(Duration::ZERO)
}

async fn ensure_bucket(
    js: &jetstream::Context,
    timeout: Duration,
    replicas: usize,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    // Records age out a little after the timeout: a killed router's record does not linger.
    let max_age = timeout * 2;
    match js.get_key_value(KV_ROUTERS).await {
        Ok(kv) => Ok(kv),
        Err(_) => {
            js.create_key_value(kv::Config {
                bucket: KV_ROUTERS.into(),
                description: "leadrouter: live routers (partition membership)".into(),
                history: 1,
                max_age,
                storage: stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
        }
    }
}

async fn unpin(js: &jetstream::Context, p: u16) {
    let Ok(stream) = js.get_stream(STREAM_LEADS).await else {
        return;
    };
    if let Err(e) = stream
        .unpin_consumer(&partition::consumer_name(p), PRIORITY_GROUP)
        .await
    {
        tracing::debug!(partition = p, error = %chain(&e), "unpin");
    }
}

fn take(
    js: &jetstream::Context,
    s: &Settings,
    dispatcher: &ActorRef<DispatchMsg>,
    p: u16,
) -> PartitionTask {
    let _ = dispatcher.cast(DispatchMsg::Own(p));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(consume(
        js.clone(),
        consumer_config(s, p),
        s.share(p).1,
        s.timeout,
        p,
        dispatcher.clone(),
        stop_rx,
    ));
    tracing::debug!(partition = p, "partition taken");
    PartitionTask { stop, task }
}

/// Stops pulling the partition, lets its in-flight leads finish (bounded), hands back what
/// waits, then unpins so the next owner gets it at once.
async fn hand_over(
    js: &jetstream::Context,
    dispatcher: &ActorRef<DispatchMsg>,
    p: u16,
    t: PartitionTask,
    grace: Duration,
) {
    let _ = t.stop.send(true);
    let _ = t.task.await;
    let (tx, rx) = oneshot::channel();
    if dispatcher.cast(DispatchMsg::Release(p, tx)).is_ok()
        && tokio::time::timeout(grace, rx).await.is_err()
    {
        tracing::warn!(partition = p, grace = ?grace, "in-flight leads still busy at hand-over; the fence keeps their order");
    }
    unpin(js, p).await;
    tracing::debug!(partition = p, "partition handed over");
}

/// Pulls one partition, pinned, until told to stop.
async fn consume(
    js: jetstream::Context,
    config: consumer::pull::Config,
    prefetch: usize,
    timeout: Duration,
    p: u16,
    dispatcher: ActorRef<DispatchMsg>,
    stop: watch::Receiver<bool>,
) {
    // The pin moves when its client has not pulled for `priority_timeout`: pull requests must
    // expire well within it, or an idle owner would lose its partitions every few seconds.
    let expires = (timeout / 2).max(Duration::from_millis(1000));
    let pull = Pull {
        batch: prefetch,
        heartbeat: expires / 4,
        expires,
        group: Some(PRIORITY_GROUP),
        what: partition::consumer_name(p),
    };
    pull_forever(&js, STREAM_LEADS, config, pull, stop, |m| {
        let sent = dispatcher.cast(DispatchMsg::Incoming {
            msg: Box::new(m),
            partition: p,
        });
        std::future::ready(sent.is_ok())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("router-{i}")).collect()
    }

    #[test]
    fn every_partition_has_one_owner_and_the_load_is_even() {
        for n in 1..=5 {
            let m = members(n);
            let a = assign(&m, 16);
            assert_eq!(a.len(), 16);
            let mut load: HashMap<&String, usize> = HashMap::new();
            for owner in a.values() {
                *load.entry(owner).or_default() += 1;
            }
            let cap = 16usize.div_ceil(n);
            assert!(load.values().all(|&l| l <= cap), "{n}: {load:?}");
            // Everybody gets a share (16 >= n).
            assert_eq!(load.len(), n, "{n}: {load:?}");
        }
    }

    #[test]
    fn the_same_members_give_the_same_map_and_a_join_moves_few() {
        let three = members(3);
        assert_eq!(assign(&three, 16), assign(&three.clone(), 16));
        let four = members(4);
        let before = assign(&three, 16);
        let after = assign(&four, 16);
        let moved = (0..16).filter(|p| before[p] != after[p]).count();
        // The joiner takes its quarter (4); a few more may shift to respect the cap.
        assert!((4..=8).contains(&moved), "moved {moved}");
        assert!(after.values().filter(|m| *m == "router-3").count() >= 4);
    }

    #[test]
    fn member_keys_are_kv_safe() {
        assert_eq!(member_key("host.a-1-ff"), "host_a-1-ff");
    }

    #[test]
    fn pinned_consumers_per_partition() {
        let s = Settings {
            partitions: 16,
            timeout: Duration::from_secs(5),
            instance: "i".into(),
            ack_wait: Duration::from_secs(30),
            max_redeliveries: 100,
            max_ack_pending: 100,
            prefetch: 64,
            handover_grace: Duration::from_secs(5),
            replicas: 1,
            solo: false,
        };
        let c = consumer_config(&s, 3);
        assert_eq!(c.durable_name.as_deref(), Some("router-p3"));
        assert_eq!(c.filter_subject, "leads.in.*.3");
        assert_eq!(c.priority_policy, consumer::PriorityPolicy::PinnedClient);
        assert_eq!(c.priority_groups, vec!["leads".to_string()]);
        assert_eq!(c.max_deliver, 100);
        // 100 over 16: the shares add up to the budget.
        let total: i64 = (0..16)
            .map(|p| consumer_config(&s, p).max_ack_pending)
            .sum();
        assert_eq!(total, 100);
    }
}
