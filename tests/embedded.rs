//! The embedded default: `serve` runs its own nats-server, restarts it when it dies, and stops it
//! on the way out.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use leadrouter::devtools::harness::{signal, Signal};
use leadrouter::queue::embedded::{EmbeddedNats, EmbeddedSpec};

use common::free_port;

fn alive(pid: u32) -> bool {
    leadrouter::devtools::harness::process_alive(pid as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_a_dead_child() {
    let dir = tempfile::tempdir().unwrap();
    let spec = EmbeddedSpec {
        binary: common::nats_server_bin(),
        template: common::manifest_dir().join("nats/nats-server.conf.tmpl"),
        port: free_port(),
        dir: dir.path().join("nats"),
        ready_timeout: Duration::from_secs(30),
        store_key: None,
        sync_always: false,
        domain: None,
        leafnodes: None,
    };
    let nats = EmbeddedNats::start(spec)
        .await
        .expect("embedded nats starts");
    let mut status = nats.status();
    let first = status.borrow().pid.expect("child pid");
    assert!(alive(first));
    // The rendered config and pid file live under the data dir.
    assert!(dir.path().join("nats/nats-server.conf").is_file());

    signal(first as i32, Signal::KILL);
    let restarted = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.running && s.restarts == 1 && s.pid != Some(first)),
    )
    .await
    .expect("restarted in time")
    .expect("status channel open")
    .clone();
    let second = restarted.pid.unwrap();
    let client = async_nats::connect(nats.url())
        .await
        .expect("restarted server answers");
    let js = async_nats::jetstream::new(client);
    js.query_account()
        .await
        .expect("JetStream enabled after restart");

    nats.stop().await;
    assert!(!alive(second), "stop() terminates the child");
}

#[test]
fn serve_runs_its_own_nats_server_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let intake_port = free_port();
    let nats_port = free_port();
    let bin = env!("CARGO_BIN_EXE_leadrouter");
    let root = common::manifest_dir();
    let envs = [
        ("LEADROUTER_DATA_DIR", dir.path().display().to_string()),
        (
            "LEADROUTER_INTAKE_LISTEN",
            format!("127.0.0.1:{intake_port}"),
        ),
        ("LEADROUTER_EMBEDDED_NATS_PORT", nats_port.to_string()),
        ("LEADROUTER_DEMO_SECRET", common::DEMO_SECRET.to_string()),
        (
            "LEADROUTER_NATS_SERVER_BIN",
            common::nats_server_bin().display().to_string(),
        ),
        ("LEADROUTER_LOG", "info".to_string()),
    ];
    let mut serve = Command::new(bin)
        .arg("serve")
        .current_dir(&root)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("LEADROUTER_NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = serve.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // The JSON log line `leadrouter serving` is written once the intake listens (the human
    // banner is only for a terminal). A serve that dies first ends the loop with EOF.
    let mut saw_ready = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("\"message\":\"leadrouter serving\"") {
            saw_ready = true;
            break;
        }
    }
    assert!(saw_ready, "serve logged that it is serving");
    std::thread::spawn(move || for _ in lines {});

    let pid_file = dir.path().join("nats/nats-server.pid");
    let nats_pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("embedded nats-server pid file")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(nats_pid), "embedded nats-server runs");
    assert!(
        dir.path().join("nats/jetstream").is_dir(),
        "store under data/"
    );

    // A newcomer's first request, through `leadrouter send`.
    let out = Command::new(bin)
        .args(["send", "--sender", "demo"])
        .arg(root.join("config/demo-lead.json"))
        .current_dir(&root)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "send failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP 202"), "{stdout}");
    assert!(stdout.contains("\"duplicate\":false"), "{stdout}");

    signal(serve.id() as i32, Signal::TERM);
    let status = serve.wait().unwrap();
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
    assert!(!alive(nats_pid), "embedded nats-server stopped with serve");
}

#[test]
fn send_without_secret_says_what_to_set() {
    let root = common::manifest_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .args(["send", "--sender", "demo"])
        .arg(root.join("config/demo-lead.json"))
        .current_dir(&root)
        .env_remove("LEADROUTER_DEMO_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LEADROUTER_DEMO_SECRET"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
}

#[test]
fn bad_config_names_the_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[streams]\nduplicate_window = \"30d\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("streams.duplicate_window"), "{err}");
}

/// With a store key the embedded server encrypts its whole store; restarted with a wrong key it
/// would hide the streams and let us create empty ones, so `serve` must refuse instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_encryption_hides_leads_on_disk_and_a_wrong_key_refuses_to_start() {
    let mut cfg = common::demo_config()
        .embedded_nats(free_port(), common::manifest_dir().join("nats"))
        .embedded_nats_binary(common::nats_server_bin());
    cfg.handlers.enabled = Some(false);
    let mut env = common::test_env();
    env.insert(
        "LEADROUTER_NATS_STORE_KEY".into(),
        "right-key-7f3a9c0e5b1d4e2f8a6c".into(),
    );
    let app = common::App::start_with("embedded", cfg, env.clone()).await;
    let email = "store.encryption.probe@example.net";
    let body =
        serde_json::to_vec(&serde_json::json!({"email": email, "first_name": "Quinella"})).unwrap();
    app.accept("demo", "evt-store-1", &body).await;
    let common::App {
        service, data, cfg, ..
    } = app;
    service.shutdown().await;

    let store = cfg.nats_store_dir();
    let files = common::walk(&store);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("LEADS")),
        "the LEADS stream is on disk"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for needle in [email.as_bytes(), b"Quinella".as_slice()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a lead field in clear",
                f.display()
            );
        }
    }
    let rendered = std::fs::read_to_string(store.join("nats-server.conf")).unwrap();
    assert!(rendered.contains("cipher: chachapoly"), "{rendered}");
    assert!(
        !rendered.contains("right-key"),
        "the key never goes into the rendered config"
    );

    // Wrong key: a clear refusal naming the hidden streams, and no empty LEADS created.
    let mut wrong = env.clone();
    wrong.insert(
        "LEADROUTER_NATS_STORE_KEY".into(),
        "wrong-key-0000000000000000".into(),
    );
    let err = match leadrouter::service::Service::start(&cfg, &wrong).await {
        Ok(_) => panic!("started with a wrong store key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("LEADS") && err.contains("store key"), "{err}");
    // No key at all on an encrypted store: the same refusal.
    let mut none = env.clone();
    none.remove("LEADROUTER_NATS_STORE_KEY");
    let err = match leadrouter::service::Service::start(&cfg, &none).await {
        Ok(_) => panic!("started an encrypted store without its key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("LEADS"), "{err}");

    // The right key: the lead accepted before is still there.
    let app = common::App::start_cfg(cfg, env, data).await;
    let client = async_nats::connect(app.service.nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut leads = js.get_stream("LEADS").await.expect("LEADS loaded");
    assert_eq!(leads.info().await.unwrap().state.messages, 1);
    app.service.shutdown().await;
}

#[test]
fn explicit_store_key_env_that_is_unset_is_a_config_error() {
    // Config text on purpose: the error must name the key as the operator wrote it.
    let cfg = leadrouter::config::Config::from_toml(
        "[nats.embedded]\nstore_key_env = \"MY_STORE_KEY\"\n",
        std::path::Path::new("t.toml"),
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    let err = cfg
        .nats
        .embedded
        .store_key(&std::collections::HashMap::<String, String>::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nats.embedded.store_key_env") && err.contains("MY_STORE_KEY"),
        "{err}"
    );
}
