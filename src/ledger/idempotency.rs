//! The second dedupe layer: a moka cache in front of the `leads_idempotency` KV bucket.
//!
//! A KV entry per idempotency key records who holds the lead (a lease that expires, so a handler
//! that died mid-write never makes the redelivery skip the write), which sinks already confirmed
//! it, and whether it is done. Every write is revision-checked: two deliveries racing on one key
//! cannot both hold the claim.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A read or write of `leads_idempotency` failed; the KV error is the source.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("idempotency store: cannot read the record of {key}")]
    Read {
        key: String,
        #[source]
        source: kv::EntryError,
    },
    #[error("idempotency store: cannot create the record of {key}")]
    Create {
        key: String,
        #[source]
        source: kv::CreateError,
    },
    #[error("idempotency store: cannot update the record of {key}")]
    Update {
        key: String,
        #[source]
        source: kv::UpdateError,
    },
    #[error("idempotency store: cannot purge the record of {key}")]
    Purge {
        key: String,
        #[source]
        source: kv::PurgeError,
    },
    /// Every revision-checked write lost its race.
    #[error("idempotency store: cannot mark {key} dead: contention")]
    Contended { key: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LeadState {
    /// A handler holds the lead until `lease_until_ms`.
    Claimed,
    /// Released after a failed attempt; the next delivery may claim it at once.
    Pending,
    /// Every sink confirmed: further deliveries are duplicates.
    Done,
    /// Dead-lettered. Not done: a replay may claim it.
    Dead,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeadEntry {
    pub state: LeadState,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub lease_until_ms: u64,
    /// Sink name -> RFC 3339 time the sink confirmed.
    #[serde(default)]
    pub sinks: BTreeMap<String, String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Stream sequence of the DLQ entry, once dead-lettered.
    #[serde(default)]
    pub dlq: Option<String>,
    /// When the first claim was made (ms since the epoch): the DLQ's first attempt time.
    #[serde(default)]
    pub first_attempt_ms: Option<u64>,
    /// Set when a newer event of the same lead had already been written, so upsert sinks
    /// skipped this one (the stream sequence of that newer event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
    /// Sink name -> the sink's own record for the lead, when it named one (a CRM contact id
    /// and whether the write created it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, SinkRef>,
}

/// A sink's own id for a lead's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkRef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

impl LeadEntry {
    fn claimed(owner: &str, lease: Duration) -> LeadEntry {
        LeadEntry {
            state: LeadState::Claimed,
            owner: owner.to_string(),
            lease_until_ms: now_ms() + lease.as_millis() as u64,
            sinks: BTreeMap::new(),
            attempts: 0,
            last_error: None,
            dlq: None,
            first_attempt_ms: Some(now_ms()),
            superseded_by: None,
            refs: BTreeMap::new(),
        }
    }

    fn lease_live(&self, now: u64) -> bool {
        self.state == LeadState::Claimed && self.lease_until_ms > now
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The outcome of trying to claim a lead.
#[derive(Debug)]
pub enum Claim {
    /// We hold the lease; `entry.sinks` lists sinks already done by earlier attempts.
    Owned(Held),
    /// Every sink already confirmed it.
    Done,
    /// This very message was already dead-lettered (its TERM was lost).
    AlreadyDead,
    /// Another live delivery holds it; try again after this long.
    Busy(Duration),
}

/// A claim we hold: the entry and the KV revision it was written at.
#[derive(Debug, Clone)]
pub struct Held {
    pub key: String,
    pub entry: LeadEntry,
    revision: u64,
}

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct Idempotency {
    kv: kv::Store,
    done: moka::future::Cache<String, ()>,
    lease: Duration,
}

impl Idempotency {
    pub fn new(kv: kv::Store, cache_capacity: u64, cache_ttl: Duration, lease: Duration) -> Self {
        Idempotency {
            kv,
            done: moka::future::Cache::builder()
                .max_capacity(cache_capacity)
                .time_to_live(cache_ttl)
                .build(),
            lease,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Fast path: known done in this process.
    pub async fn cached_done(&self, key: &str) -> bool {
        self.done.contains_key(key)
    }

    pub async fn get(&self, key: &str) -> Result<Option<(LeadEntry, u64)>, IdempotencyError> {
        let entry = self
            .kv
            .entry(kv_key(key))
            .await
            .map_err(|source| IdempotencyError::Read {
                key: key.to_string(),
                source,
            })?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            serde_json::from_slice::<LeadEntry>(&e.value)
                .ok()
                .map(|v| (v, e.revision))
        }))
    }

    /// Claims `key` for `owner`, or says why not. `this_message` is the DLQ id the current
    /// message would get, to recognise a redelivery of an already dead-lettered message.
    /// Loops only on lost races.
    pub async fn claim(
        &self,
        key: &str,
        owner: &str,
        this_message: &str,
    ) -> Result<Claim, IdempotencyError> {
        if self.cached_done(key).await {
            return Ok(Claim::Done);
        }
        for _ in 0..8 {
            match self.get(key).await? {
                None => {
                    let entry = LeadEntry::claimed(owner, self.lease);
                    match self.kv.create(kv_key(key), encode(&entry)).await {
                        Ok(revision) => {
                            return Ok(Claim::Owned(Held {
                                key: key.to_string(),
                                entry,
                                revision,
                            }))
                        }
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                        Err(source) => {
                            return Err(IdempotencyError::Create {
                                key: key.to_string(),
                                source,
                            })
                        }
                    }
                }
                Some((entry, revision)) => {
                    if entry.state == LeadState::Done {
                        self.done.insert(key.to_string(), ()).await;
                        return Ok(Claim::Done);
                    }
                    if entry.state == LeadState::Dead && entry.dlq.as_deref() == Some(this_message)
                    {
                        return Ok(Claim::AlreadyDead);
                    }
                    let now = now_ms();
                    if entry.lease_live(now) && entry.owner != owner {
                        return Ok(Claim::Busy(Duration::from_millis(
                            entry.lease_until_ms - now,
                        )));
                    }
                    // Free, released, dead (a replay) or an expired lease: take it over,
                    // keeping the record of sinks that already confirmed.
                    let mut next = entry.clone();
                    if entry.state == LeadState::Claimed && entry.owner != owner {
                        // Its holder died mid-attempt (kill -9, a lost host): that attempt
                        // counts, so a lead that kills every process still reaches the DLQ.
                        next.attempts += 1;
                    }
                    if entry.state == LeadState::Dead {
                        // A replay (another message of a dead-lettered lead): a fresh budget.
                        next.attempts = 0;
                    }
                    next.state = LeadState::Claimed;
                    next.owner = owner.to_string();
                    next.lease_until_ms = now + self.lease.as_millis() as u64;
                    match self.kv.update(kv_key(key), encode(&next), revision).await {
                        Ok(revision) => {
                            return Ok(Claim::Owned(Held {
                                key: key.to_string(),
                                entry: next,
                                revision,
                            }))
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(source) => {
                            return Err(IdempotencyError::Update {
                                key: key.to_string(),
                                source,
                            })
                        }
                    }
                }
            }
        }
        Ok(Claim::Busy(Duration::from_millis(200)))
    }

    /// Writes `held.entry` after the caller changed it; fails if someone else took the lead.
    async fn write(&self, held: &mut Held) -> Result<(), IdempotencyError> {
        let revision = self
            .kv
            .update(kv_key(&held.key), encode(&held.entry), held.revision)
            .await
            .map_err(|source| IdempotencyError::Update {
                key: held.key.clone(),
                source,
            })?;
        held.revision = revision;
        Ok(())
    }

    /// Extends the lease while a slow sink call runs.
    pub async fn renew(&self, held: &mut Held) -> Result<(), IdempotencyError> {
        held.entry.lease_until_ms = now_ms() + self.lease.as_millis() as u64;
        self.write(held).await
    }

    /// Records that `sink` confirmed the lead, so a retry skips it.
    pub async fn sink_done(
        &self,
        held: &mut Held,
        sink: &str,
        at: &str,
    ) -> Result<(), IdempotencyError> {
        held.entry.sinks.insert(sink.to_string(), at.to_string());
        self.write(held).await
    }

    pub async fn mark_done(&self, held: &mut Held) -> Result<(), IdempotencyError> {
        held.entry.state = LeadState::Done;
        held.entry.last_error = None;
        self.write(held).await?;
        self.done.insert(held.key.clone(), ()).await;
        Ok(())
    }

    /// Gives the lead back after a failed attempt so the redelivery need not wait for the lease.
    pub async fn release(
        &self,
        held: &mut Held,
        last_error: Option<String>,
    ) -> Result<(), IdempotencyError> {
        held.entry.state = LeadState::Pending;
        held.entry.lease_until_ms = 0;
        held.entry.attempts += 1;
        held.entry.last_error = last_error;
        self.write(held).await
    }

    /// Gives the lead back without counting an attempt: nothing was tried (the fence was busy,
    /// or NATS was away), so a cluster election never spends a lead's retry budget.
    pub async fn yield_claim(&self, held: &mut Held) -> Result<(), IdempotencyError> {
        held.entry.state = LeadState::Pending;
        held.entry.lease_until_ms = 0;
        self.write(held).await
    }

    pub async fn mark_dead(
        &self,
        held: &mut Held,
        last_error: Option<String>,
        dlq: String,
    ) -> Result<(), IdempotencyError> {
        held.entry.state = LeadState::Dead;
        held.entry.lease_until_ms = 0;
        held.entry.attempts += 1;
        held.entry.last_error = last_error;
        held.entry.dlq = Some(dlq);
        self.write(held).await
    }

    /// For the crash net (a handler died holding the lead): mark dead whatever the owner.
    pub async fn force_dead(&self, key: &str, dlq: String) -> Result<(), IdempotencyError> {
        for _ in 0..8 {
            let (mut entry, revision) = match self.get(key).await? {
                Some(e) => e,
                None => (LeadEntry::claimed("", Duration::ZERO), 0),
            };
            entry.state = LeadState::Dead;
            entry.lease_until_ms = 0;
            entry.dlq = Some(dlq.clone());
            // `Err(None)`: lost a race, read again.
            let res = if revision == 0 {
                match self.kv.create(kv_key(key), encode(&entry)).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(None),
                    Err(source) => Err(Some(IdempotencyError::Create {
                        key: key.to_string(),
                        source,
                    })),
                }
            } else {
                match self.kv.update(kv_key(key), encode(&entry), revision).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(None),
                    Err(source) => Err(Some(IdempotencyError::Update {
                        key: key.to_string(),
                        source,
                    })),
                }
            };
            match res {
                Ok(()) => return Ok(()),
                Err(None) => continue,
                Err(Some(e)) => return Err(e),
            }
        }
        Err(IdempotencyError::Contended {
            key: key.to_string(),
        })
    }

    /// Expires a lease held by a handler that died, so its redelivery need not wait it out.
    pub async fn expire_lease(&self, key: &str, owner: &str) -> Result<(), IdempotencyError> {
        if let Some((mut entry, revision)) = self.get(key).await? {
            if entry.state == LeadState::Claimed && entry.owner == owner {
                entry.state = LeadState::Pending;
                entry.lease_until_ms = 0;
                let _ = self.kv.update(kv_key(key), encode(&entry), revision).await;
            }
        }
        Ok(())
    }

    /// Forgets a key everywhere (tests and operators simulating a lost completion record).
    pub async fn forget(&self, key: &str) -> Result<(), IdempotencyError> {
        self.done.invalidate(key).await;
        self.kv
            .purge(kv_key(key))
            .await
            .map_err(|source| IdempotencyError::Purge {
                key: key.to_string(),
                source,
            })
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; our keys are `lr_<hex>` already, but replayed or imported
/// envelopes may carry anything, so anything else is hex-escaped. The lead index uses the same
/// mapping, so both name a lead alike.
pub(crate) fn kv_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        format!("x-{}", hex::encode(key.as_bytes()))
    }
}

fn encode(entry: &LeadEntry) -> Bytes {
    Bytes::from(serde_json::to_vec(entry).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_are_safe() {
        assert_eq!(kv_key("lr_abc123"), "lr_abc123");
        assert_eq!(kv_key("a.b c"), format!("x-{}", hex::encode("a.b c")));
        assert_eq!(kv_key(""), "x-");
    }

    #[test]
    fn lease_liveness() {
        let mut e = LeadEntry::claimed("me", Duration::from_secs(10));
        let now = now_ms();
        assert!(e.lease_live(now));
        assert!(!e.lease_live(now + 11_000));
        e.state = LeadState::Pending;
        assert!(!e.lease_live(now));
    }
}
