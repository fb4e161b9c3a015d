//! The router under test as a real child process (`leadrouter serve`), so that `kill -9` is a
//! real SIGKILL: no destructor, no drain, no goodbye to NATS. Its embedded nats-server is its own
//! child; the drill finds it by the pid file the router writes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DrillError;
use crate::queue::embedded::process_alive;

pub struct RouterProcess {
    exe: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    data_dir: PathBuf,
    readyz: String,
    http: reqwest::Client,
    child: Option<Child>,
    pub starts: u32,
}

impl RouterProcess {
    pub fn new(
        exe: PathBuf,
        config: PathBuf,
        env: Vec<(String, String)>,
        log: PathBuf,
        data_dir: PathBuf,
        intake: &str,
    ) -> RouterProcess {
        RouterProcess {
            exe,
            config,
            env,
            log,
            data_dir,
            readyz: format!("http://{intake}/readyz"),
            // A readyz that cannot answer quickly is not ready (it waits on NATS then).
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap_or_default(),
            child: None,
            starts: 0,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `leadrouter serve` with the drill's config; its output is appended to the log.
    pub fn spawn(&mut self) -> Result<(), DrillError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| DrillError::io(&self.log, e))?;
        let log2 = log.try_clone().map_err(|e| DrillError::io(&self.log, e))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Settings of the operator's own shell must not leak into the router under test.
        for (k, _) in std::env::vars() {
            if k.starts_with("LEADROUTER_") && k != "LEADROUTER_TOOLS_DIR" {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().map_err(|e| DrillError::Spawn {
            exe: self.exe.clone(),
            why: e.to_string(),
        })?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Polls `/readyz` until it answers 200 (NATS connected, streams present). Returns how long
    /// it took, or an error naming the log when the router exits or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, DrillError> {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(&self.readyz).send().await {
                if r.status().is_success() {
                    return Ok(start.elapsed());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(DrillError::RouterExited {
                        status: status.to_string(),
                        log: self.log.clone(),
                    });
                }
            }
            if start.elapsed() > timeout {
                return Err(DrillError::NotReady {
                    what: "leadrouter".into(),
                    waited: timeout,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, then reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and a bounded wait for the graceful shutdown; SIGKILL after that.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The pid of the embedded nats-server, from the pid file the router writes.
    pub fn nats_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("nats/nats-server.pid")).ok()?;
        text.trim().parse().ok()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        // Never leave a router running after the drill, whatever path ended it.
        self.kill9();
    }
}

pub fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid we read ourselves; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Waits until `pid` is gone or `timeout` passes; true when it is gone.
pub async fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !process_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !process_alive(pid)
}
