//! What `leadrouter import` is asked to do: its command-line arguments and the options a
//! caller (the CLI, a test) passes in, with the defaults and limits that bound them.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The JSON-lines file (`-` reads stdin).
    pub file: PathBuf,
    /// The sender of raw vendor-payload lines (envelope lines name their own).
    #[arg(long)]
    pub sender: Option<String>,
    /// Write every rejected line here as `{"line": N, "error": "..."}` JSON lines.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// JSON pointer to an RFC 3339 receive time inside raw lines (default: import time).
    #[arg(long)]
    pub received_at_field: Option<String>,
    /// PubAcks awaited at once.
    #[arg(long, default_value_t = crate::cli::import::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// PubAcks awaited at once by default: enough to keep one connection busy (10,000 lines in
/// well under a few seconds) without holding more than a few hundred leads in memory.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Rejected lines listed in the summary itself; the rest are counted (and in `--rejects`).
pub const SUMMARY_REJECTS: usize = 20;
/// Lines in a row that could not be stored after retries before the import stops reading.
pub const ABORT_AFTER_FAILURES: u64 = 16;
/// Publish attempts per line; retries are safe because the key dedupes them.
pub(super) const PUBLISH_ATTEMPTS: u32 = 3;
/// Between those attempts: jittered, so a burst of lines that failed together (a NATS blip)
/// does not come back as one burst.
pub(super) const PUBLISH_BACKOFF: crate::backoff::Backoff = crate::backoff::Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(2),
};
/// Lines longer than this are rejected without being held in memory. JetStream's default
/// `max_payload` is 1 MiB, so nothing longer could be stored anyway.
pub(super) const MAX_LINE_BYTES: usize = 1024 * 1024;
/// The PubAck deadline is at least this: unlike a vendor waiting on the edge, an import can
/// afford to wait, and a slow ack is better than a needless retry.
pub(super) const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What `leadrouter import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The JSON-lines file; `-` reads stdin.
    pub file: PathBuf,
    /// `--sender ID`: the sender of raw vendor lines.
    pub sender: Option<String>,
    /// `--rejects FILE`: every rejected line as `{"line", "error"}` JSON lines (truncated first).
    pub rejects: Option<PathBuf>,
    /// `--received-at-field POINTER`: where raw lines carry their receive time.
    pub received_at_pointer: Option<String>,
    /// `--quiet`: no progress bar.
    pub quiet: bool,
    /// PubAcks awaited at once (0 is taken as 1).
    pub concurrency: usize,
}

impl ImportOptions {
    /// Defaults for everything but the file.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        ImportOptions {
            file: file.into(),
            sender: None,
            rejects: None,
            received_at_pointer: None,
            quiet: false,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}
