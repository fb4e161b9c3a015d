//! The one written form of a time in our records, envelopes, logs and answers: RFC 3339, UTC,
//! milliseconds, `Z` (`2026-11-24T21:00:00.000Z`). One shape whoever writes it (the edge, an
//! import, a replay, a sink record), so stored times sort as text and latency math never meets
//! a second format.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` in the written form.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A `SystemTime` in the written form.
pub fn format_system(t: SystemTime) -> String {
    format(DateTime::<Utc>::from(t))
}

/// Now, in the written form.
pub fn now() -> String {
    format(Utc::now())
}

/// Whole seconds, for answers whose times a person reads (a console session's expiry).
pub fn format_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Any RFC 3339 time (other offsets and precisions included), as UTC.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shape_for_every_writer() {
        let t = parse("2026-11-24T22:00:00.5+01:00").unwrap();
        assert_eq!(format(t), "2026-11-24T21:00:00.500Z");
        assert_eq!(
            format_system(SystemTime::from(t)),
            "2026-11-24T21:00:00.500Z"
        );
        assert_eq!(format_secs(t), "2026-11-24T21:00:00Z");
        assert_eq!(now().len(), "2026-11-24T21:00:00.500Z".len());
        assert!(parse("yesterday").is_none());
    }
}
