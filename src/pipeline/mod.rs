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
pub mod fence;
pub mod handler;
pub mod ownership;
pub mod repartition;
pub mod schema;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, watch};

use crate::backoff::Backoff;
use crate::config::HandlersConfig;
use crate::dlq::{DlqWriter, Reason};
use crate::intake::Grouping;
use crate::ledger::idempotency::Idempotency;
use crate::sinks::Sink;
use dispatch::{DispatchMsg, Dispatcher};
use enrich::Enricher;
use fence::Fence;
use schema::SchemaRegistry;

/// Counters the pipeline keeps (Prometheus export reads them).
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
    pub replayed: AtomicU64,
    pub sink_ok: AtomicU64,
    pub sink_err: AtomicU64,
    pub enrich_flags: AtomicU64,
    pub handler_restarts: AtomicU64,
    dead: Mutex<HashMap<&'static str, u64>>,
    e2e_ms: Mutex<Vec<f64>>,
    /// Per-minute latency for `leadrouter latency` (the samples above are for tests/benches).
    pub latency: crate::telemetry::windows::LatencyWindows,
    /// Bumped after every finished delivery, so tests and tools can await progress.
    progress: watch::Sender<u64>,
}

impl PipelineStats {
    /// A receiver that changes whenever a delivery finished (delivered, duplicate, retry, dead).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub(crate) fn bump(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    pub fn count_dead(&self, reason: Reason) {
        let mut d = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        *d.entry(reason.as_str()).or_default() += 1;
    }

    pub fn dead(&self) -> HashMap<&'static str, u64> {
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn record_e2e(&self, d: Duration) {
        let mut v = self.e2e_ms.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a ring of recent samples, enough for percentiles in tests and benches.
        if v.len() >= 100_000 {
            v.drain(..50_000);
        }
        v.push(d.as_secs_f64() * 1e3);
        drop(v);
        self.latency.record(d);
    }

    /// End-to-end latency percentile (ms) over the recent samples.
    pub fn e2e_percentile(&self, p: f64) -> Option<f64> {
        let mut v = self
            .e2e_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((v.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
        v.get(i).copied()
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

impl HandlerPool {
    pub async fn start(
        js: jetstream::Context,
        cfg: &HandlersConfig,
        placement: Placement,
        parts: PoolParts,
    ) -> Result<HandlerPool, PoolError> {
        let stats = Arc::new(PipelineStats::default());
        let instance = parts.instance.clone();
        let grouping = parts.grouping.clone();
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
            pool_size: cfg.pool_size,
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
