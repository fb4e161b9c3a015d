//! Group commit at the edge: the leads of requests that arrive while a commit is in flight are
//! stored together as one atomic batch, so under `sync_interval: always` they share one fsync
//! instead of paying one each.
//!
//! One task owns the queue and decides what goes to the server next. A single publish costs
//! one fsync (about 0.27 ms on this project's machine) and the server pipelines them; an atomic
//! batch costs about 3.6 ms of staging whatever its size, and nats-server 2.15.1 stores the
//! batches of one stream one after another (two batches of 32 at once took as long as one after
//! the other). So:
//! - while fewer than `min_batch` leads are waiting and fewer than that are being published one
//!   by one, they are published one by one at once: a lone request, or a trickle, never waits
//!   and never pays a batch's cost;
//! - once the single publishes fall behind (the disk is the bottleneck), arrivals accumulate,
//!   and as soon as `min_batch` wait and a batch slot is free (`max_in_flight`, default 1) they
//!   go as one batch of up to `max_batch`; while it is in flight the next one fills, so the size
//!   follows the load;
//! - a small group held back by single publishes in flight goes one by one after `linger`.
//!
//! Every caller keeps today's answer. A batch that holds an id already stored (a vendor retry)
//! or repeated in it is refused whole by the server (10201), so ids seen twice in one group and
//! ids this publisher stored within the duplicate window are kept out of the batch and sent on
//! their own after it (where they get `duplicate: true`); a refusal that still happens (an id
//! stored by another router) re-sends the batch's leads one by one. A batch that fails any other
//! way answers every one of its leads with the error: never a 202 for a lead not stored.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::batch::{self, BatchError, Outbound};
use super::publisher::publish_one;
use super::{PublishFailure, Stored};
use crate::config::GroupCommitConfig;

/// Single publishes pending before arrivals wait for a batch instead: enough to carry a
/// trickle without waiting, few enough that under load the disk's time goes to batches.
const SINGLES_PENDING: usize = 4;

/// Ids this publisher stored recently: a retry of one would make a whole batch fail.
const RECENT_IDS: u64 = 200_000;

/// The handle the edge publishes through; clones share one committer task, which ends when
/// the last clone is dropped.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Job>,
}

struct Job {
    msg: Outbound,
    msg_id: Option<Arc<str>>,
    since: Instant,
    done: oneshot::Sender<Result<Stored, PublishFailure>>,
}

struct Shared {
    js: jetstream::Context,
    client: async_nats::Client,
    cfg: GroupCommitConfig,
    timeout: Duration,
    recent: moka::sync::Cache<Arc<str>, ()>,
}

impl GroupCommitter {
    pub fn start(
        js: jetstream::Context,
        cfg: GroupCommitConfig,
        timeout: Duration,
        duplicate_window: Duration,
    ) -> GroupCommitter {
        // Room for every in-flight commit and the next one to fill; beyond that, callers wait
        // to enqueue (inside their publish deadline) rather than pile up.
        let (tx, rx) = mpsc::channel(cfg.max_batch * (cfg.max_in_flight + 1));
        let shared = Arc::new(Shared {
            client: js.client(),
            js,
            timeout,
            recent: moka::sync::Cache::builder()
                .max_capacity(RECENT_IDS)
                .time_to_live(duplicate_window)
                .build(),
            cfg,
        });
        tokio::spawn(run(rx, shared));
        GroupCommitter { tx }
    }

    /// Stores `msg` with the next commit and waits for its own outcome.
    pub async fn publish(&self, msg: Outbound) -> Result<Stored, PublishFailure> {
        let msg_id = msg
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| Arc::<str>::from(v.as_str()));
        let (done, answer) = oneshot::channel();
        let job = Job {
            msg,
            msg_id,
            since: Instant::now(),
            done,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| PublishFailure::Closed)?;
        answer.await.unwrap_or(Err(PublishFailure::Closed))
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let cfg = shared.cfg.clone();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    // Batches in flight, and leads published one by one and not yet acknowledged.
    let (mut batches, mut singles) = (0usize, 0usize);
    let mut closed = false;
    loop {
        while !waiting.is_empty() {
            let kind = if waiting.len() >= cfg.min_batch && batches < cfg.max_in_flight {
                Commit::Batch
            } else if waiting.len() < cfg.min_batch
                && (singles + waiting.len() <= SINGLES_PENDING
                    || waiting
                        .front()
                        .is_some_and(|j| j.since.elapsed() >= cfg.linger))
            {
                Commit::Singles
            } else {
                break;
            };
            let n = waiting.len().min(cfg.max_batch);
            match kind {
                Commit::Batch => batches += 1,
                Commit::Singles => singles += n,
            }
            let group: Vec<Job> = waiting.drain(..n).collect();
            let shared = shared.clone();
            in_flight.push(async move {
                match kind {
                    Commit::Batch => commit(&shared, group).await,
                    // Repeated ids among them need no care: each gets its own PubAck.
                    Commit::Singles => one_by_one(&shared, group).await,
                }
                (kind, n)
            });
        }
        if closed && waiting.is_empty() && in_flight.is_empty() {
            return;
        }
        // Only a small group held back by the single publishes in flight can be helped by
        // time; a big one waits for the batch slot.
        let linger_until = (waiting.len() < cfg.min_batch)
            .then(|| waiting.front().map(|j| j.since + cfg.linger))
            .flatten();
        let room = waiting.len() < cfg.max_batch * cfg.max_in_flight;
        tokio::select! {
            Some((kind, n)) = in_flight.next(), if !in_flight.is_empty() => match kind {
                Commit::Batch => batches -= 1,
                Commit::Singles => singles -= n,
            },
            job = rx.recv(), if !closed && room => match job {
                Some(job) => {
                    waiting.push_back(job);
                    // Everything that is already there joins now: one wake-up per group.
                    while waiting.len() < cfg.max_batch * cfg.max_in_flight {
                        match rx.try_recv() {
                            Ok(job) => waiting.push_back(job),
                            Err(_) => break,
                        }
                    }
                }
                None => closed = true,
            },
            _ = sleep_until(linger_until), if linger_until.is_some() => {}
        }
    }
}

/// How the committer counted a group it sent: against the batch slots, or as single publishes.
#[derive(Clone, Copy)]
enum Commit {
    Batch,
    Singles,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One batch: the group's batchable leads as one atomic batch (or one by one, if the ids kept
/// out leave too few), then the leads kept out of it.
async fn commit(shared: &Shared, group: Vec<Job>) {
    let metrics = crate::telemetry::metrics::metrics();
    let mut seen: HashSet<Arc<str>> = HashSet::with_capacity(group.len());
    let (mut batchable, mut after) = (Vec::with_capacity(group.len()), Vec::new());
    for job in group {
        let repeat = job
            .msg_id
            .as_ref()
            .is_some_and(|id| shared.recent.contains_key(id) || !seen.insert(id.clone()));
        if repeat {
            after.push(job);
        } else {
            batchable.push(job);
        }
    }
    if batchable.len() >= shared.cfg.min_batch {
        let msgs: Vec<Outbound> = batchable.iter().map(|j| j.msg.clone()).collect();
        match batch::publish(
            &shared.client,
            &batch::new_batch_id(),
            &msgs,
            shared.timeout,
        )
        .await
        {
            Ok(ack) => {
                metrics.published_batch(batchable.len());
                for (i, job) in batchable.into_iter().enumerate() {
                    shared.remember(job.msg_id);
                    let _ = job.done.send(Ok(Stored {
                        sequence: ack.sequence_of(i),
                        duplicate: false,
                    }));
                }
            }
            Err(BatchError::DuplicateMsgId) => {
                metrics.batch_fell_back();
                tracing::debug!(target: "leadrouter::queue", leads = batchable.len(), "atomic batch refused for a stored id; publishing its leads one by one");
                one_by_one(shared, batchable).await;
            }
            Err(e) => {
                let e = Arc::new(e);
                tracing::warn!(target: "leadrouter::queue", leads = batchable.len(), error = %crate::error_chain::chain(&*e), "atomic batch not stored; its leads are answered 503");
                for job in batchable {
                    let _ = job.done.send(Err(PublishFailure::Batch(e.clone())));
                }
            }
        }
    } else {
        one_by_one(shared, batchable).await;
    }
    one_by_one(shared, after).await;
}

/// Each lead its own publish, all at once.
async fn one_by_one(shared: &Shared, jobs: Vec<Job>) {
    if jobs.is_empty() {
        return;
    }
    crate::telemetry::metrics::metrics().published_singly(jobs.len());
    futures::future::join_all(jobs.into_iter().map(|job| async move {
        let Job {
            msg, msg_id, done, ..
        } = job;
        let r = publish_one(&shared.js, msg, shared.timeout).await;
        if r.is_ok() {
            shared.remember(msg_id);
        }
        let _ = done.send(r);
    }))
    .await;
}

impl Shared {
    /// A stored lead's id: a retry of it is kept out of the next batches.
    fn remember(&self, msg_id: Option<Arc<str>>) {
        if let Some(id) = msg_id {
            self.recent.insert(id, ());
        }
    }
}
