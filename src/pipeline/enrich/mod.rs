//! Lead enrichment: normalize what sinks compare (email, phone, UTM tags) and add geo-IP fields.
//!
//! [`Enricher::enrich`] never fails and never drops anything: a value it cannot improve is kept
//! exactly as sent and the lead gets a flag (see [`flags`]). Delivery never waits on, or is
//! refused because of, enrichment. It is also idempotent: enriching an already enriched lead
//! changes nothing (so a replayed or re-delivered lead comes out the same).
//!
//! What it does to `fields`:
//! - `email`: trimmed and lower-cased in place (the same normalization as the idempotency key,
//!   [`crate::intake::envelope::normalize_email`]); kept even if it looks invalid.
//! - `phone` (string, or a JSON number as some form builders send): parsed with libphonenumber
//!   (the `phonenumber` crate), using the number's own country code when it has one (`+44 ...`,
//!   or the default region's international prefix such as `011 44 ...`), else
//!   `enrich.default_region`. "Normalize leniently": a number that libphonenumber's metadata
//!   calls valid becomes E.164 (`phone_e164`); one that parses but fails the validity check
//!   (e.g. the fictional 555 exchanges, or a range not yet in the metadata) still becomes E.164
//!   when its national number has a length some number type of that country code can have
//!   (`phone_unverified`); anything else stays as sent (`phone_unparsed`). When `phone` is
//!   rewritten, the original value is kept in `phone_raw`, and an extension (`ext. 12`), which
//!   E.164 cannot carry, goes to `phone_extension`.
//! - `ip` → `geo_city` (`city.names.en`), `geo_country` (`country.iso_code`) and
//!   `geo_country_name` (`country.names.en`) from a MaxMind DB in the GeoLite2/GeoIP2 City
//!   layout (a Country database works too, without the city), loaded into memory once. Without
//!   `enrich.geoip_db` this step is skipped entirely (no flags).
//! - `utm_source`, `utm_medium`, `utm_campaign`: trimmed and lower-cased, because reports group
//!   by them and vendors/ad platforms disagree on case (`Google` vs `google`). `utm_term` and
//!   `utm_content` are kept as sent: they are free text (search terms, ad variants) where case
//!   can carry meaning.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use phonenumber::country;
use phonenumber::metadata::{Metadata, DATABASE};
use phonenumber::Mode;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::intake::envelope::normalize_email;

/// The flags [`Enricher::enrich`] can report, as `&'static str` so callers can count them in
/// metrics and store them with the lead without allocating.
pub mod flags {
    /// `email` changed when trimmed and lower-cased.
    pub const EMAIL_NORMALIZED: &str = "email_normalized";
    /// `email` is present but not a string, or not shaped like `local@domain.tld`. Kept as is
    /// (normalized if a string); the schema decides whether that rejects the lead.
    pub const EMAIL_INVALID: &str = "email_invalid";
    /// `phone` is a valid number per libphonenumber and is now E.164 (`+442079460958`).
    pub const PHONE_E164: &str = "phone_e164";
    /// `phone` parsed and is now E.164, with a plausible length, but libphonenumber does not
    /// know it as an assigned number (e.g. `+1 555 ...` fictional numbers).
    pub const PHONE_UNVERIFIED: &str = "phone_unverified";
    /// `phone` could not be parsed (or its length is implausible); kept exactly as sent.
    pub const PHONE_UNPARSED: &str = "phone_unparsed";
    /// The geo-IP lookup found the address: `geo_country` and/or `geo_city` were set.
    pub const GEOIP_HIT: &str = "geoip_hit";
    /// The address is not in the geo-IP database (private ranges, unknown networks), or its
    /// record has neither a city nor a country.
    pub const GEOIP_MISS: &str = "geoip_miss";
    /// A database is configured but the lookup failed (corrupt record); logged once.
    pub const GEOIP_UNAVAILABLE: &str = "geoip_unavailable";
    /// `ip` is present but not an IP address (only checked when a database is configured).
    pub const IP_INVALID: &str = "ip_invalid";
    /// `utm_source`, `utm_medium` or `utm_campaign` changed when trimmed and lower-cased.
    pub const UTM_NORMALIZED: &str = "utm_normalized";

    /// Every flag, for metrics registration and docs.
    pub const ALL: &[&str] = &[
        EMAIL_NORMALIZED,
        EMAIL_INVALID,
        PHONE_E164,
        PHONE_UNVERIFIED,
        PHONE_UNPARSED,
        GEOIP_HIT,
        GEOIP_MISS,
        GEOIP_UNAVAILABLE,
        IP_INVALID,
        UTM_NORMALIZED,
    ];
}

/// Default region for national phone numbers when `enrich.default_region` is not set.
pub const DEFAULT_REGION: &str = "US";

/// UTM tags that are trimmed and lower-cased (the others are free text, kept as sent).
const NORMALIZED_UTM_FIELDS: [&str; 3] = ["utm_source", "utm_medium", "utm_campaign"];

/// `[enrich]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// ISO 3166 alpha-2 region used to parse national phone numbers (`(757) 555-0142`);
    /// default `US`.
    #[serde(default)]
    pub default_region: Option<String>,
    /// Path to a MaxMind DB (`.mmdb`, GeoLite2/GeoIP2 City layout); none = no geo-IP.
    #[serde(default)]
    pub geoip_db: Option<std::path::PathBuf>,
}

/// A bad `[enrich]` setting; names the key (`config key `enrich.geoip_db`: ...`).
#[derive(Debug, thiserror::Error)]
#[error("config key `enrich.{key}`: {message}")]
pub struct EnrichSetupError {
    pub key: &'static str,
    pub message: String,
    /// What failed underneath (reading or opening the database), when something did.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// What enrichment did or could not do to one lead. Flags are from [`flags`], in the order the
/// steps ran (email, phone, geo-IP, UTM), each at most once.
#[derive(Debug, Default, Clone)]
pub struct EnrichReport {
    pub flags: Vec<&'static str>,
}

impl EnrichReport {
    /// Whether `flag` was reported.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    fn flag(&mut self, flag: &'static str) {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }
}

/// Built once at start (loads the geo-IP database into memory), then shared (`Send + Sync`).
pub struct Enricher {
    region: country::Id,
    /// Per country calling code, a bit set of the national number lengths any number type of
    /// that code can have: the "plausible length" test for numbers that fail validity.
    possible_lengths: HashMap<u16, u64>,
    geoip: Option<GeoIp>,
}

struct GeoIp {
    /// The whole file in memory: lookups are a tree walk plus a decode, no I/O.
    reader: maxminddb::Reader<Vec<u8>>,
    ipv4_only: bool,
    /// A failing lookup is logged once; it would otherwise log for every lead.
    warned: AtomicBool,
}

/// The parts of a City (or Country) record we use. Borrowed strings: decoding allocates
/// nothing; only the values written into the lead are copied. Other keys are skipped.
#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow, default)]
    city: Option<Place<'a>>,
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
}

#[derive(Deserialize)]
struct Place<'a> {
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

enum Phone {
    Valid(String, Option<String>),
    Unverified(String, Option<String>),
    Unparsed,
}

impl Enricher {
    /// Validate the config and load the geo-IP database. A missing, unreadable or invalid
    /// database file is an error naming `enrich.geoip_db`; an unknown region one naming
    /// `enrich.default_region`.
    pub fn new(cfg: &EnrichConfig) -> Result<Enricher, EnrichSetupError> {
        let region = parse_region(cfg.default_region.as_deref().unwrap_or(DEFAULT_REGION))?;
        // Also forces libphonenumber's lazily loaded metadata now, not on the first lead.
        let possible_lengths = possible_lengths_by_code();
        let geoip = cfg.geoip_db.as_deref().map(open_geoip).transpose()?;
        Ok(Enricher {
            region,
            possible_lengths,
            geoip,
        })
    }

    /// Whether a geo-IP database is loaded.
    pub fn has_geoip(&self) -> bool {
        self.geoip.is_some()
    }

    /// Enrich `fields` (the envelope's `fields`) in place. Never fails, never removes a field.
    pub fn enrich(&self, fields: &mut Map<String, Value>) -> EnrichReport {
        let mut report = EnrichReport::default();
        enrich_email(fields, &mut report);
        self.enrich_phone(fields, &mut report);
        if let Some(geoip) = &self.geoip {
            geoip.enrich(fields, &mut report);
        }
        enrich_utm(fields, &mut report);
        report
    }

    fn enrich_phone(&self, fields: &mut Map<String, Value>, report: &mut EnrichReport) {
        let text: Cow<'_, str> = match fields.get("phone") {
            None | Some(Value::Null) => return,
            Some(Value::String(s)) => Cow::Borrowed(s.trim()),
            // Form builders send number inputs as JSON numbers; the digits are the number.
            Some(Value::Number(n)) => Cow::Owned(n.to_string()),
            Some(_) => {
                report.flag(flags::PHONE_UNPARSED);
                return;
            }
        };
        if text.is_empty() {
            return;
        }
        let (e164, extension) = match self.normalize_phone(&text) {
            Phone::Valid(e164, ext) => {
                report.flag(flags::PHONE_E164);
                (e164, ext)
            }
            Phone::Unverified(e164, ext) => {
                report.flag(flags::PHONE_UNVERIFIED);
                (e164, ext)
            }
            Phone::Unparsed => {
                report.flag(flags::PHONE_UNPARSED);
                return;
            }
        };
        // Already E.164 (e.g. a second pass): leave `phone_raw` alone so it keeps the original.
        if fields.get("phone").and_then(Value::as_str) == Some(e164.as_str()) {
            return;
        }
        if let Some(original) = fields.insert("phone".to_owned(), Value::String(e164)) {
            fields.insert("phone_raw".to_owned(), original);
        }
        if let Some(ext) = extension {
            fields.insert("phone_extension".to_owned(), Value::String(ext));
        }
    }

    fn normalize_phone(&self, text: &str) -> Phone {
        // The region is only a fallback: a leading `+` (or the region's international prefix)
        // makes libphonenumber use the number's own country code.
        let Ok(number) = phonenumber::parse(Some(self.region), text) else {
            return Phone::Unparsed;
        };
        let extension = number
            .extension()
            .map(|e| e.to_string())
            .filter(|e| !e.is_empty());
        let e164 = number.format().mode(Mode::E164).to_string();
        if number.is_valid() {
            return Phone::Valid(e164, extension);
        }
        let code = number.code().value();
        // NationalNumber's Display keeps Italian-style leading zeros.
        let len = number.national().to_string().len();
        let plausible = self
            .possible_lengths
            .get(&code)
            .is_some_and(|mask| len < 64 && mask & (1u64 << len) != 0);
        if plausible {
            Phone::Unverified(e164, extension)
        } else {
            Phone::Unparsed
        }
    }
}

impl GeoIp {
    fn enrich(&self, fields: &mut Map<String, Value>, report: &mut EnrichReport) {
        let ip = match fields.get("ip") {
            None | Some(Value::Null) => return,
            Some(Value::String(s)) => match parse_ip(s) {
                Some(ip) => ip,
                None => {
                    report.flag(flags::IP_INVALID);
                    return;
                }
            },
            Some(_) => {
                report.flag(flags::IP_INVALID);
                return;
            }
        };
        if self.ipv4_only && ip.is_ipv6() {
            report.flag(flags::GEOIP_MISS);
            return;
        }
        let record = match self.reader.lookup(ip) {
            Ok(found) => found.decode::<GeoRecord<'_>>(),
            Err(e) => Err(e),
        };
        let record = match record {
            Ok(Some(record)) => record,
            Ok(None) => {
                report.flag(flags::GEOIP_MISS);
                return;
            }
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    // The address is not logged (PII); the error says what is wrong with the db.
                    tracing::warn!(error = %crate::error_chain::chain(&e), "geo-IP lookup failed; leads get flag geoip_unavailable (logged once)");
                }
                report.flag(flags::GEOIP_UNAVAILABLE);
                return;
            }
        };
        let city = record.city.and_then(|c| c.names).and_then(|n| n.en);
        let (iso, country_name) = match record.country {
            Some(c) => (c.iso_code, c.names.and_then(|n| n.en)),
            None => (None, None),
        };
        if city.is_none() && iso.is_none() {
            report.flag(flags::GEOIP_MISS);
            return;
        }
        for (key, value) in [
            ("geo_city", city),
            ("geo_country", iso),
            ("geo_country_name", country_name),
        ] {
            if let Some(value) = value {
                fields.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        report.flag(flags::GEOIP_HIT);
    }
}

/// Lenient: surrounding spaces, `1.2.3.4:5678` and `[2001:db8::1]:443` are accepted, and an
/// IPv4-mapped IPv6 address (`::ffff:81.2.69.142`, what dual-stack sockets report) is looked up
/// as the IPv4 address it is.
fn parse_ip(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    let ip = raw
        .parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

fn enrich_email(fields: &mut Map<String, Value>, report: &mut EnrichReport) {
    let Some(value) = fields.get_mut("email") else {
        return;
    };
    match value {
        Value::Null => {}
        Value::String(email) => {
            if normalize_in_place(email, normalize_email) {
                report.flag(flags::EMAIL_NORMALIZED);
            }
            if !plausible_email(email) {
                report.flag(flags::EMAIL_INVALID);
            }
        }
        _ => report.flag(flags::EMAIL_INVALID),
    }
}

fn enrich_utm(fields: &mut Map<String, Value>, report: &mut EnrichReport) {
    for key in NORMALIZED_UTM_FIELDS {
        if let Some(Value::String(tag)) = fields.get_mut(key) {
            if normalize_in_place(tag, |s| s.trim().to_lowercase()) {
                report.flag(flags::UTM_NORMALIZED);
            }
        }
    }
}

/// Trim + lowercase `s` in place with `normalize`; returns whether it changed. The common case,
/// an already normalized ASCII value, is detected without allocating.
fn normalize_in_place(s: &mut String, normalize: impl Fn(&str) -> String) -> bool {
    let already =
        s.is_ascii() && s.trim() == s.as_str() && !s.bytes().any(|b| b.is_ascii_uppercase());
    if already {
        return false;
    }
    let normalized = normalize(s);
    if normalized == *s {
        return false;
    }
    *s = normalized;
    true
}

/// A cheap shape check (the schema's `format: email` is the real gate): one `@`, a non-empty
/// local part, a dotted domain without empty labels, no whitespace or control characters.
fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn parse_region(raw: &str) -> Result<country::Id, EnrichSetupError> {
    let code = raw.trim().to_ascii_uppercase();
    let invalid = || {
        EnrichSetupError {
        key: "default_region",
        message: format!(
            "`{raw}` is not an ISO 3166 alpha-2 region with phone number metadata (e.g. \"US\", \"GB\")"
        ),
        source: None,
    }
    };
    let id: country::Id = code.parse().map_err(|_| invalid())?;
    if DATABASE.by_id(id.as_ref()).is_none() {
        return Err(invalid());
    }
    Ok(id)
}

fn possible_lengths_by_code() -> HashMap<u16, u64> {
    let mut out: HashMap<u16, u64> = HashMap::new();
    for meta in DATABASE.iter() {
        *out.entry(meta.country_code()).or_default() |= length_mask(meta);
    }
    out
}

/// Lengths of the number types a lead gives as a contact number. Special services are left
/// out on purpose: emergency and short codes ("112") reach nobody, and their short lengths (a
/// Canadian UAN has 7 digits) would make a US number missing its area code look plausible.
fn length_mask(meta: &Metadata) -> u64 {
    let d = meta.descriptors();
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.personal_number(),
        d.voip(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|desc| desc.possible_length().iter().copied())
    .filter(|&len| len < 64)
    .fold(0u64, |mask, len| mask | (1u64 << len))
}

fn open_geoip(path: &Path) -> Result<GeoIp, EnrichSetupError> {
    let setup =
        |message: String, source: Box<dyn std::error::Error + Send + Sync>| EnrichSetupError {
            key: "geoip_db",
            message,
            source: Some(source),
        };
    let bytes = std::fs::read(path)
        .map_err(|e| setup(format!("cannot read {}", path.display()), e.into()))?;
    let reader = maxminddb::Reader::from_source(bytes).map_err(|e| {
        setup(
            format!("{} is not a MaxMind DB (.mmdb) file", path.display()),
            e.into(),
        )
    })?;
    let meta = reader.metadata();
    let database_type = meta.database_type.clone();
    if !(database_type.contains("City") || database_type.contains("Country")) {
        // Not fatal (a custom db may use the same layout), but most likely the wrong file.
        tracing::warn!(path = %path.display(), database_type = %database_type, "enrich.geoip_db is not a City/Country database; lookups will likely miss");
    }
    tracing::info!(path = %path.display(), database_type = %database_type, build_epoch = meta.build_epoch, ip_version = meta.ip_version, "geo-IP database loaded");
    let ipv4_only = meta.ip_version == 4;
    Ok(GeoIp {
        reader,
        ipv4_only,
        warned: AtomicBool::new(false),
    })
}

#[cfg(test)]
mod tests;
