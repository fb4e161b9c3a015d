//! The handler side: consume `LEADS`, validate, enrich, deliver to every sink exactly once in
//! effect, retry with backoff, dead-letter what cannot succeed.
//!
//! Shape: `LEADS` is cut into partitions (`queue::partition`). [`ownership`] decides which of
//! them this router pulls (one owner per partition across all routers) and feeds their messages
//! to the [`dispatch`] actor, which supervises N handler actors and keeps per-lead FIFO inside the
//! router. The per-lead [`fence`] keeps that order across owner changes. [`repartition`] moves
//! leads published without a partition to theirs.

pub mod crash_net;
pub mod dispatch;
pub mod enrich;
pub mod events;
pub mod fence;
pub mod handler;
pub mod ownership;
pub mod repartition;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, watch};

use crate::backoff::Backoff;
use crate::config::HandlersConfig;
use crate::dlq::DlqWriter;
use crate::intake::Grouping;
use crate::ledger::idempotency::Idempotency;
use crate::sinks::Sink;
use crate::telemetry::metrics::{metrics, retry, PoolCounters};
use dispatch::{DispatchMsg, Dispatcher};
use enrich::Enricher;
use fence::Fence;
use schema::SchemaRegistry;

/// One pool's figures, for the console, `leadrouter stats` / `latency` and tests.
///
/// Nothing here is counted directly: the [`events`] record every outcome once, into these
/// counters (which `/metrics` exports, summed over the process's pools) and the log.
pub struct PipelineStats {
    counters: Arc<PoolCounters>,
    /// Deliveries handed to a handler, redeliveries included. `leadrouter stats` shows it; it
    /// has no Prometheus series.
    received: AtomicU64,
    /// Per-minute end-to-end latency for `leadrouter latency` and the console.
    pub latency: crate::telemetry::windows::LatencyWindows,
    /// Bumped after every counted event, so tests and tools can await a figure.
    progress: watch::Sender<u64>,
}

impl PipelineStats {
    /// A pool's figures, counted in `/metrics` from now on; `sinks` are its sinks' names.
    pub(crate) fn new(sinks: &[&str]) -> PipelineStats {
        PipelineStats {
            counters: metrics().pool_counters(sinks),
            received: AtomicU64::new(0),
            latency: Default::default(),
            progress: watch::Sender::new(0),
        }
    }

    /// A receiver that changes whenever a figure moved (received, delivered, duplicate, retry,
    /// dead, sink write, restart).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub(crate) fn counters(&self) -> &PoolCounters {
        &self.counters
    }

    pub(crate) fn count_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bump(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Leads every sink confirmed (replays included).
    pub fn delivered(&self) -> u64 {
        ["false", "true"]
            .iter()
            .map(|r| self.counters.delivered.with_label_values(&[r]).get())
            .sum()
    }

    /// Replays every sink confirmed.
    pub fn replayed(&self) -> u64 {
        self.counters.delivered.with_label_values(&["true"]).get()
    }

    /// Deliveries of leads already done.
    pub fn duplicates(&self) -> u64 {
        self.counters.handler_duplicates.get()
    }

    /// Retries because a sink failed (not the waits for a busy claim or a store outage).
    pub fn retries(&self) -> u64 {
        self.counters
            .retries
            .with_label_values(&[retry::SINK])
            .get()
    }

    /// Leads handed back because a sink's vendor budget is spent (no attempt spent).
    pub fn throttled(&self) -> u64 {
        self.counters
            .retries
            .with_label_values(&[retry::THROTTLED])
            .get()
    }

    pub fn handler_restarts(&self) -> u64 {
        self.counters.handler_restarts.get()
    }

    /// Per sink: (writes confirmed, writes failed or rejected).
    pub fn sinks(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (labels, n) in PoolCounters::series(&self.counters.sink_requests) {
            let (Some(sink), Some(outcome)) = (labels.get("sink"), labels.get("outcome")) else {
                continue;
            };
            let slot = out.entry(sink.clone()).or_default();
            if outcome == "ok" {
                slot.0 += n;
            } else {
                slot.1 += n;
            }
        }
        out
    }

    /// Sink writes: (confirmed, failed or rejected), over all sinks.
    pub fn sink_writes(&self) -> (u64, u64) {
        self.sinks()
            .values()
            .fold((0, 0), |(ok, err), (o, e)| (ok + o, err + e))
    }

    /// New DLQ entries by reason (reasons never seen left out).
    pub fn dead(&self) -> BTreeMap<String, u64> {
        PoolCounters::series(&self.counters.dlq_placements)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(mut labels, n)| Some((labels.remove("reason")?, n)))
            .collect()
    }
}

/// What every handler shares: the service's parts plus what `[handlers]` derives.
pub struct PoolDeps {
    pub parts: PoolParts,
    pub backoff: Backoff,
    /// Real attempts (sinks tried) before the DLQ.
    pub max_deliver: u32,
    pub ack_wait: Duration,
    /// How often a busy message gets an in-progress ack and its lease renewed.
    pub heartbeat: Duration,
    pub stats: Arc<PipelineStats>,
    pub pool_size: usize,
}

/// What the service hands the pool; the rest comes from `[handlers]`.
pub struct PoolParts {
    pub client: async_nats::Client,
    pub sinks: Vec<Arc<dyn Sink>>,
    pub schemas: Arc<SchemaRegistry>,
    pub enricher: Arc<Enricher>,
    pub idem: Idempotency,
    pub fence: Fence,
    pub dlq: DlqWriter,
    /// The keyed group hash and partition count (the same as the edge's).
    pub grouping: Grouping,
    /// Distinguishes this process's claims from another router's.
    pub instance: String,
}

/// Where the pool runs, beyond `[handlers]`.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// `streams.replicas`, for the buckets the pool creates itself.
    pub replicas: usize,
    /// The only router there can be (embedded nats-server): owns every partition at once.
    pub solo: bool,
}

/// A running handler pool and the partitions it owns.
pub struct HandlerPool {
    dispatcher: ActorRef<DispatchMsg>,
    dispatcher_task: tokio::task::JoinHandle<()>,
    ownership_task: tokio::task::JoinHandle<()>,
    repartition_task: tokio::task::JoinHandle<()>,
    net_task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    stats: Arc<PipelineStats>,
    owned: ownership::Owned,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("handler pool: cannot start the dispatcher: {0}")]
    Start(#[from] ractor::SpawnErr),
}

/// Handlers the pool runs: `pool_size`, or more when a batching sink needs more leads at once
/// to fill its calls (each handler holds one lead, so a pool of 8 would cap HubSpot's batches
/// at 8 contacts and its backlog at 8 per call).
fn pool_size(cfg: &HandlersConfig, sinks: &[Arc<dyn Sink>]) -> usize {
    let wanted = sinks.iter().map(|s| s.leads_in_flight()).max().unwrap_or(0);
    if wanted <= cfg.pool_size {
        return cfg.pool_size;
    }
    // Never past max_ack_pending: more handlers than the server hands out would idle, and the
    // start-up check keeps pool_size within it for the same reason.
    let running = wanted.min(cfg.max_ack_pending.max(cfg.pool_size));
    tracing::info!(
        configured = cfg.pool_size as u64,
        running = running as u64,
        "handler pool raised to fill the batching sinks' calls"
    );
    if running < wanted {
        tracing::warn!(
            max_ack_pending = cfg.max_ack_pending as u64,
            wanted = wanted as u64,
            "handlers.max_ack_pending is below what the batching sinks can hold at once; their batches stay smaller than max_records"
        );
    }
    running
}

impl HandlerPool {
    pub async fn start(
        js: jetstream::Context,
        cfg: &HandlersConfig,
        placement: Placement,
        parts: PoolParts,
    ) -> Result<HandlerPool, PoolError> {
        let sinks: Vec<&str> = parts.sinks.iter().map(|s| s.name()).collect();
        let stats = Arc::new(PipelineStats::new(&sinks));
        let instance = parts.instance.clone();
        let grouping = parts.grouping.clone();
        let pool_size = pool_size(cfg, &parts.sinks);
        let deps = Arc::new(PoolDeps {
            parts,
            backoff: Backoff {
                base: cfg.backoff_base,
                cap: cfg.backoff_cap,
            },
            max_deliver: cfg.max_deliver,
            ack_wait: cfg.ack_wait,
            // Three beats per ack_wait: one lost beat never lets a healthy message expire.
            heartbeat: cfg.ack_wait / 3,
            stats: stats.clone(),
            pool_size,
        });
        let (dispatcher, dispatcher_task) = Actor::spawn(None, Dispatcher, deps.clone()).await?;
        let (stop, stop_rx) = watch::channel(false);
        let (report, owned) = watch::channel(BTreeSet::new());
        let settings = ownership::Settings {
            partitions: cfg.partitions,
            timeout: cfg.ownership_timeout,
            instance,
            ack_wait: cfg.ack_wait,
            max_redeliveries: cfg.max_redeliveries,
            max_ack_pending: cfg.max_ack_pending,
            prefetch: cfg.prefetch,
            // Within the service's own shutdown budget for the pool.
            handover_grace: Duration::from_secs(8),
            replicas: placement.replicas,
            solo: placement.solo,
        };
        let ownership_task = tokio::spawn(ownership::run(
            js.clone(),
            settings,
            dispatcher.clone(),
            stop_rx.clone(),
            report,
        ));
        let repartition_task = tokio::spawn(repartition::run(
            js.clone(),
            grouping,
            cfg.ack_wait,
            stop_rx.clone(),
        ));
        let net_task = tokio::spawn(crash_net::run(
            js,
            deps.parts.idem.clone(),
            deps.parts.dlq.clone(),
            stats.clone(),
            stop_rx,
        ));
        Ok(HandlerPool {
            dispatcher,
            dispatcher_task,
            ownership_task,
            repartition_task,
            net_task,
            stop,
            stats,
            owned,
        })
    }

    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// The partitions this router pulls right now (changes as routers join and leave).
    pub fn owned(&self) -> ownership::Owned {
        self.owned.clone()
    }

    /// Hands its partitions over (in-flight leads finish, up to `grace`; waiting ones go back
    /// to the queue for the next owner), then stops.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        // The hand-over is bounded by `handover_grace` (all partitions at once) plus a few NATS
        // round trips; past that, stop it rather than leave it running detached.
        let mut ownership = self.ownership_task;
        if tokio::time::timeout(grace + Duration::from_secs(5), &mut ownership)
            .await
            .is_err()
        {
            ownership.abort();
            tracing::warn!("partition hand-over did not finish in time; the others take over after ownership_timeout");
        }
        let _ = self.repartition_task.await;
        let (tx, rx) = oneshot::channel();
        if self.dispatcher.cast(DispatchMsg::Drain(tx)).is_ok() {
            let _ = tokio::time::timeout(grace, rx).await;
        }
        self.dispatcher.stop(None);
        let _ = self.dispatcher_task.await;
        let _ = self.net_task.await;
    }
}
