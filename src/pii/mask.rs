//! Masked forms of values: emails, phone numbers, IP addresses, names, free text; and the
//! scanner behind `mask_text`, hand-written and linear-time (the crate has no regex
//! dependency), which finds emails, phone-like digit runs and IP addresses inside free text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use super::fields::{number_is_shown, Kind};

/// Lines are cut to this many characters (the last one becomes `…`).
pub const MAX_LINE_CHARS: usize = 80;
pub(super) const MAX_NAME_CHARS: usize = 32;
/// Unknown string fields longer than this are summarized, not shown.
pub(super) const MAX_UNKNOWN_TEXT_CHARS: usize = 24;
pub(super) const MAX_INITIALS: usize = 4;
/// E.164 numbers have at most 15 digits; longer digit runs are not phone numbers (but may be
/// card or account numbers, so they are masked too).
pub(super) const MAX_PHONE_DIGITS: usize = 15;
pub(super) const MIN_PHONE_DIGITS: usize = 7;

pub(super) fn mask_value(kind: Kind, norm: &str, value: &Value) -> String {
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

pub(super) fn mask_string(kind: Kind, raw: &str) -> String {
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
pub(super) fn mask_whole_value(s: &str) -> Option<String> {
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
pub(super) fn first_chars(s: &str, n: usize, total: usize) -> String {
    let keep = if total <= n { total / 2 } else { n };
    s.chars().take(keep).collect()
}

pub(super) fn initials(s: &str) -> String {
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

pub(super) fn plural(n: usize, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Removes control characters and invisible formatting characters (a bidi override can make a
/// preview read differently from what it holds); line breaks and tabs become spaces.
pub(super) fn clean(s: &str) -> String {
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

pub(super) fn display_name(name: &str) -> String {
    let c = clean(name);
    if c.is_empty() {
        return "(no name)".into();
    }
    truncate_chars(c, MAX_NAME_CHARS)
}

pub(super) fn cap_line(line: String) -> String {
    truncate_chars(line, MAX_LINE_CHARS)
}

pub(super) fn truncate_chars(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

// ---------------------------------------------------------------------------------------------
// Emails

pub(super) fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '_' | '%' | '+' | '-')
        || (!c.is_ascii() && c.is_alphanumeric())
}

pub(super) fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-') || (!c.is_ascii() && c.is_alphanumeric())
}

/// Splits a whole value that is an email address into (local part, domain).
pub(super) fn split_email(s: &str) -> Option<(&str, &str)> {
    let (local, domain) = s.split_once('@')?;
    if local.is_empty() || !local.chars().all(is_local_char) || !valid_domain(domain) {
        return None;
    }
    Some((local, domain))
}

pub(super) fn valid_domain(d: &str) -> bool {
    if !d.contains('.') || !d.chars().all(is_domain_char) {
        return false;
    }
    let labels_ok = d
        .split('.')
        .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    let tld = d.rsplit('.').next().unwrap_or("");
    labels_ok && tld.chars().count() >= 2 && tld.chars().all(char::is_alphabetic)
}

pub(super) fn first_char_lower(s: &str) -> String {
    s.chars()
        .find(|c| !matches!(c, '.' | '"'))
        .map(|c| c.to_lowercase().collect())
        .unwrap_or_default()
}

/// `jane.doe@example.com` -> `j***@e***.com`.
pub(super) fn mask_email(local: &str, domain: &str) -> String {
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
pub(super) fn calling_code_len(digits: &str) -> usize {
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
pub(super) fn mask_phone(international: bool, digits: &str) -> String {
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

pub(super) fn mask_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => mask_ipv4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => mask_ipv4(v4),
            None => mask_ipv6(v6),
        },
    }
}

pub(super) fn mask_ipv4(ip: Ipv4Addr) -> String {
    // Loopback and the unspecified address identify nobody, and operators need them in log
    // lines (listen addresses, the embedded NATS URL).
    if ip.is_loopback() || ip.is_unspecified() {
        return ip.to_string();
    }
    let [a, b, _, _] = ip.octets();
    format!("{a}.{b}.x.x")
}

pub(super) fn mask_ipv6(ip: Ipv6Addr) -> String {
    let s = ip.segments();
    format!("{:x}:{:x}:x:x:x:x:x:x", s[0], s[1])
}

// ---------------------------------------------------------------------------------------------
// Free text

/// Masks PII found inside free text (a last error, a validation message): email addresses,
/// phone-like digit runs (7 or more digits, with or without `+`, spaces, `-`, `.`, `/`,
/// parentheses between them; more than 15 digits become `[N digits]`), IPv4 addresses and
/// whitespace/punctuation-delimited IPv6 addresses, in the masked forms of [`preview`](super::preview).
///
/// What it leaves alone, on purpose: digits glued to letters or to `word-` (ids, hashes,
/// `lr_...` keys, UUIDs), dates (`2026-11-20`, `20/11/2026`), times, short numbers (HTTP
/// statuses, counts). It cannot find names or street addresses in prose: free-text *fields* are
/// never shown in previews for that reason. Runs in time linear in the input.
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
pub(super) fn find_emails(s: &str) -> Vec<(usize, usize)> {
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

pub(super) fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether a match may start at `i`: not inside a word. `-` and `.` after a letter or digit
/// continue the word, so the digit groups of `a1b2-0000-4000`, `TeSter-123` or `v1.2.3.4.5`
/// are left alone.
pub(super) fn at_boundary(b: &[u8], i: usize) -> bool {
    if i == 0 {
        return true;
    }
    let prev = b[i - 1];
    if is_word_byte(prev) {
        return false;
    }
    !(matches!(prev, b'-' | b'.') && i >= 2 && b[i - 2].is_ascii_alphanumeric())
}

pub(super) fn is_phone_sep(c: u8) -> bool {
    matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'/')
}

pub(super) struct PhoneRun {
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
pub(super) fn phone_run(b: &[u8], i: usize) -> PhoneRun {
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

pub(super) fn is_date_like(run: &PhoneRun) -> bool {
    run.group_count == 3
        && run.seps[0] == run.seps[1]
        && matches!(run.seps[0], b'-' | b'/' | b'.')
        && matches!(run.groups, [4, 2, 2] | [2, 2, 4])
}

/// The mask for a phone-like run, or `None` if it is not one (too short, a date).
pub(super) fn mask_phone_run(run: &PhoneRun) -> Option<String> {
    if run.count < MIN_PHONE_DIGITS || is_date_like(run) {
        return None;
    }
    if run.count > MAX_PHONE_DIGITS {
        return Some(format!("[{} digits]", run.count));
    }
    Some(mask_phone(run.international, &run.digits))
}

/// An IPv4 address at `i`, not followed by more address-like characters.
pub(super) fn ipv4_at(b: &[u8], i: usize) -> Option<(usize, Ipv4Addr)> {
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

pub(super) fn is_v6_byte(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// An IPv6 address at `i` delimited by characters that cannot be part of one. Starting only
/// where the previous byte is not an address character means no position inside a failed
/// candidate is tried again.
pub(super) fn ipv6_at(s: &str, i: usize) -> Option<(usize, IpAddr)> {
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
pub(super) fn mask_numbers(text: &str, out: &mut String) {
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
