use super::plan::*;
use super::runner::*;
use super::*;
use crate::error_chain::chain;
use crate::intake::envelope::{body_event_id, email_hash, idempotency_key};
use crate::intake::group_key::KeySource;
use crate::intake::Grouping;
use std::path::Path;
use tokio::io::BufReader;

const NO_ENV: [(&str, &str); 0] = [];

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[[senders]]
id = "demo"
scheme = "standard-webhooks"
secret_env = ["X"]
event_id = {{ header = "webhook-id" }}
[senders.mapping.fields]
email = "$.email"
first_name = "$.first_name"

[[senders]]
id = "ptr"
scheme = "standard-webhooks"
secret_env = ["X"]
event_id = {{ pointer = "/id" }}
schema = "lead.v2"
[senders.mapping.fields]
email = "$.email"

[[senders]]
id = "form"
scheme = "standard-webhooks"
secret_env = ["X"]
[senders.mapping]
format = "form"
[senders.mapping.fields]
email = "$.email"
{extra}"#
    );
    Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap()
}

fn grouping() -> Grouping {
    Grouping {
        key: GroupKey::from_secret(b"import-unit-test-key", KeySource::Env("T".into())),
        partitions: 16,
    }
}

/// A plan with the routers' grouping, as `Job::run` has it.
struct Planned(Plan, Grouping);

impl Planned {
    fn lead(&self, line: &[u8], now: &str) -> Result<Lead, LineError> {
        self.0.lead(&self.1, line, now)
    }
}

fn plan(sender: Option<&str>, pointer: Option<&str>) -> Planned {
    let mut o = ImportOptions::new("x.jsonl");
    o.sender = sender.map(str::to_string);
    o.received_at_pointer = pointer.map(str::to_string);
    Planned(Plan::new(&config(""), &o).unwrap(), grouping())
}

const NOW: &str = "2030-01-01T00:00:00.000Z";

#[test]
fn envelope_without_key_gets_the_edge_key_and_allowlist() {
    let p = plan(None, None);
    let line = br#"{"sender":"demo","source_event_id":"e1","fields":{"email":"A@B.co","ssn":"1","first_name":"A"},"flags":[]}"#;
    let lead = p.lead(line, NOW).unwrap();
    let fields = lead.message.envelope.fields.clone();
    assert_eq!(
        lead.message.envelope.key,
        idempotency_key("demo", "e1", &email_hash(&fields))
    );
    assert!(!fields.contains_key("ssn"));
    assert_eq!(lead.dropped, vec!["ssn".to_string()]);
    assert_eq!(lead.message.envelope.schema, "lead.v1");
    assert_eq!(lead.message.envelope.received_at, NOW);
    let (group, subject) = grouping().place("demo", &fields);
    assert_eq!(lead.message.subject(), subject);
    assert_eq!(lead.message.headers.group, Some(group));
}

#[test]
fn envelope_keeps_given_key_schema_and_time() {
    let p = plan(None, None);
    let line = br#"{"schema":"lead.v9","sender":"demo","source_event_id":"e1","received_at":"2020-01-01T00:00:00Z","key":"lr_abc","fields":{"email":"a@b.co"}}"#;
    let lead = p.lead(line, NOW).unwrap().message;
    assert_eq!(lead.envelope.key, "lr_abc");
    assert_eq!(lead.envelope.schema, "lead.v9");
    assert_eq!(lead.envelope.received_at, "2020-01-01T00:00:00Z");
    assert_eq!(lead.headers.msg_id.as_deref(), Some("lr_abc"));
}

#[test]
fn bad_envelopes_are_rejected_with_reasons() {
    let p = plan(None, None);
    let cases: [(&[u8], &str); 6] = [
        (
            br#"{"sender":"nope","source_event_id":"e","fields":{}}"#,
            "unknown sender `nope`",
        ),
        (br#"{"sender":"demo","fields":{}}"#, "source_event_id"),
        (
            br#"{"sender":"demo","source_event_id":"e","fields":[]}"#,
            "invalid envelope",
        ),
        (
            br#"{"sender":"demo","source_event_id":"e","received_at":"yesterday","fields":{}}"#,
            "RFC 3339",
        ),
        (
            br#"{"sender":"demo","source_event_id":"e","key":"a b","fields":{}}"#,
            "`key`",
        ),
        (b"{not json", "not JSON"),
    ];
    for (line, want) in cases {
        // What the summary and the rejects file say of the line.
        let err = chain(&p.lead(line, NOW).unwrap_err());
        assert!(err.contains(want), "{err} should mention {want}");
    }
    let err = p.lead(br#"{"email":"a@b.co"}"#, NOW).unwrap_err();
    assert!(matches!(err, LineError::NoSender), "{err}");
}

#[test]
fn raw_lines_map_like_the_edge() {
    // Header event id: falls back to the hash of the line's bytes.
    let p = plan(Some("demo"), None);
    let line = br#"{"email":"a@b.co","first_name":"A","notes":"secret"}"#;
    let lead = p.lead(line, NOW).unwrap().message;
    assert_eq!(lead.envelope.source_event_id, body_event_id(line));
    assert!(!lead.envelope.fields.contains_key("notes"));

    let p = plan(Some("ptr"), Some("/at"));
    let lead = p
        .lead(
            br#"{"id":7,"email":"a@b.co","at":"2026-11-20T15:03:27+01:00"}"#,
            NOW,
        )
        .unwrap()
        .message;
    assert_eq!(lead.envelope.source_event_id, "7");
    assert_eq!(lead.envelope.schema, "lead.v2");
    assert_eq!(lead.envelope.received_at, "2026-11-20T14:03:27.000Z");
    let err = p.lead(br#"{"email":"a@b.co","at":"2026-11-20T15:03:27Z"}"#, NOW);
    assert!(matches!(err, Err(LineError::MissingEventId(_))));
    let err = p.lead(br#"{"id":"x","email":"a@b.co"}"#, NOW);
    assert!(matches!(err, Err(LineError::ReceivedAt { .. })));
}

#[test]
fn form_senders_take_a_json_string() {
    let p = plan(Some("form"), None);
    let lead = p.lead(br#""email=a%40b.co&x=1""#, NOW).unwrap().message;
    assert_eq!(lead.envelope.fields["email"], "a@b.co");
    assert_eq!(
        lead.envelope.source_event_id,
        body_event_id(b"email=a%40b.co&x=1")
    );
    assert!(matches!(
        p.lead(br#"{"email":"a@b.co"}"#, NOW),
        Err(LineError::FormNeedsString(_))
    ));
}

#[test]
fn options_are_checked() {
    let cfg = config("");
    let mut o = ImportOptions::new("x");
    o.sender = Some("ghost".into());
    assert!(matches!(
        Plan::new(&cfg, &o),
        Err(ImportError::UnknownSender(_))
    ));
    let mut o = ImportOptions::new("x");
    o.received_at_pointer = Some("at".into());
    assert!(matches!(
        Plan::new(&cfg, &o),
        Err(ImportError::InvalidOption { .. })
    ));
}

#[test]
fn embedded_url_is_the_loopback_port() {
    let mut cfg = config("");
    cfg.nats.embedded.port = 4333;
    assert_eq!(nats_url(&cfg), "nats://127.0.0.1:4333");
    cfg.nats.url = "nats://10.0.0.1:4222".into();
    assert_eq!(nats_url(&cfg), "nats://10.0.0.1:4222");
}

#[test]
fn header_value_strips_control_characters() {
    assert_eq!(header_value(Path::new("/a/b/x\ny.jsonl")), "x?y.jsonl");
}

#[tokio::test]
async fn lines_are_bounded_and_crlf_is_trimmed() {
    let data: &[u8] = b"ab\r\n\ncdefgh\nlast";
    let mut r = BufReader::with_capacity(3, data);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while let Some(l) = read_line_bounded(&mut r, &mut buf, 4).await.unwrap() {
        got.push((buf.clone(), l.len, l.consumed));
    }
    assert_eq!(
        got,
        vec![
            (b"ab".to_vec(), 2, 4),
            (Vec::new(), 0, 1),
            (b"cdefg".to_vec(), 6, 7),
            (b"last".to_vec(), 4, 4),
        ]
    );
}
