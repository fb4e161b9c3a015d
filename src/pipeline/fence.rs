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

use super::idempotency::now_ms;

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
}

/// The process part of an owner string (`host-pid-rand/h3` -> `host-pid-rand`).
fn instance_of(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(i, _)| i)
}

impl Fence {
    pub fn new(kv: kv::Store, lease: Duration) -> Fence {
        Fence { kv, lease }
    }

    /// Asks to write event `seq` of `group` as `owner`. Loops only on lost races.
    pub async fn enter(&self, group: &str, seq: u64, owner: &str) -> Result<Gate, FenceError> {
        const TRIES: u32 = 8;
        for _ in 0..TRIES {
            let now = now_ms();
            let mine = FenceEntry {
                seq,
                owner: owner.to_string(),
                writing: true,
                lease_until_ms: now + self.lease.as_millis() as u64,
            };
            let current = self
                .kv
                .entry(group)
                .await
                .map_err(|e| FenceError::Store(Box::new(e)))?
                .filter(|e| e.operation == kv::Operation::Put);
            let Some(current) = current else {
                match self.kv.create(group, encode(&mine)).await {
                    Ok(revision) => {
                        return Ok(Gate::Open(Held {
                            group: group.to_string(),
                            entry: mine,
                            revision,
                        }))
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(FenceError::Store(Box::new(e))),
                }
            };
            // An entry we cannot read is treated as absent-but-taken: overwrite it by revision.
            let have: Option<FenceEntry> = serde_json::from_slice(&current.value).ok();
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
            match self.kv.update(group, encode(&mine), current.revision).await {
                Ok(revision) => {
                    return Ok(Gate::Open(Held {
                        group: group.to_string(),
                        entry: mine,
                        revision,
                    }))
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(FenceError::Store(Box::new(e))),
            }
        }
        Err(FenceError::Contended(TRIES))
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
        held.revision = self
            .kv
            .update(&held.group, encode(&held.entry), held.revision)
            .await
            .map_err(|e| FenceError::Store(Box::new(e)))?;
        Ok(())
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
