//! The PII mask every log line passes through, whatever code emitted it.
//!
//! The writer sees each formatted event whole (tracing-subscriber asks for one writer per event)
//! and masks it before it reaches stderr: emails, phone numbers, IPs (loopback excepted) and
//! card-like digit runs anywhere in a string value, and the whole value of a field whose name
//! says it is personal data (`email`, `phone`, `first_name`, `ip`, secrets ...). JSON lines are
//! masked value by value, so numbers such as sequences and durations stay numbers and the line
//! stays valid JSON; pretty lines are masked as text.

use std::io::Write;

use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

use crate::pii::{mask_named, mask_text};

/// Keys the formatter itself writes; their values are never personal data.
const STRUCTURAL: &[&str] = &["timestamp", "level", "target", "name", "span", "spans"];
/// Our own field names that a name-based guess would misread (`key` is the lead's
/// idempotency key, not a secret): their values still get the text mask.
const OWN_FIELDS: &[&str] = &["key", "sender", "sink", "stage", "outcome", "class"];

/// A `MakeWriter` that masks each event before writing it to stderr (or, for tests, a sink).
#[derive(Clone)]
pub struct MaskingWriter {
    json: bool,
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Stderr,
    Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>),
}

impl MaskingWriter {
    pub fn stderr(json: bool) -> Self {
        MaskingWriter {
            json,
            sink: Sink::Stderr,
        }
    }

    /// Collects masked lines in memory (tests of the mask itself).
    pub fn shared(json: bool, buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> Self {
        MaskingWriter {
            json,
            sink: Sink::Shared(buf),
        }
    }
}

impl<'a> MakeWriter<'a> for MaskingWriter {
    type Writer = MaskedEvent;

    fn make_writer(&'a self) -> MaskedEvent {
        MaskedEvent {
            buf: Vec::with_capacity(256),
            json: self.json,
            sink: self.sink.clone(),
        }
    }
}

/// One event's bytes, masked and written when the formatter is done with it.
pub struct MaskedEvent {
    buf: Vec<u8>,
    json: bool,
    sink: Sink,
}

impl Write for MaskedEvent {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedEvent {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let masked = if self.json {
            mask_json_lines(&text)
        } else {
            mask_text(&text)
        };
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(masked.as_bytes());
            }
            Sink::Shared(buf) => {
                buf.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(masked.as_bytes());
            }
        }
    }
}

/// Masks the string values (and PII-named numbers) of JSON text, keeping everything else as
/// written: key order, numbers, escapes.
pub fn mask_json_lines(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 16);
    let mut i = 0;
    let mut last_key: Option<&str> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(b.len());
                let content = &s[start..end];
                let mut k = end + 1;
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                out.push('"');
                if k < b.len() && b[k] == b':' {
                    out.push_str(content);
                    last_key = Some(content);
                } else {
                    out.push_str(&mask_string(last_key, content));
                    last_key = None;
                }
                if end < b.len() {
                    out.push('"');
                }
                i = end + 1;
            }
            c if c == b'-' || c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let num = &s[start..i];
                let masked = last_key.and_then(|key| {
                    let v = serde_json::from_str::<Value>(num).ok()?;
                    mask_named(key, &v)
                });
                match masked {
                    Some(m) => {
                        out.push('"');
                        out.push_str(&json_escape(&m));
                        out.push('"');
                    }
                    None => out.push_str(num),
                }
                last_key = None;
            }
            c => {
                if c == b',' || c == b'{' || c == b'[' {
                    last_key = None;
                }
                // Everything outside strings and numbers is ASCII in JSON.
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn mask_string(key: Option<&str>, escaped: &str) -> String {
    match key {
        Some(k) if STRUCTURAL.contains(&k) => escaped.to_string(),
        Some(k) if OWN_FIELDS.contains(&k) => mask_text(escaped),
        Some(k) => match mask_named(k, &Value::String(escaped.to_string())) {
            Some(m) => json_escape(&m),
            None => mask_text(escaped),
        },
        None => mask_text(escaped),
    }
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_masked_and_the_line_stays_json() {
        let line = r#"{"timestamp":"2026-11-24T21:16:56.290336Z","level":"INFO","message":"lead from jane.doe@example.com via +1 650 555 4567","seq":1234567,"duration_ms":12.345678,"email":"grace@example.org","first_name":"Zelda","phone":16505554567,"ip":"81.2.69.142","span":{"name":"handle","key":"lr_9f2c0123456789abcdef0123456789ab","sender":"demo"},"addr":"127.0.0.1:8080","note":"say \"hi\" to bob@x.io"}"#;
        let out = mask_json_lines(line);
        let v: Value = serde_json::from_str(&out).expect(&out);
        for clear in [
            "jane.doe@example.com",
            "650 555",
            "grace@example.org",
            "Zelda",
            "16505554567",
            "81.2.69.142",
            "bob@x.io",
        ] {
            assert!(!out.contains(clear), "{clear} in {out}");
        }
        assert_eq!(v["seq"], 1234567);
        assert_eq!(v["duration_ms"], 12.345678);
        assert_eq!(v["span"]["key"], "lr_9f2c0123456789abcdef0123456789ab");
        assert_eq!(v["addr"], "127.0.0.1:8080");
        assert_eq!(v["timestamp"], "2026-11-24T21:16:56.290336Z");
        assert!(v["message"].as_str().unwrap().contains("j***@e***.com"));
        assert!(v["note"].as_str().unwrap().starts_with("say \"hi\" to "));
        assert_eq!(v["first_name"], "Z.");
    }

    #[test]
    fn the_writer_masks_whatever_code_logs() {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(MaskingWriter::shared(true, buf.clone())),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("handle", email = "span.pii@example.com");
            let _g = span.enter();
            tracing::warn!(
                phone = "+44 20 7946 0958",
                "failed for {}",
                "x.y@example.net"
            );
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        for clear in ["span.pii@example.com", "7946", "x.y@example.net"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        let v: Value = serde_json::from_str(text.trim()).expect(&text);
        assert_eq!(v["level"], "WARN");
    }

    #[test]
    fn truncated_or_odd_input_does_not_panic() {
        for s in [
            "{\"a\":\"unterminated",
            "\"",
            "{\"k\":-",
            "[1,2,\"x@y.co\"]\n",
            "",
        ] {
            let _ = mask_json_lines(s);
        }
        assert_eq!(mask_json_lines("[1,\"x@y.co\"]"), "[1,\"x***@y***.co\"]");
    }
}
