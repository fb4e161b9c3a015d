//! How lines become leads: raw vendor payloads through the edge's own admission step
//! (`intake::admit`), envelope lines checked and re-keyed. Pure, so it is unit-tested without
//! NATS.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ImportError, LineError};
use super::options::ImportOptions;
use crate::config::Config;
use crate::intake::admit::SenderMapping;
use crate::intake::envelope::{lead_key, LeadEnvelope};
use crate::intake::mapping::BodyFormat;
use crate::intake::Grouping;
use crate::queue::message::LeadMessage;

/// How lines are turned into leads; pure, so it is unit-tested without NATS.
pub(super) struct Plan {
    pub(super) senders: HashMap<String, SenderMapping>,
    pub(super) raw_sender: Option<String>,
    pub(super) received_at_pointer: Option<String>,
    pub(super) max_body_bytes: u64,
}

/// A line ready to publish.
#[derive(Debug)]
pub(super) struct Lead {
    pub(super) message: LeadMessage,
    pub(super) dropped: Vec<String>,
}

/// The envelope form as found in files: optional where the importer can fill in.
#[derive(Deserialize)]
pub(super) struct EnvelopeLine {
    pub(super) sender: String,
    pub(super) fields: Map<String, Value>,
    pub(super) source_event_id: String,
    #[serde(default)]
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) received_at: Option<String>,
    #[serde(default)]
    pub(super) key: Option<String>,
}

impl Plan {
    pub(super) fn new(cfg: &Config, opts: &ImportOptions) -> Result<Plan, ImportError> {
        let mut senders = HashMap::new();
        for (index, s) in cfg.senders.iter().enumerate() {
            let mapping = SenderMapping::new(s).map_err(|e| ImportError::SenderConfig {
                index,
                key: e.key,
                source: e.source,
            })?;
            senders.insert(s.id.clone(), mapping);
        }
        if let Some(id) = &opts.sender {
            if !senders.contains_key(id) {
                return Err(ImportError::UnknownSender(id.clone()));
            }
        }
        if let Some(p) = &opts.received_at_pointer {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(ImportError::InvalidOption {
                    option: "--received-at-field",
                    message: format!("`{p}` is not a JSON pointer (they start with '/')"),
                });
            }
        }
        Ok(Plan {
            senders,
            raw_sender: opts.sender.clone(),
            received_at_pointer: opts.received_at_pointer.clone(),
            max_body_bytes: cfg.intake.max_body_bytes,
        })
    }

    /// Maps one line (without its terminator). `now` is the import-time `received_at`.
    pub(super) fn lead(
        &self,
        grouping: &Grouping,
        line: &[u8],
        now: &str,
    ) -> Result<Lead, LineError> {
        let value: Value = serde_json::from_slice(line).map_err(LineError::NotJson)?;
        let is_envelope = value
            .as_object()
            .is_some_and(|o| o.contains_key("sender") && o.contains_key("fields"));
        if is_envelope {
            return self.envelope_lead(grouping, value, now);
        }
        let id = self.raw_sender.as_deref().ok_or(LineError::NoSender)?;
        let sender = self
            .senders
            .get(id)
            .ok_or_else(|| LineError::UnknownSender(id.to_string()))?;
        // A JSON string line is the body itself; anything else is the body as written.
        let body: &[u8] = match &value {
            Value::String(s) => s.as_bytes(),
            _ if sender.mapper().format() == BodyFormat::Form => {
                return Err(LineError::FormNeedsString(sender.id().to_string()))
            }
            _ => line,
        };
        if body.len() as u64 > self.max_body_bytes {
            return Err(LineError::BodyTooLarge(self.max_body_bytes));
        }
        let doc = sender
            .mapper()
            .parse(body)
            .map_err(|source| LineError::Body {
                sender: sender.id().to_string(),
                source,
            })?;
        // No request, so no headers: the edge's own step, signature check aside.
        let mut admitted = sender.admit(Some(grouping), None, &doc, body, now.to_string())?;
        // After the event id, so a line missing both is rejected for its event id.
        if let Some(p) = &self.received_at_pointer {
            admitted.envelope.received_at = received_at_from(&doc, p)?;
        }
        Ok(Lead {
            message: admitted.into_message(),
            dropped: Vec::new(),
        })
    }

    pub(super) fn envelope_lead(
        &self,
        grouping: &Grouping,
        value: Value,
        now: &str,
    ) -> Result<Lead, LineError> {
        let e: EnvelopeLine = serde_json::from_value(value).map_err(LineError::EnvelopeShape)?;
        let sender = self
            .senders
            .get(&e.sender)
            .ok_or_else(|| LineError::UnknownSender(e.sender.clone()))?;
        if e.source_event_id.trim().is_empty() {
            return Err(LineError::Envelope("`source_event_id` is empty".into()));
        }
        let schema = match e.schema {
            Some(s) if !header_safe(&s) => {
                return Err(LineError::Envelope(
                    "`schema` must be printable ASCII without spaces".into(),
                ))
            }
            Some(s) => s,
            None => sender.schema().to_string(),
        };
        let received_at = match e.received_at {
            Some(r) => {
                if chrono::DateTime::parse_from_rfc3339(&r).is_err() {
                    return Err(LineError::Envelope(format!(
                        "`received_at` `{r}` is not an RFC 3339 timestamp"
                    )));
                }
                r
            }
            None => now.to_string(),
        };
        let (fields, dropped) = sender.allowlist(e.fields);
        let (group, partition) = grouping.locate(&fields);
        let key = match e.key {
            Some(k) if k.len() > 256 || !header_safe(&k) => {
                return Err(LineError::Envelope(
                    "`key` must be 1-256 printable ASCII characters without spaces".into(),
                ))
            }
            Some(k) => k,
            None => lead_key(sender.id(), &e.source_event_id, &fields),
        };
        let envelope = LeadEnvelope {
            schema,
            sender: sender.id().to_string(),
            source_event_id: e.source_event_id,
            received_at,
            key,
            fields,
        };
        Ok(Lead {
            message: LeadMessage::new(envelope, group, partition),
            dropped,
        })
    }
}

pub(super) fn received_at_from(doc: &Value, pointer: &str) -> Result<String, LineError> {
    let err = |message: String| LineError::ReceivedAt {
        pointer: pointer.to_string(),
        message,
    };
    let raw = match doc.pointer(pointer) {
        Some(Value::String(s)) => s,
        Some(_) => return Err(err("not a string".into())),
        None => return Err(err("missing in this line".into())),
    };
    let t = crate::timestamp::parse(raw)
        .ok_or_else(|| err(format!("`{raw}` is not an RFC 3339 timestamp")))?;
    Ok(crate::timestamp::format(t))
}

/// Safe as a NATS header value (and what our keys and schema names look like anyway).
pub(super) fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

pub(super) fn import_time() -> String {
    crate::timestamp::now()
}
