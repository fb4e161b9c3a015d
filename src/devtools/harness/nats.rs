//! One real nats-server with JetStream on loopback, owned by the caller: its own config file,
//! store and log in one directory, killed with the owner.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::process::{kill_and_reap, process_alive, signal, Signal, TempDir};
use super::HarnessError;

/// How a [`NatsServer`] is started. Everything is optional: the default is a random client
/// port, no monitoring port, an anonymous server and a temp directory of its own.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    port: Option<u16>,
    http_port: Option<u16>,
    server_name: Option<String>,
    jetstream_extra: String,
    extra: String,
    dir: Option<PathBuf>,
    bin: Option<PathBuf>,
    ready_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            port: None,
            http_port: None,
            server_name: None,
            jetstream_extra: String::new(),
            extra: String::new(),
            dir: None,
            bin: None,
            // The first start on a machine may include a cold page cache; 30 s is generous
            // for a server that is normally ready in ~10 ms.
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl NatsOptions {
    pub fn new() -> NatsOptions {
        NatsOptions::default()
    }

    /// Client port; unset, the server picks one (`port: -1`) and the harness reads it back.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Monitoring port (`/healthz`, `/jsz`, `/varz`).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// `server_name`; a JetStream cluster requires a unique one per node.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Config text inside the `jetstream { }` block (limits, `sync_interval`, a domain).
    pub fn jetstream_extra(mut self, text: impl Into<String>) -> Self {
        self.jetstream_extra = text.into();
        self
    }

    /// Config text appended at the top level of the server config (a `cluster { }` block,
    /// `leafnodes`, `accounts`, ...). Later keys override earlier ones in nats-server's config.
    pub fn extra(mut self, text: impl Into<String>) -> Self {
        self.extra = text.into();
        self
    }

    /// Keep config, store and log under `dir` (created if missing, never removed) instead of
    /// a temp directory removed on drop.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Use this binary instead of the pinned one.
    pub fn binary(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// Holds the server's directory: a temp dir is removed on drop, a given one is left alone.
#[derive(Debug)]
enum Root {
    Temp(TempDir),
    Given(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(t) => t.path(),
            Root::Given(p) => p,
        }
    }
}

/// A real nats-server with JetStream on `127.0.0.1`. Dropping it kills it (SIGKILL).
///
/// Its directory holds `nats-server.conf`, `store/` (JetStream's `store_dir`) and
/// `nats-server.log` (its stderr, appended across restarts).
#[derive(Debug)]
pub struct NatsServer {
    opts: NatsOptions,
    bin: PathBuf,
    root: Root,
    store: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// A server on a random port with its own temp store, ready for clients.
    pub fn start() -> Result<NatsServer, HarnessError> {
        NatsServer::with_options(NatsOptions::default())
    }

    pub fn with_options(opts: NatsOptions) -> Result<NatsServer, HarnessError> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => super::nats_server_bin()?,
        };
        let root = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| HarnessError::io(d, e))?;
                Root::Given(d.clone())
            }
            None => Root::Temp(TempDir::new("nats")?),
        };
        let store = root.path().join("store");
        let mut server = NatsServer {
            port: opts.port.unwrap_or(0),
            opts,
            bin,
            root,
            store,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn http_port(&self) -> Option<u16> {
        self.opts.http_port
    }

    /// `http://127.0.0.1:{http_port}` when a monitoring port is configured.
    pub fn monitor_url(&self) -> Option<String> {
        self.opts.http_port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    pub fn server_name(&self) -> Option<&str> {
        self.opts.server_name.as_deref()
    }

    /// The directory holding config, store and log.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// JetStream's `store_dir`; kept across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.path().join("nats-server.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("nats-server.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Running, and not a zombie.
    pub fn is_alive(&self) -> bool {
        self.pid().is_some_and(|p| process_alive(p as i32))
    }

    /// SIGKILL and reap, as a crash would: no flush, no goodbye to the cluster.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = kill_and_reap(&mut child);
            tracing::debug!(port = self.port, ?status, "nats-server killed");
        }
    }

    /// Sends SIGTERM (nats-server's graceful shutdown) without waiting; see
    /// [`wait_exit`](Self::wait_exit).
    pub fn sigterm(&self) -> bool {
        self.pid().is_some_and(|p| signal(p as i32, Signal::TERM))
    }

    /// Waits (blocking, polling) until the server exited, reaping it; `None` if it is still
    /// running after `timeout` or was not running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// Stops it if running (SIGKILL), then starts it again on the same port with the same
    /// store; returns once it is ready.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }

    fn render_config(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut text = String::from("# Written by the leadrouter process harness.\n");
        text.push_str("host: \"127.0.0.1\"\n");
        // 0 before the first start: -1 asks nats-server for a random port, read back from its
        // log. A restart writes the port it got, so clients reconnect to the same address.
        if self.port == 0 {
            text.push_str("port: -1\n");
        } else {
            text.push_str(&format!("port: {}\n", self.port));
        }
        if let Some(name) = &self.opts.server_name {
            text.push_str(&format!("server_name: {}\n", q(name)));
        }
        if let Some(http) = self.opts.http_port {
            text.push_str(&format!("http: {}\n", q(&format!("127.0.0.1:{http}"))));
        }
        text.push_str(&format!(
            "jetstream {{\n  store_dir: {}\n{}\n}}\n",
            q(&self.store.display().to_string()),
            self.opts.jetstream_extra
        ));
        text.push_str(&self.opts.extra);
        text.push('\n');
        text
    }

    /// Starts the process and waits for "Server is ready" on its stderr.
    fn spawn(&mut self) -> Result<(), HarnessError> {
        let conf = self.config_path();
        std::fs::write(&conf, self.render_config()).map_err(|e| HarnessError::io(&conf, e))?;
        let log_path = self.log_path();
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| HarnessError::io(&log_path, e))?;
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                exe: self.bin.clone(),
                source,
            })?;
        let Some(stderr) = child.stderr.take() else {
            kill_and_reap(&mut child);
            return Err(HarnessError::io(
                &log_path,
                std::io::Error::other("nats-server's stderr was not captured"),
            ));
        };
        let (tx, rx) = mpsc::channel::<Option<u16>>();
        // The thread keeps draining stderr after readiness: a full pipe would block the server.
        // It ends at EOF, when the process is gone.
        std::thread::spawn(move || {
            let mut port = None;
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let what = match &self.opts.server_name {
            Some(n) => format!("nats-server {n}"),
            None => "nats-server".to_string(),
        };
        match rx.recv_timeout(self.opts.ready_timeout) {
            Ok(Some(port)) => {
                tracing::debug!(pid = child.id(), port, dir = %self.root.path().display(), "{what} ready");
                self.port = port;
                self.child = Some(child);
                Ok(())
            }
            Ok(None) => {
                kill_and_reap(&mut child);
                Err(HarnessError::Exited {
                    what,
                    status: "ready without printing its client port".into(),
                    log: log_path,
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_and_reap(&mut child);
                Err(HarnessError::NotReady {
                    what,
                    waited: self.opts.ready_timeout,
                    log: log_path,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed before "ready": the process is exiting; reap it for its status.
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                Err(HarnessError::Exited {
                    what,
                    status,
                    log: log_path,
                })
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
