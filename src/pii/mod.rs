//! PII masking, for every place that shows lead data to a person: DLQ previews, the console,
//! the log writer, and error texts that quote a vendor's answer.
//!
//! A DLQ payload is encrypted (see `dlq::crypto`), but an operator triaging the DLQ needs to
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

use serde_json::{Map, Value};

mod fields;
mod mask;
#[cfg(test)]
mod tests;

use fields::{classify, normalize_name, sort_key, Kind, SortKey};
pub use mask::mask_text;
pub use mask::MAX_LINE_CHARS;
use mask::{cap_line, clean, display_name, mask_value};

/// At most this many lines come from the fields.
pub const MAX_FIELD_LINES: usize = 10;
/// The preview an operator sees should have at least this many lines; see [`with_context`].
pub const MIN_PREVIEW_LINES: usize = 5;

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
