//! The router under test as a real child process: the shared harness's [`RouterProcess`]
//! (`leadrouter serve` as a child, so kill -9 is a real SIGKILL), with the harness's errors
//! reported as the drill's own.

pub use crate::devtools::harness::{signal, wait_gone, RouterProcess};

use super::error::DrillError;
use crate::devtools::harness::HarnessError;

impl From<HarnessError> for DrillError {
    fn from(e: HarnessError) -> DrillError {
        match e {
            HarnessError::Exited { status, log, .. } => DrillError::RouterExited { status, log },
            HarnessError::NotReady { what, waited, log } => {
                DrillError::NotReady { what, waited, log }
            }
            HarnessError::Spawn { exe, source } => DrillError::Spawn { exe, source },
            HarnessError::Io { path, source } => DrillError::Io { path, source },
            other => DrillError::Harness(other),
        }
    }
}
