//! Vendor payload -> canonical lead fields, keeping only what the sender's mapping allowlists.
//!
//! Every sender has a `[senders.mapping]` table. The intake parses the raw body once
//! ([`Mapper::parse`]), verifies the signature, then calls [`Mapper::map`], which copies out only
//! the configured fields. Anything the mapping does not name (free-text notes, vendor tokens,
//! shared keys) never leaves the edge.
//!
//! ```toml
//! [senders.mapping]
//! format = "form"                # "json" (default) or "form" (application/x-www-form-urlencoded)
//! json_fields = ["data.json"]    # body keys whose value is JSON text, parsed before mapping
//!
//! [senders.mapping.fields]       # canonical name = JSONPath (RFC 9535), in output order
//! email = { path = "$['data.json'].email", unwrap = true }
//! phone = { path = "$['data.json'].phone_number", unwrap = true }
//! source = { path = "$.utm_source", default = "unbounce" }
//! page = "$.page_name"           # plain string = just a path
//! ```
//!
//! Selection rules, per field:
//! - the first node the path selects is used; a path that selects nothing leaves the field out;
//! - with `unwrap = true`, an array value is replaced by its first element;
//! - strings are trimmed (at any depth); `null` and strings that are empty after trimming count
//!   as absent;
//! - an absent field takes `default` if one is configured, else it is omitted.
//!
//! Values keep their JSON type (Webflow, for one, sends phone numbers as JSON numbers) and are
//! not otherwise normalised: lower-casing emails or formatting phones is enrichment's job.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// How the request body is encoded (`mapping.format`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/json`. Any JSON value is accepted; paths into a scalar body simply select
    /// nothing.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`, parsed into a JSON object whose values are strings.
    /// When a key repeats, the first occurrence wins: paths then always see a string, never a
    /// string-or-array depending on what the submitter sent. Escapes that are not UTF-8 decode
    /// to U+FFFD rather than failing the request.
    Form,
}

impl BodyFormat {
    /// The media type a sender with this format posts, for content-type checks and for
    /// signing test requests.
    pub fn mime(self) -> &'static str {
        match self {
            BodyFormat::Json => "application/json",
            BodyFormat::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// Where one canonical field comes from (a value in `mapping.fields`).
///
/// Either a JSONPath string, `email = "$.email"`, or a table with options,
/// `email = { path = "$['data.json'].email", unwrap = true }`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldSpec {
    /// An RFC 9535 JSONPath; the first node it selects is the value.
    Path(String),
    /// A path with options.
    Options(FieldOptions),
}

impl FieldSpec {
    /// The JSONPath, whichever form the spec was written in.
    pub fn path(&self) -> &str {
        match self {
            FieldSpec::Path(p) => p,
            FieldSpec::Options(o) => &o.path,
        }
    }
}

/// The table form of a field spec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOptions {
    /// RFC 9535 JSONPath, e.g. `"$.form_response.answers[?@.field.ref=='work_email'].email"`.
    /// Required.
    pub path: String,
    /// If the selected value is an array, take its first element (an empty array counts as
    /// absent). For vendors that wrap every answer in a one-element array, such as Unbounce's
    /// `data.json`. Non-array values are kept as they are. Default `false`.
    #[serde(default)]
    pub unwrap: bool,
    /// Value used when the path selects nothing, `null` or a blank string. A string, number or
    /// boolean. Default: none, so the field is omitted.
    #[serde(default)]
    pub default: Option<Value>,
}

// Hand-written rather than `#[serde(untagged)]` so a typo inside the table form reports the
// offending key ("unknown field `unwarp`") instead of "did not match any variant".
impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;

        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = FieldSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSONPath string or a table with `path`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Path(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Path(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                FieldOptions::deserialize(MapAccessDeserializer::new(map)).map(FieldSpec::Options)
            }
        }

        deserializer.deserialize_any(SpecVisitor)
    }
}

/// `[senders.mapping]`: how to read a sender's body and which fields to keep.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// `"json"` (default) or `"form"`.
    #[serde(default)]
    pub format: BodyFormat,
    /// Top-level body keys whose value is JSON text (Unbounce's `data.json` form field). Each is
    /// replaced by the parsed JSON before mapping, so paths can reach inside it. A listed key
    /// that is missing is skipped; one that is not valid JSON rejects the request.
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// Canonical field name -> [`FieldSpec`]. The allowlist: nothing else is kept.
    #[serde(default)]
    pub fields: IndexMap<String, FieldSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The mapping itself is wrong; the message starts with the config key.
    #[error("{0}")]
    Config(String),
    /// A path in `mapping.fields` does not compile; `key` is its config key
    /// (`mapping.fields.email`), the cause says why.
    #[error("{key}")]
    FieldPath {
        key: String,
        #[source]
        source: PathError,
    },
    /// A path given elsewhere (`event_id.path`) does not compile; the caller prefixes its key.
    #[error("`{path}` is not a valid JSONPath")]
    Path {
        path: String,
        #[source]
        source: PathError,
    },
    /// The request body cannot be read with this mapping (a 400 for the sender).
    #[error(transparent)]
    Body(#[from] BodyError),
}

/// Why a JSONPath does not compile.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The parser's own message for this common slip is a bare "parser error".
    #[error("a JSONPath starts with `$`, e.g. `$.email`")]
    NoDollar,
    #[error(transparent)]
    Parse(#[from] serde_json_path::ParseError),
}

/// Why a body cannot be read: the parser's reason (plus the field name for `json_fields`),
/// without the words "body is not valid JSON", which the caller adds. Parser messages give a
/// position, never body content, which may hold PII.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Json(serde_json::Error),
    #[error(transparent)]
    Form(serde_urlencoded::de::Error),
    /// A `json_fields` entry whose text is not JSON.
    #[error("field `{field}` is not valid JSON")]
    JsonField {
        field: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug)]
struct CompiledField {
    name: String,
    path: JsonPath,
    unwrap: bool,
    default: Option<Value>,
}

impl CompiledField {
    fn extract(&self, doc: &Value) -> Option<Value> {
        let found = self.path.query(doc).first().and_then(|v| {
            let v = if self.unwrap {
                match v {
                    Value::Array(items) => items.first()?,
                    other => other,
                }
            } else {
                v
            };
            kept_value(v)
        });
        found.or_else(|| self.default.clone())
    }
}

/// A sender's mapping, compiled once at startup and shared by every request.
#[derive(Debug)]
pub struct Mapper {
    format: BodyFormat,
    json_fields: Vec<String>,
    fields: Vec<CompiledField>,
}

impl Mapper {
    /// Compiles every path. Errors name the key, e.g. `mapping.fields.email: at position 2, ...`.
    pub fn new(cfg: &MappingConfig) -> Result<Self, MappingError> {
        let mut fields = Vec::with_capacity(cfg.fields.len());
        for (name, spec) in &cfg.fields {
            let key = format!("mapping.fields.{name}");
            if name.trim().is_empty() {
                return Err(MappingError::Config(
                    "mapping.fields: a field name must not be empty".into(),
                ));
            }
            let path = parse_path(spec.path())
                .map_err(|source| MappingError::FieldPath { key, source })?;
            let (unwrap, default) = match spec {
                FieldSpec::Path(_) => (false, None),
                FieldSpec::Options(o) => (o.unwrap, o.default.clone()),
            };
            if let Some(d) = &default {
                if !matches!(d, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    return Err(MappingError::Config(format!(
                        "mapping.fields.{name}.default: must be a string, number or boolean"
                    )));
                }
            }
            fields.push(CompiledField {
                name: name.clone(),
                path,
                unwrap,
                default,
            });
        }
        for (i, f) in cfg.json_fields.iter().enumerate() {
            if f.is_empty() {
                return Err(MappingError::Config(format!(
                    "mapping.json_fields[{i}]: must not be empty"
                )));
            }
        }
        Ok(Mapper {
            format: cfg.format,
            json_fields: cfg.json_fields.clone(),
            fields,
        })
    }

    pub fn format(&self) -> BodyFormat {
        self.format
    }

    /// Canonical names this mapping can produce, in config order (e.g. to check at startup that
    /// a schema's required fields are mapped at all).
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// Parses a raw body per `format` and expands `json_fields`. The result is what signature
    /// schemes that read the body, `event_id.pointer`/`path` and [`Mapper::map`] look at.
    pub fn parse(&self, body: &[u8]) -> Result<Value, MappingError> {
        let mut doc = match self.format {
            // Bare parser reason: the intake already says "the body is not valid JSON: ".
            BodyFormat::Json => serde_json::from_slice(body).map_err(BodyError::Json)?,
            BodyFormat::Form => parse_form(body)?,
        };
        self.expand_json_fields(&mut doc)?;
        Ok(doc)
    }

    /// Only the configured fields, each under its canonical name. Do not rely on key order:
    /// it follows serde_json's map (sorted unless its `preserve_order` feature is on).
    pub fn map(&self, doc: &Value) -> Map<String, Value> {
        let mut out = Map::new();
        for field in &self.fields {
            if let Some(v) = field.extract(doc) {
                out.insert(field.name.clone(), v);
            }
        }
        out
    }

    /// [`Mapper::parse`] then [`Mapper::map`], for callers that do not need the document.
    pub fn parse_and_map(&self, body: &[u8]) -> Result<Map<String, Value>, MappingError> {
        self.parse(body).map(|doc| self.map(&doc))
    }

    fn expand_json_fields(&self, doc: &mut Value) -> Result<(), MappingError> {
        let Value::Object(obj) = doc else {
            return Ok(());
        };
        for name in &self.json_fields {
            // A JSON body may already carry the value structured; only text needs parsing.
            let Some(slot) = obj.get_mut(name) else {
                continue;
            };
            let Value::String(text) = slot else {
                continue;
            };
            let parsed = serde_json::from_str(text).map_err(|source| BodyError::JsonField {
                field: name.clone(),
                source,
            })?;
            *slot = parsed;
        }
        Ok(())
    }
}

fn parse_form(body: &[u8]) -> Result<Value, MappingError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(BodyError::Form)?;
    let mut obj = Map::new();
    for (k, v) in pairs {
        obj.entry(k).or_insert(Value::String(v));
    }
    Ok(Value::Object(obj))
}

/// The value to keep for a selected node, or `None` if it counts as absent.
fn kept_value(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty()).then(|| Value::String(t.to_owned()))
        }
        other => Some(trimmed(other)),
    }
}

/// Deep copy with every string trimmed; the copy is needed anyway to own the output.
fn trimmed(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.trim().to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(trimmed).collect()),
        Value::Object(obj) => {
            Value::Object(obj.iter().map(|(k, v)| (k.clone(), trimmed(v))).collect())
        }
        other => other.clone(),
    }
}

/// A JSONPath compiled once, for settings outside `mapping.fields` such as `event_id.path`.
#[derive(Debug, Clone)]
pub struct CompiledPath(JsonPath);

impl CompiledPath {
    pub fn as_json_path(&self) -> &JsonPath {
        &self.0
    }
}

/// Errors carry no config key; the caller prefixes its own (e.g. `senders[0].event_id.path`).
pub fn compile_path(p: &str) -> Result<CompiledPath, MappingError> {
    parse_path(p)
        .map(CompiledPath)
        .map_err(|source| MappingError::Path {
            path: p.to_string(),
            source,
        })
}

fn parse_path(p: &str) -> Result<JsonPath, PathError> {
    if !p.trim_start().starts_with('$') {
        return Err(PathError::NoDollar);
    }
    Ok(JsonPath::parse(p)?)
}

/// The first node `path` selects, as is (no trimming, `null` included).
pub fn select_first<'a>(doc: &'a Value, path: &CompiledPath) -> Option<&'a Value> {
    path.0.query(doc).first()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EventIdSource, SenderConfig, SendersFile};
    use crate::error_chain::chain;
    use std::path::{Path, PathBuf};

    const NO_ENV: [(&str, &str); 0] = [];

    fn repo_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p = repo_path("tests/fixtures/vendors").join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn example_text(vendor: &str) -> String {
        let p = repo_path("config/examples").join(format!("{vendor}.toml"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn example_sender(vendor: &str) -> SenderConfig {
        let file: SendersFile = toml::from_str(&example_text(vendor))
            .unwrap_or_else(|e| panic!("config/examples/{vendor}.toml: {e}"));
        assert_eq!(file.senders.len(), 1, "{vendor}: one sender per example");
        file.senders.into_iter().next().unwrap()
    }

    fn map_fixture(vendor: &str, fixture_name: &str) -> (Value, Map<String, Value>) {
        let sender = example_sender(vendor);
        let mapper = Mapper::new(&sender.mapping).unwrap();
        let doc = mapper.parse(&fixture(fixture_name)).unwrap();
        let mapped = mapper.map(&doc);
        (doc, mapped)
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    fn keys(m: &Map<String, Value>) -> Vec<&str> {
        let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    fn mapper_for(toml_text: &str) -> Result<Mapper, MappingError> {
        let cfg: MappingConfig = toml::from_str(toml_text).unwrap();
        Mapper::new(&cfg)
    }

    #[test]
    fn typeform_fixture_keeps_only_allowlisted_fields() {
        let (_, m) = map_fixture("typeform", "typeform.json");
        assert_eq!(m["email"], s("Grace.Hopper@Example.COM"));
        assert_eq!(m["first_name"], s("Grace"));
        assert_eq!(m["last_name"], s("Hopper"));
        assert_eq!(m["phone"], s("+44 20 7946 0958"));
        assert_eq!(m["company"], s("Eckert-Mauchly"));
        assert_eq!(m["utm_source"], s("google"));
        assert_eq!(m["utm_campaign"], s("q4-demo"));
        assert_eq!(
            keys(&m),
            [
                "company",
                "email",
                "first_name",
                "last_name",
                "phone",
                "utm_campaign",
                "utm_source"
            ]
        );
        let out = serde_json::to_string(&m).unwrap();
        assert!(!out.contains("07700 900123"), "{out}");
        assert!(!out.contains("notes"), "{out}");
        assert!(!out.contains("token"), "{out}");
        assert!(!out.contains("a3a12ec67a1365927098a606107fac15"), "{out}");
    }

    #[test]
    fn google_ads_fixture_maps_columns_and_drops_the_shared_key() {
        let (_, m) = map_fixture("google-ads", "google-ads-lead-form.json");
        assert_eq!(m["email"], s("katherine.johnson@example.com"));
        assert_eq!(m["phone"], s("+16505550123"));
        assert_eq!(m["full_name"], s("Katherine Johnson"));
        assert_eq!(m["postal_code"], s("23666"));
        assert_eq!(m["gclid"], s("TeSter-123-gclid"));
        assert_eq!(
            keys(&m),
            ["email", "full_name", "gclid", "phone", "postal_code"]
        );
        let out = serde_json::to_string(&m).unwrap();
        assert!(!out.contains("configured-shared-key"), "{out}");
        assert!(!out.contains("google_key"), "{out}");
    }

    #[test]
    fn webflow_fixture_maps_label_keys() {
        let (_, m) = map_fixture("webflow", "webflow-form-submission.json");
        assert_eq!(m["email"], s("dorothy@example.net"));
        assert_eq!(m["first_name"], s("Dorothy"));
        assert_eq!(m["last_name"], s("Vaughan"));
        assert_eq!(m["phone"], s("(757) 555-0142"));
        assert_eq!(m["company_size"], s("51-200"));
        assert_eq!(
            keys(&m),
            ["company_size", "email", "first_name", "last_name", "phone"]
        );
        let out = serde_json::to_string(&m).unwrap();
        assert!(!out.contains("65427cf400e02b306eaa049c"), "{out}");
    }

    #[test]
    fn unbounce_fixture_parses_form_and_unwraps_arrays() {
        let sender = example_sender("unbounce");
        assert_eq!(sender.mapping.format, BodyFormat::Form);
        let (doc, m) = map_fixture("unbounce", "unbounce.form");
        // The nested JSON must be structured after parse, not left as text.
        assert!(doc["data.json"].is_object(), "{doc}");
        assert_eq!(m["email"], s("mary.jackson@example.org"));
        assert_eq!(m["first_name"], s("Mary"));
        assert_eq!(m["last_name"], s("Jackson"));
        assert_eq!(m["phone"], s("757-555-0199"));
        assert_eq!(m["ip"], s("81.2.69.142"));
        assert_eq!(
            keys(&m),
            ["email", "first_name", "ip", "last_name", "phone"]
        );
        let out = serde_json::to_string(&m).unwrap();
        assert!(!out.contains("Spring Promo"), "{out}");
        assert!(!out.contains('['), "arrays must be unwrapped: {out}");
    }

    #[test]
    fn every_example_is_a_valid_config_with_compilable_paths() {
        for vendor in [
            "typeform",
            "google-ads",
            "webflow",
            "unbounce",
            "github-style",
            "shopify",
        ] {
            let text = example_text(vendor);
            // The full loader also runs the cross-key validation (event_id, secrets, fields).
            let cfg = crate::config::Config::from_toml(&text, Path::new(vendor), &NO_ENV)
                .unwrap_or_else(|e| panic!("{vendor}: {}", chain(&e)));
            let sender = &cfg.senders[0];
            assert!(!sender.secret_env.is_empty(), "{vendor}");
            Mapper::new(&sender.mapping).unwrap_or_else(|e| panic!("{vendor}: {}", chain(&e)));
            if let Some(EventIdSource::Path(p)) = &sender.event_id {
                compile_path(p).unwrap_or_else(|e| panic!("{vendor}: {}", chain(&e)));
            }
        }
    }

    #[test]
    fn event_id_path_selects_typeform_and_webflow_ids() {
        let sender = example_sender("typeform");
        let Some(EventIdSource::Path(path)) = sender.event_id else {
            panic!("typeform: {:?}", sender.event_id)
        };
        let (doc, _) = map_fixture("typeform", "typeform.json");
        let id = select_first(&doc, &compile_path(&path).unwrap());
        assert_eq!(id, Some(&s("01JD8M9ZK2Q3R4S5T6V7W8X9YZ")));

        let sender = example_sender("webflow");
        let Some(EventIdSource::Path(path)) = sender.event_id else {
            panic!("webflow: {:?}", sender.event_id)
        };
        let (doc, _) = map_fixture("webflow", "webflow-form-submission.json");
        let id = select_first(&doc, &compile_path(&path).unwrap());
        assert_eq!(id, Some(&s("6321ca84df3949bfc6752327")));

        let missing = compile_path("$.nope.id").unwrap();
        assert_eq!(select_first(&doc, &missing), None);
    }

    #[test]
    fn google_ads_event_id_pointer_resolves() {
        let sender = example_sender("google-ads");
        let Some(EventIdSource::Pointer(pointer)) = sender.event_id else {
            panic!("google-ads: {:?}", sender.event_id)
        };
        let (doc, _) = map_fixture("google-ads", "google-ads-lead-form.json");
        assert!(doc
            .pointer(&pointer)
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with("TeSter-123-")));
    }

    #[test]
    fn bad_json_body_is_a_body_error() {
        let m = mapper_for("[fields]\nemail = \"$.email\"\n").unwrap();
        let err = m.parse(br#"{"email": "secret@example.com""#).unwrap_err();
        assert!(
            matches!(err, MappingError::Body(BodyError::Json(_))),
            "{err:?}"
        );
        assert!(err.to_string().contains("EOF"), "{err}");
        assert!(!err.to_string().contains("secret@example.com"), "{err}");
        assert!(matches!(m.parse(b""), Err(MappingError::Body(_))));
    }

    #[test]
    fn scalar_json_body_is_accepted_and_maps_to_nothing() {
        let m = mapper_for("[fields]\nemail = \"$.email\"\n").unwrap();
        let doc = m.parse(b"\"just a string\"").unwrap();
        assert!(m.map(&doc).is_empty());
    }

    #[test]
    fn invalid_jsonpath_is_a_config_error_naming_the_field() {
        let err =
            mapper_for("[fields]\nfirst_name = \"$.a\"\nemail = \"$.[broken\"\n").unwrap_err();
        assert!(
            matches!(&err, MappingError::FieldPath { key, source: PathError::Parse(_) } if key == "mapping.fields.email"),
            "{err:?}"
        );
        let shown = chain(&err);
        assert!(shown.starts_with("mapping.fields.email: "), "{shown}");
        assert!(shown.len() > "mapping.fields.email: ".len(), "{shown}");

        let err =
            mapper_for("[fields]\nphone = { path = \"no-dollar\", unwrap = true }\n").unwrap_err();
        assert_eq!(
            chain(&err),
            "mapping.fields.phone: a JSONPath starts with `$`, e.g. `$.email`"
        );

        let err = compile_path("$[?").unwrap_err();
        assert!(
            matches!(
                err,
                MappingError::Path {
                    source: PathError::Parse(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            chain(&err).starts_with("`$[?` is not a valid JSONPath: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_table_key_is_named() {
        let err = toml::from_str::<MappingConfig>(
            "[fields]\nemail = { path = \"$.e\", unwarp = true }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unwarp"), "{err}");
        let err =
            toml::from_str::<MappingConfig>("[fields]\nemail = { unwrap = true }\n").unwrap_err();
        assert!(err.to_string().contains("path"), "{err}");
        let err = toml::from_str::<MappingConfig>("[fields]\nemail = 5\n").unwrap_err();
        assert!(err.to_string().contains("JSONPath"), "{err}");
    }

    #[test]
    fn form_with_bad_json_field_names_the_field() {
        let m = mapper_for(
            "format = \"form\"\njson_fields = [\"data.json\"]\n[fields]\nemail = \"$['data.json'].email\"\n",
        )
        .unwrap();
        let err = m
            .parse(b"page_id=1&data.json=%7B%22email%22%3A")
            .unwrap_err();
        assert!(
            matches!(&err, MappingError::Body(BodyError::JsonField { field, .. }) if field == "data.json"),
            "{err:?}"
        );
        let shown = chain(&err);
        assert!(
            shown.starts_with("field `data.json` is not valid JSON: "),
            "{shown}"
        );
        assert!(
            shown.contains("EOF"),
            "the parser's reason is kept: {shown}"
        );

        // A listed field that is absent is not an error: the body just has less to map.
        let doc = m.parse(b"page_id=1").unwrap();
        assert!(m.map(&doc).is_empty());
    }

    #[test]
    fn form_repeated_keys_keep_the_first() {
        let m = mapper_for("format = \"form\"\n[fields]\nemail = \"$.email\"\n").unwrap();
        let doc = m
            .parse(b"email=a%40example.com&email=b%40example.com")
            .unwrap();
        assert_eq!(m.map(&doc)["email"], s("a@example.com"));
    }

    #[test]
    fn json_fields_also_apply_to_json_bodies() {
        let m =
            mapper_for("json_fields = [\"inner\"]\n[fields]\nemail = \"$.inner.email\"\n").unwrap();
        let doc = m
            .parse(br#"{"inner": "{\"email\": \"x@example.com\"}"}"#)
            .unwrap();
        assert_eq!(m.map(&doc)["email"], s("x@example.com"));
        // Already structured: left alone.
        let doc = m
            .parse(br#"{"inner": {"email": "y@example.com"}}"#)
            .unwrap();
        assert_eq!(m.map(&doc)["email"], s("y@example.com"));
    }

    #[test]
    fn null_blank_and_missing_are_omitted_or_defaulted() {
        let m = mapper_for(
            r#"
[fields]
a = "$.a"
b = "$.b"
c = "$.c"
d = { path = "$.d", default = "fallback" }
e = { path = "$.e", unwrap = true }
f = { path = "$.f", unwrap = true, default = 0 }
n = "$.n"
nested = "$.nested"
"#,
        )
        .unwrap();
        let doc = m
            .parse(br#"{"a": null, "b": "   ", "d": null, "e": [], "f": [null], "n": 42, "nested": {"k": [" v "]}}"#)
            .unwrap();
        let out = m.map(&doc);
        assert_eq!(keys(&out), ["d", "f", "n", "nested"]);
        assert_eq!(out["d"], s("fallback"));
        assert_eq!(out["f"], Value::from(0));
        assert_eq!(out["n"], Value::from(42));
        assert_eq!(out["nested"], serde_json::json!({"k": ["v"]}));
    }

    #[test]
    fn unwrap_leaves_scalars_and_takes_first_of_many() {
        let m = mapper_for("[fields]\na = { path = \"$.a\", unwrap = true }\nb = { path = \"$.b\", unwrap = true }\nc = \"$.c\"\n")
            .unwrap();
        let doc = m
            .parse(br#"{"a": " x ", "b": ["one", "two"], "c": ["kept"]}"#)
            .unwrap();
        let out = m.map(&doc);
        assert_eq!(out["a"], s("x"));
        assert_eq!(out["b"], s("one"));
        assert_eq!(out["c"], serde_json::json!(["kept"]));
    }

    #[test]
    fn structured_default_is_rejected() {
        let err = mapper_for("[fields]\na = { path = \"$.a\", default = [1] }\n").unwrap_err();
        assert!(
            err.to_string().starts_with("mapping.fields.a.default"),
            "{err}"
        );
    }
}
