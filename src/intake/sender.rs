//! One actor per sender owns that sender's token bucket and counters. Actors are spawned on first
//! use by a supervisor that respawns a failed one (its bucket starts full again, which errs on
//! the side of accepting leads).
//!
//! Only the admission decision goes through the actor: signature checks and mapping run on the
//! request task, so a busy sender uses every core while its rate state keeps a single owner.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;

use crate::config::RateConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    Limited { retry_after: Duration },
}

/// What happened to one request, for the sender's counters.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Accepted { duplicate: bool },
    Rejected(&'static str),
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SenderStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub rate_limited: u64,
    pub rejected: BTreeMap<&'static str, u64>,
}

pub enum SenderMsg {
    Admit(RpcReplyPort<Admission>),
    Record(Outcome),
    Stats(RpcReplyPort<SenderStats>),
}

pub struct SenderActor;

pub struct SenderState {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
    stats: SenderStats,
}

fn quota(rate: &RateConfig) -> Quota {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl Actor for SenderActor {
    type Msg = SenderMsg;
    type State = SenderState;
    type Arguments = RateConfig;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        rate: RateConfig,
    ) -> Result<Self::State, ActorProcessingErr> {
        let clock = DefaultClock::default();
        Ok(SenderState {
            limiter: RateLimiter::direct_with_clock(quota(&rate), clock.clone()),
            clock,
            stats: SenderStats::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SenderMsg::Admit(reply) => {
                let decision = match state.limiter.check() {
                    Ok(()) => Admission::Admit,
                    Err(not_until) => {
                        state.stats.rate_limited += 1;
                        Admission::Limited {
                            retry_after: not_until.wait_time_from(state.clock.now()),
                        }
                    }
                };
                let _ = reply.send(decision);
            }
            SenderMsg::Record(Outcome::Accepted { duplicate }) => {
                state.stats.accepted += 1;
                if duplicate {
                    state.stats.duplicates += 1;
                }
            }
            SenderMsg::Record(Outcome::Rejected(code)) => {
                *state.stats.rejected.entry(code).or_default() += 1;
            }
            SenderMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}

pub enum RegistryMsg {
    Get(String, RpcReplyPort<Option<ActorRef<SenderMsg>>>),
}

/// Supervises the sender actors and spawns each on first use.
pub struct SenderRegistry;

pub struct RegistryState {
    rates: HashMap<String, RateConfig>,
    live: HashMap<String, ActorRef<SenderMsg>>,
}

impl Actor for SenderRegistry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = HashMap<String, RateConfig>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        rates: HashMap<String, RateConfig>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RegistryState {
            rates,
            live: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let RegistryMsg::Get(id, reply) = msg;
        if let Some(actor) = state.live.get(&id) {
            let _ = reply.send(Some(actor.clone()));
            return Ok(());
        }
        let Some(rate) = state.rates.get(&id).cloned() else {
            let _ = reply.send(None);
            return Ok(());
        };
        match Actor::spawn_linked(None, SenderActor, rate, myself.get_cell()).await {
            Ok((actor, _)) => {
                state.live.insert(id, actor.clone());
                let _ = reply.send(Some(actor));
            }
            Err(e) => {
                tracing::error!(sender = %id, error = %crate::error_chain::chain(&e), "cannot start sender actor");
                let _ = reply.send(None);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A dead sender actor is forgotten; the next request for it spawns a fresh one.
        if let SupervisionEvent::ActorFailed(cell, _)
        | SupervisionEvent::ActorTerminated(cell, _, _) = &evt
        {
            let gone = cell.get_id();
            state.live.retain(|id, a| {
                let keep = a.get_id() != gone;
                if !keep {
                    tracing::warn!(sender = %id, "sender actor stopped; it will be respawned on next use");
                }
                keep
            });
        }
        Ok(())
    }
}

/// The request path's handle: caches each sender's actor and re-asks the registry when it died.
pub struct Senders {
    registry: ActorRef<RegistryMsg>,
    cache: Mutex<HashMap<String, ActorRef<SenderMsg>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SenderUnavailable {
    #[error("sender actor unavailable: the sender registry did not start")]
    Start(#[source] ractor::SpawnErr),
    #[error("sender actor unavailable: the sender registry did not answer")]
    Registry(#[source] ractor::RactorErr<()>),
    #[error("sender actor unavailable: no actor for sender {0}")]
    NoActor(String),
    #[error("sender actor unavailable: sender {0} actor keeps failing")]
    KeepsFailing(String),
    #[error("sender actor unavailable: sender {sender} actor did not answer")]
    Actor {
        sender: String,
        #[source]
        source: ractor::RactorErr<()>,
    },
}

impl Senders {
    pub async fn start(rates: HashMap<String, RateConfig>) -> Result<Senders, SenderUnavailable> {
        let (registry, _) = Actor::spawn(None, SenderRegistry, rates)
            .await
            .map_err(SenderUnavailable::Start)?;
        Ok(Senders {
            registry,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn actor(&self, id: &str, fresh: bool) -> Result<ActorRef<SenderMsg>, SenderUnavailable> {
        if !fresh {
            let cached = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned();
            if let Some(a) = cached {
                return Ok(a);
            }
        }
        let got = ractor::call!(self.registry, |r| RegistryMsg::Get(id.to_string(), r))
            .map_err(|e| SenderUnavailable::Registry(e.map(drop)))?
            .ok_or_else(|| SenderUnavailable::NoActor(id.to_string()))?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), got.clone());
        Ok(got)
    }

    /// Takes a token from the sender's bucket.
    pub async fn admit(&self, id: &str) -> Result<Admission, SenderUnavailable> {
        for fresh in [false, true] {
            let actor = self.actor(id, fresh).await?;
            if let Ok(a) = ractor::call!(actor, SenderMsg::Admit) {
                return Ok(a);
            }
        }
        Err(SenderUnavailable::KeepsFailing(id.to_string()))
    }

    pub fn record(&self, id: &str, outcome: Outcome) {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(a) = cached {
            let _ = a.cast(SenderMsg::Record(outcome));
        }
    }

    pub async fn stats(&self, id: &str) -> Result<SenderStats, SenderUnavailable> {
        let actor = self.actor(id, false).await?;
        ractor::call!(actor, SenderMsg::Stats).map_err(|e| SenderUnavailable::Actor {
            sender: id.to_string(),
            source: e.map(drop),
        })
    }

    pub fn stop(&self) {
        self.registry.stop(None);
    }
}
