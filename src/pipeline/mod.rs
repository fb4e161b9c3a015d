//! The handler side: consume `LEADS`, validate, enrich, deliver to every sink exactly once in
//! effect, retry with backoff, dead-letter what cannot succeed.
//!
//! Shape: one consumer task pulls from the durable `router` consumer and hands each message to
//! the [`Dispatcher`] actor. The dispatcher supervises N handler actors and enforces per-lead
//! FIFO: messages of one group (the normalized email hash) never run concurrently and complete
//! in stream order; other groups run in parallel. A group whose head message is waiting for its
//! NAK-delayed redelivery holds its later messages back (kept alive with in-progress acks).

pub mod backoff;
pub mod enrich;
pub mod handler;
pub mod idempotency;
pub mod schema;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};

use crate::config::HandlersConfig;
use crate::dlq::{DlqWriter, Reason};
use crate::queue::{CONSUMER_ROUTER, HDR_GROUP, STREAM_LEADS};
use crate::sinks::Sink;
use backoff::Backoff;
use enrich::Enricher;
use handler::{Delivery, Outcome};
use idempotency::Idempotency;
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
    pub max_deliver: u32,
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
    pub dlq: DlqWriter,
    /// Distinguishes this process's claims from another router's.
    pub instance: String,
}

pub enum HandlerMsg {
    Run {
        msg: Box<jetstream::Message>,
        group: String,
        seq: u64,
        delivered: u32,
    },
}

struct HandlerActor;

struct HandlerState {
    idx: usize,
    owner: String,
    deps: Arc<PoolDeps>,
    dispatcher: ActorRef<DispatchMsg>,
}

impl Actor for HandlerActor {
    type Msg = HandlerMsg;
    type State = HandlerState;
    type Arguments = HandlerState;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: HandlerState,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let HandlerMsg::Run {
            msg,
            group,
            seq,
            delivered,
        } = msg;
        let outcome = handler::process(
            &state.deps,
            &state.owner,
            Delivery {
                msg: &msg,
                seq,
                delivered,
            },
        )
        .await;
        let _ = state.dispatcher.cast(DispatchMsg::Finished {
            handler: state.idx,
            group,
            seq,
            outcome,
        });
        Ok(())
    }
}

pub enum DispatchMsg {
    Incoming(Box<jetstream::Message>),
    Finished {
        handler: usize,
        group: String,
        seq: u64,
        outcome: Outcome,
    },
    KeepAlive,
    /// Stop taking work; NAK what waits; answer once nothing is in flight.
    Drain(oneshot::Sender<()>),
}

struct Waiting {
    msg: Box<jetstream::Message>,
    seq: u64,
    delivered: u32,
}

#[derive(Default)]
struct Group {
    /// A message of this group is with a handler.
    busy: bool,
    /// The head failed and was NAKed: hold later messages until this sequence comes back.
    blocked_on: Option<u64>,
    parked: VecDeque<Waiting>,
}

struct Dispatcher;

struct DispatchState {
    deps: Arc<PoolDeps>,
    handlers: Vec<ActorRef<HandlerMsg>>,
    idle: Vec<usize>,
    in_flight: HashMap<usize, (String, u64, Box<jetstream::Message>)>,
    groups: HashMap<String, Group>,
    /// Runnable messages waiting for an idle handler, in arrival order.
    ready: VecDeque<(String, Waiting)>,
    draining: Option<oneshot::Sender<()>>,
}

fn owner_of(deps: &PoolDeps, idx: usize) -> String {
    format!("{}/h{idx}", deps.parts.instance)
}

impl Dispatcher {
    async fn spawn_handler(
        myself: &ActorRef<DispatchMsg>,
        deps: &Arc<PoolDeps>,
        idx: usize,
    ) -> Result<ActorRef<HandlerMsg>, ActorProcessingErr> {
        let (h, _) = Actor::spawn_linked(
            None,
            HandlerActor,
            HandlerState {
                idx,
                owner: owner_of(deps, idx),
                deps: deps.clone(),
                dispatcher: myself.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        Ok(h)
    }
}

fn group_of(msg: &jetstream::Message) -> String {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(HDR_GROUP))
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| msg.subject.to_string())
}

impl DispatchState {
    fn start_or_queue(&mut self, group: String, w: Waiting) {
        if let Some(idx) = self.idle.pop() {
            self.run_on(idx, group, w);
        } else {
            self.ready.push_back((group, w));
        }
    }

    fn run_on(&mut self, idx: usize, group: String, w: Waiting) {
        self.in_flight
            .insert(idx, (group.clone(), w.seq, w.msg.clone()));
        let sent = self.handlers[idx].cast(HandlerMsg::Run {
            msg: w.msg,
            group,
            seq: w.seq,
            delivered: w.delivered,
        });
        if let Err(e) = sent {
            tracing::error!(error = %e, handler = idx, "handler unreachable; message left for redelivery");
        }
    }

    fn incoming(&mut self, msg: Box<jetstream::Message>) {
        let (seq, delivered) = match msg.info() {
            Ok(i) => (
                i.stream_sequence,
                u32::try_from(i.delivered).unwrap_or(u32::MAX),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "message without JetStream metadata ignored");
                return;
            }
        };
        self.deps.stats.received.fetch_add(1, Ordering::Relaxed);
        let group = group_of(&msg);
        let w = Waiting {
            msg,
            seq,
            delivered,
        };
        let g = self.groups.entry(group.clone()).or_default();
        let is_head_retry = g.blocked_on == Some(seq);
        if g.busy || (g.blocked_on.is_some() && !is_head_retry) {
            // A redelivery of a message already parked replaces it (its ack handle is newer).
            if let Some(p) = g.parked.iter_mut().find(|p| p.seq == seq) {
                *p = w;
            } else {
                g.parked.push_back(w);
            }
            return;
        }
        g.blocked_on = None;
        g.busy = true;
        self.start_or_queue(group, w);
    }

    fn finished(&mut self, idx: usize, group: String, seq: u64, outcome: Outcome) {
        self.in_flight.remove(&idx);
        self.idle.push(idx);
        self.after(group, seq, outcome);
        self.pump();
    }

    /// A group's head ended one way or another; decide what runs next.
    fn after(&mut self, group: String, seq: u64, outcome: Outcome) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        g.busy = false;
        match outcome {
            Outcome::Retrying => {
                g.blocked_on = Some(seq);
                // The head is the only delivery of itself we hold; drop any parked copy.
                g.parked.retain(|p| p.seq != seq);
            }
            Outcome::Delivered | Outcome::Duplicate | Outcome::Dead => {
                g.blocked_on = None;
                if let Some(next) = g.parked.pop_front() {
                    g.busy = true;
                    self.start_or_queue(group, next);
                    return;
                }
            }
        }
        if !g.busy && g.blocked_on.is_none() && g.parked.is_empty() {
            self.groups.remove(&group);
        }
    }

    fn pump(&mut self) {
        while !self.idle.is_empty() {
            let Some((group, w)) = self.ready.pop_front() else {
                break;
            };
            if let Some(idx) = self.idle.pop() {
                self.run_on(idx, group, w);
            }
        }
        if self.in_flight.is_empty() {
            if let Some(tx) = self.draining.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl Actor for Dispatcher {
    type Msg = DispatchMsg;
    type State = DispatchState;
    type Arguments = Arc<PoolDeps>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        deps: Arc<PoolDeps>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let size = deps.pool_size;
        let mut handlers = Vec::with_capacity(size);
        for idx in 0..size {
            handlers.push(Dispatcher::spawn_handler(&myself, &deps, idx).await?);
        }
        myself.send_interval(deps.heartbeat, || DispatchMsg::KeepAlive);
        Ok(DispatchState {
            deps,
            handlers,
            idle: (0..size).rev().collect(),
            in_flight: HashMap::new(),
            groups: HashMap::new(),
            ready: VecDeque::new(),
            draining: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatchMsg::Incoming(m) => {
                if state.draining.is_some() {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                } else {
                    state.incoming(m);
                }
            }
            DispatchMsg::Finished {
                handler,
                group,
                seq,
                outcome,
            } => {
                state.finished(handler, group, seq, outcome);
                state.deps.stats.bump();
            }
            DispatchMsg::KeepAlive => {
                // Waiting messages are healthy work too: keep ack_wait from firing on them.
                for g in state.groups.values() {
                    for p in &g.parked {
                        let _ = p.msg.ack_with(AckKind::Progress).await;
                    }
                }
                for (_, w) in &state.ready {
                    let _ = w.msg.ack_with(AckKind::Progress).await;
                }
            }
            DispatchMsg::Drain(tx) => {
                for (_, w) in state.ready.drain(..) {
                    let _ = w.msg.ack_with(AckKind::Nak(None)).await;
                }
                for g in state.groups.values_mut() {
                    for p in g.parked.drain(..) {
                        let _ = p.msg.ack_with(AckKind::Nak(None)).await;
                    }
                }
                state.draining = Some(tx);
                state.pump();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = evt else {
            return Ok(());
        };
        let Some(idx) = state
            .handlers
            .iter()
            .position(|h| h.get_id() == cell.get_id())
        else {
            return Ok(());
        };
        state
            .deps
            .stats
            .handler_restarts
            .fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::metrics().handler_restarts.inc();
        tracing::error!(handler = idx, error = %err, "handler crashed; restarting it and redelivering its message");
        // Its message was not acked. Free the lease it held and ask for the redelivery now
        // rather than after ack_wait; the group waits for exactly that message.
        if let Some((group, seq, msg)) = state.in_flight.remove(&idx) {
            if let Ok(env) =
                serde_json::from_slice::<crate::intake::envelope::LeadEnvelope>(&msg.payload)
            {
                let _ = state
                    .deps
                    .parts
                    .idem
                    .expire_lease(&env.key, &owner_of(&state.deps, idx))
                    .await;
            }
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            state.after(group, seq, Outcome::Retrying);
        }
        state.handlers[idx] = Dispatcher::spawn_handler(&myself, &state.deps, idx).await?;
        state.idle.push(idx);
        state.pump();
        state.deps.stats.bump();
        Ok(())
    }
}

/// A running handler pool and its consumer.
pub struct HandlerPool {
    dispatcher: ActorRef<DispatchMsg>,
    dispatcher_task: tokio::task::JoinHandle<()>,
    consumer_task: tokio::task::JoinHandle<()>,
    net_task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    stats: Arc<PipelineStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("handler pool: {0}")]
    Start(String),
}

/// The `router` consumer's settings, derived from config so they always agree with the pool.
pub fn consumer_config(cfg: &HandlersConfig) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(CONSUMER_ROUTER.into()),
        description: Some("leadrouter handler pool".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: i64::from(cfg.max_deliver),
        max_ack_pending: cfg.max_ack_pending as i64,
        // No `backoff` here on purpose: it would skew the explicit NAK delays.
        ..Default::default()
    }
}

impl HandlerPool {
    pub async fn start(
        js: jetstream::Context,
        cfg: &HandlersConfig,
        parts: PoolParts,
    ) -> Result<HandlerPool, PoolError> {
        let stats = Arc::new(PipelineStats::default());
        let deps = Arc::new(PoolDeps {
            parts,
            backoff: Backoff {
                base: cfg.backoff_base,
                cap: cfg.backoff_cap,
            },
            max_deliver: cfg.max_deliver,
            // Three beats per ack_wait: one lost beat never lets a healthy message expire.
            heartbeat: cfg.ack_wait / 3,
            stats: stats.clone(),
            pool_size: cfg.pool_size,
        });
        let (dispatcher, dispatcher_task) = Actor::spawn(None, Dispatcher, deps.clone())
            .await
            .map_err(|e| PoolError::Start(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let consumer_task = tokio::spawn(consume(
            js.clone(),
            consumer_config(cfg),
            cfg.prefetch,
            dispatcher.clone(),
            stop_rx.clone(),
        ));
        let net_task = tokio::spawn(crate::dlq::net::run(
            js,
            deps.parts.idem.clone(),
            deps.parts.dlq.clone(),
            stats.clone(),
            stop_rx,
        ));
        Ok(HandlerPool {
            dispatcher,
            dispatcher_task,
            consumer_task,
            net_task,
            stop,
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// Stops pulling, lets in-flight leads finish (up to `grace`), hands waiting ones back.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = self.consumer_task.await;
        let (tx, rx) = oneshot::channel();
        if self.dispatcher.cast(DispatchMsg::Drain(tx)).is_ok() {
            let _ = tokio::time::timeout(grace, rx).await;
        }
        self.dispatcher.stop(None);
        let _ = self.dispatcher_task.await;
        let _ = self.net_task.await;
    }
}

/// Pulls from the `router` consumer forever, re-creating it after errors (NATS restarts).
async fn consume(
    js: jetstream::Context,
    config: consumer::pull::Config,
    prefetch: usize,
    dispatcher: ActorRef<DispatchMsg>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let attempt = async {
            let stream = js
                .get_stream(STREAM_LEADS)
                .await
                .map_err(|e| e.to_string())?;
            let c: consumer::PullConsumer = stream
                .create_consumer(config.clone())
                .await
                .map_err(|e| e.to_string())?;
            c.stream()
                .max_messages_per_batch(prefetch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        let attempt = tokio::select! {
            _ = stop.changed() => return,
            a = attempt => a,
        };
        let mut messages = match attempt {
            Ok(m) => {
                backoff = Duration::from_millis(100);
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot consume LEADS yet");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                next = messages.next() => match next {
                    Some(Ok(m)) => {
                        if dispatcher.cast(DispatchMsg::Incoming(Box::new(m))).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pull consumer error; re-subscribing");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}
