//! The shared process harness itself (`leadrouter::devtools::harness`): a nats-server that
//! survives kill -9 with its store, a 3-node cluster that re-elects and takes a node back, a
//! router process's lifecycle, and a config builder whose output the router's parser accepts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, stream};
use leadrouter::config::{Config, EventIdSource};
use leadrouter::devtools::harness::{
    file_sink, free_port, free_ports, http_sink, nats_server_bin, process_alive, segment_sink,
    sender_signer, sign_request, wait_gone, GroupCommitSection, HandlersSection, HarnessError,
    NatsCluster, NatsServer, RaftGroup, RouterConfig, RouterProcess, SenderSpec, Stopped,
    StreamsSection, TelemetrySection,
};
use leadrouter::sinks::SinkKind;

const WAIT: Duration = Duration::from_secs(20);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Retries `publish` until JetStream acknowledges it (a client whose node died reconnects to
/// another one first), or `WAIT` passes.
async fn publish_acked(js: &jetstream::Context, subject: &str, payload: &'static [u8]) {
    let start = Instant::now();
    loop {
        let acked = match js.publish(subject.to_string(), payload.into()).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(()) => return,
            Err(e) => assert!(start.elapsed() < WAIT, "publish to {subject}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nats_server_restarts_on_its_port_with_its_store() {
    let mut nats = NatsServer::start().expect("nats-server starts");
    let port = nats.port();
    assert!(nats.is_alive());
    assert!(nats.store_dir().is_dir());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    publish_acked(&js, "keep.one", b"kept").await;

    let pid = nats.pid().unwrap();
    nats.kill();
    assert!(!nats.is_alive());
    assert!(!leadrouter::devtools::harness::process_alive(pid as i32));

    nats.restart().expect("restarts");
    assert_eq!(nats.port(), port, "same port");
    assert_ne!(nats.pid(), Some(pid));
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut s = js.get_stream("KEEP").await.expect("the stream survived");
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    assert!(std::fs::read_to_string(nats.log_path())
        .unwrap()
        .contains("Server is ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_reelects_after_kill_9_and_takes_the_node_back() {
    let mut cluster = NatsCluster::start(3).expect("cluster starts");
    cluster.wait_ready(WAIT).await.expect("cluster ready");
    assert_eq!(cluster.urls().split(',').count(), 3);
    assert_eq!(cluster.index_of("n2"), Some(1));
    assert_eq!(cluster.index_of("n9"), None);
    assert!((0..3).all(|i| cluster.is_alive(i)));

    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "R3".into(),
        subjects: vec!["r3.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("an R3 stream on three nodes");
    publish_acked(&js, "r3.before", b"1").await;
    let info = js.get_stream("R3").await.unwrap().get_info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let old = cluster
        .stream_leader(&js, "R3")
        .await
        .expect("the stream has a leader");
    let victim = cluster.index_of(&old).expect("the leader is one of ours");

    cluster.kill(victim).unwrap();
    assert!(!cluster.is_alive(victim));
    let new = cluster
        .wait_leader_other_than(&js, RaftGroup::Stream("R3"), &old, WAIT)
        .await
        .expect("a new leader");
    assert_ne!(new, old);
    publish_acked(&js, "r3.after", b"2").await;

    cluster.restart(victim).expect("the killed node restarts");
    assert!(cluster.is_alive(victim));
    cluster
        .wait_current(&js, RaftGroup::Stream("R3"), victim, WAIT)
        .await
        .expect("the restarted node rejoins the stream's group");
    cluster
        .wait_ready(WAIT)
        .await
        .expect("the cluster is whole again");
    let mut s = js.get_stream("R3").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 2);
    assert!(matches!(
        cluster.kill(7),
        Err(HarnessError::NoSuchNode { index: 7, size: 3 })
    ));
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn router_config_renders_what_the_router_parses() {
    let ports = free_ports(2).unwrap();
    let cfg = RouterConfig::new()
        .header("Written by tests/harness.rs.")
        .data_dir("/tmp/lr-harness-data")
        .nats_url("nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303")
        .publish_timeout(Duration::from_millis(1500))
        .intake_listen(addr(ports[0]))
        .admin_listen(addr(ports[1]))
        .admin_token_env("HARNESS_ADMIN_TOKEN")
        .handlers(HandlersSection {
            pool_size: Some(4),
            max_deliver: Some(3),
            ack_wait: Some(Duration::from_secs(3)),
            backoff_base: Some(Duration::from_millis(20)),
            backoff_cap: Some(Duration::from_millis(50)),
            max_ack_pending: Some(64),
            prefetch: Some(8),
            schemas_dir: Some(manifest_dir().join("config/schemas")),
            ..Default::default()
        })
        .telemetry(TelemetrySection {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            otlp_protocol: Some("http/protobuf".into()),
            ..Default::default()
        })
        .dlq_key("k1", "HARNESS_DLQ_KEY")
        .sink(http_sink(
            "crm",
            "http://127.0.0.1:9/leads",
            Some(Duration::from_secs(2)),
        ))
        .sink(file_sink("jsonl", None))
        .sender(
            SenderSpec::standard_webhooks("demo", "HARNESS_SECRET")
                .rate(1000, 1000)
                .fields(&["email", "first_name", "phone"]),
        )
        .extra("[enrich]\ndefault_region = \"GB\"");
    let mut cfg = cfg;
    cfg.streams = StreamsSection {
        replicas: Some(3),
        duplicate_window: Some(Duration::from_secs(60)),
        max_age: Some(Duration::from_secs(7 * 24 * 3600)),
        dlq_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
        idempotency_ttl: Some(Duration::from_secs(3600)),
        durability: Some("fsync".into()),
        group_commit: GroupCommitSection {
            max_batch: Some(200),
            linger: Some(Duration::from_millis(1)),
            ..Default::default()
        },
    };
    let text = cfg.to_toml().unwrap();
    assert!(text.starts_with("# Written by tests/harness.rs."), "{text}");
    // Keys the parser may not know yet are left out unless set.
    for key in [
        "partitions",
        "ownership_timeout",
        "max_redeliveries",
        "group_key",
    ] {
        assert!(!text.contains(key), "{key} rendered unset:\n{text}");
    }
    let env = HashMap::new();
    let parsed = Config::from_toml(&text, Path::new("harness.toml"), &env)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.nats.url.split(',').count(), 3);
    assert_eq!(
        parsed.streams.durability(),
        leadrouter::config::Durability::Fsync
    );
    assert_eq!(parsed.streams.group_commit.max_batch, 200);
    assert_eq!(parsed.streams.group_commit.linger, Duration::from_millis(1));
    assert_eq!(
        parsed.streams.group_commit.min_batch, 16,
        "unset keys keep the default"
    );
    assert_eq!(parsed.nats.publish_timeout, Duration::from_millis(1500));
    assert_eq!(parsed.intake.listen, addr(ports[0]));
    assert_eq!(parsed.admin.listen, addr(ports[1]));
    assert_eq!(parsed.admin.token_env, "HARNESS_ADMIN_TOKEN");
    assert_eq!(parsed.streams.replicas, 3);
    assert_eq!(parsed.streams.duplicate_window, Duration::from_secs(60));
    assert_eq!(parsed.streams.idempotency_ttl, Duration::from_secs(3600));
    assert_eq!(parsed.handlers.pool_size, 4);
    assert_eq!(parsed.handlers.ack_wait, Duration::from_secs(3));
    assert_eq!(parsed.handlers.backoff_base, Duration::from_millis(20));
    assert_eq!(parsed.handlers.prefetch, 8);
    assert_eq!(parsed.sinks.len(), 2);
    let SinkKind::Http(crm) = &parsed.sinks[0].kind else {
        panic!("{:?}", parsed.sinks[0])
    };
    assert_eq!(crm.timeout, Some(Duration::from_secs(2)));
    assert_eq!(parsed.sinks[1].kind.as_str(), "file");
    assert_eq!(parsed.dlq.keys[0].env.as_deref(), Some("HARNESS_DLQ_KEY"));
    assert_eq!(
        parsed.telemetry.traces_endpoint().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(parsed.enrich.default_region.as_deref(), Some("GB"));
    let demo = parsed.sender("demo").expect("the sender");
    assert_eq!(demo.secret_env, vec!["HARNESS_SECRET".to_string()]);
    assert_eq!(demo.rate.per_second, 1000);
    assert_eq!(
        demo.event_id,
        Some(EventIdSource::Header("webhook-id".into()))
    );
    assert_eq!(
        demo.mapping.fields.keys().collect::<Vec<_>>(),
        ["email", "first_name", "phone"]
    );

    // The embedded form, and the empty config (every default).
    let embedded = RouterConfig::new()
        .embedded_nats(free_port().unwrap(), manifest_dir().join("nats"))
        .handlers(HandlersSection {
            enabled: Some(false),
            ..Default::default()
        });
    let parsed = embedded
        .parse(Path::new("embedded.toml"), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.nats.is_embedded());
    assert!(!parsed.handlers.enabled);
    RouterConfig::new()
        .parse(Path::new("empty.toml"), &env)
        .unwrap();
}

#[test]
fn sender_options_and_sinks_render_what_the_router_parses_and_signs_for() {
    let cfg = RouterConfig::new()
        .sender(
            SenderSpec::new("hooks", "hmac-sha256")
                .secret_env("HARNESS_SECRET")
                .event_id_pointer("/event_id")
                .field("email", "$.email"),
        )
        .sender(
            SenderSpec::new("form", "token")
                .secret_env("HARNESS_SECRET")
                .signature("location", "query")
                .signature("name", "key")
                .event_id_header("x-event")
                .format("form")
                .field("email", "$.email"),
        )
        .sink(segment_sink(
            "analytics",
            "HARNESS_WRITE_KEY",
            "http://127.0.0.1:9",
            Some(Duration::from_secs(2)),
        ));
    let env = HashMap::from([("HARNESS_SECRET".to_string(), "s3cret".to_string())]);
    let parsed = cfg
        .parse(Path::new("senders.toml"), &env)
        .unwrap_or_else(|e| panic!("{e}\n{}", cfg.to_toml().unwrap()));
    let hooks = parsed.sender("hooks").unwrap();
    assert_eq!(
        hooks.event_id,
        Some(EventIdSource::Pointer("/event_id".into()))
    );
    let form = parsed.sender("form").unwrap();
    assert_eq!(form.event_id, Some(EventIdSource::Header("x-event".into())));
    assert_eq!(form.signature.name.as_deref(), Some("key"));
    assert_eq!(
        leadrouter::cli::send::content_type(&form.mapping),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(parsed.sinks[0].kind.as_str(), "segment");

    // The signer is the configured sender's, and the signature goes where its scheme puts it.
    let signer = sender_signer(&parsed, "form", &env).unwrap();
    let url = "http://127.0.0.1:9/v1/intake/form";
    let req = sign_request(&signer, url, "e1", b"email=a%40b.c", SystemTime::now(), "x").unwrap();
    assert_eq!(req.url, format!("{url}?key=s3cret"));
    assert_eq!(req.body, b"email=a%40b.c");
    assert_eq!(req.headers["content-type"], "x");
    assert!(sender_signer(&parsed, "nobody", &env).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_process_starts_is_killed_restarts_and_stops_gracefully() {
    let nats = NatsServer::start().expect("nats-server starts");
    let dir = leadrouter::devtools::harness::TempDir::new("harness-test").unwrap();
    let ports = free_ports(2).unwrap();
    let cfg = RouterConfig::new()
        .data_dir(dir.path().join("data"))
        .nats_url(nats.url())
        .intake_listen(addr(ports[0]))
        .admin_listen(addr(ports[1]))
        .handlers(HandlersSection {
            schemas_dir: Some(manifest_dir().join("config/schemas")),
            ..Default::default()
        })
        .sender(SenderSpec::standard_webhooks("demo", "HARNESS_SECRET").fields(&["email"]));
    let mut router = RouterProcess::for_config(
        env!("CARGO_BIN_EXE_leadrouter"),
        &cfg,
        dir.path().join("leadrouter.toml"),
    )
    .unwrap()
    .env("HARNESS_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    router.start(WAIT).await.expect("ready");
    let pid = router.pid().unwrap();
    assert!(router.is_alive());
    assert_eq!(router.nats_pid(), None, "external NATS: no pid file");

    router.kill9();
    assert!(!router.is_alive());
    assert!(!leadrouter::devtools::harness::process_alive(pid as i32));
    router.start(WAIT).await.expect("ready again");
    assert_eq!(router.starts(), 2);
    match router.stop(WAIT).await {
        Stopped::Exited(status) => assert!(status.success(), "{status}"),
        other => panic!("{other}:\n{}", router.log_text()),
    }
    assert_eq!(router.stop(WAIT).await, Stopped::NotRunning);
    assert!(!router.log_lines().is_empty());

    // A router that cannot start is reported with its log, not waited for until the timeout.
    std::fs::write(dir.path().join("bad.toml"), "no_such_key = 1\n").unwrap();
    let mut bad = RouterProcess::new(
        env!("CARGO_BIN_EXE_leadrouter"),
        dir.path().join("bad.toml"),
        addr(free_port().unwrap()),
    )
    .log(dir.path().join("bad.log"));
    let started = Instant::now();
    match bad.start(WAIT).await {
        Err(HarnessError::Exited { log, .. }) => {
            assert_eq!(log, dir.path().join("bad.log"));
            assert!(bad.log_text().contains("no_such_key"), "{}", bad.log_text());
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < WAIT);
}

/// A router with its embedded nats-server: `stop_with_nats` ends both, and a dropped handle
/// (a panicking test or bench) leaves no nats-server behind either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_nats_server_goes_with_its_router() {
    let dir = leadrouter::devtools::harness::TempDir::new("harness-embedded").unwrap();
    let router = |i: usize| {
        let mut cfg = RouterConfig::new()
            .data_dir(dir.path().join(format!("data{i}")))
            .embedded_nats(free_port().unwrap(), manifest_dir().join("nats"))
            .embedded_nats_binary(nats_server_bin().unwrap())
            .intake_listen(addr(free_port().unwrap()))
            .admin_token_env("HARNESS_NO_ADMIN");
        cfg.handlers.enabled = Some(false);
        RouterProcess::for_config(
            env!("CARGO_BIN_EXE_leadrouter"),
            &cfg,
            dir.path().join(format!("r{i}.toml")),
        )
        .unwrap()
    };

    let mut stopped = router(0);
    stopped.start(WAIT).await.expect("ready");
    let nats = stopped.nats_pid().expect("the embedded server's pid file");
    assert!(process_alive(nats));
    let how = stopped.stop_with_nats(WAIT).await;
    assert!(
        matches!(how.router, Stopped::Exited(s) if s.success()),
        "{how}"
    );
    assert!(!how.nats_outlived, "{how}");
    assert!(!process_alive(nats));

    let mut dropped = router(1);
    dropped.start(WAIT).await.expect("ready");
    let nats = dropped.nats_pid().expect("the embedded server's pid file");
    drop(dropped);
    assert!(
        wait_gone(nats, WAIT).await,
        "nats-server {nats} outlived its owner"
    );
}
