use super::*;
use std::path::Path;

/// The `sinks` part of the config file, read as [`crate::config::Config`] reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(deserialize_with = "deserialize_list")]
    sinks: Vec<SinkConfig>,
}

fn parse(text: &str) -> Result<Vec<SinkConfig>, String> {
    toml::from_str::<File>(text)
        .map(|f| f.sinks)
        .map_err(|e| e.to_string())
}

const ALL_KINDS: &str = r#"
[[sinks]]
name = "crm"
kind = "http"
url = "https://crm.example.com/api/leads"
mode = "upsert"
timeout = "3s"
auth_env = "CRM_TOKEN"
auth_prefix = "Bearer "
[sinks.headers]
X-Source = "leadrouter"

[[sinks]]
name = "analytics"
kind = "segment"
write_key_env = "SEGMENT_WRITE_KEY"
event = "Lead Captured"

[[sinks]]
name = "archive"
kind = "file"
path = "archive/leads.jsonl"
fsync = true

[[sinks]]
name = "bus"
kind = "nats"
subject = "crm.leads.{sender}"
jetstream = true
"#;

#[tokio::test]
async fn ordering_is_append_unless_the_config_says_latest_wins() {
    let ctx = SinkContext {
        data_dir: std::env::temp_dir(),
        nats: None,
        env: Default::default(),
    };
    let sinks = parse(
        "[[sinks]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\n\
         [[sinks]]\nname = \"b\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\nordering = \"latest-wins\"\n",
    )
    .unwrap();
    let a = build(0, &sinks[0], &ctx).await.unwrap();
    let b = build(1, &sinks[1], &ctx).await.unwrap();
    assert_eq!(a.ordering(), SinkOrdering::Append);
    assert_eq!(b.ordering(), SinkOrdering::LatestWins);
    assert_eq!(b.name(), "b");
    let bad = parse("[[sinks]]\nname = \"c\"\nkind = \"file\"\nordering = \"newest\"\n");
    assert!(bad.unwrap_err().contains("latest-wins"));
}

#[test]
fn every_kind_parses_and_validates() {
    let sinks = parse(ALL_KINDS).unwrap();
    validate_configs(&sinks).unwrap();
    match sinks[0].spec(0).unwrap() {
        SinkSpec::Http(h) => {
            assert_eq!(h.mode, HttpMode::Upsert);
            assert_eq!(h.timeout, Duration::from_secs(3));
            assert_eq!(h.auth_header, "Authorization");
            assert_eq!(h.url.as_str(), "https://crm.example.com/api/leads");
        }
        other => panic!("{other:?}"),
    }
    match sinks[1].spec(1).unwrap() {
        SinkSpec::Segment(s) => {
            assert_eq!(s.endpoint.as_str(), "https://api.segment.io/");
            assert_eq!(s.event, "Lead Captured");
            assert_eq!(s.track_exclude, vec!["email", "phone"]);
            assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        }
        other => panic!("{other:?}"),
    }
    match sinks[2].spec(2).unwrap() {
        SinkSpec::File(f) => {
            assert_eq!(f.path, Some(PathBuf::from("archive/leads.jsonl")));
            assert!(f.fsync);
        }
        other => panic!("{other:?}"),
    }
    match sinks[3].spec(3).unwrap() {
        SinkSpec::Nats(n) => {
            assert_eq!(n.subject, "crm.leads.{sender}");
            assert!(n.jetstream);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_name_the_key() {
    let err = parse("[[sinks]]\nname = \"a\"\nkind = \"htp\"\n").unwrap_err();
    assert!(err.contains("unknown sink kind `htp`"), "{err}");

    let err = parse("[[sinks]]\nname = \"a\"\nkind = \"http\"\nurll = \"x\"\n").unwrap_err();
    assert!(err.contains("urll"), "{err}");

    let sinks = parse(
        "[[sinks]]\nname = \"f\"\nkind = \"file\"\n[[sinks]]\nname = \"crm\"\nkind = \"http\"\n",
    )
    .unwrap();
    let err = validate_configs(&sinks).unwrap_err();
    assert_eq!(err.key, "sinks[1].url");
    assert!(
        err.to_string().starts_with("config key `sinks[1].url`"),
        "{err}"
    );

    let sinks = parse("[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"ftp://x/y\"\n").unwrap();
    assert_eq!(validate_configs(&sinks).unwrap_err().key, "sinks[0].url");

    // A key of another kind is refused while parsing (each kind's struct denies unknown
    // keys), with the same key and message validation used to give.
    let err = parse(
        "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\nwrite_key_env = \"K\"\n",
    )
    .unwrap_err();
    assert!(
        err.contains("config key `sinks[0].write_key_env`: not a key of kind `http`"),
        "{err}"
    );

    let sinks = parse(
        "[[sinks]]\nname = \"a\"\nkind = \"file\"\n[[sinks]]\nname = \"a\"\nkind = \"file\"\n",
    )
    .unwrap();
    let err = validate_configs(&sinks).unwrap_err();
    assert_eq!(err.key, "sinks[1].name");
    assert!(err.message.contains("duplicate"), "{err}");

    let sinks = parse("[[sinks]]\nname = \"bad name\"\nkind = \"file\"\n").unwrap();
    assert_eq!(validate_configs(&sinks).unwrap_err().key, "sinks[0].name");

    let sinks = parse("[[sinks]]\nname = \"n\"\nkind = \"nats\"\nsubject = \"a.*\"\n").unwrap();
    assert_eq!(
        validate_configs(&sinks).unwrap_err().key,
        "sinks[0].subject"
    );

    let sinks = parse("[[sinks]]\nname = \"s\"\nkind = \"segment\"\n").unwrap();
    assert_eq!(
        validate_configs(&sinks).unwrap_err().key,
        "sinks[0].write_key_env"
    );

    let sinks = parse(
        "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\ntimeout = \"0s\"\n",
    )
    .unwrap();
    assert_eq!(
        validate_configs(&sinks).unwrap_err().key,
        "sinks[0].timeout"
    );

    let sinks = parse(
        "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\n[sinks.headers]\n\"bad header\" = \"v\"\n",
    )
    .unwrap();
    assert_eq!(
        validate_configs(&sinks).unwrap_err().key,
        "sinks[0].headers.bad header"
    );
}

#[test]
fn missing_secret_names_the_key() {
    let sinks = parse(ALL_KINDS).unwrap();
    let ctx = SinkContext {
        data_dir: PathBuf::from("/nonexistent"),
        nats: None,
        env: HashMap::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(build(0, &sinks[0], &ctx)).err().unwrap();
    assert_eq!(err.key, "sinks[0].auth_env");
    assert!(err.message.contains("CRM_TOKEN"), "{err}");
    let err = rt.block_on(build(1, &sinks[1], &ctx)).err().unwrap();
    assert_eq!(err.key, "sinks[1].write_key_env");
    let err = rt.block_on(build(3, &sinks[3], &ctx)).err().unwrap();
    assert_eq!(err.key, "sinks[3]");
    assert!(err.message.contains("NATS"), "{err}");
}

#[test]
fn a_key_of_another_kind_is_refused_naming_the_key_and_the_sink() {
    for (kind, foreign, kind_key) in [
        ("http", "write_key_env = \"K\"", "url = \"http://x/\""),
        ("segment", "url = \"http://x/\"", "write_key_env = \"K\""),
        ("file", "timeout = \"1s\"", "fsync = true"),
        ("nats", "path = \"x.jsonl\"", "subject = \"a.b\""),
    ] {
        let foreign_key = foreign.split(' ').next().unwrap();
        // Before and after the kind's own keys, and before `kind` itself.
        for text in [
            format!("[[sinks]]\nname = \"s\"\nkind = \"{kind}\"\n{kind_key}\n{foreign}\n"),
            format!("[[sinks]]\nname = \"s\"\n{foreign}\nkind = \"{kind}\"\n{kind_key}\n"),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains(&format!(
                    "config key `sinks[0].{foreign_key}`: not a key of kind `{kind}` (it takes: "
                )),
                "{kind}: {err}"
            );
            // On its own (no index known) the entry is named by its sink name.
            let entry = text.trim_start_matches("[[sinks]]\n");
            let err = toml::from_str::<SinkConfig>(entry).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "sink `s`, key `{foreign_key}`: not a key of kind `{kind}`"
                )),
                "{kind}: {err}"
            );
        }
    }
    // The list of keys a kind takes comes from its struct.
    let err = parse("[[sinks]]\nname = \"a\"\nkind = \"file\"\nurl = \"x\"\n").unwrap_err();
    assert!(err.contains("(it takes: path, fsync)"), "{err}");
    // A bad value names its key too (serde alone would not).
    let err = parse("[[sinks]]\nname = \"a\"\nkind = \"file\"\nfsync = \"yes\"\n").unwrap_err();
    assert!(
        err.contains("config key `sinks[0].fsync`: invalid type"),
        "{err}"
    );
    let err = parse("[[sinks]]\nname = \"a\"\nkind = \"http\"\nmode = \"put\"\n").unwrap_err();
    assert!(
        err.contains("config key `sinks[0].mode`: unknown variant `put`"),
        "{err}"
    );
    let err = parse(
        "[[sinks]]\nname = \"a\"\nkind = \"file\"\n[[sinks]]\nname = \"b\"\nkind = \"nats\"\ntimeout = 5\n",
    )
    .unwrap_err();
    assert!(
        err.contains("config key `sinks[1].timeout`: invalid type"),
        "{err}"
    );
    let err = parse("[[sinks]]\nkind = \"file\"\n").unwrap_err();
    assert!(
        err.contains("config key `sinks[0].name`: required"),
        "{err}"
    );
    let err = parse("[[sinks]]\nname = \"a\"\n").unwrap_err();
    assert!(
        err.contains("config key `sinks[0].kind`: required"),
        "{err}"
    );
}

#[test]
fn each_kind_parses_to_its_struct_and_takes_its_defaults() {
    let sinks = parse(
        "[[sinks]]\nname = \"h\"\nkind = \"http\"\nurl = \"http://crm/x\"\n\
         [[sinks]]\nname = \"s\"\nkind = \"segment\"\nwrite_key_env = \"K\"\n\
         [[sinks]]\nname = \"f\"\nkind = \"file\"\n\
         [[sinks]]\nname = \"n\"\nkind = \"nats\"\nsubject = \"a.{sender}\"\n",
    )
    .unwrap();
    assert_eq!(
        sinks[0].kind,
        SinkKind::Http(HttpSinkConfig {
            url: Some("http://crm/x".into()),
            ..Default::default()
        })
    );
    assert!(sinks.iter().all(|s| s.ordering.is_none()));
    let specs: Vec<SinkSpec> = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| s.spec(i).unwrap())
        .collect();
    assert_eq!(
        specs,
        vec![
            SinkSpec::Http(http::HttpSpec {
                url: reqwest::Url::parse("http://crm/x").unwrap(),
                mode: HttpMode::Create,
                timeout: Duration::from_secs(5),
                auth_header: "Authorization".into(),
                auth_env: None,
                auth_prefix: String::new(),
                headers: vec![],
            }),
            SinkSpec::Segment(segment::SegmentSpec {
                endpoint: reqwest::Url::parse("https://api.segment.io/").unwrap(),
                write_key_env: "K".into(),
                event: "Lead Received".into(),
                track_exclude: vec!["email".into(), "phone".into()],
                timeout: Duration::from_secs(5),
            }),
            SinkSpec::File(file::FileSpec {
                path: None,
                fsync: false,
            }),
            SinkSpec::Nats(nats::NatsSpec {
                subject: "a.{sender}".into(),
                jetstream: false,
                timeout: Duration::from_secs(5),
            }),
        ]
    );
    match &specs[2] {
        SinkSpec::File(f) => assert_eq!(
            f.resolve(Path::new("/d")),
            PathBuf::from("/d/sinks/leads.jsonl")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(SinkConfig::file("f"), sinks[2]);
}

#[test]
fn a_config_renders_back_to_the_toml_it_was_read_from() {
    let sinks = parse(ALL_KINDS).unwrap();
    #[derive(Serialize)]
    struct Out<'a> {
        sinks: &'a [SinkConfig],
    }
    let text = toml::to_string(&Out { sinks: &sinks }).unwrap();
    assert_eq!(parse(&text).unwrap(), sinks, "{text}");
    // Flat, as written by hand: the kind and its keys in the entry's own table.
    assert!(
        text.starts_with(
            "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"https://crm.example.com/api/leads\"\n"
        ),
        "{text}"
    );
    let one = SinkConfig {
        ordering: Some(SinkOrdering::LatestWins),
        ..SinkConfig::new(
            "crm",
            HttpSinkConfig {
                url: Some("http://x/".into()),
                timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
    };
    assert_eq!(
        toml::to_string(&one).unwrap(),
        "name = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\ntimeout = \"2s\"\nordering = \"latest-wins\"\n"
    );
}

#[test]
fn retry_after_seconds_and_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        parse_retry_after("Sun Nov  6 08:49:57 1994", now),
        Some(Duration::from_secs(20))
    );
    // In the past: retry now.
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn statuses_are_classified() {
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use reqwest::StatusCode;
    let none = HeaderMap::new();
    let mut ra = HeaderMap::new();
    ra.insert(RETRY_AFTER, HeaderValue::from_static("7"));

    let e = classify_status("", StatusCode::TOO_MANY_REQUESTS, &ra);
    assert_eq!(e.class(), class::RATE_LIMITED);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert!(!e.is_permanent());
    assert_eq!(e.to_string(), "rate_limited: HTTP 429 Too Many Requests");

    let e = classify_status("track", StatusCode::SERVICE_UNAVAILABLE, &ra);
    assert_eq!(e.class(), class::HTTP_5XX);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(e.message(), "track: HTTP 503 Service Unavailable");

    let e = classify_status("", StatusCode::INTERNAL_SERVER_ERROR, &none);
    assert_eq!((e.class(), e.retry_after()), (class::HTTP_5XX, None));
    let e = classify_status("", StatusCode::REQUEST_TIMEOUT, &none);
    assert_eq!((e.class(), e.is_permanent()), (class::TIMEOUT, false));
    let e = classify_status("", StatusCode::BAD_REQUEST, &none);
    assert_eq!((e.class(), e.is_permanent()), (class::HTTP_4XX, true));
    let e = classify_status("", StatusCode::UNAUTHORIZED, &none);
    assert_eq!((e.class(), e.is_permanent()), (class::HTTP_4XX, true));
    let e = classify_status("", StatusCode::FOUND, &none);
    let detail = body_excerpt(
        b"{\"error\":\"invalid\",\n \"email\":\"Grace.Hopper@Example.COM\",\"phone\":\"+44 20 7946 0958\"}",
    );
    let with = classify_status("", StatusCode::UNPROCESSABLE_ENTITY, &none).with_detail(detail);
    assert_eq!(
        with.to_string(),
        "http_4xx: HTTP 422 Unprocessable Entity: {\"error\":\"invalid\", \"email\":\"g***@e***.com\",\"phone\":\"+44 *** *** 0958\"}"
    );
    assert_eq!(body_excerpt(b" \n "), None);
    assert_eq!(
        body_excerpt("x".repeat(500).as_bytes()).map(|s| s.chars().count()),
        Some(201)
    );
    assert_eq!((e.class(), e.is_permanent()), (class::HTTP_3XX, true));
}
