//! The CRM adapters' field mapping: a `[sinks.properties]` (HubSpot) or `[sinks.fields]`
//! (Salesforce) table of vendor name = our field, written once here for both.
//!
//! "Our field" is one of the lead record's own values (`key`, `source_event_id`, `sender`,
//! `schema`, `received_at`) or else a field of the enriched lead (`email`, `first_name`,
//! `geo_country`, ...). A field the lead does not have is left out of the record rather than
//! sent empty, so an upsert never blanks a value the CRM already holds.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{LeadRecord, SinkBuildError};

/// The record's own values a mapping may name besides its fields.
pub const RECORD_VALUES: &[&str] = &["key", "source_event_id", "sender", "schema", "received_at"];

/// A validated mapping, in the vendor's names.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyMap {
    entries: Vec<(String, Source)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Record(&'static str),
    Field(String),
}

impl PropertyMap {
    /// `table` as configured under `sinks[index].{key}`; `default` when unset.
    pub fn from_config(
        index: usize,
        key: &str,
        table: Option<&BTreeMap<String, String>>,
        default: &[(&str, &str)],
    ) -> Result<PropertyMap, SinkBuildError> {
        let owned: BTreeMap<String, String>;
        let table = match table {
            Some(t) => t,
            None => {
                owned = default
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
                &owned
            }
        };
        if table.is_empty() {
            return Err(SinkBuildError::new(
                index,
                key,
                "must map at least one field",
            ));
        }
        let mut entries = Vec::with_capacity(table.len());
        for (vendor, ours) in table {
            let ours = ours.trim();
            if vendor.trim().is_empty() || ours.is_empty() {
                return Err(SinkBuildError::new(
                    index,
                    &format!("{key}.{vendor}"),
                    "names must not be empty",
                ));
            }
            let source = match RECORD_VALUES.iter().find(|r| **r == ours) {
                Some(r) => Source::Record(r),
                None => Source::Field(ours.strip_prefix("fields.").unwrap_or(ours).to_string()),
            };
            entries.push((vendor.clone(), source));
        }
        Ok(PropertyMap { entries })
    }

    /// The vendor name our `field` (or record value) is mapped to, if any.
    pub fn vendor_name_of(&self, ours: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, s)| match s {
                Source::Record(r) => *r == ours,
                Source::Field(f) => f == ours,
            })
            .map(|(v, _)| v.as_str())
    }

    /// The lead's values under the vendor's names. `stringify` turns every value into a string
    /// (HubSpot's properties are strings; multi-value lists join with `;`, its own separator).
    pub fn render(&self, lead: &LeadRecord, stringify: bool) -> Map<String, Value> {
        let mut out = Map::with_capacity(self.entries.len());
        for (vendor, source) in &self.entries {
            let value = match source {
                Source::Record("key") => Some(Value::String(lead.key.clone())),
                Source::Record("source_event_id") => {
                    Some(Value::String(lead.source_event_id.clone()))
                }
                Source::Record("sender") => Some(Value::String(lead.sender.clone())),
                Source::Record("schema") => Some(Value::String(lead.schema.clone())),
                Source::Record(_) => Some(Value::String(lead.received_at.clone())),
                Source::Field(f) => lead.fields.get(f).filter(|v| !v.is_null()).cloned(),
            };
            let Some(value) = value else { continue };
            let value = if stringify { as_string(value) } else { value };
            out.insert(vendor.clone(), value);
        }
        out
    }
}

fn as_string(v: Value) -> Value {
    match v {
        Value::String(_) => v,
        Value::Array(items) => Value::String(
            items
                .into_iter()
                .map(|i| match i {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(";"),
        ),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lead() -> LeadRecord {
        LeadRecord {
            key: "k1".into(),
            sender: "typeform".into(),
            source_event_id: "evt_1".into(),
            schema: "lead.v1".into(),
            received_at: "2026-12-02T10:00:00.000Z".into(),
            fields: json!({"email": "ada@example.com", "employees": 250, "tags": ["a", "b"], "gone": null})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            flags: vec![],
            replay: false,
        }
    }

    #[test]
    fn maps_fields_and_record_values_and_leaves_out_what_is_missing() {
        let table: BTreeMap<String, String> = [
            ("email", "email"),
            ("numemployees", "employees"),
            ("tags", "fields.tags"),
            ("leadrouter_key", "key"),
            ("source", "source_event_id"),
            ("lastname", "last_name"),
            ("gone", "gone"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let m = PropertyMap::from_config(0, "properties", Some(&table), &[]).expect("valid");
        let out = m.render(&lead(), true);
        assert_eq!(out["email"], "ada@example.com");
        assert_eq!(out["numemployees"], "250");
        assert_eq!(out["tags"], "a;b");
        assert_eq!(out["leadrouter_key"], "k1");
        assert_eq!(out["source"], "evt_1");
        assert!(!out.contains_key("lastname"), "a missing field is left out");
        assert!(!out.contains_key("gone"), "a null field is left out");
        assert_eq!(m.vendor_name_of("key"), Some("leadrouter_key"));
        let raw = m.render(&lead(), false);
        assert_eq!(raw["numemployees"], 250);
    }

    #[test]
    fn an_empty_mapping_is_refused_with_its_key() {
        let e = PropertyMap::from_config(2, "properties", Some(&BTreeMap::new()), &[])
            .expect_err("empty");
        assert_eq!(e.key, "sinks[2].properties");
    }
}
