//! The embedded default: a local nats-server run as a supervised child process.
//!
//! A ractor actor owns the child. It waits for the server's "ready" log line before reporting
//! success, restarts a child that dies with exponential backoff, and stops it with SIGTERM when
//! the actor stops. The child gets PR_SET_PDEATHSIG, so a leadrouter killed with -9 does not
//! leave an orphan holding the port and the store; a stale server named by the pid file (from a
//! platform without that guarantee) is stopped before a new one starts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::backoff::Retries;
use crate::config::StoreKey;
use crate::error_chain::chain;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats config template {0} not found (nats.embedded.template_dir)")]
    Template(PathBuf),
    #[error("cannot start nats-server {}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not become ready within {timeout:?}; last log lines:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("embedded nats-server supervisor")]
    Actor(#[source] ractor::SpawnErr),
    #[error("a store key is set but the nats config template {0} has no {{{{jetstream_encryption}}}} placeholder inside its jetstream block; add it (see nats/nats-server.conf.tmpl) or unset the key")]
    TemplateLacksEncryption(PathBuf),
    /// Edge or hub mode needs a placeholder the operator's own template lacks.
    #[error("{mode} needs the {{{{{placeholder}}}}} placeholder in the nats config template {}; add it as nats/nats-server.conf.tmpl has it", template.display())]
    TemplateLacks {
        mode: &'static str,
        placeholder: &'static str,
        template: PathBuf,
    },
}

/// The leaf node side the embedded server plays, if any.
#[derive(Clone)]
pub enum Leafnodes {
    /// A hub: accept edges' leaf connections on `host:port`, as `user` with `password` when
    /// one is set.
    Listen {
        host: String,
        port: u16,
        user: String,
        password: Option<String>,
        /// Certificate and key files.
        tls: Option<(PathBuf, PathBuf)>,
    },
    /// An edge: connect to the hub at `urls`, which carry the credentials when there are any
    /// (they reach the server through its environment, never through the rendered file).
    Remote {
        urls: Vec<String>,
        creds_file: Option<PathBuf>,
        tls_ca_file: Option<PathBuf>,
        /// Client certificate and key files.
        tls_client: Option<(PathBuf, PathBuf)>,
    },
}

impl std::fmt::Debug for Leafnodes {
    // No password and no credentialed URL in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leafnodes::Listen { host, port, .. } => write!(f, "Listen({host}:{port})"),
            Leafnodes::Remote { urls, .. } => write!(f, "Remote({} url(s))", urls.len()),
        }
    }
}

/// The variables the child reads the leaf password and the remote URLs from.
const CHILD_LEAF_PASSWORD_ENV: &str = "LEADROUTER_LEAF_PASSWORD";
const CHILD_LEAF_URL_ENV: &str = "LEADROUTER_LEAF_URL_";

/// The variable the child reads its store key from; the key itself never goes into a file.
const CHILD_STORE_KEY_ENV: &str = "LEADROUTER_NATS_STORE_KEY";

/// Everything needed to run the embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedSpec {
    pub binary: PathBuf,
    pub template: PathBuf,
    pub port: u16,
    /// Parent of the JetStream store, the rendered config and the pid file.
    pub dir: PathBuf,
    pub ready_timeout: Duration,
    /// Turns on nats-server's encryption at rest (`jetstream.cipher`/`key`).
    pub store_key: Option<StoreKey>,
    /// Renders `sync_interval: always`: every write fsynced before its ack.
    pub sync_always: bool,
    /// The server's JetStream domain (an edge's `edge-{name}`); `None` renders none.
    pub domain: Option<String>,
    /// Hub or edge: the `leafnodes` block.
    pub leafnodes: Option<Leafnodes>,
}

impl EmbeddedSpec {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    fn conf_path(&self) -> PathBuf {
        self.dir.join("nats-server.conf")
    }
    fn pid_path(&self) -> PathBuf {
        self.dir.join("nats-server.pid")
    }
    fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    /// Names of the streams whose directories are in the store, whatever the server makes of
    /// them. nats-server started with a wrong or missing store key only logs a warning and
    /// hides such streams; comparing this list with what it loaded catches that.
    pub fn streams_on_disk(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(accounts) = std::fs::read_dir(self.store_dir().join("jetstream")) else {
            return out;
        };
        for account in accounts.flatten() {
            let Ok(streams) = std::fs::read_dir(account.path().join("streams")) else {
                continue;
            };
            for st in streams.flatten() {
                if st.path().is_dir() {
                    out.push(st.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

/// Observable state of the child, for logs, `/readyz` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildStatus {
    pub pid: Option<u32>,
    pub running: bool,
    /// Restarts after unexpected exits since start-up.
    pub restarts: u32,
    /// The running child's monitoring endpoint (`http://127.0.0.1:<port>`), when its config
    /// enables one; the port is chosen anew at every start.
    pub monitor_url: Option<String>,
}

pub enum SupervisorMsg {
    /// The child with this pid exited (or could not be waited for).
    Exited {
        pid: u32,
        status: std::io::Result<std::process::ExitStatus>,
    },
    /// Start a new child (after a backoff delay).
    Restart,
}

pub struct NatsSupervisor;

pub struct SupervisorState {
    spec: EmbeddedSpec,
    status: watch::Sender<ChildStatus>,
    restarts: Retries,
}

/// A running embedded server; dropping it does not stop the server, `stop` does.
pub struct EmbeddedNats {
    actor: ActorRef<SupervisorMsg>,
    handle: tokio::task::JoinHandle<()>,
    status: watch::Receiver<ChildStatus>,
    url: String,
}

impl EmbeddedNats {
    /// Renders the config, stops a stale server, starts the child and waits until it is ready.
    pub async fn start(spec: EmbeddedSpec) -> Result<EmbeddedNats, EmbeddedError> {
        render_config(&spec)?;
        stop_stale(&spec.pid_path()).await;
        let (tx, rx) = watch::channel(ChildStatus::default());
        let url = spec.url();
        let (actor, handle) = Actor::spawn(None, NatsSupervisor, (spec, tx))
            .await
            .map_err(|e| match e {
                // The supervisor's start-up is `spawn_child`: its own error, as it was.
                ractor::SpawnErr::StartupFailed(inner) => match inner.downcast::<EmbeddedError>() {
                    Ok(ours) => *ours,
                    Err(other) => EmbeddedError::Actor(ractor::SpawnErr::StartupFailed(other)),
                },
                other => EmbeddedError::Actor(other),
            })?;
        Ok(EmbeddedNats {
            actor,
            handle,
            status: rx,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn status(&self) -> watch::Receiver<ChildStatus> {
        self.status.clone()
    }

    /// The running child's monitoring endpoint, if its config has one.
    pub fn monitor_url(&self) -> Option<String> {
        self.status.borrow().monitor_url.clone()
    }

    /// Stops the child (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub async fn stop(self) {
        self.actor.stop(None);
        let _ = self.handle.await;
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn render_config(spec: &EmbeddedSpec) -> Result<(), EmbeddedError> {
    let template = std::fs::read_to_string(&spec.template)
        .map_err(|_| EmbeddedError::Template(spec.template.clone()))?;
    std::fs::create_dir_all(spec.store_dir()).map_err(io_err(&spec.dir))?;
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let rendered = template
        .replace("{{port}}", &spec.port.to_string())
        .replace(
            "{{store_dir}}",
            &abs(spec.store_dir()).display().to_string(),
        )
        .replace("{{pid_file}}", &abs(spec.pid_path()).display().to_string())
        .replace("{{server_name}}", &format!("leadrouter_{}", spec.port));
    let rendered = match &spec.store_key {
        Some(_) if !rendered.contains("{{jetstream_encryption}}") => {
            return Err(EmbeddedError::TemplateLacksEncryption(
                spec.template.clone(),
            ));
        }
        Some(k) => rendered.replace(
            "{{jetstream_encryption}}",
            &format!(
                "cipher: {}\n  key: ${CHILD_STORE_KEY_ENV}",
                k.cipher.as_str()
            ),
        ),
        None => rendered.replace("{{jetstream_encryption}}", ""),
    };
    // A template without the placeholder renders no sync setting; under `fsync` the start-up
    // check of `/varz` then refuses to run, so nothing is promised that the server does not do.
    let rendered = rendered.replace(
        "{{jetstream_sync}}",
        if spec.sync_always {
            "sync_interval: always"
        } else {
            ""
        },
    );
    let lacks = |mode, placeholder| EmbeddedError::TemplateLacks {
        mode,
        placeholder,
        template: spec.template.clone(),
    };
    let rendered = match &spec.domain {
        Some(_) if !rendered.contains("{{jetstream_domain}}") => {
            return Err(lacks("edge mode ([edge])", "jetstream_domain"))
        }
        Some(d) => rendered.replace("{{jetstream_domain}}", &format!("domain: {}", quoted(d))),
        None => rendered.replace("{{jetstream_domain}}", ""),
    };
    let rendered = match &spec.leafnodes {
        Some(l) if !rendered.contains("{{leafnodes}}") => {
            let mode = match l {
                Leafnodes::Listen { .. } => "hub mode (nats.embedded.leafnode_port)",
                Leafnodes::Remote { .. } => "edge mode ([edge])",
            };
            return Err(lacks(mode, "leafnodes"));
        }
        Some(l) => rendered.replace("{{leafnodes}}", &leafnodes_block(l)),
        None => rendered.replace("{{leafnodes}}", ""),
    };
    std::fs::write(spec.conf_path(), rendered).map_err(io_err(&spec.conf_path()))
}

/// A nats-server config string (JSON string syntax, which it accepts).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn path_str(p: &Path) -> String {
    quoted(
        &std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string(),
    )
}

/// The `leafnodes { ... }` block. Secrets appear as `$VARIABLE` references only.
fn leafnodes_block(l: &Leafnodes) -> String {
    match l {
        Leafnodes::Listen {
            host,
            port,
            user,
            password,
            tls,
        } => {
            // `no_advertise`: edges connect to the URL they are configured with, and only
            // there. Advertised, the hub's INFO hands each edge the listener's own address,
            // and an edge behind a proxy or load balancer reconnects around it.
            let mut b = format!(
                "leafnodes {{\n  listen: {}\n  no_advertise: true\n",
                quoted(&format!("{host}:{port}"))
            );
            if password.is_some() {
                b += &format!(
                    "  authorization {{ user: {}, password: ${CHILD_LEAF_PASSWORD_ENV} }}\n",
                    quoted(user)
                );
            }
            if let Some((cert, key)) = tls {
                b += &format!(
                    "  tls {{ cert_file: {}, key_file: {} }}\n",
                    path_str(cert),
                    path_str(key)
                );
            }
            b + "}"
        }
        Leafnodes::Remote {
            urls,
            creds_file,
            tls_ca_file,
            tls_client,
        } => {
            let refs: Vec<String> = (0..urls.len())
                .map(|i| format!("${CHILD_LEAF_URL_ENV}{i}"))
                .collect();
            let mut remote = format!("    {{\n      urls: [{}]\n", refs.join(", "));
            if let Some(c) = creds_file {
                remote += &format!("      credentials: {}\n", path_str(c));
            }
            if tls_ca_file.is_some() || tls_client.is_some() {
                let mut tls = Vec::new();
                if let Some(ca) = tls_ca_file {
                    tls.push(format!("ca_file: {}", path_str(ca)));
                }
                if let Some((cert, key)) = tls_client {
                    tls.push(format!("cert_file: {}", path_str(cert)));
                    tls.push(format!("key_file: {}", path_str(key)));
                }
                remote += &format!("      tls {{ {} }}\n", tls.join(", "));
            }
            // Reconnect soon after the hub is back: the default is 1 s already; say so here.
            format!("leafnodes {{\n  reconnect: 1\n  remotes: [\n{remote}    }}\n  ]\n}}")
        }
    }
}

/// The child's environment for the leaf secrets, names and values.
fn leaf_env(l: Option<&Leafnodes>) -> Vec<(String, String)> {
    match l {
        Some(Leafnodes::Listen {
            password: Some(p), ..
        }) => vec![(CHILD_LEAF_PASSWORD_ENV.to_string(), p.clone())],
        Some(Leafnodes::Remote { urls, .. }) => urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("{CHILD_LEAF_URL_ENV}{i}"), u.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// A server left by a leadrouter that could not stop it would hold the port and the store lock.
async fn stop_stale(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // A zombie already let go of the port and the store lock. It is one whenever the old
    // leadrouter was killed (PR_SET_PDEATHSIG stopped the server) and the pid 1 that inherited
    // it reaps slowly, as many container inits do: waiting for it to vanish cost seconds.
    if comm.trim() != "nats-server" || !process_alive(pid) {
        return;
    }
    tracing::warn!(
        pid,
        "stopping a stale embedded nats-server left by an earlier run"
    );
    signal(pid, Signal::TERM);
    for _ in 0..500 {
        if !process_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(pid, Signal::KILL);
}

/// Spawns the child, then reads its log until the ready line (or exit, or timeout).
async fn spawn_child(spec: &EmbeddedSpec) -> Result<(Child, Option<String>), EmbeddedError> {
    let mut cmd = Command::new(&spec.binary);
    cmd.arg("-c")
        .arg(spec.conf_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove(CHILD_STORE_KEY_ENV)
        .kill_on_drop(true);
    if let Some(k) = &spec.store_key {
        cmd.env(CHILD_STORE_KEY_ENV, &k.value);
    }
    cmd.env_remove(CHILD_LEAF_PASSWORD_ENV);
    for (name, value) in leaf_env(spec.leafnodes.as_ref()) {
        cmd.env(name, value);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `pre_exec` is unsafe because the closure runs between fork and exec; prctl is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // SIGTERM, not SIGKILL: the server then flushes its store on the way down.
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|source| EmbeddedError::Spawn {
        binary: spec.binary.clone(),
        source,
    })?;
    let stderr = child.stderr.take().ok_or_else(|| EmbeddedError::NotReady {
        timeout: spec.ready_timeout,
        log: "no stderr".into(),
    })?;
    let mut lines = BufReader::new(stderr).lines();
    let mut tail: Vec<String> = Vec::new();
    let mut monitor = None;
    let ready = tokio::time::timeout(spec.ready_timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let is_ready = line.contains("Server is ready");
            if let Some(addr) = monitor_addr(&line) {
                monitor = Some(format!("http://{addr}"));
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
            if is_ready {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(EmbeddedError::NotReady {
            timeout: spec.ready_timeout,
            log: tail.join("\n"),
        });
    }
    // Keep draining the log so the child never blocks on a full pipe; forward warnings.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("[ERR]") || line.contains("[WRN]") || line.contains("[FTL]") {
                tracing::warn!(target: "leadrouter::nats_server", "{line}");
            } else {
                tracing::debug!(target: "leadrouter::nats_server", "{line}");
            }
        }
    });
    Ok((child, monitor))
}

/// The address in nats-server's "Starting http monitor on 127.0.0.1:8222" line (the template
/// asks for port -1, so only the log says which port it got).
fn monitor_addr(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("Starting http monitor on ")?;
    let addr = rest.trim();
    (!addr.is_empty()).then_some(addr)
}

/// Hands the child to a watcher task that reports its exit to the supervisor.
fn watch_child(mut child: Child, myself: ActorRef<SupervisorMsg>) -> Option<u32> {
    let pid = child.id()?;
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = myself.cast(SupervisorMsg::Exited { pid, status });
    });
    Some(pid)
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Actor for NatsSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (EmbeddedSpec, watch::Sender<ChildStatus>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (spec, status): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (child, monitor) = spawn_child(&spec).await?;
        let pid = watch_child(child, myself);
        tracing::info!(?pid, url = %spec.url(), monitor = monitor.as_deref().unwrap_or("none"), "embedded nats-server ready");
        status.send_modify(|s| {
            s.pid = pid;
            s.running = true;
            s.monitor_url = monitor;
        });
        Ok(SupervisorState {
            spec,
            status,
            restarts: Retries::new(MIN_BACKOFF, MAX_BACKOFF),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Exited { pid, status } => {
                if state.status.borrow().pid != Some(pid) {
                    return Ok(());
                }
                let backoff = state.restarts.failed();
                match &status {
                    Ok(status) => {
                        tracing::error!(pid, %status, ?backoff, "embedded nats-server exited; restarting")
                    }
                    Err(e) => {
                        tracing::error!(pid, status = %chain(e), ?backoff, "embedded nats-server exited; restarting")
                    }
                }
                state.status.send_modify(|s| s.running = false);
                myself.send_after(backoff, || SupervisorMsg::Restart);
            }
            SupervisorMsg::Restart => match spawn_child(&state.spec).await {
                Ok((child, monitor)) => {
                    let pid = watch_child(child, myself);
                    tracing::info!(?pid, "embedded nats-server restarted");
                    state.restarts.succeeded();
                    state.status.send_modify(|s| {
                        s.pid = pid;
                        s.running = true;
                        s.restarts += 1;
                        s.monitor_url = monitor;
                    });
                }
                Err(e) => {
                    let backoff = state.restarts.failed();
                    tracing::error!(error = %chain(&e), ?backoff, "embedded nats-server restart failed");
                    myself.send_after(backoff, || SupervisorMsg::Restart);
                }
            },
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let pid = state.status.borrow().pid;
        state.status.send_modify(|s| {
            s.running = false;
            s.pid = None;
        });
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            signal(pid, Signal::TERM);
            for _ in 0..100 {
                if !process_alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if process_alive(pid) {
                signal(pid, Signal::KILL);
            }
            tracing::info!(pid, "embedded nats-server stopped");
        }
        Ok(())
    }
}

pub use rustix::process::Signal;

/// Sends `sig` to `pid`; a pid of 0 or below is ignored (kill(2) would signal a whole process
/// group). Returns whether the signal was delivered (a stale pid gives ESRCH, not harm).
pub fn signal(pid: i32, sig: Signal) -> bool {
    if pid <= 0 {
        return false;
    }
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// Whether `pid` is a running process; a zombie counts as gone (it holds no port, no lock).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, template: &Path) -> EmbeddedSpec {
        EmbeddedSpec {
            binary: PathBuf::from("nats-server"),
            template: template.to_path_buf(),
            port: 4222,
            dir: dir.to_path_buf(),
            ready_timeout: Duration::from_secs(1),
            store_key: None,
            sync_always: false,
            domain: None,
            leafnodes: None,
        }
    }

    fn shipped_template() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats/nats-server.conf.tmpl")
    }

    #[test]
    fn an_edge_renders_its_domain_and_a_remote_whose_secrets_stay_in_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = spec(dir.path(), &shipped_template());
        s.domain = Some("edge-eu1".into());
        s.leafnodes = Some(Leafnodes::Remote {
            urls: vec!["nats-leaf://edge:s%23cret@hub:7422".into()],
            creds_file: None,
            tls_ca_file: Some(PathBuf::from("/etc/ca.pem")),
            tls_client: None,
        });
        render_config(&s).expect("renders");
        let text = std::fs::read_to_string(s.conf_path()).expect("rendered");
        assert!(text.contains("domain: \"edge-eu1\""), "{text}");
        assert!(text.contains("urls: [$LEADROUTER_LEAF_URL_0]"), "{text}");
        assert!(text.contains("ca_file: \"/etc/ca.pem\""), "{text}");
        assert!(!text.contains("cret"), "no secret in the file: {text}");
        assert!(!text.contains("{{"), "every placeholder filled: {text}");
        let env = leaf_env(s.leafnodes.as_ref());
        assert_eq!(
            env,
            [(
                "LEADROUTER_LEAF_URL_0".to_string(),
                "nats-leaf://edge:s%23cret@hub:7422".to_string()
            )]
        );
        assert_eq!(format!("{:?}", s.leafnodes), "Some(Remote(1 url(s)))");
    }

    #[test]
    fn a_hub_renders_a_leaf_listener_with_its_password_by_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = spec(dir.path(), &shipped_template());
        s.leafnodes = Some(Leafnodes::Listen {
            host: "0.0.0.0".into(),
            port: 7422,
            user: "leadrouter-edge".into(),
            password: Some("hunter2hunter2".into()),
            tls: None,
        });
        render_config(&s).expect("renders");
        let text = std::fs::read_to_string(s.conf_path()).expect("rendered");
        assert!(text.contains("listen: \"0.0.0.0:7422\""), "{text}");
        assert!(
            text.contains("no_advertise: true"),
            "edges keep to their URL: {text}"
        );
        assert!(
            text.contains("password: $LEADROUTER_LEAF_PASSWORD"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            !text.contains("domain: \""),
            "a hub keeps no domain: {text}"
        );
    }

    #[test]
    fn a_template_without_the_edge_placeholders_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old.tmpl");
        std::fs::write(
            &old,
            "listen: 127.0.0.1:{{port}}\njetstream { store_dir: \"{{store_dir}}\" }\n",
        )
        .expect("template");
        let mut s = spec(&dir.path().join("n"), &old);
        s.domain = Some("edge-eu1".into());
        let err = render_config(&s).expect_err("refused").to_string();
        assert!(
            err.contains("{{jetstream_domain}}") && err.contains("edge mode"),
            "{err}"
        );
        s.domain = None;
        s.leafnodes = Some(Leafnodes::Listen {
            host: "127.0.0.1".into(),
            port: 7422,
            user: "u".into(),
            password: None,
            tls: None,
        });
        let err = render_config(&s).expect_err("refused").to_string();
        assert!(
            err.contains("{{leafnodes}}") && err.contains("hub mode"),
            "{err}"
        );
    }

    #[test]
    fn the_monitor_port_is_read_from_the_log() {
        assert_eq!(
            monitor_addr(
                "[7605] 2026/12/02 06:52:58.716136 [INF] Starting http monitor on 127.0.0.1:44669"
            ),
            Some("127.0.0.1:44669")
        );
        assert_eq!(monitor_addr("[7605] [INF] Server is ready"), None);
    }

    #[test]
    fn a_zombie_counts_as_gone_and_a_running_process_does_not() {
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        assert!(process_alive(live.id() as i32));

        let mut done = std::process::Command::new("true")
            .spawn()
            .expect("true starts");
        let pid = done.id() as i32;
        // Wait for its exit without reaping it (WNOWAIT): it stays a zombie of this process.
        let waited = rustix::process::waitid(
            rustix::process::WaitId::Pid(rustix::process::Pid::from_raw(pid).unwrap()),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
        );
        assert!(matches!(waited, Ok(Some(_))), "{waited:?}");
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "the zombie is still listed"
        );
        assert!(!process_alive(pid), "a zombie holds no port and no lock");

        let _ = done.wait();
        let _ = live.kill();
        let _ = live.wait();
        assert!(!process_alive(pid));
    }
}
