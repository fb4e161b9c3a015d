//! The router under test as a real child process (`leadrouter serve --config PATH`), so that
//! kill -9 is a real SIGKILL: no destructor, no drain, no goodbye to NATS. Its embedded
//! nats-server is its own child; [`RouterProcess::nats_pid`] finds it by the pid file the router
//! writes.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::config::RouterConfig;
use super::process::{kill_and_reap, process_alive, signal, wait_child, wait_gone, Signal};
use super::HarnessError;

/// How a graceful [`RouterProcess::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Exited on its own after SIGTERM.
    Exited(ExitStatus),
    /// Still running after the grace period: SIGKILLed.
    Killed { grace: Duration },
    /// There was no process to stop.
    NotRunning,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::Exited(status) => write!(f, "{status}"),
            Stopped::Killed { grace } => {
                write!(f, "killed: no exit within {} s of SIGTERM", grace.as_secs())
            }
            Stopped::NotRunning => write!(f, "already stopped"),
        }
    }
}

/// How [`RouterProcess::stop_with_nats`] ended: the router's stop, and whether its embedded
/// nats-server outlived it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoppedWithNats {
    pub router: Stopped,
    /// Still running a while after the router ended, so it was sent SIGTERM.
    pub nats_outlived: bool,
}

impl fmt::Display for StoppedWithNats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.router)?;
        if self.nats_outlived {
            write!(f, "; its nats-server outlived it and was sent SIGTERM")?;
        }
        Ok(())
    }
}

/// One `leadrouter serve` process, restartable. Dropping it SIGKILLs it, so no failed test or
/// drill leaves a router running.
#[derive(Debug)]
pub struct RouterProcess {
    exe: PathBuf,
    config: PathBuf,
    env: Vec<(OsString, OsString)>,
    scrub: Vec<String>,
    log: PathBuf,
    data_dir: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    intake: SocketAddr,
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
    starts: u32,
}

impl RouterProcess {
    /// `exe` is the leadrouter binary (`env!("CARGO_BIN_EXE_leadrouter")` in integration tests
    /// and benches, `std::env::current_exe()` in the drill); `config` its config file;
    /// `intake` the config's `intake.listen`, where `/readyz` is polled. The log defaults to
    /// `router.log` next to the config file.
    pub fn new(
        exe: impl Into<PathBuf>,
        config: impl Into<PathBuf>,
        intake: SocketAddr,
    ) -> RouterProcess {
        let config = config.into();
        let log = config.with_file_name("router.log");
        RouterProcess {
            exe: exe.into(),
            config,
            env: Vec::new(),
            scrub: vec!["LEADROUTER_".to_string()],
            log,
            data_dir: None,
            current_dir: None,
            intake,
            child: None,
            last_exit: None,
            starts: 0,
        }
    }

    /// Writes `cfg` to `path` and prepares a process for it, with the intake address and data
    /// dir taken from the config.
    pub fn for_config(
        exe: impl Into<PathBuf>,
        cfg: &RouterConfig,
        path: impl Into<PathBuf>,
    ) -> Result<RouterProcess, HarnessError> {
        let path = path.into();
        cfg.write(&path)?;
        Ok(RouterProcess::new(exe, path, cfg.intake_addr()).data_dir(cfg.data_dir_path()))
    }

    /// An environment variable for the child (applied after the scrub, so it wins).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Also removes the caller's variables starting with `prefix` (`OTEL_`, say) from the
    /// child's environment. `LEADROUTER_` is always scrubbed.
    pub fn scrub_env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.scrub.push(prefix.into());
        self
    }

    /// Where stdout and stderr go (appended across restarts).
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = path.into();
        self
    }

    /// The config's `data_dir`, for [`nats_pid`](Self::nats_pid). Relative to
    /// [`current_dir`](Self::current_dir) when that is set.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The child's working directory (relative paths in its config resolve against it).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn intake_addr(&self) -> SocketAddr {
        self.intake
    }

    /// `http://{intake.listen}`.
    pub fn intake_url(&self) -> String {
        format!("http://{}", self.intake)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times [`spawn`](Self::spawn) started a process.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The exit status of the last process that ended under this handle's watch.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// Running (a zombie not yet reaped counts as gone).
    pub fn is_alive(&self) -> bool {
        self.pid().is_some_and(|p| process_alive(p as i32))
    }

    /// The pid of the embedded nats-server, from the pid file the router writes
    /// (`{data_dir}/nats/nats-server.pid`).
    pub fn nats_pid(&self) -> Option<i32> {
        let data = self.data_dir.as_ref()?;
        let data = match &self.current_dir {
            Some(cwd) if data.is_relative() => cwd.join(data),
            _ => data.clone(),
        };
        let text = std::fs::read_to_string(data.join("nats/nats-server.pid")).ok()?;
        text.trim().parse().ok()
    }

    /// The whole log so far ("" when there is none yet).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The complete lines of the log; a line still being written is left out, so a reader
    /// polling the log never sees half a JSON line.
    pub fn log_lines(&self) -> Vec<String> {
        let text = self.log_text();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        complete.lines().map(str::to_owned).collect()
    }

    /// The last `n` lines of the log, for an error message.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Starts `leadrouter serve --config PATH`; its output is appended to the log. A process
    /// still running from an earlier spawn is SIGKILLed first.
    pub fn spawn(&mut self) -> Result<(), HarnessError> {
        self.kill9();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| HarnessError::io(&self.log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io(&self.log, e))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        // Settings of the caller's own shell (listen addresses, data dir, store key, ...) must
        // not leak into the router under test; where the pinned nats-server lives may.
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name != "LEADROUTER_TOOLS_DIR" && self.scrub.iter().any(|p| name.starts_with(p)) {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        tracing::debug!(pid = child.id(), config = %self.config.display(), log = %self.log.display(), "leadrouter started");
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Polls `/readyz` until it answers 200 (NATS connected, streams present). Returns how long
    /// it took, or an error naming the log when the router exits or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        let start = Instant::now();
        // A readyz that cannot answer quickly is not ready (it waits on NATS then).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(HarnessError::Http)?;
        let url = format!("http://{}/readyz", self.intake);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    tracing::debug!(waited = ?start.elapsed(), "leadrouter ready");
                    return Ok(start.elapsed());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.last_exit = Some(status);
                    return Err(HarnessError::Exited {
                        what: "leadrouter".into(),
                        status: status.to_string(),
                        log: self.log.clone(),
                    });
                }
            }
            if start.elapsed() > timeout {
                return Err(HarnessError::NotReady {
                    what: "leadrouter".into(),
                    waited: timeout,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`spawn`](Self::spawn), then [`wait_ready`](Self::wait_ready).
    pub async fn start(&mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        self.spawn()?;
        self.wait_ready(timeout).await
    }

    /// SIGKILL, then reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.last_exit = kill_and_reap(&mut child);
            tracing::debug!(pid = child.id(), "leadrouter killed with SIGKILL");
        }
    }

    /// Sends SIGTERM and returns at once; see [`wait_exit`](Self::wait_exit).
    pub fn sigterm(&self) -> bool {
        self.pid().is_some_and(|p| signal(p as i32, Signal::TERM))
    }

    /// Waits until the process exits (reaping it) or `timeout` passes; `None` if it is still
    /// running then, or there was none.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_child(child, timeout).await?;
        self.child = None;
        self.last_exit = Some(status);
        Some(status)
    }

    /// SIGTERM and a bounded wait for the graceful shutdown; SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        if self.child.is_none() {
            return Stopped::NotRunning;
        }
        self.sigterm();
        match self.wait_exit(grace).await {
            Some(status) => Stopped::Exited(status),
            None => {
                tracing::warn!(?grace, log = %self.log.display(), "leadrouter ignored SIGTERM; SIGKILL");
                self.kill9();
                Stopped::Killed { grace }
            }
        }
    }

    /// [`stop`](Self::stop), then waits for the embedded nats-server to go too: stopping it is
    /// the router's job, and one that outlives the router by `grace` more is sent SIGTERM
    /// rather than left holding its port.
    pub async fn stop_with_nats(&mut self, grace: Duration) -> StoppedWithNats {
        // Read while it runs: nats-server removes its pid file when it exits.
        let nats = self.nats_pid();
        let router = self.stop(grace).await;
        let mut nats_outlived = false;
        if let Some(pid) = nats {
            if !wait_gone(pid, grace).await {
                signal(pid, Signal::TERM);
                nats_outlived = true;
            }
        }
        StoppedWithNats {
            router,
            nats_outlived,
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        // Never leave a router running, whatever path ended its owner. Its embedded
        // nats-server goes with it (the router gives it PR_SET_PDEATHSIG).
        self.kill9();
    }
}
