//! Masked previews of dead-lettered leads, and PII masking inside free text.
//!
//! A DLQ payload is encrypted (see [`super::crypto`]), but an operator triaging the DLQ needs to
//! tell entries apart without the key: which vendor, roughly whose lead, what went wrong. So each
//! entry carries a short preview whose values are masked enough that the preview is not itself
//! PII, yet still recognisable (`j***@e***.com`, `+1 *** *** 4567`, `G. H.`).
//!
//! Masking is decided by field name AND by value shape: a value that looks like an email, a
//! phone number or an IP address is masked whatever its field is called. Rules, by field:
//!
//! | field (normalized name)                                   | string value shown as |
//! |-----------------------------------------------------------|-----------------------|
//! | `email`, `work_email`, anything with `email`/`mail`       | `j***@e***.com` (first char of local part and of domain, TLD kept, lower-cased); `[not an email, N chars]` if it is not one |
//! | `first_name` `last_name` `full_name` `name` `contact` ... | initials `G. H.` (first letter or digit of each word, upper-cased, at most 4); markup is skipped: `<script>` gives `S.` |
//! | `phone`, `mobile`, `tel`, `fax`, ...                      | `+44 *** *** 0958` (country code kept when written with `+`), `*** *** 0142` for national numbers |
//! | `ip`, `ip_address`, `*_ip`, ...                           | `81.2.x.x`; IPv6 keeps 2 groups: `2001:db8:x:x:x:x:x:x` |
//! | `postal_code`, `zip`, `postcode`                          | first 2 chars + `***` (`SW***`): the area, not the street |
//! | `gclid`, `fbclid`, `msclkid`, `*clid`, ...                | first 4 chars + `…`: enough to match an ad click, not to replay it |
//! | `notes`, `message`, `comment`, `address`, `street`, ...   | `[text, 57 chars]`: free text carries PII nobody asked for |
//! | `password`, `token`, `secret`, `*key`, `dob`, `ssn`, `card`, `gender`, ... | `[hidden]` |
//! | `company`, `organization`, ...                            | shown (business data), PII inside masked as in [`mask_text`] |
//! | `country`, `region`/`state`, `city`                       | shown, PII inside masked |
//! | `utm_*`                                                   | shown (campaign tags), PII inside masked |
//! | anything else                                             | strings longer than 24 chars `[text, N chars]`; shorter ones shown with PII inside masked |
//!
//! Values that are not strings: `null` and booleans are shown; numbers only for known non-PII
//! fields (`*score*`, `*budget*`, `*size*`, `form_id`, `campaign_id`, `utm_*`, company and
//! geography fields, ...), phone and postal numbers are masked like strings, any other number is
//! `[number]`; a list of one scalar is shown as that scalar, other lists `[list, N items]`,
//! objects `[object, N keys]`.
//!
//! Markup is NOT escaped here (the console escapes at render time, the CLI prints JSON), but
//! control characters and invisible formatting characters (bidi overrides, zero-width spaces)
//! are removed, and every line is capped at [`MAX_LINE_CHARS`] characters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

/// At most this many lines come from the fields.
pub const MAX_FIELD_LINES: usize = 10;
/// The preview an operator sees should have at least this many lines; see [`with_context`].
pub const MIN_PREVIEW_LINES: usize = 5;
/// Lines are cut to this many characters (the last one becomes `…`).
pub const MAX_LINE_CHARS: usize = 80;
const MAX_NAME_CHARS: usize = 32;
/// Unknown string fields longer than this are summarized, not shown.
const MAX_UNKNOWN_TEXT_CHARS: usize = 24;
const MAX_INITIALS: usize = 4;
/// E.164 numbers have at most 15 digits; longer digit runs are not phone numbers (but may be
/// card or account numbers, so they are masked too).
const MAX_PHONE_DIGITS: usize = 15;
const MIN_PHONE_DIGITS: usize = 7;

/// A masked preview of a lead's fields: at most [`MAX_FIELD_LINES`] lines `name: masked value`,
/// ordered email, names, phone, company, geography (country, region, city, postal code),
/// `utm_*`, then the rest alphabetically. With more fields than lines, the last line is
/// `(N more fields)`.
///
/// A lead with few fields yields few lines (2 fields, 2 lines): the caller adds context such as
/// `sender: demo` or `schema: lead.v1` to reach [`MIN_PREVIEW_LINES`], e.g. with
/// [`with_context`].
pub fn preview(fields: &Map<String, Value>) -> Vec<String> {
    let mut entries: Vec<(SortKey, &String, &Value)> = fields
        .iter()
        .map(|(name, value)| {
            let norm = normalize_name(&clean(name));
            let kind = classify(&norm);
            (sort_key(kind, &norm, name), name, value)
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let overflow = entries.len() > MAX_FIELD_LINES;
    let shown = if overflow {
        MAX_FIELD_LINES - 1
    } else {
        entries.len()
    };
    let mut lines: Vec<String> = entries
        .iter()
        .take(shown)
        .map(|(key, name, value)| {
            let masked = mask_value(key.kind, &key.norm, value);
            cap_line(format!("{}: {masked}", display_name(name)))
        })
        .collect();
    if overflow {
        lines.push(format!("({} more fields)", entries.len() - shown));
    }
    lines
}

/// Puts context lines (`name: value`, e.g. `("sender", "demo")`) before `lines` until there are
/// [`MIN_PREVIEW_LINES`], taking them in the order given; unused context is dropped. Context
/// values are cleaned and masked like unknown fields (they are meant to be non-PII metadata).
pub fn with_context(lines: Vec<String>, context: &[(&str, &str)]) -> Vec<String> {
    let need = MIN_PREVIEW_LINES.saturating_sub(lines.len());
    let mut out: Vec<String> = context
        .iter()
        .take(need)
        .map(|(name, value)| {
            cap_line(format!(
                "{}: {}",
                display_name(name),
                mask_text(&clean(value))
            ))
        })
        .collect();
    out.extend(lines);
    out
}

// ---------------------------------------------------------------------------------------------
// Field classification

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Email,
    Name,
    Phone,
    Ip,
    PostalCode,
    ClickId,
    Sensitive,
    FreeText,
    Utm,
    Company,
    Geo,
    Other,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    rank: u8,
    sub: u8,
    norm: String,
    original: String,
    kind: Kind,
}

/// Lower-case, every run of non-alphanumerics becomes one `_`: `First Name` and `first-name`
/// both become `first_name`, so vendor labels (Webflow) classify like canonical names.
fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

const NAME_FIELDS: &[&str] = &[
    "first_name",
    "firstname",
    "given_name",
    "middle_name",
    "last_name",
    "lastname",
    "family_name",
    "surname",
    "full_name",
    "fullname",
    "name",
    "your_name",
    "display_name",
    "contact",
    "contact_name",
    "contact_person",
];

const CLICK_ID_FIELDS: &[&str] = &[
    "gclid",
    "gcl_id",
    "fbclid",
    "msclkid",
    "dclid",
    "wbraid",
    "gbraid",
    "ttclid",
    "yclid",
    "twclid",
    "li_fat_id",
    "fbc",
    "fbp",
];

const SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "apikey",
    "dob",
    "birthday",
    "birthdate",
    "birth",
    "ssn",
    "passport",
    "iban",
    "card",
    "cvv",
    "cvc",
    "gender",
    "sex",
    "religion",
    "ethnicity",
    "health",
    "salary",
];

const FREE_TEXT_WORDS: &[&str] = &[
    "note",
    "notes",
    "message",
    "messages",
    "msg",
    "comment",
    "comments",
    "address",
    "street",
    "description",
    "details",
    "remarks",
    "body",
    "text",
    "bio",
    "feedback",
    "question",
    "questions",
    "answer",
    "answers",
    "inquiry",
    "enquiry",
    "request",
    "subject",
    "summary",
    "about",
];

const COMPANY_WORDS: &[&str] = &[
    "company",
    "organization",
    "organisation",
    "org",
    "employer",
    "business",
    "firm",
];

fn classify(norm: &str) -> Kind {
    let parts: Vec<&str> = norm.split('_').collect();
    let has = |words: &[&str]| parts.iter().any(|p| words.contains(p));
    // Order matters: the first, most protective match wins (`email_address` is an email, not
    // free text; `google_key` is a secret whatever else it says).
    if has(SENSITIVE_WORDS) || norm.contains("password") || norm.contains("birth") {
        Kind::Sensitive
    } else if norm.contains("email") || has(&["mail", "e_mail"]) {
        Kind::Email
    } else if has(&["ip", "ipv4", "ipv6", "ipaddress", "ipaddr"])
        || norm.contains("ip_address")
        || norm == "remote_addr"
    {
        Kind::Ip
    } else if norm.contains("phone")
        || norm.contains("mobile")
        || has(&["tel", "telephone", "cell", "fax", "whatsapp"])
    {
        Kind::Phone
    } else if norm.contains("postal") || norm.contains("postcode") || norm.contains("zip") {
        Kind::PostalCode
    } else if CLICK_ID_FIELDS.contains(&norm) || norm.ends_with("clid") || norm.ends_with("clkid") {
        Kind::ClickId
    } else if norm.starts_with("utm") {
        Kind::Utm
    } else if has(FREE_TEXT_WORDS)
        || norm.contains("address")
        || norm.contains("street")
        || norm.contains("message")
        || norm.contains("comment")
    {
        Kind::FreeText
    } else if NAME_FIELDS.contains(&norm) {
        Kind::Name
    } else if has(COMPANY_WORDS) || norm.contains("company") {
        Kind::Company
    } else if geo_order(&parts).is_some() {
        Kind::Geo
    } else {
        Kind::Other
    }
}

fn geo_order(parts: &[&str]) -> Option<u8> {
    let has = |words: &[&str]| parts.iter().any(|p| words.contains(p));
    if has(&["country", "countrycode"]) {
        Some(0)
    } else if has(&["region", "state", "province", "county"]) {
        Some(1)
    } else if has(&["city", "town", "locality"]) {
        Some(2)
    } else {
        None
    }
}

fn sort_key(kind: Kind, norm: &str, original: &str) -> SortKey {
    let parts: Vec<&str> = norm.split('_').collect();
    let (rank, sub) = match kind {
        Kind::Email => (0, 0),
        Kind::Name => {
            let sub = match norm {
                "first_name" | "firstname" | "given_name" => 0,
                "middle_name" => 1,
                "last_name" | "lastname" | "family_name" | "surname" => 2,
                "full_name" | "fullname" => 3,
                "name" | "your_name" | "display_name" => 4,
                _ => 5,
            };
            (1, sub)
        }
        Kind::Phone => (2, 0),
        Kind::Company => (3, if norm.contains("company") { 0 } else { 1 }),
        Kind::Geo => (4, geo_order(&parts).unwrap_or(2)),
        Kind::PostalCode => (4, 3),
        Kind::Utm => {
            let sub = match norm {
                "utm_source" => 0,
                "utm_medium" => 1,
                "utm_campaign" => 2,
                "utm_term" => 3,
                "utm_content" => 4,
                _ => 5,
            };
            (5, sub)
        }
        _ => (6, 0),
    };
    SortKey {
        rank,
        sub,
        norm: norm.to_string(),
        original: original.to_string(),
        kind,
    }
}

/// Numbers are shown only where a number cannot be personal data.
fn number_is_shown(kind: Kind, norm: &str) -> bool {
    const ID_FIELDS: &[&str] = &[
        "form_id",
        "campaign_id",
        "adgroup_id",
        "ad_group_id",
        "ad_id",
        "creative_id",
        "page_id",
        "site_id",
        "list_id",
    ];
    const WORDS: &[&str] = &[
        "score",
        "budget",
        "amount",
        "quantity",
        "qty",
        "size",
        "employees",
        "revenue",
        "rating",
        "price",
        "count",
        "version",
        "seats",
        "licenses",
    ];
    match kind {
        Kind::Company | Kind::Geo | Kind::Utm => true,
        Kind::Other => ID_FIELDS.contains(&norm) || norm.split('_').any(|p| WORDS.contains(&p)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Values

fn mask_value(kind: Kind, norm: &str, value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let text = n.to_string();
            match kind {
                Kind::Phone | Kind::PostalCode | Kind::ClickId => mask_string(kind, &text),
                _ if number_is_shown(kind, norm) => text,
                _ => "[number]".into(),
            }
        }
        Value::String(s) => mask_string(kind, s),
        // Unbounce and others wrap every value in a one-element list.
        Value::Array(items) => match items.as_slice() {
            [one] if !one.is_array() && !one.is_object() => mask_value(kind, norm, one),
            _ => format!("[list, {}]", plural(items.len(), "item")),
        },
        Value::Object(o) => format!("[object, {}]", plural(o.len(), "key")),
    }
}

fn mask_string(kind: Kind, raw: &str) -> String {
    let s = clean(raw);
    if s.is_empty() {
        return "(empty)".into();
    }
    let chars = s.chars().count();
    match kind {
        Kind::Sensitive => "[hidden]".into(),
        Kind::FreeText => format!("[text, {}]", plural(chars, "char")),
        Kind::Name => initials(&s),
        Kind::Email => match split_email(&s) {
            Some((local, domain)) => mask_email(local, domain),
            None => match s.split_once('@') {
                Some((local, domain)) => format!(
                    "{}***@{}***",
                    first_char_lower(local),
                    first_char_lower(domain)
                ),
                None => format!("[not an email, {}]", plural(chars, "char")),
            },
        },
        Kind::Phone => {
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            if digits.len() >= MIN_PHONE_DIGITS {
                mask_phone(s.starts_with('+'), &digits)
            } else {
                format!("[not a phone number, {}]", plural(chars, "char"))
            }
        }
        Kind::Ip => match s.parse::<IpAddr>() {
            Ok(ip) => mask_ip(ip),
            Err(_) => format!("[not an IP address, {}]", plural(chars, "char")),
        },
        Kind::PostalCode => format!("{}***", first_chars(&s, 2, chars)),
        Kind::ClickId => format!("{}…", first_chars(&s, 4, chars)),
        Kind::Utm | Kind::Company | Kind::Geo | Kind::Other => {
            if let Some(m) = mask_whole_value(&s) {
                m
            } else if kind == Kind::Other && chars > MAX_UNKNOWN_TEXT_CHARS {
                format!("[text, {}]", plural(chars, "char"))
            } else {
                mask_text(&s)
            }
        }
    }
}

/// Masks a value that is, as a whole, an email, IP address or phone number.
fn mask_whole_value(s: &str) -> Option<String> {
    if let Some((local, domain)) = split_email(s) {
        return Some(mask_email(local, domain));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(mask_ip(ip));
    }
    let b = s.as_bytes();
    let starts = b
        .first()
        .is_some_and(|c| c.is_ascii_digit() || *c == b'+' || *c == b'(');
    if starts {
        let run = phone_run(b, 0);
        if run.end == b.len() {
            return mask_phone_run(&run);
        }
    }
    None
}

/// At most `n` leading characters, but never the whole value: short values show fewer.
fn first_chars(s: &str, n: usize, total: usize) -> String {
    let keep = if total <= n { total / 2 } else { n };
    s.chars().take(keep).collect()
}

fn initials(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut words = 0usize;
    for word in s.split_whitespace() {
        // The first letter or digit, not the first character: `"Ada"`, `(Ada)` and
        // `<b>Ada</b>` are all `A.`/`B.`, never a markup character.
        if let Some(c) = word.chars().find(|c| c.is_alphanumeric()) {
            words += 1;
            if out.len() < MAX_INITIALS {
                out.push(format!("{}.", c.to_uppercase()));
            }
        }
    }
    if out.is_empty() {
        return "[no letters]".into();
    }
    let mut text = out.join(" ");
    if words > MAX_INITIALS {
        text.push_str(" …");
    }
    text
}

fn plural(n: usize, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Removes control characters and invisible formatting characters (a bidi override can make a
/// preview read differently from what it holds); line breaks and tabs become spaces.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' | '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                out.push(' ')
            }
            '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

fn display_name(name: &str) -> String {
    let c = clean(name);
    if c.is_empty() {
        return "(no name)".into();
    }
    truncate_chars(c, MAX_NAME_CHARS)
}

fn cap_line(line: String) -> String {
    truncate_chars(line, MAX_LINE_CHARS)
}

fn truncate_chars(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

// ---------------------------------------------------------------------------------------------
// Emails

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '_' | '%' | '+' | '-')
        || (!c.is_ascii() && c.is_alphanumeric())
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-') || (!c.is_ascii() && c.is_alphanumeric())
}

/// Splits a whole value that is an email address into (local part, domain).
fn split_email(s: &str) -> Option<(&str, &str)> {
    let (local, domain) = s.split_once('@')?;
    if local.is_empty() || !local.chars().all(is_local_char) || !valid_domain(domain) {
        return None;
    }
    Some((local, domain))
}

fn valid_domain(d: &str) -> bool {
    if !d.contains('.') || !d.chars().all(is_domain_char) {
        return false;
    }
    let labels_ok = d
        .split('.')
        .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    let tld = d.rsplit('.').next().unwrap_or("");
    labels_ok && tld.chars().count() >= 2 && tld.chars().all(char::is_alphabetic)
}

fn first_char_lower(s: &str) -> String {
    s.chars()
        .find(|c| !matches!(c, '.' | '"'))
        .map(|c| c.to_lowercase().collect())
        .unwrap_or_default()
}

/// `jane.doe@example.com` -> `j***@e***.com`.
fn mask_email(local: &str, domain: &str) -> String {
    let tld: String = domain
        .rsplit('.')
        .next()
        .unwrap_or("")
        .chars()
        .take(24)
        .flat_map(char::to_lowercase)
        .collect();
    format!(
        "{}***@{}***.{tld}",
        first_char_lower(local),
        first_char_lower(domain)
    )
}

// ---------------------------------------------------------------------------------------------
// Phones and IP addresses

/// ITU calling codes of one and two digits; every other code has three.
fn calling_code_len(digits: &str) -> usize {
    const TWO_DIGIT: &[&str] = &[
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
        "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
        "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
    ];
    if digits.starts_with('1') || digits.starts_with('7') {
        1
    } else if digits.get(..2).is_some_and(|p| TWO_DIGIT.contains(&p)) {
        2
    } else {
        3
    }
}

/// `+1 *** *** 4567`, `*** *** 0142`. The shape is fixed so it does not leak the grouping or
/// length; at least 3 digits stay hidden besides the country code.
fn mask_phone(international: bool, digits: &str) -> String {
    let n = digits.len();
    if n > MAX_PHONE_DIGITS {
        return format!("[{n} digits]");
    }
    let last4 = digits.get(n.saturating_sub(4)..).unwrap_or("");
    if international {
        let cc = calling_code_len(digits);
        if n >= cc + 4 + 3 {
            if let Some(code) = digits.get(..cc) {
                return format!("+{code} *** *** {last4}");
            }
        }
    }
    format!("*** *** {last4}")
}

fn mask_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => mask_ipv4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => mask_ipv4(v4),
            None => mask_ipv6(v6),
        },
    }
}

fn mask_ipv4(ip: Ipv4Addr) -> String {
    // Loopback and the unspecified address identify nobody, and operators need them in log
    // lines (listen addresses, the embedded NATS URL).
    if ip.is_loopback() || ip.is_unspecified() {
        return ip.to_string();
    }
    let [a, b, _, _] = ip.octets();
    format!("{a}.{b}.x.x")
}

fn mask_ipv6(ip: Ipv6Addr) -> String {
    let s = ip.segments();
    format!("{:x}:{:x}:x:x:x:x:x:x", s[0], s[1])
}

// ---------------------------------------------------------------------------------------------
// mask_text: a hand-written, linear-time scanner (the crate has no regex dependency)

/// Masks PII found inside free text (a last error, a validation message): email addresses,
/// phone-like digit runs (7 or more digits, with or without `+`, spaces, `-`, `.`, `/`,
/// parentheses between them; more than 15 digits become `[N digits]`), IPv4 addresses and
/// whitespace/punctuation-delimited IPv6 addresses, in the masked forms of [`preview`].
///
/// What it leaves alone, on purpose: digits glued to letters or to `word-` (ids, hashes,
/// `lr_...` keys, UUIDs), dates (`2026-11-20`, `20/11/2026`), times, short numbers (HTTP
/// statuses, counts). It cannot find names or street addresses in prose: free-text *fields* are
/// never shown in previews for that reason. Runs in time linear in the input.
/// Masks one named value the way a preview line would, when its name says it is personal data
/// (email, phone, IP, a person's name, postal code, secrets); `None` for other names, whose
/// values the caller can still pass through [`mask_text`]. Used by the log writer, which sees
/// field names but not lead schemas.
pub fn mask_named(name: &str, value: &Value) -> Option<String> {
    let norm = normalize_name(&clean(name));
    let kind = classify(&norm);
    match kind {
        Kind::Sensitive | Kind::Email | Kind::Ip | Kind::Phone | Kind::Name | Kind::PostalCode => {
            Some(mask_value(kind, &norm, value))
        }
        _ => None,
    }
}

pub fn mask_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    for (start, end) in find_emails(s) {
        mask_numbers(&s[pos..start], &mut out);
        let span = &s[start..end];
        match span.split_once('@') {
            Some((local, domain)) => out.push_str(&mask_email(local, domain)),
            None => out.push_str(span),
        }
        pos = end;
    }
    mask_numbers(&s[pos..], &mut out);
    out
}

/// Byte spans of email addresses. Each left scan stops at the previous `@` (not a local-part
/// character) and each right scan at the next one, so every character is visited a bounded
/// number of times.
fn find_emails(s: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut last_end = 0;
    let mut from = 0;
    while let Some(rel) = s.get(from..).and_then(|rest| rest.find('@')) {
        let at = from + rel;
        let mut start = at;
        for (i, c) in s[last_end..at].char_indices().rev() {
            if !is_local_char(c) {
                break;
            }
            start = last_end + i;
        }
        // A local part does not start with a dot (`end of sentence.jane@...`).
        while s[start..at].starts_with('.') {
            start += 1;
        }
        let mut end = at + 1;
        for (i, c) in s[at + 1..].char_indices() {
            if !is_domain_char(c) {
                break;
            }
            end = at + 1 + i + c.len_utf8();
        }
        // Sentence punctuation after the address is not part of it.
        while end > at + 1 && (s[..end].ends_with('.') || s[..end].ends_with('-')) {
            end -= 1;
        }
        if start < at && valid_domain(&s[at + 1..end]) {
            spans.push((start, end));
            last_end = end;
            from = end;
        } else {
            from = at + 1;
        }
    }
    spans
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether a match may start at `i`: not inside a word. `-` and `.` after a letter or digit
/// continue the word, so the digit groups of `a1b2-0000-4000`, `TeSter-123` or `v1.2.3.4.5`
/// are left alone.
fn at_boundary(b: &[u8], i: usize) -> bool {
    if i == 0 {
        return true;
    }
    let prev = b[i - 1];
    if is_word_byte(prev) {
        return false;
    }
    !(matches!(prev, b'-' | b'.') && i >= 2 && b[i - 2].is_ascii_alphanumeric())
}

fn is_phone_sep(c: u8) -> bool {
    matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'/')
}

struct PhoneRun {
    /// One past the last digit.
    end: usize,
    /// End of the first digit group, where a short run resumes scanning.
    first_group_end: usize,
    international: bool,
    /// Number of digits in the run.
    count: usize,
    /// The digits, kept only while they could still be a phone number (at most 15).
    digits: String,
    /// Lengths of the first three digit groups and the single-character separators between
    /// them (0 for longer separators): enough to recognise a date.
    groups: [usize; 3],
    group_count: usize,
    seps: [u8; 2],
}

/// Digits with short separator sequences between them, starting at `i` (a digit, `+` or `(`).
fn phone_run(b: &[u8], i: usize) -> PhoneRun {
    let mut j = i;
    let international = b.get(j) == Some(&b'+');
    if international {
        j += 1;
    }
    let mut run = PhoneRun {
        end: i,
        first_group_end: i + 1,
        international,
        count: 0,
        digits: String::new(),
        groups: [0; 3],
        group_count: 0,
        seps: [0; 2],
    };
    loop {
        let sep_start = j;
        // At most two separator characters between groups (`) `, ` - ` is one too many), so
        // two numbers in a list stay two numbers.
        while j < b.len() && is_phone_sep(b[j]) && j - sep_start < 2 {
            j += 1;
        }
        if j >= b.len() || !b[j].is_ascii_digit() {
            break;
        }
        if (1..=2).contains(&run.group_count) {
            run.seps[run.group_count - 1] = if j - sep_start == 1 { b[sep_start] } else { 0 };
        }
        let g = j;
        while j < b.len() && b[j].is_ascii_digit() {
            if run.digits.len() <= MAX_PHONE_DIGITS {
                run.digits.push(char::from(b[j]));
            }
            run.count += 1;
            j += 1;
        }
        if run.group_count == 0 {
            run.first_group_end = j;
        }
        if let Some(slot) = run.groups.get_mut(run.group_count) {
            *slot = j - g;
        }
        run.group_count += 1;
        run.end = j;
    }
    run
}

fn is_date_like(run: &PhoneRun) -> bool {
    run.group_count == 3
        && run.seps[0] == run.seps[1]
        && matches!(run.seps[0], b'-' | b'/' | b'.')
        && matches!(run.groups, [4, 2, 2] | [2, 2, 4])
}

/// The mask for a phone-like run, or `None` if it is not one (too short, a date).
fn mask_phone_run(run: &PhoneRun) -> Option<String> {
    if run.count < MIN_PHONE_DIGITS || is_date_like(run) {
        return None;
    }
    if run.count > MAX_PHONE_DIGITS {
        return Some(format!("[{} digits]", run.count));
    }
    Some(mask_phone(run.international, &run.digits))
}

/// An IPv4 address at `i`, not followed by more address-like characters.
fn ipv4_at(b: &[u8], i: usize) -> Option<(usize, Ipv4Addr)> {
    let mut j = i;
    let mut octets = [0u8; 4];
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if b.get(j) != Some(&b'.') {
                return None;
            }
            j += 1;
        }
        let start = j;
        let mut v: u32 = 0;
        while j < b.len() && b[j].is_ascii_digit() && j - start < 3 {
            v = v * 10 + u32::from(b[j] - b'0');
            j += 1;
        }
        if j == start {
            return None;
        }
        *octet = u8::try_from(v).ok()?;
    }
    let next = b.get(j).copied();
    let after = b.get(j + 1).copied();
    if next.is_some_and(is_word_byte)
        || (next == Some(b'.') && after.is_some_and(|c| c.is_ascii_digit()))
    {
        return None;
    }
    Some((j, Ipv4Addr::from(octets)))
}

fn is_v6_byte(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// An IPv6 address at `i` delimited by characters that cannot be part of one. Starting only
/// where the previous byte is not an address character means no position inside a failed
/// candidate is tried again.
fn ipv6_at(s: &str, i: usize) -> Option<(usize, IpAddr)> {
    let b = s.as_bytes();
    if i > 0 && (is_v6_byte(b[i - 1]) || is_word_byte(b[i - 1])) {
        return None;
    }
    let mut j = i;
    while j < b.len() && is_v6_byte(b[j]) {
        j += 1;
    }
    if b.get(j).copied().is_some_and(is_word_byte) {
        return None;
    }
    let mut end = j;
    while end > i && b[end - 1] == b'.' {
        end -= 1;
    }
    let cand = s.get(i..end)?;
    if cand.bytes().filter(|c| *c == b':').count() < 2 {
        return None;
    }
    cand.parse::<Ipv6Addr>()
        .ok()
        .map(|ip| (end, IpAddr::V6(ip)))
}

/// Masks phone-like runs and IP addresses in `text` (which holds no email), appending to `out`.
fn mask_numbers(text: &str, out: &mut String) {
    let b = text.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let candidate = c.is_ascii_hexdigit() || matches!(c, b'+' | b'(' | b':');
        if !candidate || !at_boundary(b, i) {
            i += 1;
            continue;
        }
        if let Some((end, ip)) = ipv6_at(text, i) {
            out.push_str(&text[copied..i]);
            out.push_str(&mask_ip(ip));
            copied = end;
            i = end;
            continue;
        }
        if c.is_ascii_digit() {
            if let Some((end, ip)) = ipv4_at(b, i) {
                out.push_str(&text[copied..i]);
                out.push_str(&mask_ipv4(ip));
                copied = end;
                i = end;
                continue;
            }
        }
        let starts_phone = c.is_ascii_digit()
            || (matches!(c, b'+' | b'(')
                && b.get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == b'('));
        if !starts_phone {
            i += 1;
            continue;
        }
        let run = phone_run(b, i);
        if run.count == 0 {
            i += 1;
            continue;
        }
        let glued = b.get(run.end).copied().is_some_and(is_word_byte);
        match (glued, mask_phone_run(&run)) {
            (false, Some(mask)) => {
                out.push_str(&text[copied..i]);
                out.push_str(&mask);
                copied = run.end;
                i = run.end;
            }
            // Too few digits: the run is short, so resuming after its first group (where an
            // IPv4 address may start) costs little.
            (false, None) if run.count < MIN_PHONE_DIGITS => i = run.first_group_end,
            // A date, or digits glued to a word: leave the whole run.
            _ => i = run.end,
        }
    }
    out.push_str(&text[copied..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn one(name: &str, value: Value) -> String {
        let mut m = Map::new();
        m.insert(name.to_string(), value);
        let lines = preview(&m);
        assert_eq!(lines.len(), 1);
        lines[0]
            .strip_prefix(&format!("{name}: "))
            .unwrap_or(&lines[0])
            .to_string()
    }

    #[test]
    fn emails() {
        assert_eq!(one("email", json!("jane.doe@example.com")), "j***@e***.com");
        assert_eq!(
            one("work_email", json!("Grace.Hopper@Example.COM ")),
            "g***@e***.com"
        );
        assert_eq!(one("email", json!("x@mail.example.co.uk")), "x***@m***.uk");
        assert_eq!(one("email", json!("grace@example")), "g***@e***");
        assert_eq!(
            one("email", json!("Grace Hopper")),
            "[not an email, 12 chars]"
        );
        // By shape, whatever the field is called.
        assert_eq!(
            one("referrer", json!("jane.doe@example.com")),
            "j***@e***.com"
        );
        assert_eq!(
            one("whatever", json!("katherine.johnson@example.com")),
            "k***@e***.com"
        );
    }

    #[test]
    fn phones() {
        assert_eq!(one("phone", json!("+1 650 555 4567")), "+1 *** *** 4567");
        assert_eq!(one("phone", json!("+442079460958")), "+44 *** *** 0958");
        assert_eq!(one("phone", json!("+44 20 7946 0958")), "+44 *** *** 0958");
        assert_eq!(one("phone", json!("(757) 555-0142")), "*** *** 0142");
        assert_eq!(one("phone", json!("+16505550123")), "+1 *** *** 0123");
        assert_eq!(
            one("phone_number", json!("+353 1 234 5678")),
            "+353 *** *** 5678"
        );
        assert_eq!(one("mobile", json!(16505550123u64)), "*** *** 0123");
        assert_eq!(
            one("phone", json!("12345")),
            "[not a phone number, 5 chars]"
        );
        // Too short to keep the country code and still hide 3 digits.
        assert_eq!(one("phone", json!("+3531234")), "*** *** 1234");
        // By shape.
        assert_eq!(one("ref", json!("+44 20 7946 0958")), "+44 *** *** 0958");
        assert_eq!(one("Phone", json!("757-555-0199")), "*** *** 0199");
    }

    #[test]
    fn names_become_initials() {
        assert_eq!(one("full_name", json!("Grace Hopper")), "G. H.");
        assert_eq!(one("first_name", json!("Ada")), "A.");
        assert_eq!(one("name", json!("katherine  johnson")), "K. J.");
        assert_eq!(one("contact", json!("Mary Jackson")), "M. J.");
        assert_eq!(one("First Name", json!("Dorothy")), "D.");
        assert_eq!(one("name", json!("A B C D E F")), "A. B. C. D. …");
        // Markup is skipped to the first letter or digit; nothing left means no initial.
        assert_eq!(one("name", json!("<script>alert(1)</script>")), "S.");
        assert_eq!(one("name", json!("\"Ada\" (Lovelace)")), "A. L.");
        assert_eq!(one("name", json!("<> !!")), "[no letters]");
        assert_eq!(one("last_name", json!("Éowyn")), "É.");
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(one("ip", json!("81.2.69.142")), "81.2.x.x");
        assert_eq!(one("ip_address", json!("81.2.69.142")), "81.2.x.x");
        assert_eq!(
            one("client_ip", json!("2001:db8:85a3::8a2e:370:7334")),
            "2001:db8:x:x:x:x:x:x"
        );
        assert_eq!(one("ip", json!("::ffff:81.2.69.142")), "81.2.x.x");
        assert_eq!(one("ip", json!("nope")), "[not an IP address, 4 chars]");
        // By shape.
        assert_eq!(one("origin", json!("81.2.69.142")), "81.2.x.x");
    }

    #[test]
    fn free_text_is_summarized() {
        let notes = "My personal mobile is 07700 900123, call after 6pm";
        assert_eq!(one("notes", json!(notes)), "[text, 50 chars]");
        assert_eq!(one("message", json!("ok")), "[text, 2 chars]");
        assert_eq!(one("street_address", json!("1 Main St")), "[text, 9 chars]");
        assert_eq!(one("Anything else?", json!("hi")), "hi");
        // Unknown strings: long ones summarized, short ones shown.
        assert_eq!(
            one(
                "favourite_colour",
                json!("a fairly long answer to a question")
            ),
            "[text, 34 chars]"
        );
        assert_eq!(one("Company Size", json!("51-200")), "51-200");
        assert_eq!(one("page_name", json!("Spring Promo")), "Spring Promo");
    }

    #[test]
    fn business_geo_campaign_fields() {
        assert_eq!(one("company", json!("Eckert-Mauchly")), "Eckert-Mauchly");
        assert_eq!(one("country", json!("GB")), "GB");
        assert_eq!(one("city", json!("London")), "London");
        assert_eq!(one("utm_campaign", json!("q4-demo")), "q4-demo");
        assert_eq!(one("postal_code", json!("23666")), "23***");
        assert_eq!(one("zip", json!(23666)), "23***");
        assert_eq!(one("postcode", json!("SW1A 1AA")), "SW***");
        assert_eq!(one("postal_code", json!("AB")), "A***");
        assert_eq!(one("gclid", json!("Cj0KCQiA")), "Cj0K…");
        assert_eq!(one("gcl_id", json!("TeSter-123-gclid")), "TeSt…");
        assert_eq!(
            one("google_key", json!("configured-shared-key")),
            "[hidden]"
        );
        assert_eq!(one("date_of_birth", json!("1906-12-09")), "[hidden]");
        // PII inside a shown field is still masked.
        assert_eq!(
            one("company", json!("Acme, ask jane@acme.io")),
            "Acme, ask j***@a***.io"
        );
    }

    #[test]
    fn non_string_values() {
        assert_eq!(one("lead_score", json!(87)), "87");
        assert_eq!(one("form_id", json!(40000000000u64)), "40000000000");
        assert_eq!(one("utm_id", json!(12)), "12");
        assert_eq!(one("age", json!(42)), "[number]");
        assert_eq!(one("customer_number", json!(123456)), "[number]");
        assert_eq!(one("email", json!(5)), "[number]");
        assert_eq!(one("is_test", json!(true)), "true");
        assert_eq!(one("company", json!(null)), "null");
        assert_eq!(one("tags", json!(["a", "b"])), "[list, 2 items]");
        assert_eq!(one("extra", json!({"a": 1})), "[object, 1 key]");
        assert_eq!(one("tags", json!([])), "[list, 0 items]");
        // Unbounce wraps each value in a one-element list.
        assert_eq!(
            one("email", json!(["mary.jackson@example.org"])),
            "m***@e***.org"
        );
        assert_eq!(one("first_name", json!(["Mary"])), "M.");
        assert_eq!(one("email", json!("")), "(empty)");
    }

    #[test]
    fn order_is_stable_and_useful() {
        let lines = preview(&obj(json!({
            "zeta": "z",
            "utm_campaign": "q4",
            "utm_source": "google",
            "city": "London",
            "country": "GB",
            "company": "Acme",
            "phone": "+44 20 7946 0958",
            "last_name": "Hopper",
            "first_name": "Grace",
            "email": "grace@example.com",
            "alpha": "a",
        })));
        assert_eq!(
            lines,
            [
                "email: g***@e***.com",
                "first_name: G.",
                "last_name: H.",
                "phone: +44 *** *** 0958",
                "company: Acme",
                "country: GB",
                "city: London",
                "utm_source: google",
                "utm_campaign: q4",
                "(2 more fields)",
            ]
        );
    }

    #[test]
    fn line_counts() {
        let mut big = Map::new();
        for i in 0..20 {
            big.insert(format!("field_{i:02}"), json!(i));
        }
        let lines = preview(&big);
        assert_eq!(lines.len(), MAX_FIELD_LINES);
        assert_eq!(lines[9], "(11 more fields)");
        assert_eq!(lines[0], "field_00: [number]");

        let ten: Map<String, Value> = (0..10).map(|i| (format!("f{i}"), json!("v"))).collect();
        assert_eq!(preview(&ten).len(), 10);
        assert!(preview(&ten).iter().all(|l| !l.contains("more fields")));

        let two = obj(json!({"email": "ada@example.com", "first_name": "Ada"}));
        let lines = preview(&two);
        assert_eq!(lines, ["email: a***@e***.com", "first_name: A."]);
        assert!(preview(&Map::new()).is_empty());

        let padded = with_context(
            lines,
            &[
                ("sender", "demo"),
                ("schema", "lead.v1"),
                ("received_at", "2026-11-24T20:01:02.345Z"),
                ("unused", "x"),
            ],
        );
        assert_eq!(
            padded,
            [
                "sender: demo",
                "schema: lead.v1",
                "received_at: 2026-11-24T20:01:02.345Z",
                "email: a***@e***.com",
                "first_name: A.",
            ]
        );
        let full = with_context(preview(&ten), &[("sender", "demo")]);
        assert_eq!(full.len(), 10);
    }

    #[test]
    fn control_characters_are_stripped_and_lines_capped() {
        assert_eq!(
            one("company", json!("Ac\u{7}me\u{202E}\u{200B} Inc")),
            "Acme Inc"
        );
        assert_eq!(one("first_name", json!("Grace\nHopper")), "G. H.");
        let mut m = Map::new();
        m.insert("comp\u{1b}any".into(), json!("x".repeat(200)));
        let lines = preview(&m);
        assert_eq!(lines[0].chars().count(), MAX_LINE_CHARS);
        assert!(lines[0].starts_with("company: xxx"), "{}", lines[0]);
        assert!(lines[0].ends_with('…'));
        assert!(lines.iter().all(|l| !l.chars().any(char::is_control)));
        // Markup is left for the renderer to escape.
        assert_eq!(one("utm_content", json!("<b>x</b>")), "<b>x</b>");
    }

    #[test]
    fn mask_text_examples() {
        assert_eq!(
            mask_text("My personal mobile is 07700 900123, call after 6pm"),
            "My personal mobile is *** *** 0123, call after 6pm"
        );
        assert_eq!(
            mask_text(
                r#"crm 422: {"email":"Grace.Hopper@Example.COM","phone":"+44 20 7946 0958"}"#
            ),
            r#"crm 422: {"email":"g***@e***.com","phone":"+44 *** *** 0958"}"#
        );
        assert_eq!(
            mask_text("\"jane.doe@example.com\" is not a \"email\""),
            "\"j***@e***.com\" is not a \"email\""
        );
        assert_eq!(
            mask_text("mail jane@x.io. Or (757) 555-0142 / +1-650-555-4567."),
            "mail j***@x***.io. Or *** *** 0142 / +1 *** *** 4567."
        );
        assert_eq!(
            mask_text("from 81.2.69.142:443 and [2001:db8:85a3::8a2e:370:7334]"),
            "from 81.2.x.x:443 and [2001:db8:x:x:x:x:x:x]"
        );
        assert_eq!(mask_text("card 4111 1111 1111 1111"), "card [16 digits]");
        assert_eq!(
            mask_text("listening on 127.0.0.1:8080 and 0.0.0.0:9091"),
            "listening on 127.0.0.1:8080 and 0.0.0.0:9091"
        );
        assert_eq!(
            mask_text("ip=10.1.2.3, 1 2.3.4.5"),
            "ip=10.1.x.x, 1 2.3.x.x"
        );
    }

    #[test]
    fn mask_text_leaves_ids_dates_and_small_numbers() {
        for keep in [
            "HTTP 503 after 3 attempts, retry in 2000 ms",
            "received_at 2026-11-20T14:03:27Z, due 20/11/2026, on 2026.11.20",
            "key lr_9f2c0123456789abcdef0123456789ab seq 12345",
            "page_uuid a1b2c3d4-0000-4000-8000-000000000001",
            "token a3a12ec67a1365927098a606107fac15",
            "nats-server 2.15.1, TeSter-123-gclid, v1.2.3.4",
            "id 6321ca84df3949bfc6752327 at 14:03:27",
            "user@host without tld, a@b, @ alone, trailing @",
            "",
            "ünïcödé … 🙂 text",
        ] {
            assert_eq!(mask_text(keep), keep);
        }
    }

    #[test]
    fn mask_text_is_linear_on_hostile_input() {
        let n = 200_000;
        for unit in [
            "a@", "1 ", "1.", "::", "@a.", "+(", "a.b@c", "9-", "f:", "1.2.3.4.", "x@y.zz ",
        ] {
            let s = unit.repeat(n / unit.len());
            // A quadratic scan would make this test take minutes rather than fail outright;
            // timings themselves belong in benches.
            let out = mask_text(&s);
            assert!(!out.is_empty(), "{unit:?}");
        }
    }

    /// The vendor fixtures' PII never survives in clear.
    #[test]
    fn vendor_fixture_pii_never_appears_in_clear() {
        let typeform: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/vendors/typeform.json"))
                .unwrap();
        let answers = typeform["form_response"]["answers"].as_array().unwrap();
        let answer = |r: &str| -> Value {
            let a = answers.iter().find(|a| a["field"]["ref"] == r).unwrap();
            let t = a["type"].as_str().unwrap();
            a[t].clone()
        };
        let google: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/vendors/google-ads-lead-form.json"
        ))
        .unwrap();
        let column = |id: &str| -> Value {
            google["user_column_data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["column_id"] == id)
                .unwrap()["string_value"]
                .clone()
        };
        let form: Vec<(String, String)> =
            serde_urlencoded::from_str(include_str!("../../tests/fixtures/vendors/unbounce.form"))
                .unwrap();
        let data = &form.iter().find(|(k, _)| k == "data.json").unwrap().1;
        let unbounce: Map<String, Value> = serde_json::from_str(data).unwrap();
        let webflow: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/vendors/webflow-form-submission.json"
        ))
        .unwrap();

        let leads = [
            obj(json!({
                "first_name": answer("first_name"),
                "last_name": answer("last_name"),
                "email": answer("work_email"),
                "phone": answer("phone"),
                "company": answer("company"),
                "notes": answer("notes"),
                // The same values under names that say nothing: masked by shape.
                "x1": answer("work_email"),
                "x2": answer("phone"),
                "utm_source": typeform["form_response"]["hidden"]["utm_source"],
                "gclid": typeform["form_response"]["hidden"]["gclid"],
            })),
            obj(json!({
                "full_name": column("FULL_NAME"),
                "phone": column("PHONE_NUMBER"),
                "email": column("EMAIL"),
                "postal_code": column("POSTAL_CODE"),
                "gclid": google["gcl_id"],
                "form_id": google["form_id"],
            })),
            unbounce,
            webflow["payload"]["data"].as_object().unwrap().clone(),
        ];
        let secrets = [
            "Grace.Hopper@Example.COM",
            "grace.hopper@example.com",
            "Grace",
            "Hopper",
            "+44 20 7946 0958",
            "7946",
            "07700 900123",
            "900123",
            "Katherine",
            "Johnson",
            "katherine.johnson",
            "6505550123",
            "Mary",
            "Jackson",
            "mary.jackson",
            "757-555-0199",
            "81.2.69.142",
            "69.142",
            "Dorothy",
            "Vaughan",
            "dorothy@",
            "555-0142",
            "23666",
        ];
        let mut all = Vec::new();
        for lead in &leads {
            let lines = preview(lead);
            assert!(lines.len() <= MAX_FIELD_LINES);
            all.extend(lines);
            // The whole lead serialized, as it might appear in an error message.
            all.push(mask_text(&Value::Object(lead.clone()).to_string()));
        }
        for raw in [
            include_str!("../../tests/fixtures/vendors/typeform.json"),
            include_str!("../../tests/fixtures/vendors/webflow-form-submission.json"),
        ] {
            all.push(mask_text(raw));
        }
        all.push(mask_text(
            "validation failed: \"Grace.Hopper@Example.COM \" at /email; notes: My personal \
             mobile is 07700 900123; phone +44 20 7946 0958; from 81.2.69.142",
        ));
        let text = all.join("\n");
        for s in secrets {
            // Names only appear in previews (mask_text cannot see names in prose), so check
            // names against preview lines and everything else against all output.
            // A bare postal code in prose is indistinguishable from any other short number,
            // so it too is only promised masked in preview lines.
            let preview_only = s.chars().all(char::is_alphabetic) || s == "23666";
            let haystack = if preview_only {
                all.iter()
                    .filter(|l| !l.starts_with('{') && !l.starts_with('"'))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                text.clone()
            };
            assert!(
                !haystack.to_lowercase().contains(&s.to_lowercase()),
                "{s:?} in clear:\n{haystack}"
            );
        }
        // And the masked forms are there.
        assert!(text.contains("g***@e***.com"));
        assert!(text.contains("+44 *** *** 0958"));
        assert!(text.contains("*** *** 0123"));
        assert!(text.contains("81.2.x.x"));
        assert!(text.contains("K. J."));
    }
}
