//! The dispatcher: per-lead FIFO inside one router.
//!
//! Messages of one group (the lead's keyed group key) never run concurrently and complete in
//! stream order; other groups run in parallel on the handler actors it supervises. A group whose
//! head is waiting for its NAK-delayed redelivery holds its later messages back, kept alive with
//! in-progress acks, but never forever:
//! - when the partition moves to another router, everything of it that waits is handed back
//!   (NAK) at once, and the new owner's fence keeps the order;
//! - when the head's redelivery has not come back by its deadline (the delay plus an ack wait),
//!   the held messages are handed back too. Only the lead itself ever waits on its retry: the
//!   rest of its partition keeps flowing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::events::{Emit, HandlerRestarted, LeadReceived};
use super::handler::{self, Delivery, Outcome};
use super::PoolDeps;
use crate::error_chain::chain;
use crate::queue::message::{self, LeadHeaders};

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
                group: &group,
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
    Incoming {
        msg: Box<jetstream::Message>,
        partition: u16,
    },
    Finished {
        handler: usize,
        group: String,
        seq: u64,
        outcome: Outcome,
    },
    KeepAlive,
    /// This router now owns the partition: take its messages.
    Own(u16),
    /// The partition moved away: hand back what waits, answer once none of its leads is with a
    /// handler.
    Release(u16, oneshot::Sender<()>),
    /// Stop taking work; NAK what waits; answer once nothing is in flight.
    Drain(oneshot::Sender<()>),
}

struct Waiting {
    msg: Box<jetstream::Message>,
    seq: u64,
    delivered: u32,
}

struct Blocked {
    seq: u64,
    /// Past this, the head's redelivery went elsewhere (or got lost): stop holding for it.
    until: Instant,
}

struct Group {
    partition: u16,
    /// A message of this group is with a handler.
    busy: bool,
    /// The head failed and was NAKed: hold later messages until this sequence comes back.
    blocked: Option<Blocked>,
    parked: VecDeque<Waiting>,
}

struct InFlight {
    group: String,
    seq: u64,
    partition: u16,
    msg: Box<jetstream::Message>,
}

pub(super) struct Dispatcher;

pub(super) struct DispatchState {
    deps: Arc<PoolDeps>,
    handlers: Vec<ActorRef<HandlerMsg>>,
    idle: Vec<usize>,
    in_flight: HashMap<usize, InFlight>,
    groups: HashMap<String, Group>,
    /// Runnable messages waiting for an idle handler, in arrival order.
    ready: VecDeque<(String, u16, Waiting)>,
    owned: HashSet<u16>,
    releasing: Vec<(u16, oneshot::Sender<()>)>,
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

/// The group header the edge set, or one computed from the envelope (hand-published leads).
fn group_of(deps: &PoolDeps, msg: &jetstream::Message) -> String {
    if let Some(g) = LeadHeaders::read(msg.headers.as_ref()).group {
        return g;
    }
    match message::decode_envelope(&msg.payload) {
        Ok(env) => deps.parts.grouping.key.group_of(&env.fields),
        Err(_) => msg.subject.to_string(),
    }
}

async fn nak_now(msg: &jetstream::Message) {
    let _ = msg.ack_with(AckKind::Nak(None)).await;
}

impl DispatchState {
    fn start_or_queue(&mut self, group: String, partition: u16, w: Waiting) {
        if let Some(idx) = self.idle.pop() {
            self.run_on(idx, group, partition, w);
        } else {
            self.ready.push_back((group, partition, w));
        }
    }

    fn run_on(&mut self, idx: usize, group: String, partition: u16, w: Waiting) {
        self.in_flight.insert(
            idx,
            InFlight {
                group: group.clone(),
                seq: w.seq,
                partition,
                msg: w.msg.clone(),
            },
        );
        let sent = self.handlers[idx].cast(HandlerMsg::Run {
            msg: w.msg,
            group,
            seq: w.seq,
            delivered: w.delivered,
        });
        if let Err(e) = sent {
            tracing::error!(error = %chain(&e), handler = idx, "handler unreachable; message left for redelivery");
        }
    }

    async fn incoming(&mut self, msg: Box<jetstream::Message>, partition: u16) {
        if !self.owned.contains(&partition) {
            // Arrived after the partition moved away: its new owner takes it.
            nak_now(&msg).await;
            return;
        }
        let (seq, delivered) = match msg.info() {
            Ok(i) => (
                i.stream_sequence,
                u32::try_from(i.delivered).unwrap_or(u32::MAX),
            ),
            Err(e) => {
                tracing::warn!(error = %chain(&*e), "message without JetStream metadata ignored");
                return;
            }
        };
        LeadReceived.emit(&self.deps.stats);
        let group = group_of(&self.deps, &msg);
        let w = Waiting {
            msg,
            seq,
            delivered,
        };
        let g = self.groups.entry(group.clone()).or_insert_with(|| Group {
            partition,
            busy: false,
            blocked: None,
            parked: VecDeque::new(),
        });
        let is_head_retry = g.blocked.as_ref().is_some_and(|b| b.seq == seq);
        if g.busy || (g.blocked.is_some() && !is_head_retry) {
            // A redelivery of a message already parked replaces it (its ack handle is newer).
            if let Some(p) = g.parked.iter_mut().find(|p| p.seq == seq) {
                *p = w;
            } else {
                g.parked.push_back(w);
            }
            return;
        }
        g.blocked = None;
        g.busy = true;
        self.start_or_queue(group, partition, w);
    }

    fn finished(&mut self, idx: usize, group: String, seq: u64, outcome: Outcome) {
        self.in_flight.remove(&idx);
        self.idle.push(idx);
        self.after(group, seq, outcome);
        self.pump();
        self.answer_releases();
    }

    /// A group's head ended one way or another; decide what runs next.
    fn after(&mut self, group: String, seq: u64, outcome: Outcome) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        g.busy = false;
        let owned = self.owned.contains(&g.partition);
        match outcome {
            Outcome::Retrying { after } if owned => {
                g.blocked = Some(Blocked {
                    seq,
                    until: Instant::now() + after + self.deps.ack_wait,
                });
                // The head is the only delivery of itself we hold; drop any parked copy.
                g.parked.retain(|p| p.seq != seq);
            }
            Outcome::Retrying { .. } => g.blocked = None,
            Outcome::Delivered | Outcome::Duplicate | Outcome::Superseded | Outcome::Dead => {
                g.blocked = None;
                if let Some(next) = g.parked.pop_front() {
                    g.busy = true;
                    let partition = g.partition;
                    self.start_or_queue(group, partition, next);
                    return;
                }
            }
        }
        if !g.busy && g.blocked.is_none() && g.parked.is_empty() {
            self.groups.remove(&group);
        }
    }

    fn pump(&mut self) {
        while !self.idle.is_empty() {
            let Some((group, partition, w)) = self.ready.pop_front() else {
                break;
            };
            if let Some(idx) = self.idle.pop() {
                self.run_on(idx, group, partition, w);
            }
        }
        if self.in_flight.is_empty() {
            if let Some(tx) = self.draining.take() {
                let _ = tx.send(());
            }
        }
    }

    fn answer_releases(&mut self) {
        let in_flight: HashSet<u16> = self.in_flight.values().map(|f| f.partition).collect();
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.releasing)
            .into_iter()
            .partition(|(p, _)| !in_flight.contains(p));
        self.releasing = still;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// Hands back (NAK, no delay) every waiting message of the partition, and forgets its
    /// groups' holds; messages with a handler finish as usual.
    async fn release(&mut self, partition: u16) -> usize {
        self.owned.remove(&partition);
        let mut handed_back = 0;
        let mut keep = VecDeque::with_capacity(self.ready.len());
        for (group, p, w) in self.ready.drain(..) {
            if p == partition {
                nak_now(&w.msg).await;
                handed_back += 1;
                if let Some(g) = self.groups.get_mut(&group) {
                    g.busy = false;
                }
            } else {
                keep.push_back((group, p, w));
            }
        }
        self.ready = keep;
        let mut empty = Vec::new();
        for (name, g) in self
            .groups
            .iter_mut()
            .filter(|(_, g)| g.partition == partition)
        {
            for p in g.parked.drain(..) {
                nak_now(&p.msg).await;
                handed_back += 1;
            }
            g.blocked = None;
            if !g.busy {
                empty.push(name.clone());
            }
        }
        for name in empty {
            self.groups.remove(&name);
        }
        handed_back
    }

    /// Keeps waiting messages alive, and lets go of groups whose head did not come back.
    async fn keep_alive(&mut self) {
        let now = Instant::now();
        let mut empty = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            if g.blocked.as_ref().is_some_and(|b| b.until <= now) {
                let n = g.parked.len();
                for p in g.parked.drain(..) {
                    nak_now(&p.msg).await;
                }
                g.blocked = None;
                if n > 0 {
                    tracing::info!(
                        partition = g.partition,
                        released = n,
                        "a lead's retry did not come back in time; its later events go back to the queue"
                    );
                }
                if !g.busy {
                    empty.push(name.clone());
                }
                continue;
            }
            for p in &g.parked {
                let _ = p.msg.ack_with(AckKind::Progress).await;
            }
        }
        for name in empty {
            self.groups.remove(&name);
        }
        for (_, _, w) in &self.ready {
            let _ = w.msg.ack_with(AckKind::Progress).await;
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
            owned: HashSet::new(),
            releasing: Vec::new(),
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
            DispatchMsg::Incoming { msg, partition } => {
                if state.draining.is_some() {
                    nak_now(&msg).await;
                } else {
                    state.incoming(msg, partition).await;
                }
            }
            DispatchMsg::Finished {
                handler,
                group,
                seq,
                outcome,
            } => {
                state.finished(handler, group, seq, outcome);
            }
            DispatchMsg::KeepAlive => state.keep_alive().await,
            DispatchMsg::Own(p) => {
                state.owned.insert(p);
            }
            DispatchMsg::Release(p, tx) => {
                let n = state.release(p).await;
                tracing::debug!(partition = p, handed_back = n, "partition released");
                state.releasing.push((p, tx));
                state.answer_releases();
            }
            DispatchMsg::Drain(tx) => {
                for (_, _, w) in state.ready.drain(..) {
                    nak_now(&w.msg).await;
                }
                for g in state.groups.values_mut() {
                    for p in g.parked.drain(..) {
                        nak_now(&p.msg).await;
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
        HandlerRestarted {
            handler: idx,
            error: &*err,
        }
        .emit(&state.deps.stats);
        // Its message was not acked. Free the lease it held and ask for the redelivery now
        // rather than after ack_wait; the group waits for exactly that message.
        if let Some(f) = state.in_flight.remove(&idx) {
            if let Ok(env) =
                serde_json::from_slice::<crate::intake::envelope::LeadEnvelope>(&f.msg.payload)
            {
                let _ = state
                    .deps
                    .parts
                    .idem
                    .expire_lease(&env.key, &owner_of(&state.deps, idx))
                    .await;
            }
            nak_now(&f.msg).await;
            state.after(
                f.group,
                f.seq,
                Outcome::Retrying {
                    after: Duration::ZERO,
                },
            );
        }
        state.handlers[idx] = Dispatcher::spawn_handler(&myself, &state.deps, idx).await?;
        state.idle.push(idx);
        state.pump();
        state.answer_releases();
        Ok(())
    }
}
