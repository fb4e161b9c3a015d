use super::*;
use crate::intake::schemes::SchemeName;
use serde::Serialize;

const NO_ENV: [(&str, &str); 0] = [];

fn minimal_sender() -> &'static str {
    r#"
[[senders]]
id = "demo"
scheme = "standard-webhooks"
secret_env = ["LEADROUTER_DEMO_SECRET"]
[senders.mapping.fields]
email = "$.email"
"#
}

#[test]
fn defaults_apply() {
    let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &NO_ENV).unwrap();
    assert!(cfg.nats.is_embedded());
    assert_eq!(cfg.streams.duplicate_window, Duration::from_secs(120));
    assert_eq!(cfg.streams.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(cfg.intake.max_body_bytes, 65536);
    assert_eq!(cfg.senders[0].tolerance, Duration::from_secs(300));
    assert_eq!(cfg.intake.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:9091");
}

#[test]
fn env_overrides_win() {
    let env = [
        ("LEADROUTER_NATS_URL", "nats://10.0.0.1:4222"),
        ("LEADROUTER_INTAKE_LISTEN", "127.0.0.1:18080"),
        ("LEADROUTER_DATA_DIR", "/tmp/x"),
    ];
    let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &env).unwrap();
    assert_eq!(cfg.nats.url, "nats://10.0.0.1:4222");
    assert_eq!(cfg.intake.listen.port(), 18080);
    assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn errors_name_the_key() {
    let text = format!("[streams]\nduplicate_window = \"8d\"\n{}", minimal_sender());
    let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
    assert!(
        err.to_string().contains("streams.duplicate_window"),
        "{err}"
    );

    let text = minimal_sender().replace("\"demo\"", "\"Demo Sender\"");
    let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
    assert!(err.to_string().contains("senders[0].id"), "{err}");

    // A parse error names the key in its cause, the TOML parser's message.
    let err =
        Config::from_toml("[intake]\nlisten = 5\n", Path::new("t.toml"), &NO_ENV).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let shown = crate::error_chain::chain(&err);
    assert!(shown.starts_with("config file t.toml: "), "{shown}");
    assert!(shown.contains("listen"), "{shown}");

    let err = Config::from_toml("[nats]\nurl = \"http://x\"\n", Path::new("t.toml"), &NO_ENV)
        .unwrap_err();
    assert!(err.to_string().contains("nats.url"), "{err}");
}

#[test]
fn unknown_keys_are_rejected() {
    let err =
        Config::from_toml("[intake]\nlisen = \"x\"\n", Path::new("t.toml"), &NO_ENV).unwrap_err();
    let shown = crate::error_chain::chain(&err);
    assert!(shown.contains("unknown field `lisen`"), "{shown}");
}

#[test]
fn every_event_id_form_parses_to_its_variant() {
    let load = |event_id: &str| {
        let text = minimal_sender().replace(
            "[senders.mapping.fields]",
            &format!("{event_id}\n[senders.mapping.fields]"),
        );
        Config::from_toml(&text, Path::new("t.toml"), &NO_ENV)
            .map(|c| c.senders[0].event_id.clone())
    };
    assert_eq!(load("").unwrap(), None);
    for (toml, want) in [
        (
            "event_id = { header = \"webhook-id\" }",
            EventIdSource::Header("webhook-id".into()),
        ),
        (
            "event_id = { pointer = \"/lead_id\" }",
            EventIdSource::Pointer("/lead_id".into()),
        ),
        (
            "event_id = { path = \"$.payload.id\" }",
            EventIdSource::Path("$.payload.id".into()),
        ),
        (
            "[senders.event_id]\nheader = \"X-Event\"",
            EventIdSource::Header("X-Event".into()),
        ),
        (
            "[senders.event_id]\npath = \"$.event_id\"",
            EventIdSource::Path("$.event_id".into()),
        ),
        // The whole document is a pointer too.
        (
            "event_id = { pointer = \"\" }",
            EventIdSource::Pointer(String::new()),
        ),
    ] {
        assert_eq!(load(toml).unwrap(), Some(want), "{toml}");
    }
}

#[test]
fn a_bad_event_id_names_the_key_and_the_keys_it_takes() {
    let err = |event_id: &str| {
        let text = minimal_sender().replace(
            "[senders.mapping.fields]",
            &format!("{event_id}\n[senders.mapping.fields]"),
        );
        // As shown: the parse error is the cause under "config file t.toml".
        crate::error_chain::chain(
            &Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err(),
        )
    };
    let e = err("event_id = { header = \"webhook-id\", path = \"$.id\" }");
    assert!(
        e.contains("`event_id`: set exactly one of header, pointer, path (found header and path)"),
        "{e}"
    );
    // toml points at the line, so the sender is the one written there.
    assert!(e.contains("event_id = { header"), "{e}");
    let e = err("event_id = {}");
    assert!(e.contains("(found none)"), "{e}");
    let e = err("event_id = { heder = \"webhook-id\" }");
    assert!(e.contains("unknown field `heder`"), "{e}");
    assert!(e.contains("`header`, `pointer`, `path`"), "{e}");
    let e = err("event_id = { pointer = \"lead_id\" }");
    assert!(
        e.contains("config key `senders[0].event_id.pointer`"),
        "{e}"
    );
}

#[test]
fn event_id_renders_as_the_table_it_is_read_from() {
    #[derive(Serialize, Deserialize)]
    struct T {
        event_id: EventIdSource,
    }
    for ev in [
        EventIdSource::Header("webhook-id".into()),
        EventIdSource::Pointer("/id".into()),
        EventIdSource::Path("$.id".into()),
    ] {
        let text = toml::to_string(&T {
            event_id: ev.clone(),
        })
        .unwrap();
        assert_eq!(toml::from_str::<T>(&text).unwrap().event_id, ev, "{text}");
    }
    let text = toml::to_string(&T {
        event_id: EventIdSource::Header("webhook-id".into()),
    })
    .unwrap();
    assert_eq!(text, "[event_id]\nheader = \"webhook-id\"\n");
}

#[test]
fn missing_secrets_are_named() {
    let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &NO_ENV).unwrap();
    let r = resolve_secrets(&cfg.senders[0], &NO_ENV);
    assert!(r.secrets.is_empty());
    assert_eq!(
        r.missing,
        vec!["env var LEADROUTER_DEMO_SECRET".to_string()]
    );
}

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
    let cfg = Config::load(&path, &NO_ENV).unwrap();
    let demo = cfg.sender("demo").expect("demo sender");
    assert_eq!(demo.scheme, SchemeName::StandardWebhooks);
    assert_eq!(demo.secret_env, vec!["LEADROUTER_DEMO_SECRET".to_string()]);
}

#[test]
fn telemetry_is_off_by_default_and_follows_the_otel_env() {
    let load = |toml: &str, env: &[(&str, &str)]| {
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = format!("{toml}\n{}", minimal_sender());
        Config::from_toml(&text, Path::new("t.toml"), &env)
    };
    let cfg = load("", &[]).unwrap();
    assert_eq!(cfg.telemetry.traces_endpoint(), None);
    assert_eq!(cfg.telemetry.service_name, "leadrouter");
    assert_eq!(cfg.telemetry.otlp_protocol, OtlpProtocol::Grpc);

    let file = "[telemetry]\notlp_endpoint = \"http://c:4317\"\nsample_ratio = 0.5";
    let cfg = load(file, &[]).unwrap();
    assert_eq!(
        cfg.telemetry.traces_endpoint().as_deref(),
        Some("http://c:4317")
    );
    let cfg = load(file, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap();
    assert_eq!(
        cfg.telemetry.traces_endpoint().as_deref(),
        Some("http://c:4317/v1/traces")
    );
    let cfg = load(
        file,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "lr-edge"),
        ],
    )
    .unwrap();
    assert_eq!(
        cfg.telemetry.traces_endpoint().as_deref(),
        Some("http://env:4318/v1/traces")
    );
    assert_eq!(cfg.telemetry.service_name, "lr-edge");
    let cfg = load(
        "",
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://x/custom/path",
        )],
    )
    .unwrap();
    assert_eq!(
        cfg.telemetry.traces_endpoint().as_deref(),
        Some("https://x/custom/path")
    );
    let cfg = load(file, &[("OTEL_SDK_DISABLED", "true")]).unwrap();
    assert_eq!(cfg.telemetry.traces_endpoint(), None);

    let err = load(file, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
    assert!(
        err.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{err}"
    );
    let err = load("[telemetry]\nsample_ratio = 2.0", &[]).unwrap_err();
    assert!(err.to_string().contains("telemetry.sample_ratio"), "{err}");
    let err = load("[telemetry]\notlp_endpoint = \"c:4317\"", &[]).unwrap_err();
    assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
}

#[test]
fn a_bad_dlq_key_names_the_setting_and_keeps_its_cause() {
    let text = format!(
        "[dlq]\nkeys = [{{ id = \"bad id!\", env = \"X\" }}]\n{}",
        minimal_sender()
    );
    let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::DlqKeys(crate::dlq::crypto::KeyError::BadId { .. })
        ),
        "{err:?}"
    );
    let shown = crate::error_chain::chain(&err);
    assert!(
        shown.starts_with("config key `dlq.keys`: [dlq] keys: key id \"bad id!\" is invalid"),
        "{shown}"
    );
}

#[test]
fn durability_defaults_to_lazy_and_takes_fsync() {
    let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &NO_ENV).unwrap();
    assert_eq!(cfg.streams.durability(), Durability::Lazy);
    assert!(cfg.streams.group_commit.enabled);

    let text = format!("[streams]\ndurability = \"fsync\"\n{}", minimal_sender());
    let cfg = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap();
    assert_eq!(cfg.streams.durability(), Durability::Fsync);

    let text = format!(
        "[streams]\ndurability = \"sometimes\"\n{}",
        minimal_sender()
    );
    let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
    let shown = crate::error_chain::chain(&err);
    assert!(
        shown.contains("durability") && shown.contains("fsync"),
        "{shown}"
    );
}

#[test]
fn group_commit_bounds_name_the_key() {
    for (table, key) in [
        ("max_batch = 1001", "streams.group_commit.max_batch"),
        ("min_batch = 1", "streams.group_commit.min_batch"),
        (
            "max_batch = 10\nmin_batch = 11",
            "streams.group_commit.min_batch",
        ),
        ("max_in_flight = 0", "streams.group_commit.max_in_flight"),
        ("linger = \"1s\"", "streams.group_commit.linger"),
    ] {
        let text = format!("[streams.group_commit]\n{table}\n{}", minimal_sender());
        let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
        assert!(err.to_string().contains(key), "{table}: {err}");
    }
    let text = format!(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nmonitor_url = \"127.0.0.1:8222\"\n{}",
        minimal_sender()
    );
    let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
    assert!(err.to_string().contains("nats.monitor_url"), "{err}");
}

fn edge(extra: &str) -> String {
    format!(
        "[edge]\nname = \"eu1\"\nhub = \"nats-leaf://hub.example:7422\"\n{extra}\n{}",
        minimal_sender()
    )
}

fn refusal(text: &str) -> String {
    Config::from_toml(text, Path::new("t.toml"), &NO_ENV)
        .unwrap_err()
        .to_string()
}

#[test]
fn an_edge_is_sized_for_its_outage_and_refuses_what_belongs_to_the_hub() {
    let cfg = Config::from_toml(&edge(""), Path::new("t.toml"), &NO_ENV).unwrap();
    let e = cfg.edge.as_ref().expect("edge");
    assert_eq!(e.domain(), "edge-eu1");
    // 24 h at 10 leads/s, 4 KiB each.
    assert_eq!(e.max_msgs(), 864_000);
    assert_eq!(e.max_bytes(), 864_000 * 4096);
    let cfg = Config::from_toml(
        &edge("outage = \"1h\"\nrate = 2.5"),
        Path::new("t.toml"),
        &NO_ENV,
    )
    .unwrap();
    assert_eq!(cfg.edge.as_ref().map(EdgeConfig::max_msgs), Some(9_000));

    for (extra, key) in [
        ("name = \"EU 1\"", "edge.name"),
        ("rate = 0", "edge.rate"),
        ("outage = \"0s\"", "edge.outage"),
        ("hub_user = \"edge\"", "edge.hub_password_env"),
        ("hub_password_env = \"P\"", "edge.hub_user"),
        ("hub_tls_cert_file = \"c.pem\"", "edge.hub_tls_cert_file"),
    ] {
        let text = edge(extra).replacen(
            "name = \"eu1\"\n",
            "",
            usize::from(extra.starts_with("name")),
        );
        let err = refusal(&text);
        assert!(err.contains(key), "{extra}: {err}");
    }
    let err =
        refusal(&edge("").replace("nats-leaf://hub.example:7422", "nats-leaf://u:p@hub:7422"));
    assert!(err.contains("credentials out of the URL"), "{err}");
    let err = refusal(&edge("").replace("nats-leaf://", "http://"));
    assert!(err.contains("not a leaf node URL"), "{err}");
    let err = refusal(&edge("").replace("hub = \"nats-leaf://hub.example:7422\"\n", ""));
    assert!(err.contains("edge.hub"), "{err}");
    let err = refusal(&format!(
        "[nats]\nurl = \"nats://10.0.0.1:4222\"\n{}",
        edge("")
    ));
    assert!(err.contains("embedded nats-server only"), "{err}");
    // Sinks, a hub list or a leaf listener have no place at an edge.
    let err = refusal(&format!(
        "{}\n[[sinks]]\nname = \"crm\"\nkind = \"file\"\n",
        edge("")
    ));
    assert!(err.contains("intake only"), "{err}");
    let err = refusal(&format!("[hub]\nedges = [\"us1\"]\n{}", edge("")));
    assert!(err.contains("an edge or a hub, not both"), "{err}");
}

#[test]
fn a_hub_lists_valid_edges_and_never_opens_its_leaf_port_without_a_password() {
    let hub =
        |nats: &str, edges: &str| format!("{nats}\n[hub]\nedges = {edges}\n{}", minimal_sender());
    let cfg = Config::from_toml(
        &hub(
            "[nats.embedded]\nleafnode_port = 7422",
            "[\"eu1\", \"us1\"]",
        ),
        Path::new("t.toml"),
        &NO_ENV,
    )
    .unwrap();
    assert_eq!(cfg.hub.edges, ["eu1", "us1"]);
    assert_eq!(cfg.nats.embedded.leafnode_host, "127.0.0.1");
    assert_eq!(cfg.hub.link_alert_after, Duration::from_secs(300));

    let err = refusal(&hub("", "[\"eu1\"]"));
    assert!(err.contains("nats.embedded.leafnode_port"), "{err}");
    let err = refusal(&hub(
        "[nats.embedded]\nleafnode_port = 7422",
        "[\"eu1\", \"eu1\"]",
    ));
    assert!(err.contains("listed twice"), "{err}");
    let err = refusal(&hub("[nats.embedded]\nleafnode_port = 7422", "[\"EU\"]"));
    assert!(err.contains("hub.edges[0]"), "{err}");
    let err = refusal(&hub(
        "[nats.embedded]\nleafnode_port = 7422\nleafnode_host = \"0.0.0.0\"",
        "[\"eu1\"]",
    ));
    assert!(err.contains("leafnode_password_env"), "{err}");
    Config::from_toml(
        &hub(
            "[nats.embedded]\nleafnode_port = 7422\nleafnode_host = \"0.0.0.0\"\nleafnode_password_env = \"LEAF_PASSWORD\"",
            "[\"eu1\"]",
        ),
        Path::new("t.toml"),
        &NO_ENV,
    )
    .unwrap();
    // An external hub server has its own leaf listener: nothing to set here.
    Config::from_toml(
        &hub("[nats]\nurl = \"nats://10.0.0.1:4222\"", "[\"eu1\"]"),
        Path::new("t.toml"),
        &NO_ENV,
    )
    .unwrap();
}
