//! The canonical lead envelope stored in `LEADS`, and the deterministic idempotency key.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeadEnvelope {
    /// Schema version the handlers validate against, e.g. `lead.v1`.
    pub schema: String,
    pub sender: String,
    pub source_event_id: String,
    /// RFC 3339, set by the edge when the request arrived.
    pub received_at: String,
    /// The idempotency key (also the `Nats-Msg-Id`).
    pub key: String,
    /// Only the sender's allowlisted fields.
    pub fields: Map<String, Value>,
}

/// Lower-cased and trimmed: the form every dedupe and lookup compares.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Hex SHA-256 of the normalized email, or of the empty string when the lead has none.
pub fn email_hash(fields: &Map<String, Value>) -> String {
    let email = fields
        .get("email")
        .and_then(Value::as_str)
        .map(normalize_email)
        .unwrap_or_default();
    hex::encode(Sha256::digest(email.as_bytes()))
}

/// Deterministic from (sender, source event id, normalized email hash): the same submission
/// always maps to the same key, across vendor retries, restarts and replays.
pub fn idempotency_key(sender: &str, source_event_id: &str, email_hash: &str) -> String {
    let mut h = Sha256::new();
    // Unit separators keep ("a", "bc") and ("ab", "c") apart.
    h.update(sender.as_bytes());
    h.update([0x1f]);
    h.update(source_event_id.as_bytes());
    h.update([0x1f]);
    h.update(email_hash.as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("lr_");
    out.push_str(&hex::encode(&digest[..16]));
    out
}

/// The key of a lead with these mapped fields. It keeps the plain email hash, not the keyed
/// group: it must not change for a lead accepted before groups were keyed, or a vendor's retry
/// across the upgrade would be a new lead.
pub fn lead_key(sender: &str, source_event_id: &str, fields: &Map<String, Value>) -> String {
    idempotency_key(sender, source_event_id, &email_hash(fields))
}

/// The event id of a vendor that sends none: a hash of the exact bytes it signed.
pub fn body_event_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("body:{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_is_deterministic_and_separates_parts() {
        let a = idempotency_key("demo", "evt_1", "h");
        assert_eq!(a, idempotency_key("demo", "evt_1", "h"));
        assert_eq!(a.len(), 35);
        assert!(a.starts_with("lr_"));
        assert_ne!(a, idempotency_key("demo", "evt_2", "h"));
        assert_ne!(a, idempotency_key("other", "evt_1", "h"));
        assert_ne!(
            idempotency_key("ab", "c", "h"),
            idempotency_key("a", "bc", "h")
        );
    }

    #[test]
    fn email_hash_normalizes() {
        let a = email_hash(
            json!({"email": " Grace.Hopper@Example.COM "})
                .as_object()
                .unwrap(),
        );
        let b = email_hash(
            json!({"email": "grace.hopper@example.com"})
                .as_object()
                .unwrap(),
        );
        assert_eq!(a, b);
        let none = email_hash(&Map::new());
        assert_ne!(a, none);
    }

    #[test]
    fn body_event_id_depends_on_bytes() {
        assert_eq!(body_event_id(b"x"), body_event_id(b"x"));
        assert_ne!(body_event_id(b"x"), body_event_id(b"y"));
    }
}
