//! `kind = "nats"`: publish the record as JSON to a subject (`{sender}` is replaced by the
//! lead's sender id), with `Nats-Msg-Id: {key}` so a JetStream stream capturing the subject
//! dedupes redeliveries within its duplicate window.
//!
//! `jetstream = true` publishes through JetStream and waits for the PubAck (a missing ack within
//! `timeout` is a transient error; a duplicate ack is success). Otherwise a core publish plus a
//! flush: "the server has it", no persistence promise.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    class, timeout_or_default, Delivered, LeadRecord, Sink, SinkBuildError, SinkContext, SinkError,
};

pub const SENDER_PLACEHOLDER: &str = "{sender}";

/// The keys of a `kind = "nats"` sink, besides `name`, `kind` and `ordering`. Unset keys take
/// their defaults in [`NatsSpec::from_config`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Required; `{sender}` is replaced by the lead's sender id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Publish via JetStream and await the PubAck; default false (core publish + flush).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<bool>,
    /// Deadline of the flush or the PubAck. Default 5s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Validated `nats` sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSpec {
    pub subject: String,
    pub jetstream: bool,
    pub timeout: Duration,
}

impl NatsSpec {
    pub(crate) fn from_config(
        index: usize,
        cfg: &NatsSinkConfig,
    ) -> Result<NatsSpec, SinkBuildError> {
        let timeout = timeout_or_default(index, cfg.timeout)?;
        let subject = cfg
            .subject
            .clone()
            .ok_or_else(|| SinkBuildError::new(index, "subject", "required for kind `nats`"))?;
        let sample = subject.replace(SENDER_PLACEHOLDER, "sender");
        if sample.contains(['{', '}']) {
            return Err(SinkBuildError::new(
                index,
                "subject",
                format!("`{subject}`: the only placeholder is {SENDER_PLACEHOLDER}"),
            ));
        }
        check_subject(&sample)
            .map_err(|why| SinkBuildError::new(index, "subject", format!("`{subject}`: {why}")))?;
        Ok(NatsSpec {
            subject,
            jetstream: cfg.jetstream.unwrap_or(false),
            timeout,
        })
    }
}

/// A subject we may publish to: dot-separated non-empty tokens, no wildcards, no whitespace.
fn check_subject(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty subject");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a subject has no whitespace");
    }
    if s.contains(['*', '>']) {
        return Err("cannot publish to a wildcard subject");
    }
    if s.split('.').any(str::is_empty) {
        return Err("empty token (leading, trailing or double dot)");
    }
    Ok(())
}

pub struct NatsSink {
    name: String,
    subject: String,
    timeout: Duration,
    client: async_nats::Client,
    /// Set when `jetstream = true`.
    js: Option<async_nats::jetstream::Context>,
}

impl NatsSink {
    pub(crate) fn new(
        index: usize,
        name: &str,
        spec: NatsSpec,
        ctx: &SinkContext,
    ) -> Result<NatsSink, SinkBuildError> {
        let client = ctx.nats.clone().ok_or_else(|| {
            SinkBuildError::new(
                index,
                "",
                "kind `nats` needs a NATS connection, none was given",
            )
        })?;
        let js = spec.jetstream.then(|| {
            let mut js = async_nats::jetstream::new(client.clone());
            js.set_timeout(spec.timeout);
            js
        });
        Ok(NatsSink {
            name: name.to_string(),
            subject: spec.subject,
            timeout: spec.timeout,
            client,
            js,
        })
    }

    fn subject_for(&self, lead: &LeadRecord) -> Result<String, SinkError> {
        let s = self.subject.replace(SENDER_PLACEHOLDER, &lead.sender);
        check_subject(&s).map_err(|why| {
            SinkError::permanent(class::CONFIG, format!("subject for this sender: {why}"))
        })?;
        Ok(s)
    }
}

fn headers(lead: &LeadRecord) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(crate::queue::message::header::MSG_ID, lead.key.as_str());
    h.insert(
        crate::queue::message::header::RECEIVED_AT,
        lead.received_at.as_str(),
    );
    h.insert(crate::queue::message::header::SCHEMA, lead.schema.as_str());
    // The lead's sink span, so a consumer of the subject continues the lead's trace.
    crate::telemetry::traces::inject_current(&mut h);
    h
}

fn classify_js(err: async_nats::jetstream::context::PublishError) -> SinkError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    match err.kind() {
        K::TimedOut => SinkError::transient(class::TIMEOUT, "no PubAck in time"),
        K::StreamNotFound => {
            SinkError::transient(class::NO_STREAM, "no stream captures the subject")
        }
        K::MaxPayloadExceeded => {
            SinkError::permanent(class::TOO_LARGE, "record is over the server's max_payload")
        }
        K::WrongLastMessageId | K::WrongLastSequence => {
            SinkError::permanent(class::CONFIG, format!("publish refused: {}", err.kind()))
        }
        K::BrokenPipe | K::MaxAckPending | K::Other => {
            SinkError::transient(class::CONNECT, "publish failed").with_source(err)
        }
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        lead.require_key()?;
        let subject = self.subject_for(lead)?;
        let payload = Bytes::from(lead.to_json()?);
        let timeout = self.timeout;
        match &self.js {
            Some(js) => {
                let ack = tokio::time::timeout(timeout, async {
                    js.publish_with_headers(subject, headers(lead), payload)
                        .await?
                        .await
                })
                .await
                .map_err(|_| SinkError::transient(class::TIMEOUT, "no PubAck in time"))?
                .map_err(classify_js)?;
                if ack.duplicate {
                    tracing::debug!(sink = %self.name, key = %lead.key, "stream already held this key");
                }
                Ok(Delivered {
                    persisted_at: SystemTime::now(),
                    remote_id: Some(format!("{}:{}", ack.stream, ack.sequence)),
                    created: None,
                })
            }
            None => {
                self.client
                    .publish_with_headers(subject, headers(lead), payload)
                    .await
                    .map_err(|e| {
                        SinkError::transient(class::CONNECT, "publish failed").with_source(e)
                    })?;
                tokio::time::timeout(timeout, self.client.flush())
                    .await
                    .map_err(|_| SinkError::transient(class::TIMEOUT, "flush timed out"))?
                    .map_err(|e| {
                        SinkError::transient(class::CONNECT, "flush failed").with_source(e)
                    })?;
                Ok(Delivered {
                    persisted_at: SystemTime::now(),
                    remote_id: None,
                    created: None,
                })
            }
        }
    }
}
