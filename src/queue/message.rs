//! The LEADS message: its subject, our headers and its body, the [`LeadEnvelope`] JSON. Every
//! writer of a lead (the edge, `import`, a DLQ replay, the re-partitioner, the test rig) encodes
//! it here and every reader (the dispatcher, the handler, the crash net, the re-partitioner)
//! decodes it here, so the format has one owner. [`header`] also names the headers of our other
//! messages (DLQ entries, the NATS sink's records), so each wire header of ours is spelled once.
//!
//! Names, values and subjects are an external contract: operators' `nats` scripts and
//! dashboards read them, and routers of another version read the leads this one writes.
//!
//! Decoding requires a lead subject and an envelope body, and no header: the stream also holds
//! leads published by hand (`nats pub leads.in.demo`), by older versions, and re-partitioned
//! copies of those, which carry some of our headers or none. Each reader decides what an absent
//! header means (the dispatcher computes the group, a DLQ entry goes without it), as before this
//! module existed.

use async_nats::HeaderMap;
use bytes::Bytes;

use super::partition;
use crate::intake::envelope::LeadEnvelope;

/// Header names. The `Leadrouter-` prefix marks ours; the others are standards we set.
pub mod header {
    /// JetStream's dedupe id (`async_nats::header::NATS_MESSAGE_ID`), spelled out for lookups.
    /// The lead key from the edge and `import`; `replay:{id}:{nanos}` on a replay;
    /// `lr-repartition-{seq}` on a re-partitioned copy; `LEADS:{seq}` on a DLQ entry.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// When the edge accepted the lead (RFC 3339, milliseconds, UTC).
    pub const RECEIVED_AT: &str = "Leadrouter-Received-At";
    pub const SCHEMA: &str = "Leadrouter-Schema";
    /// The per-lead FIFO group, keyed (HMAC of the normalized email); the partition's hash input.
    pub const GROUP: &str = "Leadrouter-Group";
    /// The DLQ entry id a replayed lead came from; its presence is what makes a lead a replay.
    pub const REPLAY_OF: &str = "Leadrouter-Replay-Of";
    pub const REPLAY_REASON: &str = "Leadrouter-Replay-Reason";
    /// The original lead's `traceparent` on a replay, so the new trace links back to the old.
    pub const REPLAY_TRACEPARENT: &str = "Leadrouter-Replay-Traceparent";
    /// The file an imported lead came from, so logs and handlers can tell imports apart.
    pub const IMPORT: &str = "Leadrouter-Import";
    /// W3C Trace Context (also read from vendors' HTTP requests); set only while traces are
    /// exported.
    pub const TRACEPARENT: &str = "traceparent";
    /// Set by nats-server on a sourced message: the source, its sequence there, the transform
    /// and the original subject (`LEADS_EDGE:<hash> 7 leads.edge.eu1.> leads.in.> leads.edge.eu1.demo <id>`).
    pub const STREAM_SOURCE: &str = "Nats-Stream-Source";
    /// The edge that took the lead, on a lead an edge stored (set when the hub files it).
    pub const EDGE: &str = "Leadrouter-Edge";

    /// A DLQ entry's own headers. It also carries the lead's [`RECEIVED_AT`](super::RECEIVED_AT),
    /// [`SCHEMA`](super::SCHEMA), [`GROUP`](super::GROUP) and [`TRACEPARENT`](super::TRACEPARENT).
    pub mod dlq {
        /// The key that sealed the payload, readable without opening it.
        pub const KEY_ID: &str = "Leadrouter-Dlq-Key-Id";
        pub const REASON: &str = "Leadrouter-Dlq-Reason";
        pub const LAST_ERROR: &str = "Leadrouter-Dlq-Last-Error";
        pub const ATTEMPTS: &str = "Leadrouter-Dlq-Attempts";
        pub const ORIGINAL_SEQ: &str = "Leadrouter-Original-Seq";
        pub const SENDER: &str = "Leadrouter-Sender";
        pub const KEY: &str = "Leadrouter-Key";
        pub const FIRST_ATTEMPT: &str = "Leadrouter-First-Attempt-At";
        pub const LAST_ATTEMPT: &str = "Leadrouter-Last-Attempt-At";
        /// The masked preview, a JSON array of lines, readable without the key.
        pub const PREVIEW: &str = "Leadrouter-Dlq-Preview";
    }
}

/// Why a stored message is not a lead.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("`{subject}` is not a lead subject (`leads.in.{{sender}}` or `leads.in.{{sender}}.{{partition}}`)")]
    Subject { subject: String },
    #[error("not a lead envelope")]
    Body {
        #[source]
        source: serde_json::Error,
    },
}

/// Serializing an envelope cannot fail in practice (strings and JSON values only), but a
/// writer must not publish a body it could not make.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EncodeError(#[from] serde_json::Error);

/// Our headers of a LEADS message, typed. All optional (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadHeaders {
    pub msg_id: Option<String>,
    pub received_at: Option<String>,
    pub schema: Option<String>,
    pub group: Option<String>,
    /// Written at publish time by `telemetry::traces` (it needs the live span), so writers
    /// leave it `None`; decoded for the DLQ entry, which keeps it for a replay's trace link.
    pub traceparent: Option<String>,
    pub import: Option<String>,
    pub replay: Option<Replay>,
}

/// What a replay adds to the lead it republishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The DLQ entry id.
    pub of: String,
    pub reason: Option<String>,
    /// The original lead's `traceparent` (only while traces are exported).
    pub traceparent: Option<String>,
}

impl LeadHeaders {
    /// The headers the edge sets on a lead (and `import`, which adds [`LeadHeaders::import`]).
    pub fn of_lead(envelope: &LeadEnvelope, group: String) -> LeadHeaders {
        LeadHeaders {
            msg_id: Some(envelope.key.clone()),
            received_at: Some(envelope.received_at.clone()),
            schema: Some(envelope.schema.clone()),
            group: Some(group),
            ..LeadHeaders::default()
        }
    }

    /// Ours among `headers`; other headers (`tracestate`, a hand publisher's own) are left to
    /// whoever needs them.
    pub fn read(headers: Option<&HeaderMap>) -> LeadHeaders {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        LeadHeaders {
            msg_id: get(header::MSG_ID),
            received_at: get(header::RECEIVED_AT),
            schema: get(header::SCHEMA),
            group: get(header::GROUP),
            traceparent: get(header::TRACEPARENT),
            import: get(header::IMPORT),
            // The reason and the old trace mean nothing without the entry they came from.
            replay: get(header::REPLAY_OF).map(|of| Replay {
                of,
                reason: get(header::REPLAY_REASON),
                traceparent: get(header::REPLAY_TRACEPARENT),
            }),
        }
    }

    /// The set ones; an unset one is absent, never empty.
    fn to_map(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let replay = self.replay.as_ref();
        let set = [
            (header::MSG_ID, self.msg_id.as_deref()),
            (header::RECEIVED_AT, self.received_at.as_deref()),
            (header::SCHEMA, self.schema.as_deref()),
            (header::GROUP, self.group.as_deref()),
            (header::TRACEPARENT, self.traceparent.as_deref()),
            (header::IMPORT, self.import.as_deref()),
            (header::REPLAY_OF, replay.map(|r| r.of.as_str())),
            (
                header::REPLAY_REASON,
                replay.and_then(|r| r.reason.as_deref()),
            ),
            (
                header::REPLAY_TRACEPARENT,
                replay.and_then(|r| r.traceparent.as_deref()),
            ),
        ];
        for (name, value) in set {
            if let Some(v) = value {
                h.insert(name, v);
            }
        }
        h
    }
}

/// `leads.in.{sender}.{partition}`, or the legacy `leads.in.{sender}` without a partition
/// (which the `router` consumer re-partitions).
pub fn subject(sender: &str, partition: Option<u16>) -> String {
    match partition {
        Some(p) => partition::lead_subject(sender, p),
        None => partition::legacy_subject(sender),
    }
}

pub fn decode_envelope(payload: &[u8]) -> Result<LeadEnvelope, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError::Body { source })
}

/// A message around a body kept as stored: a replay and a re-partitioned copy republish the
/// bytes they found (envelope or not), so nothing about the lead changes on the way.
pub fn encode_stored(
    sender: &str,
    partition: Option<u16>,
    headers: &LeadHeaders,
    body: Bytes,
) -> (String, HeaderMap, Bytes) {
    (subject(sender, partition), headers.to_map(), body)
}

/// The headers of a re-partitioned copy: all of the original's, including ones we do not know
/// (`tracestate`, a hand publisher's own), but a new id (the stream's dedupe window would
/// swallow a copy under the old one), the keyed group, and no `Nats-Expected-*` expectations.
pub fn repartitioned_headers(original: Option<&HeaderMap>, group: &str, msg_id: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(h) = original {
        for (name, values) in h.iter() {
            let n: &str = name.as_ref();
            // The server refuses a publish carrying `Nats-Stream-Source` (10227): it is its
            // own record of where a sourced message came from. The edge it names is kept in
            // `Leadrouter-Edge` instead.
            if n.eq_ignore_ascii_case(header::MSG_ID)
                || n.starts_with("Nats-Expected")
                || n.eq_ignore_ascii_case(header::STREAM_SOURCE)
                || n.eq_ignore_ascii_case(header::GROUP)
            {
                continue;
            }
            for v in values {
                out.append(n, v.as_str());
            }
        }
    }
    if let Some(edge) = edge_of_headers(original) {
        out.insert(header::EDGE, edge.as_str());
    }
    out.insert(header::GROUP, group);
    out.insert(header::MSG_ID, msg_id);
    out
}

/// The edge a sourced message came from, by the original subject its `Nats-Stream-Source`
/// header names; `None` for a lead stored at the hub.
pub fn edge_of_headers(headers: Option<&HeaderMap>) -> Option<String> {
    let source = headers?.get(header::STREAM_SOURCE)?.as_str();
    source
        .split_whitespace()
        .find_map(partition::edge_of)
        .map(str::to_string)
}

/// One lead in `LEADS`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadMessage {
    /// The subject's sender token; the envelope's sender for everything we publish.
    pub sender: String,
    /// `None` on the legacy subject.
    pub partition: Option<u16>,
    pub headers: LeadHeaders,
    pub envelope: LeadEnvelope,
}

impl LeadMessage {
    /// A lead as the edge stores it: in its partition, with [`LeadHeaders::of_lead`].
    pub fn new(envelope: LeadEnvelope, group: String, partition: u16) -> LeadMessage {
        LeadMessage {
            sender: envelope.sender.clone(),
            partition: Some(partition),
            headers: LeadHeaders::of_lead(&envelope, group),
            envelope,
        }
    }

    /// A lead without group or partition: what an edge stores (the hub files it).
    pub fn unplaced(envelope: LeadEnvelope) -> LeadMessage {
        let mut headers = LeadHeaders::of_lead(&envelope, String::new());
        headers.group = None;
        LeadMessage {
            sender: envelope.sender.clone(),
            partition: None,
            headers,
            envelope,
        }
    }

    /// Marks the lead as imported from `file` (a header value: no control characters).
    pub fn imported_from(mut self, file: impl Into<String>) -> LeadMessage {
        self.headers.import = Some(file.into());
        self
    }

    pub fn subject(&self) -> String {
        subject(&self.sender, self.partition)
    }

    pub fn encode(&self) -> Result<(String, HeaderMap, Bytes), EncodeError> {
        let body = Bytes::from(serde_json::to_vec(&self.envelope)?);
        Ok(encode_stored(
            &self.sender,
            self.partition,
            &self.headers,
            body,
        ))
    }

    pub fn decode(
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<LeadMessage, DecodeError> {
        let parsed = partition::parse_subject(subject).ok_or_else(|| DecodeError::Subject {
            subject: subject.to_string(),
        })?;
        Ok(LeadMessage {
            sender: parsed.sender.to_string(),
            partition: parsed.partition,
            headers: LeadHeaders::read(headers),
            envelope: decode_envelope(payload)?,
        })
    }

    /// A delivered message (a `jetstream::Message` derefs to this).
    pub fn from_delivery(msg: &async_nats::Message) -> Result<LeadMessage, DecodeError> {
        LeadMessage::decode(&msg.subject, msg.headers.as_ref(), &msg.payload)
    }

    /// A message read from the stream by sequence.
    pub fn from_stored(
        msg: &async_nats::jetstream::message::StreamMessage,
    ) -> Result<LeadMessage, DecodeError> {
        LeadMessage::decode(&msg.subject, Some(&msg.headers), &msg.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> LeadEnvelope {
        LeadEnvelope {
            schema: "lead.v1".into(),
            sender: "demo".into(),
            source_event_id: "evt_1".into(),
            received_at: "2026-11-24T20:01:02.345Z".into(),
            key: "lr_0123".into(),
            fields: json!({"email": "a@b.co"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.as_str())
    }

    #[test]
    fn the_message_id_is_jetstreams() {
        assert_eq!(
            header::MSG_ID,
            AsRef::<str>::as_ref(&async_nats::header::NATS_MESSAGE_ID)
        );
    }

    #[test]
    fn an_edge_lead_round_trips_with_the_contract_headers() {
        let lead = LeadMessage::new(envelope(), "g1".into(), 7);
        let (subject, h, body) = lead.encode().unwrap();
        assert_eq!(subject, "leads.in.demo.7");
        // The wire contract, spelled out rather than through the constants.
        assert_eq!(value(&h, "Nats-Msg-Id"), Some("lr_0123"));
        assert_eq!(
            value(&h, "Leadrouter-Received-At"),
            Some("2026-11-24T20:01:02.345Z")
        );
        assert_eq!(value(&h, "Leadrouter-Schema"), Some("lead.v1"));
        assert_eq!(value(&h, "Leadrouter-Group"), Some("g1"));
        assert_eq!(h.iter().count(), 4, "{h:?}");
        assert_eq!(body, Bytes::from(serde_json::to_vec(&envelope()).unwrap()));
        assert_eq!(
            LeadMessage::decode(&subject, Some(&h), &body).unwrap(),
            lead
        );
    }

    #[test]
    fn import_and_replay_metadata_round_trip() {
        let mut lead = LeadMessage::new(envelope(), "g1".into(), 0).imported_from("x.jsonl");
        lead.headers.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        lead.headers.replay = Some(Replay {
            of: "42".into(),
            reason: Some("CRM fixed".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        });
        let (subject, h, body) = lead.encode().unwrap();
        assert_eq!(value(&h, "Leadrouter-Import"), Some("x.jsonl"));
        assert_eq!(value(&h, "Leadrouter-Replay-Of"), Some("42"));
        assert_eq!(value(&h, "Leadrouter-Replay-Reason"), Some("CRM fixed"));
        assert!(value(&h, "Leadrouter-Replay-Traceparent").is_some());
        assert!(value(&h, "traceparent").is_some());
        assert_eq!(
            LeadMessage::decode(&subject, Some(&h), &body).unwrap(),
            lead
        );
    }

    #[test]
    fn the_legacy_subject_decodes_without_a_partition() {
        let body = serde_json::to_vec(&envelope()).unwrap();
        let lead = LeadMessage::decode("leads.in.demo", None, &body).unwrap();
        assert_eq!((lead.sender.as_str(), lead.partition), ("demo", None));
        assert_eq!(lead.envelope, envelope());
        assert_eq!(lead.subject(), "leads.in.demo");
    }

    #[test]
    fn a_hand_publish_without_our_headers_decodes_with_none_of_them() {
        let body = serde_json::to_vec(&envelope()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("X-Mine", "1");
        let lead = LeadMessage::decode("leads.in.demo.3", Some(&h), &body).unwrap();
        assert_eq!(lead.headers, LeadHeaders::default());
        // A reason without the entry it belongs to is no replay.
        h.insert(header::REPLAY_REASON, "orphan");
        assert_eq!(LeadHeaders::read(Some(&h)).replay, None);
    }

    #[test]
    fn a_bad_body_or_subject_is_a_typed_error() {
        let err = LeadMessage::decode("leads.in.demo.1", None, b"{not json").unwrap_err();
        assert!(matches!(err, DecodeError::Body { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        let err =
            LeadMessage::decode("leads.in.demo.1", None, br#"{"sender":"demo"}"#).unwrap_err();
        assert_eq!(err.to_string(), "not a lead envelope");
        let text = crate::error_chain::chain(&err);
        assert!(text.starts_with("not a lead envelope: "), "{text}");
        assert!(text.contains("missing field"), "{text}");
        let body = serde_json::to_vec(&envelope()).unwrap();
        for subject in ["leads.dlq.demo", "leads.in.demo.x", "leads.in."] {
            let err = LeadMessage::decode(subject, None, &body).unwrap_err();
            assert!(
                matches!(&err, DecodeError::Subject { subject: s } if s == subject),
                "{err}"
            );
        }
    }

    #[test]
    fn a_stored_body_is_republished_as_it_was() {
        let body = Bytes::from_static(b"not an envelope at all");
        let headers = LeadHeaders {
            msg_id: Some("replay:1:2".into()),
            ..LeadHeaders::default()
        };
        let (subject, h, out) = encode_stored("demo", None, &headers, body.clone());
        assert_eq!(subject, "leads.in.demo");
        assert_eq!(value(&h, "Nats-Msg-Id"), Some("replay:1:2"));
        assert_eq!(out, body);
    }

    #[test]
    fn a_repartitioned_copy_gets_a_new_id_and_the_keyed_group() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", "lr_old");
        h.insert("Nats-Expected-Stream", "LEADS");
        h.insert(header::GROUP, "plain-sha");
        h.insert(header::RECEIVED_AT, "2026-01-01T00:00:00.000Z");
        h.insert("tracestate", "vendor=1");
        let out = repartitioned_headers(Some(&h), "keyed", "lr-repartition-7");
        assert_eq!(value(&out, "Nats-Msg-Id"), Some("lr-repartition-7"));
        assert_eq!(value(&out, header::GROUP), Some("keyed"));
        assert!(out.get("Nats-Expected-Stream").is_none());
        assert_eq!(
            value(&out, header::RECEIVED_AT),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(value(&out, "tracestate"), Some("vendor=1"));
        assert!(out.get(header::EDGE).is_none(), "not from an edge");
    }

    #[test]
    fn a_lead_sourced_from_an_edge_keeps_its_edge_but_not_the_server_s_source_header() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", "lr_abc");
        h.insert(
            header::STREAM_SOURCE,
            "LEADS_EDGE:1EkJ6hmZ 7 leads.edge.eu1.> leads.in.> leads.edge.eu1.demo nZ0evBqX",
        );
        assert_eq!(edge_of_headers(Some(&h)).as_deref(), Some("eu1"));
        let out = repartitioned_headers(Some(&h), "keyed", "lr-repartition-9");
        assert!(
            out.get(header::STREAM_SOURCE).is_none(),
            "the server refuses it (10227)"
        );
        assert_eq!(value(&out, header::EDGE), Some("eu1"));
        assert_eq!(edge_of_headers(None), None);
    }
}
