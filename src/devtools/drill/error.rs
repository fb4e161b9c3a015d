//! Why a drill could not run to its report. A drill that runs and finds losses is no error:
//! its report says so and the caller picks the exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A drill option or checkout problem, in the drill's own words.
    #[error("{0}")]
    Setup(String),
    /// A part of the drill that would not start: `what` names it, the source says why.
    #[error("{what}")]
    Start {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {exe}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("leadrouter exited during start-up ({status}); its log: {log}")]
    RouterExited { status: String, log: PathBuf },
    #[error("{what} was not ready after {waited:?}; its log: {log}")]
    NotReady {
        what: String,
        waited: Duration,
        log: PathBuf,
    },
    #[error("reading the DLQ from the router's admin API")]
    Dlq(#[source] crate::cli::admin_client::AdminError),
    #[error(transparent)]
    Harness(crate::devtools::harness::HarnessError),
}

impl DrillError {
    pub(super) fn start(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DrillError {
        DrillError::Start {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(super) fn io(path: &Path, source: std::io::Error) -> DrillError {
        DrillError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
