//! The per-lead write fence: order across owner changes.
//!
//! Inside one router the dispatcher runs a lead's events one at a time in stream order. Across
//! routers that is not enough: ADR-42 says two clients can briefly both believe they hold a
//! partition's pin, and a NAK-delayed event can come back after its partition moved and a newer
//! event was already written. The fence closes both gaps with one KV entry per group key in
//! `leads_fence`: the stream sequence of the newest event that entered the sinks, whether a
//! writer is inside right now, and that writer's lease. Every change is revision-checked.
//!
//! - An event older than the fence (`seq < fence.seq`) is *superseded*: upsert sinks skip it
//!   (it would overwrite newer data), append sinks still get it; the skip is recorded.
//! - An event at or above the fence enters, unless another router's writer is inside with a
//!   live lease: then it waits (`Busy`), so two writes of one lead never overlap.
//! - Inside one router, the dispatcher already serialises a group, so a writer of the same
//!   router may take over the fence at once (its previous holder is finished or crashed).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ledger::idempotency::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("fence store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("fence for a lead still contended after {0} tries")]
    Contended(u32),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FenceEntry {
    /// Stream sequence of the newest event that entered the sinks.
    pub seq: u64,
    /// `{instance}/h{n}` of the writer inside, or of the last one.
    #[serde(default)]
    pub owner: String,
    /// True while that writer is between `enter` and `leave`.
    #[serde(default)]
    pub writing: bool,
    #[serde(default)]
    pub lease_until_ms: u64,
}

/// What `enter` decided.
#[derive(Debug)]
pub enum Gate {
    /// Go ahead; call [`Fence::leave`] afterwards.
    Open(Held),
    /// A newer event (this stream sequence) already entered the sinks.
    Superseded { by: u64 },
    /// Another router's writer is inside; retry after this long.
    Busy(Duration),
}

#[derive(Debug)]
pub struct Held {
    group: String,
    entry: FenceEntry,
    revision: u64,
}

#[derive(Clone)]
pub struct Fence {
    kv: kv::Store,
    lease: Duration,
    /// What this router last wrote per group (revision, entry): a hint that saves the read
    /// before a write. Every write is still revision-checked, so a stale hint costs one failed
    /// update and a read, never a wrong decision: the fence's sequence only grows, so a stale
    /// "newer event already entered" is still true, and the hint only ever names this router.
    known: moka::future::Cache<String, (u64, FenceEntry)>,
}

/// The process part of an owner string (`host-pid-rand/h3` -> `host-pid-rand`).
fn instance_of(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(i, _)| i)
}

impl Fence {
    pub fn new(kv: kv::Store, lease: Duration) -> Fence {
        Fence {
            kv,
            lease,
            known: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    async fn opened(&self, group: &str, entry: FenceEntry, revision: u64) -> Gate {
        self.known
            .insert(group.to_string(), (revision, entry.clone()))
            .await;
        Gate::Open(Held {
            group: group.to_string(),
            entry,
            revision,
        })
    }

    /// Asks to write event `seq` of `group` as `owner`. Loops only on lost races.
    ///
    /// The common cases cost one write: a lead's first event creates its fence outright, and a
    /// later event of a lead this router wrote last updates it at the revision it remembers.
    pub async fn enter(&self, group: &str, seq: u64, owner: &str) -> Result<Gate, FenceError> {
        const TRIES: u32 = 8;
        // None: unknown here, try creating first; Some: the state to decide on and update.
        let mut state: Option<(u64, Option<FenceEntry>)> =
            self.known.get(group).await.map(|(rev, e)| (rev, Some(e)));
        let mut fresh_read = false;
        for _ in 0..TRIES {
            let now = now_ms();
            let mine = FenceEntry {
                seq,
                owner: owner.to_string(),
                writing: true,
                lease_until_ms: now + self.lease.as_millis() as u64,
            };
            let Some((revision, have)) = state.take() else {
                match self.kv.create(group, encode(&mine)).await {
                    Ok(revision) => return Ok(self.opened(group, mine, revision).await),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                        state = Some(self.read(group).await?);
                        fresh_read = true;
                        continue;
                    }
                    Err(e) => return Err(FenceError::Store(Box::new(e))),
                }
            };
            // An entry we cannot read is treated as taken: overwrite it by revision.
            if let Some(have) = &have {
                if have.seq > seq {
                    return Ok(Gate::Superseded { by: have.seq });
                }
                let inside = have.writing && have.lease_until_ms > now;
                if inside && instance_of(&have.owner) != instance_of(owner) {
                    return Ok(Gate::Busy(Duration::from_millis(
                        (have.lease_until_ms - now).clamp(50, 5_000),
                    )));
                }
            }
            let result = if revision == 0 {
                // Deleted or aged out since: create it again.
                self.kv
                    .create(group, encode(&mine))
                    .await
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists)
                    .map_err(|lost| (lost, "create"))
            } else {
                self.kv
                    .update(group, encode(&mine), revision)
                    .await
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                    .map_err(|lost| (lost, "update"))
            };
            match result {
                Ok(revision) => return Ok(self.opened(group, mine, revision).await),
                // Lost a race, or the hint was stale: read what is there and decide again.
                Err((true, _)) => {
                    self.known.invalidate(group).await;
                    state = Some(self.read(group).await?);
                    fresh_read = true;
                }
                Err((false, op)) => {
                    self.known.invalidate(group).await;
                    return Err(FenceError::Store(
                        format!("fence {op} failed for a lead (fresh read: {fresh_read})").into(),
                    ));
                }
            }
        }
        Err(FenceError::Contended(TRIES))
    }

    /// The stored fence: (revision, entry), revision 0 when there is none.
    async fn read(&self, group: &str) -> Result<(u64, Option<FenceEntry>), FenceError> {
        let current = self
            .kv
            .entry(group)
            .await
            .map_err(|e| FenceError::Store(Box::new(e)))?
            .filter(|e| e.operation == kv::Operation::Put);
        Ok(match current {
            Some(e) => (e.revision, serde_json::from_slice(&e.value).ok()),
            None => (0, None),
        })
    }

    /// Extends the lease while slow sinks work.
    pub async fn renew(&self, held: &mut Held) -> Result<(), FenceError> {
        held.entry.lease_until_ms = now_ms() + self.lease.as_millis() as u64;
        self.write(held).await
    }

    /// The writer is out (whatever the sinks said): the next event may enter at once.
    pub async fn leave(&self, mut held: Held) -> Result<(), FenceError> {
        held.entry.writing = false;
        held.entry.lease_until_ms = 0;
        self.write(&mut held).await
    }

    async fn write(&self, held: &mut Held) -> Result<(), FenceError> {
        match self
            .kv
            .update(&held.group, encode(&held.entry), held.revision)
            .await
        {
            Ok(revision) => {
                held.revision = revision;
                self.known
                    .insert(held.group.clone(), (revision, held.entry.clone()))
                    .await;
                Ok(())
            }
            Err(e) => {
                self.known.invalidate(&held.group).await;
                Err(FenceError::Store(Box::new(e)))
            }
        }
    }

    /// The fence of a group, for operators and tests.
    pub async fn get(&self, group: &str) -> Result<Option<FenceEntry>, FenceError> {
        Ok(self
            .kv
            .get(group)
            .await
            .map_err(|e| FenceError::Store(Box::new(e)))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }
}

fn encode(e: &FenceEntry) -> Bytes {
    Bytes::from(serde_json::to_vec(e).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_instances() {
        assert_eq!(instance_of("h-1-ab/h3"), "h-1-ab");
        assert_eq!(instance_of("plain"), "plain");
    }

    #[test]
    fn entries_read_back() {
        let e = FenceEntry {
            seq: 9,
            owner: "a/h1".into(),
            writing: true,
            lease_until_ms: 5,
        };
        let back: FenceEntry = serde_json::from_slice(&encode(&e)).unwrap();
        assert_eq!(back, e);
        // Older or hand-written records without the optional fields still read.
        let bare: FenceEntry = serde_json::from_str(r#"{"seq":3}"#).unwrap();
        assert_eq!(bare.seq, 3);
        assert!(!bare.writing);
    }
}
