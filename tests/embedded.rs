//! The embedded default: `serve` runs its own nats-server, restarts it when it dies, and stops it
//! on the way out.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use leadrouter::queue::embedded::{EmbeddedNats, EmbeddedSpec};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
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
    };
    let nats = EmbeddedNats::start(spec)
        .await
        .expect("embedded nats starts");
    let mut status = nats.status();
    let first = status.borrow().pid.expect("child pid");
    assert!(alive(first));
    // The rendered config and pid file live under the data dir.
    assert!(dir.path().join("nats/nats-server.conf").is_file());

    unsafe {
        libc::kill(first as i32, libc::SIGKILL);
    }
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
    // The banner is printed once the intake listens.
    let mut saw_banner = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("intake on http://") {
            saw_banner = true;
            break;
        }
    }
    assert!(saw_banner, "serve printed its banner");
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

    unsafe {
        libc::kill(serve.id() as i32, libc::SIGTERM);
    }
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
