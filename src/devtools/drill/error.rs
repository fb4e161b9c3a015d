//! Why a drill could not run to its report. A drill that runs and finds losses is no error:
//! its report says so and the caller picks the exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {exe}: {why}")]
    Spawn { exe: PathBuf, why: String },
    #[error("leadrouter exited during start-up ({status}); its log: {log}")]
    RouterExited { status: String, log: PathBuf },
    #[error("{what} was not ready after {waited:?}; its log: {log}")]
    NotReady {
        what: String,
        waited: Duration,
        log: PathBuf,
    },
    #[error("reading the DLQ from the router's admin API: {0}")]
    Dlq(String),
}

impl DrillError {
    pub(super) fn io(path: &Path, source: std::io::Error) -> DrillError {
        DrillError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
