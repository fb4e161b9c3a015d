//! The edge's publisher: one lead in, its PubAck (or the reason there is none) out, within a
//! deadline. Under group commit the leads of concurrent requests share atomic batches
//! ([`group_commit`](super::group_commit)); each caller still gets its own answer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::batch::{BatchError, Outbound};
use super::group_commit::GroupCommitter;
use crate::config::GroupCommitConfig;

/// Publishes leads and waits for the PubAck within a deadline.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    timeout: Duration,
    group: Option<GroupCommitter>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("JetStream did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("JetStream publish failed")]
    Nats(#[source] jetstream::context::PublishError),
    /// The atomic batch that held this lead stored nothing (the error is the batch's, shared by
    /// every lead in it).
    #[error("the atomic batch holding this lead was not stored")]
    Batch(#[source] Arc<BatchError>),
    /// The group committer is gone (the service is stopping).
    #[error("the publisher is shutting down")]
    Closed,
}

impl PublishFailure {
    /// The stream is at its limits and refuses new messages (`DiscardNew`): an edge's store
    /// sized for an outage that lasted longer. nats-server says so in words only (10077 for
    /// messages; bytes have their own code), so the words are what is matched.
    pub fn is_store_full(&self) -> bool {
        let text = crate::error_chain::chain(self);
        ["maximum messages exceeded", "maximum bytes exceeded"]
            .iter()
            .any(|m| text.contains(m))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    pub duplicate: bool,
}

impl Publisher {
    /// One publish per lead.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client);
        Publisher {
            js,
            timeout,
            group: None,
        }
    }

    /// Leads that arrive while a commit is in flight are coalesced into atomic batches.
    /// `duplicate_window` is the stream's: how long a stored id is known to be a duplicate.
    pub fn with_group_commit(
        mut self,
        cfg: &GroupCommitConfig,
        duplicate_window: Duration,
    ) -> Self {
        self.group = Some(GroupCommitter::start(
            self.js.clone(),
            cfg.clone(),
            self.timeout,
            duplicate_window,
        ));
        self
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn group_commit(&self) -> bool {
        self.group.is_some()
    }

    pub fn is_connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// Stores one encoded message ([`message`](super::message)); `Ok` means JetStream persisted
    /// it (or already had it under its `Nats-Msg-Id`: `duplicate`).
    pub async fn publish(
        &self,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Stored, PublishFailure> {
        // `traceparent` of the current (publish) span: the handler continues this trace.
        crate::telemetry::traces::inject_current(&mut headers);
        let msg = Outbound {
            subject,
            headers,
            payload,
        };
        match &self.group {
            None => publish_one(&self.js, msg, self.timeout).await,
            Some(g) => match tokio::time::timeout(self.timeout, g.publish(msg)).await {
                Ok(r) => r,
                Err(_) => Err(PublishFailure::Timeout(self.timeout)),
            },
        }
    }
}

/// One message, one PubAck, within `timeout`.
pub(super) async fn publish_one(
    js: &jetstream::Context,
    msg: Outbound,
    timeout: Duration,
) -> Result<Stored, PublishFailure> {
    let fut = async {
        let ack = js
            .publish_with_headers(msg.subject, msg.headers, msg.payload)
            .await
            .map_err(PublishFailure::Nats)?;
        ack.await.map_err(PublishFailure::Nats)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(ack)) => Ok(Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(PublishFailure::Timeout(timeout)),
    }
}
