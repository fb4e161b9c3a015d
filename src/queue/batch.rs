//! Atomic batch publish (ADR-50): up to 1000 messages stored all or none, acknowledged once.
//!
//! This is what makes a group commit possible on one node. With `sync_interval: always`, a
//! single publish costs one fsync; an atomic batch is staged, then written to the stream and
//! fsynced once, and its one PubAck is sent after that fsync (strace on nats-server 2.15.1: 100
//! messages, 4 fsyncs). async-nats 0.51 has the header names and the stream flag but no
//! publisher, and jetstream-extra 0.3 (which has one) is built on async-nats 0.48, so the wire
//! protocol is written out here. It is small:
//! - every message carries `Nats-Batch-Id` and `Nats-Batch-Sequence` (1-based);
//! - the first one carries a reply subject, so the server can refuse the batch early (its
//!   answer is not awaited: one round trip per batch is the point);
//! - the last one carries `Nats-Batch-Commit: 1` and is sent as a request, whose answer is the
//!   batch's PubAck or the reason nothing was stored.
//!
//! One message id already in the stream's duplicate window, or repeated inside the batch,
//! rejects the whole batch (10201): the caller decides what to do then (the group committer
//! falls back to single publishes).

use std::time::Duration;

use async_nats::header::NATS_BATCH_SEQUENCE;
use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde::Deserialize;

/// The server's limit on messages per atomic batch.
pub const MAX_BATCH: usize = 1000;

/// JetStream's error code for "atomic publish batch contains duplicate message id".
pub const ERR_DUPLICATE_MSG_ID: u64 = 10201;

/// One message of a batch, as it would be published on its own.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The batch's PubAck: the stream and the sequence of its last message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    pub stream: String,
    pub last_sequence: u64,
    pub count: u64,
}

impl BatchAck {
    /// The stream sequence of the batch's `i`-th message (0-based): a batch is stored
    /// contiguously.
    pub fn sequence_of(&self, i: usize) -> u64 {
        (self.last_sequence + 1).saturating_sub(self.count) + i as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("an atomic batch holds 1 to {MAX_BATCH} messages, not {0}")]
    Size(usize),
    /// Nothing was stored: one message id was already stored within the duplicate window, or
    /// appears twice in the batch.
    #[error("JetStream refused the batch: it holds a message id already stored or repeated in it (error {ERR_DUPLICATE_MSG_ID}); nothing was stored")]
    DuplicateMsgId,
    /// Nothing was stored, for the reason JetStream gives (a stream without
    /// `allow_atomic_publish` says so with 10174).
    #[error("JetStream refused the batch: {description} (error {err_code})")]
    Refused { err_code: u64, description: String },
    #[error("publishing message {sequence} of the batch failed")]
    Publish {
        sequence: usize,
        #[source]
        source: async_nats::PublishError,
    },
    /// The commit request got no answer (no responders, a lost connection): whether the batch
    /// was stored is unknown, so it must be treated as not stored.
    #[error("the batch commit got no answer")]
    Commit(#[source] async_nats::RequestError),
    #[error("JetStream did not acknowledge the batch within {0:?}")]
    Timeout(Duration),
    #[error("JetStream answered the batch commit with something other than its PubAck: {0}")]
    BadAck(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Answer {
    Err { error: ApiError },
    Ack(AckBody),
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct AckBody {
    stream: String,
    seq: u64,
    #[serde(default)]
    batch: String,
    #[serde(default)]
    count: u64,
}

/// A batch id: unique per batch and at most 64 characters (the server's limit).
pub fn new_batch_id() -> String {
    format!("lr{:032x}", rand::random::<u128>())
}

/// Publishes `messages` as one atomic batch under `batch_id` and waits up to `timeout` for its
/// PubAck. `Ok` means every message is stored; any error means none is, or (for
/// [`BatchError::Commit`] and [`BatchError::Timeout`]) that the caller cannot know.
pub async fn publish(
    client: &async_nats::Client,
    batch_id: &str,
    messages: &[Outbound],
    timeout: Duration,
) -> Result<BatchAck, BatchError> {
    let n = messages.len();
    if n == 0 || n > MAX_BATCH {
        return Err(BatchError::Size(n));
    }
    let id = HeaderValue::from(batch_id);
    let work = async {
        let mut last = None;
        for (i, m) in messages.iter().enumerate() {
            let seq = i + 1;
            // The caller keeps its messages as they were: a refused batch is re-sent one by one.
            let mut headers = m.headers.clone();
            headers.insert(NATS_BATCH_ID, id.clone());
            headers.insert(
                NATS_BATCH_SEQUENCE,
                HeaderValue::from(seq.to_string().as_str()),
            );
            if seq == n {
                headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
                last = Some((m, headers));
                break;
            }
            let sent = if seq == 1 {
                // The server wants the batch's first message to carry a reply subject; nothing
                // listens on it, so a refusal shows up at the commit instead of costing a
                // round trip here.
                client
                    .publish_with_reply_and_headers(
                        m.subject.clone(),
                        client.new_inbox(),
                        headers,
                        m.payload.clone(),
                    )
                    .await
            } else {
                client
                    .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                    .await
            };
            sent.map_err(|source| BatchError::Publish {
                sequence: seq,
                source,
            })?;
        }
        let (commit, headers) = last.ok_or(BatchError::Size(0))?;
        let reply = client
            .request_with_headers(commit.subject.clone(), headers, commit.payload.clone())
            .await
            .map_err(BatchError::Commit)?;
        parse_answer(&reply.payload, batch_id, n)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(BatchError::Timeout(timeout)),
    }
}

fn parse_answer(body: &[u8], batch_id: &str, n: usize) -> Result<BatchAck, BatchError> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| BatchError::BadAck(String::from_utf8_lossy(body).into_owned()))?;
    match answer {
        Answer::Err { error } if error.err_code == ERR_DUPLICATE_MSG_ID => {
            Err(BatchError::DuplicateMsgId)
        }
        Answer::Err { error } => Err(BatchError::Refused {
            err_code: error.err_code,
            description: error.description,
        }),
        Answer::Ack(ack) if ack.batch != batch_id || ack.count != n as u64 => {
            Err(BatchError::BadAck(format!(
                "batch `{}` of {} messages acknowledged as batch `{}` of {}",
                batch_id, n, ack.batch, ack.count
            )))
        }
        Answer::Ack(ack) => Ok(BatchAck {
            stream: ack.stream,
            last_sequence: ack.seq,
            count: ack.count,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_names_each_message_sequence() {
        let ack = parse_answer(
            br#"{"stream":"LEADS","seq":12,"batch":"b1","count":3}"#,
            "b1",
            3,
        )
        .unwrap();
        assert_eq!(ack.last_sequence, 12);
        assert_eq!(
            (0..3).map(|i| ack.sequence_of(i)).collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
    }

    #[test]
    fn duplicate_and_other_refusals_are_told_apart() {
        let dup = br#"{"error":{"code":400,"err_code":10201,"description":"atomic publish batch contains duplicate message id"}}"#;
        assert!(matches!(
            parse_answer(dup, "b1", 2),
            Err(BatchError::DuplicateMsgId)
        ));
        let off = br#"{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"}}"#;
        match parse_answer(off, "b1", 2) {
            Err(BatchError::Refused {
                err_code,
                description,
            }) => {
                assert_eq!(err_code, 10174);
                assert!(description.contains("disabled"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_ack_for_another_batch_is_not_taken() {
        let r = parse_answer(
            br#"{"stream":"LEADS","seq":3,"batch":"other","count":3}"#,
            "b1",
            3,
        );
        assert!(matches!(r, Err(BatchError::BadAck(_))), "{r:?}");
        assert!(matches!(
            parse_answer(b"not json", "b1", 1),
            Err(BatchError::BadAck(_))
        ));
    }

    #[test]
    fn batch_ids_fit_the_server_limit_and_differ() {
        let a = new_batch_id();
        assert!(a.len() <= 64);
        assert_ne!(a, new_batch_id());
    }
}
