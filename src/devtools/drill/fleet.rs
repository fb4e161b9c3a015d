//! `--routers N` and `--nats-cluster N`: the storm against several routers sharing one NATS
//! account, and against a JetStream cluster.
//!
//! The faults are the one-router drill's, spread out: the kills go round the routers (router 0,
//! 1, 2, ...), each restarted 100 ms later and timed until its `/readyz` answers; the NATS fault
//! is kill -9 of the node leading `LEADS` on a cluster (timed until a new leader is elected and
//! the vendor's requests are accepted again, then the node is restarted and must rejoin), or of
//! the drill's one shared nats-server otherwise. After each fault the drill waits until the live
//! routers own every partition again, each router some, before the next one strikes: a killed
//! router's share moves to the survivors after `handlers.ownership_timeout`, and back when it
//! rejoins.
//!
//! The vendor spreads its requests over the routers through a [`Balancer`]
//! that the drill tells about a kill and a restart, as a load balancer's health check would.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;

use super::error::DrillError;
use super::options::DrillOptions;
use super::report::{NatsKind, Topology};
use super::router;
use super::storm::{FaultKind, FaultRecord, RECOVERY_LIMIT, RESTART_DELAY};
use super::ui::Ui;
use super::vendor::{Balancer, Counters};
use crate::devtools::harness::{NatsCluster, NatsOptions, NatsServer, RaftGroup, RouterConfig};
use crate::pipeline::ownership::MemberRecord;
use crate::queue::{KV_ROUTERS, STREAM_LEADS};

/// A killed router's partitions move after this plus a heartbeat; the router's default (5 s)
/// would only make the drill slower, not the test different.
const OWNERSHIP_TIMEOUT: Duration = Duration::from_secs(3);
/// `streams.replicas` on a cluster: every stream and bucket survives one node.
const REPLICAS: usize = 3;
/// How long a fresh cluster may take to elect its meta leader and see all its peers.
const CLUSTER_READY: Duration = Duration::from_secs(60);
/// JetStream requests of the drill's own client: short, so a look-up that hits an election
/// fails fast and is asked again instead of hiding the new leader for the default 5 s. (Its
/// timeout bounds how late the new leader is seen.)
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Between looks at the routers' partition gauges and membership records.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// A membership record this old is a router's last word, not a live router's: the routers put
/// theirs four times per `ownership_timeout`, so a live one is never two beats behind.
const RECORD_FRESH: Duration = Duration::from_millis(1500);

/// The routers' NATS, and whether it is the drill's to fault.
pub(super) enum Nats {
    /// The one router's own embedded nats-server.
    Embedded,
    /// `--nats-url`: not the drill's to restart.
    External(String),
    /// One nats-server the drill started for several routers to share.
    Shared(NatsServer),
    /// `--nats-cluster`.
    Cluster(NatsCluster),
}

impl Nats {
    /// The drill's own JetStream client, for the routers' membership records: `None` for the
    /// embedded server, or when `--nats-url` needs credentials the drill does not have (then
    /// the partition gauges alone tell when the routers settled).
    pub(super) async fn drill_client(&self) -> Option<jetstream::Context> {
        let client = match self {
            Nats::Embedded => return None,
            Nats::Cluster(c) => c.client().await.map_err(|e| crate::error_chain::chain(&e)),
            Nats::External(_) | Nats::Shared(_) => {
                let url = self.url().unwrap_or_default();
                async_nats::ConnectOptions::new()
                    .connection_timeout(NATS_REQUEST_TIMEOUT)
                    .connect(url.as_str())
                    .await
                    .map_err(|e| crate::error_chain::chain(&e))
            }
        };
        match client {
            Ok(c) => {
                let mut js = jetstream::new(c);
                js.set_timeout(NATS_REQUEST_TIMEOUT);
                Some(js)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the drill cannot read the routers' membership records; judging by their gauges alone");
                None
            }
        }
    }

    /// `nats.url` of the routers; `None` for the embedded server.
    pub(super) fn url(&self) -> Option<String> {
        match self {
            Nats::Embedded => None,
            Nats::External(url) => Some(url.clone()),
            Nats::Shared(s) => Some(s.url()),
            Nats::Cluster(c) => Some(c.urls()),
        }
    }

    fn kind(&self) -> NatsKind {
        match self {
            Nats::Embedded => NatsKind::Embedded,
            Nats::External(_) => NatsKind::External,
            Nats::Shared(_) => NatsKind::Shared,
            Nats::Cluster(_) => NatsKind::Cluster,
        }
    }

    /// Copies the cluster nodes' logs into the work dir: the cluster's own directory is a temp
    /// dir removed with it, and a failed drill keeps the work dir to be read. (The shared
    /// server's directory is `nats/` in the work dir already.)
    pub(super) fn keep_logs(&self, work: &Path) {
        let Nats::Cluster(cluster) = self else {
            return;
        };
        for i in 0..cluster.len() {
            let Some(node) = cluster.node(i) else {
                continue;
            };
            let to = work.join(format!("nats-{}.log", cluster.server_name(i)));
            if let Err(e) = std::fs::copy(node.log_path(), &to) {
                tracing::debug!(to = %to.display(), error = %e, "NATS node log not copied");
            }
        }
    }
}

/// Runs a blocking harness call (a nats-server's start waits for its "ready" line) without
/// stalling the runtime's other tasks: the vendor keeps sending meanwhile.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The NATS the routers of this run use: the drill's cluster, the drill's one shared
/// nats-server for several routers, `--nats-url`, or (one router) its embedded server.
pub(super) async fn start_nats(
    opts: &DrillOptions,
    work: &Path,
    ui: &Ui,
) -> Result<Nats, DrillError> {
    let t0 = Instant::now();
    if let Some(nodes) = opts.topology.nats_cluster {
        let cluster = blocking(|| NatsCluster::start(nodes))?;
        cluster.wait_ready(CLUSTER_READY).await?;
        ui.event(&format!(
            "NATS cluster of {nodes} nodes ready in {} ms ({})",
            ms(t0.elapsed()),
            cluster.urls()
        ));
        return Ok(Nats::Cluster(cluster));
    }
    Ok(match (&opts.nats_url, opts.topology.routers) {
        (Some(url), _) => Nats::External(url.clone()),
        (None, 1) => Nats::Embedded,
        (None, _) => {
            let dir = work.join("nats");
            let server = blocking(|| NatsServer::with_options(NatsOptions::new().dir(&dir)))?;
            ui.event(&format!(
                "shared nats-server ready in {} ms ({}, log {})",
                ms(t0.elapsed()),
                server.url(),
                server.log_path().display()
            ));
            Nats::Shared(server)
        }
    })
}

/// A router's config beyond the one-router drill's: on a NATS the drill does not embed, with a
/// short ownership timeout, R3 on a cluster.
pub(super) fn configure(rc: &mut RouterConfig, nats: &Nats) {
    // `nats.url` is external: settings of an embedded server would only confuse a reader.
    rc.nats.embedded = Default::default();
    rc.handlers.ownership_timeout = Some(OWNERSHIP_TIMEOUT);
    if matches!(nats, Nats::Cluster(_)) {
        rc.streams.replicas = Some(REPLICAS);
    }
}

/// Measures, from `since`, until the vendor gets a 2xx for a request sent after it, in a task of
/// its own so the fault's blocking steps do not delay the measurement.
fn vendor_gap(counters: Arc<Counters>, since: Instant) -> tokio::task::JoinHandle<Option<u64>> {
    tokio::spawn(async move { counters.accepted_after(since, RECOVERY_LIMIT).await.map(ms) })
}

/// `leadrouter_partitions_owned` from a router's `/metrics` (on its intake listener).
async fn partitions_owned(http: &reqwest::Client, addr: std::net::SocketAddr) -> Option<u64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("leadrouter_partitions_owned")?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        let v: f64 = rest.split_whitespace().last()?.parse().ok()?;
        Some(v as u64)
    })
}

/// The partitions in the membership records put within [`RECORD_FRESH`], one set per router;
/// `None` when the bucket cannot be read (an election, a restart).
async fn fresh_claims(js: &jetstream::Context) -> Option<Vec<Vec<u16>>> {
    let kv = js.get_key_value(KV_ROUTERS).await.ok()?;
    let mut keys = kv.keys().await.ok()?;
    let mut claims = Vec::new();
    while let Some(key) = keys.next().await {
        let entry = kv.entry(key.ok()?).await.ok()?;
        let Some(entry) = entry.filter(|e| e.operation == jetstream::kv::Operation::Put) else {
            continue;
        };
        let age = time::OffsetDateTime::now_utc() - entry.created;
        if age > RECORD_FRESH {
            continue;
        }
        if let Ok(r) = serde_json::from_slice::<MemberRecord>(&entry.value) {
            claims.push(r.owned);
        }
    }
    Some(claims)
}

/// Every partition in exactly one of `claims`, which are `routers` many and none empty.
fn disjoint_cover(claims: &[Vec<u16>], routers: usize, partitions: u16) -> bool {
    let mut seen = BTreeSet::new();
    let disjoint = claims.iter().flatten().all(|p| seen.insert(*p));
    claims.len() == routers
        && claims.iter().all(|c| !c.is_empty())
        && disjoint
        && seen.len() == usize::from(partitions)
}

/// The design under test: one router or several, and their NATS.
pub(super) struct Leadrouter {
    /// In start order; the kills go round them.
    pub(super) routers: Vec<router::RouterProcess>,
    pub(super) nats: Nats,
    /// One router on its embedded nats-server or `--nats-url`: faulted and reported exactly as
    /// before `--routers` existed. Otherwise this module performs the faults.
    pub(super) single: bool,
    /// The vendor's balancer, told when a router goes down and comes back.
    pub(super) balancer: Arc<Balancer>,
    pub(super) counters: Arc<Counters>,
    /// `handlers.partitions` of every router.
    pub(super) partitions: u16,
    /// For the routers' `/metrics` (partitions owned).
    pub(super) http: reqwest::Client,
    /// The drill's own JetStream client for the routers' membership records (several routers
    /// only; see [`settled`](Leadrouter::settled)).
    pub(super) js: Option<async_nats::jetstream::Context>,
}

impl Leadrouter {
    fn vendor_done(&self) -> bool {
        self.counters.answered.borrow().finished
    }

    /// The live routers own every partition exactly once between them, each router some. Two
    /// views must agree: each live process's own gauge (so the owners are the processes that
    /// run now, not a killed one's stale record) adding up to the partitions, and the fresh
    /// membership records (each partition claimed once: a gauge sum can reach the count while
    /// one partition is held twice in a move and another by nobody).
    async fn settled(&self) -> bool {
        let mut total = 0;
        for r in &self.routers {
            match partitions_owned(&self.http, r.intake_addr()).await {
                Some(n) if n > 0 => total += n,
                _ => return false,
            }
        }
        if total != u64::from(self.partitions) {
            return false;
        }
        match &self.js {
            Some(js) => fresh_claims(js)
                .await
                .is_some_and(|c| disjoint_cover(&c, self.routers.len(), self.partitions)),
            None => true,
        }
    }

    /// Awaits [`settled`](Self::settled); returns the milliseconds since `t0`, or `None` when
    /// the routers did not settle within the recovery limit.
    pub(super) async fn wait_settled(&self, t0: Instant) -> Option<u64> {
        let start = Instant::now();
        loop {
            if self.settled().await {
                return Some(ms(t0.elapsed()));
            }
            if start.elapsed() > RECOVERY_LIMIT {
                return None;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// kill -9 of router `i`, restarted 100 ms later as a supervisor would.
    pub(super) async fn kill_router(&mut self, i: usize) -> FaultRecord {
        let mut rec = FaultRecord {
            router: Some(i),
            ..FaultRecord::new(FaultKind::KillRouter)
        };
        let t0 = Instant::now();
        let gap = vendor_gap(self.counters.clone(), t0);
        // The balancer's health check sees the crash at once and sends elsewhere; requests in
        // flight to the router fail and the vendor retries them on another one.
        self.balancer.set_live(i, false);
        let Some(proc) = self.routers.get_mut(i) else {
            return rec;
        };
        proc.kill9();
        tokio::time::sleep(RESTART_DELAY).await;
        let ready = match proc.spawn() {
            Ok(()) => match proc.wait_ready(RECOVERY_LIMIT).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(router = i, error = %e, "killed router did not come back");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(router = i, error = %e, "killed router could not be restarted");
                false
            }
        };
        rec.unavailable_ms = ms(t0.elapsed());
        if ready {
            self.balancer.set_live(i, true);
            rec.partitions_settled_ms = self.wait_settled(t0).await;
        }
        rec.vendor_gap_ms = gap.await.ok().flatten();
        rec.recovered = ready && rec.partitions_settled_ms.is_some();
        rec
    }

    /// The storm's NATS fault for several routers or a cluster.
    pub(super) async fn fleet_nats_fault(&mut self) -> FaultRecord {
        match &self.nats {
            Nats::Cluster(_) => self.kill_nats_node().await,
            Nats::Shared(_) => self.restart_shared_nats().await,
            Nats::External(_) => FaultRecord {
                recovered: true,
                skipped: Some("external NATS (--nats-url) is not the drill's to restart".into()),
                ..FaultRecord::new(FaultKind::RestartNats)
            },
            Nats::Embedded => FaultRecord {
                recovered: true,
                skipped: Some("several routers never run on an embedded nats-server".into()),
                ..FaultRecord::new(FaultKind::RestartNats)
            },
        }
    }

    /// kill -9 of the routers' one shared nats-server, restarted 100 ms later on the same port
    /// and store by the drill (its supervisor); back when every router's `/readyz` answers.
    async fn restart_shared_nats(&mut self) -> FaultRecord {
        let mut rec = FaultRecord::new(FaultKind::RestartNats);
        let t0 = Instant::now();
        let gap = vendor_gap(self.counters.clone(), t0);
        let Nats::Shared(server) = &mut self.nats else {
            return rec;
        };
        blocking(|| server.kill());
        tokio::time::sleep(RESTART_DELAY).await;
        let mut back = match blocking(|| server.restart()) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the shared nats-server did not restart");
                false
            }
        };
        for (i, r) in self.routers.iter_mut().enumerate() {
            if !back {
                break;
            }
            if let Err(e) = r.wait_ready(RECOVERY_LIMIT).await {
                tracing::warn!(router = i, error = %e, "router not ready after the nats-server restart");
                back = false;
            }
        }
        rec.unavailable_ms = ms(t0.elapsed());
        if back {
            rec.partitions_settled_ms = self.wait_settled(t0).await;
        }
        rec.vendor_gap_ms = gap.await.ok().flatten();
        rec.recovered = back
            && rec.partitions_settled_ms.is_some()
            && (rec.vendor_gap_ms.is_some() || self.vendor_done());
        rec
    }

    /// kill -9 of the node leading `LEADS`. Back when the cluster elected another leader and
    /// the vendor's requests are accepted again; then the node is restarted and must become a
    /// current replica of `LEADS` again.
    async fn kill_nats_node(&mut self) -> FaultRecord {
        let mut rec = FaultRecord::new(FaultKind::KillNatsNode);
        let counters = self.counters.clone();
        let Nats::Cluster(cluster) = &mut self.nats else {
            return rec;
        };
        let Some((leader, idx)) = leads_leader(cluster).await else {
            return rec;
        };
        rec.node = Some(leader.clone());
        // Watched from the survivors: a client on the killed node would spend the election
        // reconnecting and see the new leader late.
        let survivors = cluster
            .server_addrs()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .map(|(_, a)| a)
            .collect::<Vec<_>>();
        let js = match async_nats::ConnectOptions::new()
            .connection_timeout(NATS_REQUEST_TIMEOUT)
            .connect(survivors)
            .await
        {
            Ok(c) => {
                let mut js = jetstream::new(c);
                js.set_timeout(NATS_REQUEST_TIMEOUT);
                js
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to the surviving NATS nodes");
                return rec;
            }
        };
        let t0 = Instant::now();
        let gap = vendor_gap(counters, t0);
        if let Err(e) = blocking(|| cluster.kill(idx)) {
            tracing::warn!(node = %leader, error = %e, "NATS node kill failed");
            return rec;
        }
        let group = RaftGroup::Stream(STREAM_LEADS);
        match cluster
            .wait_leader_other_than(&js, group, &leader, RECOVERY_LIMIT)
            .await
        {
            Ok(new) => {
                rec.leader_elected_ms = Some(ms(t0.elapsed()));
                rec.new_leader = Some(new);
            }
            Err(e) => tracing::warn!(error = %e, "no new LEADS leader"),
        }
        rec.vendor_gap_ms = gap.await.ok().flatten();
        // Intake is back when the vendor's requests are accepted again; the election as the
        // drill saw it (up to one request timeout late) only when the vendor was done.
        rec.unavailable_ms = rec
            .vendor_gap_ms
            .or(rec.leader_elected_ms)
            .unwrap_or_else(|| ms(t0.elapsed()));
        // The supervisor brings the node back once the cluster serves without it: it must
        // rejoin on its own and catch up on what was written meanwhile.
        let t1 = Instant::now();
        let rejoined = match blocking(|| cluster.restart(idx)) {
            Ok(()) => match cluster.wait_current(&js, group, idx, RECOVERY_LIMIT).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(node = %leader, error = %e, "restarted NATS node did not rejoin");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(node = %leader, error = %e, "NATS node did not restart");
                false
            }
        };
        if rejoined {
            rec.rejoined_ms = Some(ms(t1.elapsed()));
        }
        // Not a long-lived client: close it so the fault leaves no connection behind.
        let _ = js.client().drain().await;
        rec.partitions_settled_ms = self.wait_settled(t0).await;
        rec.recovered = rec.new_leader.is_some()
            && (rec.vendor_gap_ms.is_some() || self.vendor_done())
            && rejoined
            && rec.partitions_settled_ms.is_some();
        rec
    }

    /// What ran, for the report.
    pub(super) fn topology(&self, replicas: usize) -> Topology {
        Topology {
            routers: self.routers.len(),
            nats: self.nats.kind(),
            nats_nodes: match &self.nats {
                Nats::Cluster(c) => Some(c.len()),
                _ => None,
            },
            replicas,
            partitions: self.partitions,
            vendor_requests_per_router: self.balancer.sent(),
        }
    }
}

/// The `LEADS` leader's `server_name` and node index; `None` when the cluster shows none
/// within the recovery limit (asked again while an election or a reconnect is under way).
async fn leads_leader(cluster: &NatsCluster) -> Option<(String, usize)> {
    let client = match cluster.client().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to the NATS cluster");
            return None;
        }
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(NATS_REQUEST_TIMEOUT);
    let start = Instant::now();
    let found = loop {
        if let Some(l) = cluster.stream_leader(&js, STREAM_LEADS).await {
            if let Some(i) = cluster.index_of(&l) {
                break Some((l, i));
            }
        }
        if start.elapsed() > RECOVERY_LIMIT {
            tracing::warn!("no LEADS leader to kill");
            break None;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    };
    let _ = client.drain().await;
    found
}

/// True for a record of this module's faults (the one-router drill's records have none of
/// these fields).
fn is_fleet(f: &FaultRecord) -> bool {
    f.router.is_some() || f.kind == FaultKind::KillNatsNode || f.vendor_gap_ms.is_some()
}

/// The measurements beyond the downtime, as "; new leader n2 after 1800 ms; ...": empty for
/// the one-router drill's records.
pub(super) fn details(f: &FaultRecord) -> String {
    let mut parts = Vec::new();
    if let (Some(l), Some(t)) = (&f.new_leader, f.leader_elected_ms) {
        parts.push(format!("new LEADS leader {l} after {t} ms"));
    }
    if let Some(t) = f.vendor_gap_ms {
        parts.push(format!("the vendor's next 2xx after {t} ms"));
    }
    if let Some(t) = f.rejoined_ms {
        parts.push(format!("node restarted and current again after {t} ms"));
    }
    if let Some(t) = f.partitions_settled_ms {
        parts.push(format!("partitions owned again after {t} ms"));
    }
    if is_fleet(f) && f.partitions_settled_ms.is_none() && f.skipped.is_none() {
        parts.push("partitions NOT owned again".into());
    }
    parts.iter().map(|p| format!("; {p}")).collect()
}

/// The progress line of one of this module's faults; `None` for the one-router drill's.
pub(super) fn fault_line(f: &FaultRecord) -> Option<String> {
    if !is_fleet(f) {
        return None;
    }
    let back = match (f.kind, f.recovered) {
        (FaultKind::KillRouter, true) => "back on /readyz",
        (FaultKind::KillRouter, false) => "NOT recovered",
        (FaultKind::KillNatsNode, true) => "intake back",
        (FaultKind::KillNatsNode, false) => "NOT recovered",
        (FaultKind::RestartNats, true) => "every router ready",
        (FaultKind::RestartNats, false) => "NOT recovered",
        (FaultKind::CutLink, true) => "link back",
        (FaultKind::CutLink, false) => "NOT recovered",
    };
    Some(format!(
        "{} at {:.1} s: {back} after {} ms{}",
        f.what(),
        f.at_s,
        f.unavailable_ms,
        details(f)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_means_every_partition_once_and_every_router_some() {
        let all = |n: u16| (0..n).collect::<Vec<_>>();
        assert!(disjoint_cover(&[all(8), (8..16).collect()], 2, 16));
        // One held twice in a move, one by nobody: the count is right, the cover is not.
        let mut a = all(8);
        a.push(9);
        let b: Vec<u16> = (9..16).collect();
        assert!(!disjoint_cover(&[a, b], 2, 16));
        assert!(!disjoint_cover(&[all(16), Vec::new()], 2, 16));
        assert!(!disjoint_cover(&[all(16)], 2, 16));
    }

    #[test]
    fn one_router_records_have_no_fleet_line() {
        let f = FaultRecord {
            unavailable_ms: 700,
            recovered: true,
            ..FaultRecord::new(FaultKind::KillRouter)
        };
        assert_eq!(fault_line(&f), None);
        assert_eq!(details(&f), "");
    }

    #[test]
    fn a_node_kill_line_names_the_node_and_every_step() {
        let f = FaultRecord {
            at_s: 12.0,
            unavailable_ms: 1900,
            recovered: true,
            node: Some("n2".into()),
            new_leader: Some("n3".into()),
            leader_elected_ms: Some(1800),
            vendor_gap_ms: Some(1900),
            rejoined_ms: Some(600),
            partitions_settled_ms: Some(2500),
            ..FaultRecord::new(FaultKind::KillNatsNode)
        };
        let line = fault_line(&f).unwrap();
        assert!(line.starts_with("kill -9 of NATS node n2"), "{line}");
        for part in [
            "new LEADS leader n3 after 1800 ms",
            "current again after 600 ms",
        ] {
            assert!(line.contains(part), "{line}");
        }
    }
}
