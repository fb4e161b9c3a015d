//! The edge's step from a sender's parsed payload to the lead it stores: the event id, the
//! allowlisted fields, the idempotency key and the group that files the lead. `leadrouter
//! import` takes the same step, so an imported payload becomes exactly the lead the edge would
//! have made of it.

use serde_json::{Map, Value};

use super::envelope::{body_event_id, lead_key, LeadEnvelope};
use super::mapping::{self, CompiledPath, Mapper, MappingError};
use super::schemes::HeaderSource;
use super::Grouping;
use crate::config::EventIdSource as ConfiguredEventId;
use crate::config::SenderConfig;
use crate::queue::message::LeadMessage;

enum EventIdSource {
    Header(String),
    Pointer(String),
    Path(CompiledPath),
    BodyHash,
}

/// What a sender's payloads are made into (the signature half is the edge's `Verifier`).
pub struct SenderMapping {
    id: String,
    schema: String,
    mapper: Mapper,
    event_id: EventIdSource,
}

/// A sender whose mapping cannot be built; `key` is under `senders[i].`.
#[derive(Debug, thiserror::Error)]
#[error("sender setting `{key}`")]
pub struct MappingSetupError {
    pub key: &'static str,
    #[source]
    pub source: MappingError,
}

#[derive(Debug, thiserror::Error)]
#[error("no event id where sender `{sender}` is configured to carry one")]
pub struct MissingEventId {
    pub sender: String,
}

/// A lead ready to be published, and where it goes.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub envelope: LeadEnvelope,
    /// The keyed group and partition; `None` at an edge, which leaves both to the hub.
    pub placed: Option<(String, u16)>,
}

impl Admitted {
    pub fn into_message(self) -> LeadMessage {
        match self.placed {
            Some((group, partition)) => LeadMessage::new(self.envelope, group, partition),
            None => LeadMessage::unplaced(self.envelope),
        }
    }
}

impl SenderMapping {
    pub fn new(s: &SenderConfig) -> Result<SenderMapping, MappingSetupError> {
        let mapper = Mapper::new(&s.mapping).map_err(|source| MappingSetupError {
            key: "mapping",
            source,
        })?;
        let event_id = match &s.event_id {
            None => EventIdSource::BodyHash,
            Some(ConfiguredEventId::Header(h)) => EventIdSource::Header(h.clone()),
            Some(ConfiguredEventId::Pointer(p)) => EventIdSource::Pointer(p.clone()),
            Some(ConfiguredEventId::Path(p)) => {
                EventIdSource::Path(mapping::compile_path(p).map_err(|source| {
                    MappingSetupError {
                        key: "event_id.path",
                        source,
                    }
                })?)
            }
        };
        Ok(SenderMapping {
            id: s.id.clone(),
            schema: s.schema.clone(),
            mapper,
            event_id,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// An already-mapped lead's fields (an envelope from a file) through the same allowlist,
    /// with the names it dropped: unmapped PII never reaches storage, whoever mapped it.
    pub fn allowlist(&self, mut fields: Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
        let mut dropped = Vec::new();
        fields.retain(|name, _| {
            let keep = self.mapper.field_names().any(|n| n == name);
            if !keep {
                dropped.push(name.clone());
            }
            keep
        });
        (fields, dropped)
    }

    /// The lead made of one payload: `doc` is `body` parsed by [`SenderMapping::mapper`], and
    /// `headers` the request's. Without a request (an import) a sender whose event id is a
    /// header gets the body hash instead, as senders without an event id do.
    pub fn admit(
        &self,
        grouping: Option<&Grouping>,
        headers: Option<&dyn HeaderSource>,
        doc: &Value,
        body: &[u8],
        received_at: String,
    ) -> Result<Admitted, MissingEventId> {
        let source_event_id = self.event_id(headers, doc, body)?;
        let fields = self.mapper.map(doc);
        let key = lead_key(&self.id, &source_event_id, &fields);
        let placed = grouping.map(|g| g.locate(&fields));
        Ok(Admitted {
            envelope: LeadEnvelope {
                schema: self.schema.clone(),
                sender: self.id.clone(),
                source_event_id,
                received_at,
                key,
                fields,
            },
            placed,
        })
    }

    fn event_id(
        &self,
        headers: Option<&dyn HeaderSource>,
        doc: &Value,
        body: &[u8],
    ) -> Result<String, MissingEventId> {
        let found = match (&self.event_id, headers) {
            (EventIdSource::BodyHash, _) | (EventIdSource::Header(_), None) => {
                return Ok(body_event_id(body))
            }
            (EventIdSource::Header(h), Some(headers)) => headers.header(h).map(str::to_string),
            (EventIdSource::Pointer(p), _) => doc.pointer(p).and_then(scalar_string),
            (EventIdSource::Path(p), _) => mapping::select_first(doc, p).and_then(scalar_string),
        };
        match found {
            Some(id) if !id.trim().is_empty() => Ok(id),
            _ => Err(MissingEventId {
                sender: self.id.clone(),
            }),
        }
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
