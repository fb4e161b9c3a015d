//! Signals, liveness and scratch directories: the small pieces every process helper here uses.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::HarnessError;

/// Zombie-aware: a process that exited but is not reaped yet counts as gone (it holds no port,
/// no lock, no file).
pub use crate::queue::embedded::{process_alive, signal, Signal};

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

/// SIGKILL and reap, so no zombie is left and the exit status is known.
pub(crate) fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    // An error here means the child already exited; `wait` still reaps it.
    let _ = child.kill();
    child.wait().ok()
}

/// Polls a child until it exits or `timeout` passes, without blocking the async runtime.
pub(crate) async fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            // A wait error means the child is not ours to wait for any more.
            _ => return None,
        }
    }
}

/// A directory under the system temp dir, removed with everything in it on drop.
///
/// The harness is library code and `tempfile` is only a dev-dependency; this is the little of
/// it the harness needs.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// `{temp}/leadrouter-{label}-{pid}-{seq}-{random}`: unique within this process by the
    /// sequence, across processes by the pid, across pid reuse by the random part.
    pub fn new(label: &str) -> Result<TempDir, HarnessError> {
        let path = std::env::temp_dir().join(format!(
            "leadrouter-{label}-{}-{}-{:08x}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).map_err(|e| HarnessError::io(&path, e))?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place on drop (to read a failed run's logs afterwards).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::debug!(dir = %self.path.display(), error = %e, "temp dir not removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_distinct_and_removed() {
        let a = TempDir::new("t").unwrap();
        let b = TempDir::new("t").unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), "x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn signal_ignores_pids_that_would_mean_a_group() {
        // SIGCONT to a running process changes nothing, so the test can signal itself.
        assert!(!signal(0, Signal::CONT));
        assert!(!signal(-1, Signal::CONT));
        assert!(signal(std::process::id() as i32, Signal::CONT));
    }
}
