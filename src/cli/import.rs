//! `leadrouter import FILE.jsonl`: push a historical export through the pipeline, idempotently.
//!
//! # Input: JSON lines
//!
//! One lead per line, UTF-8, `\n` or `\r\n` terminated (a leading byte-order mark is ignored).
//! Blank lines are skipped and counted. Each line is one of:
//!
//! 1. **A lead envelope**, the shape the edge stores on `leads.in.{sender}` (so a dump of the
//!    `LEADS` stream, or a file sink's lines, can be imported as they are). Recognised by being a
//!    JSON object with both `sender` and `fields`:
//!
//!    ```json
//!    {"schema":"lead.v1","sender":"demo","source_event_id":"evt_1",
//!     "received_at":"2026-11-24T20:01:02.345Z","key":"lr_9f2c...","fields":{"email":"..."}}
//!    ```
//!
//!    - `sender` must be a configured sender; `fields` an object; `source_event_id` a non-empty
//!      string.
//!    - `schema` defaults to the sender's configured `schema`.
//!    - `key` defaults to the edge's key, `idempotency_key(sender, source_event_id,
//!      email_hash(fields))`. A given key is kept as it is (it is what the sinks already saw),
//!      but must be 1-256 printable ASCII characters without spaces (it becomes `Nats-Msg-Id`).
//!    - `received_at` is kept (it must be RFC 3339); absent, it is the import time.
//!    - `fields` goes through the sender's allowlist (the names under `[senders.mapping.fields]`),
//!      as at the edge: PII nobody maps never reaches storage, import or not. Dropped field
//!      names are counted and reported in the summary (`fields_dropped`), never silently.
//!    - Other keys (`flags`, `persisted_at`, `replay`, ...) are ignored.
//!    - `--sender` does not apply to envelope lines: each names its own sender.
//!
//! 2. **A raw vendor payload** of the sender given with `--sender ID` (required for such lines),
//!    mapped exactly as the edge maps it: the sender's `Mapper` (format, `json_fields`,
//!    allowlist) and its `event_id` pointer or path, then the same key. Differences from the
//!    edge, all deliberate:
//!    - **No signature check**: the operator running the import is trusted (the vendor's
//!      signature is over the request, which an export no longer has).
//!    - A sender whose event id comes from a **header** has no header here: its event id falls
//!      back to the body hash (`body:<hex>`), as for senders without an event id. Such a key
//!      equals the edge's only if the line holds the exact bytes the vendor sent.
//!    - The body is the line's bytes exactly as in the file (without the line terminator), or,
//!      when the line is a **JSON string**, the string's contents. Form-encoded senders
//!      (`format = "form"`) need the string form (`"email=a%40b.c&first_name=Ada"`); JSON
//!      senders may use it to keep the vendor's original bytes (so body-hash event ids match
//!      what the edge computed) and to force the raw reading of a payload that happens to have
//!      top-level `sender` and `fields` keys.
//!    - The body is limited to `intake.max_body_bytes`, as at the edge.
//!    - `received_at` comes from `--received-at-field POINTER` (an RFC 6901 JSON pointer into
//!      the parsed body whose value is an RFC 3339 string; a line without it is rejected, so
//!      the operator's choice is never silently replaced) or, without the option, is the
//!      import time.
//!
//! # What is published
//!
//! Each lead goes to its partition, `leads.in.{sender}.{partition}`, as the edge would store it
//! ([`crate::queue::message`]: `Nats-Msg-Id` = key, `Leadrouter-Received-At`,
//! `Leadrouter-Schema`, `Leadrouter-Group` = the keyed group) plus
//! `Leadrouter-Import: <file name>` so logs and handlers can tell imports apart. Leads are sent
//! in file order on one connection (so per-lead order in the stream follows the file), with up
//! to `concurrency` PubAcks awaited at once. A failed or timed-out publish is retried (safe: the
//! key dedupes it); a line that still cannot be stored is counted as `failed`, and after
//! [`ABORT_AFTER_FAILURES`] such lines in a row the import stops reading (`aborted`): the queue
//! is gone, and re-running the same file later is safe.
//!
//! # Idempotency
//!
//! Within the stream's dedupe window (`streams.duplicate_window`, 2 min) a re-imported lead is
//! answered with a duplicate PubAck and not stored again (`duplicates` in the summary). Beyond
//! it, the lead is stored again, and the handlers' idempotency record (`done` in
//! `leads_idempotency`, kept `streams.idempotency_ttl`) short-circuits it: no sink gets it
//! twice. A retried publish whose first ack was lost also shows up as a duplicate.
//!
//! # Bad lines
//!
//! A bad line never aborts the import and is never dropped silently: it is counted, the first
//! [`SUMMARY_REJECTS`] (lowest line numbers) are in the summary, and all of them go to the
//! `--rejects` file as JSON lines `{"line": N, "error": "..."}` (line numbers are 1-based;
//! lines that failed to publish come after the others, out of order). Any rejected or failed
//! line makes [`ImportSummary::ok`] false, which the CLI turns into a non-zero exit.
//!
//! # Output
//!
//! The library never prints except for the progress bar (stderr, only on a terminal and not
//! `quiet`). The caller prints the returned [`ImportSummary`]: [`print_summary`] writes it to
//! stdout, as text or as one JSON object. Errors ([`ImportError`]) are for what prevents the
//! import from starting (options, input file, NATS unreachable, no `LEADS` stream); once
//! publishing started, the outcome is always a summary (an unreadable file or a lost queue
//! midway sets `aborted`).

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{
    self,
    context::{GetStreamError, PublishError, PublishErrorKind},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::config::{Config, EnvSource};
use crate::error_chain::chain;
use crate::intake::admit::{MissingEventId, SenderMapping};
use crate::intake::envelope::{self, lead_key, LeadEnvelope};
use crate::intake::group_key::GroupKey;
use crate::intake::mapping::{BodyFormat, MappingError};
use crate::intake::Grouping;
use crate::queue::message::{EncodeError, LeadMessage};
use crate::queue::{QueueError, STREAM_LEADS};

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
const PUBLISH_ATTEMPTS: u32 = 3;
/// Between those attempts: jittered, so a burst of lines that failed together (a NATS blip)
/// does not come back as one burst.
const PUBLISH_BACKOFF: crate::backoff::Backoff = crate::backoff::Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(2),
};
/// Lines longer than this are rejected without being held in memory. JetStream's default
/// `max_payload` is 1 MiB, so nothing longer could be stored anyway.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// The PubAck deadline is at least this: unlike a vendor waiting on the edge, an import can
/// afford to wait, and a slow ack is better than a needless retry.
const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Why an import could not start.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("--sender `{0}`: no such sender is configured")]
    UnknownSender(String),
    #[error("{option}: {message}")]
    InvalidOption {
        option: &'static str,
        message: String,
    },
    /// A sender's mapping or event id path does not compile; `key` is under `senders[i].`.
    #[error("config key `senders[{index}].{key}`")]
    SenderConfig {
        index: usize,
        key: &'static str,
        #[source]
        source: MappingError,
    },
    #[error("cannot read {path}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the rejects file {path}")]
    Rejects {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Says what to check after the connect error itself, which is also its source.
    #[error("{0} (is `leadrouter serve` running? set nats.url or LEADROUTER_NATS_URL)")]
    Connect(#[from] QueueError),
    #[error("NATS has no `{STREAM_LEADS}` stream: run `leadrouter serve` against it once (it creates the streams), then import")]
    StreamMissing,
    #[error("JetStream unavailable")]
    JetStream(#[source] GetStreamError),
    #[error(transparent)]
    GroupKey(#[from] crate::intake::group_key::GroupKeyError),
    #[error(transparent)]
    Partitions(QueueError),
}

/// Why one line was not published. What the summary and the rejects file say of a line is
/// [`chain`] of it: this message and its causes.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line is longer than {0} bytes")]
    TooLong(usize),
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("not a lead envelope (an object with `sender` and `fields`), and no --sender was given for raw vendor payloads")]
    NoSender,
    #[error("unknown sender `{0}`")]
    UnknownSender(String),
    /// The line has `sender` and `fields` but not the envelope's shape (a missing or mistyped
    /// key).
    #[error("invalid envelope")]
    EnvelopeShape(#[source] serde_json::Error),
    /// An envelope value we refuse (the message says which and why).
    #[error("invalid envelope: {0}")]
    Envelope(String),
    #[error("sender `{0}` takes form-encoded bodies: give each raw line as a JSON string holding the body")]
    FormNeedsString(String),
    #[error("body is over the {0}-byte limit (intake.max_body_bytes)")]
    BodyTooLarge(u64),
    #[error("invalid body for sender `{sender}`")]
    Body {
        sender: String,
        #[source]
        source: MappingError,
    },
    #[error(transparent)]
    MissingEventId(#[from] MissingEventId),
    #[error("--received-at-field {pointer}: {message}")]
    ReceivedAt { pointer: String, message: String },
    #[error("cannot encode the envelope")]
    Encode(#[source] EncodeError),
    #[error("not stored")]
    NotStored(#[source] PublishError),
}

/// One rejected (or failed) line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    /// 1-based line number in the input.
    pub line: u64,
    pub error: String,
}

/// The outcome of an import. Counts are disjoint:
/// `lines_read = published + duplicates + rejected + failed + blank`.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// The input as given (`-` for stdin).
    pub file: String,
    pub lines_read: u64,
    /// Newly stored in `LEADS`.
    pub published: u64,
    /// Acknowledged as already in `LEADS` (same key within the dedupe window).
    pub duplicates: u64,
    /// Bad lines (not JSON, unknown sender, no event id, ...).
    pub rejected: u64,
    /// Good lines JetStream did not store after retries.
    pub failed: u64,
    pub blank: u64,
    /// Envelope lines that carried fields outside their sender's allowlist (dropped).
    pub fields_dropped_lines: u64,
    /// The distinct field names dropped, sorted.
    pub fields_dropped: Vec<String>,
    pub elapsed_secs: f64,
    /// Lines per second.
    pub rate: f64,
    /// The first rejected or failed lines, by line number (at most [`SUMMARY_REJECTS`]).
    pub rejects: Vec<RejectedLine>,
    /// Where every rejected line was written, if asked.
    pub rejects_file: Option<String>,
    /// Set when the import stopped before the end of the input, with why.
    pub aborted: Option<String>,
    /// Every line is in the stream (stored or duplicate), or blank. `false` means exit non-zero.
    pub ok: bool,
}

impl ImportSummary {
    /// 0 when [`ImportSummary::ok`], else 1.
    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.ok {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "import {}: {} lines in {:.2} s ({:.0} lines/s)",
            self.file, self.lines_read, self.elapsed_secs, self.rate
        )?;
        writeln!(
            f,
            "  published   {:>9}  new in {STREAM_LEADS}",
            self.published
        )?;
        writeln!(
            f,
            "  duplicates  {:>9}  already in {STREAM_LEADS} (dedupe window)",
            self.duplicates
        )?;
        writeln!(f, "  rejected    {:>9}  bad lines", self.rejected)?;
        writeln!(
            f,
            "  failed      {:>9}  not stored after retries",
            self.failed
        )?;
        writeln!(f, "  blank       {:>9}", self.blank)?;
        if self.fields_dropped_lines > 0 {
            writeln!(
                f,
                "  {} envelope line(s) carried fields outside the sender's allowlist, dropped: {}",
                self.fields_dropped_lines,
                self.fields_dropped.join(", ")
            )?;
        }
        let bad = self.rejected + self.failed;
        if bad > 0 {
            writeln!(
                f,
                "rejected lines ({} of {bad} shown):",
                self.rejects.len().min(bad as usize)
            )?;
            for r in &self.rejects {
                writeln!(f, "  line {}: {}", r.line, r.error)?;
            }
        }
        if let Some(p) = &self.rejects_file {
            writeln!(f, "all rejected lines: {p}")?;
        }
        if let Some(why) = &self.aborted {
            writeln!(
                f,
                "ABORTED: {why}; re-running the same file is safe (stored lines are deduplicated)"
            )?;
        }
        Ok(())
    }
}

/// Prints the summary on stdout: as text, or (`json`) as one JSON object on one line.
pub fn print_summary(summary: &ImportSummary, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, summary)?;
        writeln!(out)?;
    } else {
        write!(out, "{summary}")?;
    }
    out.flush()
}

/// The NATS URL `import` connects to: the configured one (after `LEADROUTER_NATS_URL`), or the
/// embedded server's loopback port, which a running `serve` listens on.
pub fn nats_url(cfg: &Config) -> String {
    if cfg.nats.is_embedded() {
        format!("nats://127.0.0.1:{}", cfg.nats.embedded.port)
    } else {
        cfg.nats.url.clone()
    }
}

/// The whole command: validates the options and input, connects to NATS from the config and
/// env (credentials as `serve` uses them), imports.
pub async fn run(
    cfg: &Config,
    env: &dyn EnvSource,
    opts: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    // Local mistakes first: no point connecting to import a file that cannot be read.
    let job = Job::prepare(cfg, opts).await?;
    let key = GroupKey::load(&cfg.handlers, &cfg.data_dir, env)?;
    let url = nats_url(cfg);
    let client = crate::queue::connect(&url, &cfg.nats, env).await?;
    job.run(client, key, cfg.handlers.partitions).await
}

/// Imports over an existing connection (tests, or a caller that already has one).
pub async fn import_into(
    client: async_nats::Client,
    cfg: &Config,
    env: &dyn EnvSource,
    opts: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let key = GroupKey::load(&cfg.handlers, &cfg.data_dir, env)?;
    Job::prepare(cfg, opts)
        .await?
        .run(client, key, cfg.handlers.partitions)
        .await
}

/// How lines are turned into leads; pure, so it is unit-tested without NATS.
struct Plan {
    senders: HashMap<String, SenderMapping>,
    raw_sender: Option<String>,
    received_at_pointer: Option<String>,
    max_body_bytes: u64,
}

/// A line ready to publish.
#[derive(Debug)]
struct Lead {
    message: LeadMessage,
    dropped: Vec<String>,
}

/// The envelope form as found in files: optional where the importer can fill in.
#[derive(Deserialize)]
struct EnvelopeLine {
    sender: String,
    fields: Map<String, Value>,
    source_event_id: String,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    received_at: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

impl Plan {
    fn new(cfg: &Config, opts: &ImportOptions) -> Result<Plan, ImportError> {
        let mut senders = HashMap::new();
        for (index, s) in cfg.senders.iter().enumerate() {
            let mapping = SenderMapping::new(s).map_err(|e| ImportError::SenderConfig {
                index,
                key: e.key,
                source: e.source,
            })?;
            senders.insert(s.id.clone(), mapping);
        }
        if let Some(id) = &opts.sender {
            if !senders.contains_key(id) {
                return Err(ImportError::UnknownSender(id.clone()));
            }
        }
        if let Some(p) = &opts.received_at_pointer {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(ImportError::InvalidOption {
                    option: "--received-at-field",
                    message: format!("`{p}` is not a JSON pointer (they start with '/')"),
                });
            }
        }
        Ok(Plan {
            senders,
            raw_sender: opts.sender.clone(),
            received_at_pointer: opts.received_at_pointer.clone(),
            max_body_bytes: cfg.intake.max_body_bytes,
        })
    }

    /// Maps one line (without its terminator). `now` is the import-time `received_at`.
    fn lead(&self, grouping: &Grouping, line: &[u8], now: &str) -> Result<Lead, LineError> {
        let value: Value = serde_json::from_slice(line).map_err(LineError::NotJson)?;
        let is_envelope = value
            .as_object()
            .is_some_and(|o| o.contains_key("sender") && o.contains_key("fields"));
        if is_envelope {
            return self.envelope_lead(grouping, value, now);
        }
        let id = self.raw_sender.as_deref().ok_or(LineError::NoSender)?;
        let sender = self
            .senders
            .get(id)
            .ok_or_else(|| LineError::UnknownSender(id.to_string()))?;
        // A JSON string line is the body itself; anything else is the body as written.
        let body: &[u8] = match &value {
            Value::String(s) => s.as_bytes(),
            _ if sender.mapper().format() == BodyFormat::Form => {
                return Err(LineError::FormNeedsString(sender.id().to_string()))
            }
            _ => line,
        };
        if body.len() as u64 > self.max_body_bytes {
            return Err(LineError::BodyTooLarge(self.max_body_bytes));
        }
        let doc = sender
            .mapper()
            .parse(body)
            .map_err(|source| LineError::Body {
                sender: sender.id().to_string(),
                source,
            })?;
        // No request, so no headers: the edge's own step, signature check aside.
        let mut admitted = sender.admit(grouping, None, &doc, body, now.to_string())?;
        // After the event id, so a line missing both is rejected for its event id.
        if let Some(p) = &self.received_at_pointer {
            admitted.envelope.received_at = received_at_from(&doc, p)?;
        }
        Ok(Lead {
            message: admitted.into_message(),
            dropped: Vec::new(),
        })
    }

    fn envelope_lead(
        &self,
        grouping: &Grouping,
        value: Value,
        now: &str,
    ) -> Result<Lead, LineError> {
        let e: EnvelopeLine = serde_json::from_value(value).map_err(LineError::EnvelopeShape)?;
        let sender = self
            .senders
            .get(&e.sender)
            .ok_or_else(|| LineError::UnknownSender(e.sender.clone()))?;
        if e.source_event_id.trim().is_empty() {
            return Err(LineError::Envelope("`source_event_id` is empty".into()));
        }
        let schema = match e.schema {
            Some(s) if !header_safe(&s) => {
                return Err(LineError::Envelope(
                    "`schema` must be printable ASCII without spaces".into(),
                ))
            }
            Some(s) => s,
            None => sender.schema().to_string(),
        };
        let received_at = match e.received_at {
            Some(r) => {
                if chrono::DateTime::parse_from_rfc3339(&r).is_err() {
                    return Err(LineError::Envelope(format!(
                        "`received_at` `{r}` is not an RFC 3339 timestamp"
                    )));
                }
                r
            }
            None => now.to_string(),
        };
        let (fields, dropped) = sender.allowlist(e.fields);
        let (group, partition) = grouping.locate(&fields);
        let key = match e.key {
            Some(k) if k.len() > 256 || !header_safe(&k) => {
                return Err(LineError::Envelope(
                    "`key` must be 1-256 printable ASCII characters without spaces".into(),
                ))
            }
            Some(k) => k,
            None => lead_key(sender.id(), &e.source_event_id, &fields),
        };
        let envelope = LeadEnvelope {
            schema,
            sender: sender.id().to_string(),
            source_event_id: e.source_event_id,
            received_at,
            key,
            fields,
        };
        Ok(Lead {
            message: LeadMessage::new(envelope, group, partition),
            dropped,
        })
    }
}

fn received_at_from(doc: &Value, pointer: &str) -> Result<String, LineError> {
    let err = |message: String| LineError::ReceivedAt {
        pointer: pointer.to_string(),
        message,
    };
    let raw = match doc.pointer(pointer) {
        Some(Value::String(s)) => s,
        Some(_) => return Err(err("not a string".into())),
        None => return Err(err("missing in this line".into())),
    };
    let t = chrono::DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| err(format!("`{raw}` is not an RFC 3339 timestamp")))?;
    Ok(envelope::timestamp(t.with_timezone(&chrono::Utc)))
}

/// Safe as a NATS header value (and what our keys and schema names look like anyway).
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn import_time() -> String {
    envelope::timestamp(chrono::Utc::now())
}

/// Everything checked and opened before touching NATS.
struct Job {
    plan: Plan,
    input: Box<dyn AsyncBufRead + Unpin + Send>,
    input_len: Option<u64>,
    display_name: String,
    header_name: String,
    rejects: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    ack_timeout: Duration,
    concurrency: usize,
    quiet: bool,
}

impl Job {
    async fn prepare(cfg: &Config, opts: &ImportOptions) -> Result<Job, ImportError> {
        let plan = Plan::new(cfg, opts)?;
        let stdin = opts.file.as_os_str() == "-";
        let (input, input_len): (Box<dyn AsyncBufRead + Unpin + Send>, Option<u64>) = if stdin {
            (Box::new(BufReader::new(tokio::io::stdin())), None)
        } else {
            let input_err = |source| ImportError::Input {
                path: opts.file.clone(),
                source,
            };
            let f = tokio::fs::File::open(&opts.file).await.map_err(input_err)?;
            let meta = f.metadata().await.map_err(input_err)?;
            if meta.is_dir() {
                return Err(input_err(std::io::Error::other("is a directory")));
            }
            let len = meta.is_file().then_some(meta.len());
            (Box::new(BufReader::with_capacity(256 * 1024, f)), len)
        };
        let header_name = if stdin {
            "stdin".to_string()
        } else {
            header_value(&opts.file)
        };
        let rejects = match &opts.rejects {
            None => None,
            Some(path) => {
                // Truncated now, so a stale file from an earlier run never passes for this one.
                let f = std::fs::File::create(path).map_err(|source| ImportError::Rejects {
                    path: path.clone(),
                    source,
                })?;
                Some((path.clone(), std::io::BufWriter::new(f)))
            }
        };
        Ok(Job {
            plan,
            input,
            input_len,
            display_name: opts.file.display().to_string(),
            header_name,
            rejects,
            ack_timeout: cfg.nats.publish_timeout.max(MIN_ACK_TIMEOUT),
            concurrency: opts.concurrency.max(1),
            quiet: opts.quiet,
        })
    }

    /// Leads go straight to their partition, hashed with the routers' own group key (checked
    /// against the record the routers keep, so an import never scatters a lead's events).
    async fn run(
        self,
        client: async_nats::Client,
        key: GroupKey,
        partitions: u16,
    ) -> Result<ImportSummary, ImportError> {
        let js = jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            // Our own bound is `concurrency`; retries may briefly add a few more.
            .max_ack_inflight(self.concurrency.saturating_mul(2))
            .build(client);
        // Fail before the first line rather than rejecting every line with "no stream".
        if let Err(e) = js.get_stream(STREAM_LEADS).await {
            return Err(match e.kind() {
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    ImportError::StreamMissing
                }
                _ => ImportError::JetStream(e),
            });
        }
        crate::queue::topology::ensure_partitions(&js, partitions)
            .await
            .map_err(ImportError::Partitions)?;
        key.check(&js).await?;
        Ok(Runner::new(self, js, Grouping { key, partitions })
            .go()
            .await)
    }
}

/// The file name as a header value: control characters would break the NATS protocol line.
fn header_value(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let clean: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    if clean.trim().is_empty() {
        "import".into()
    } else {
        clean
    }
}

/// One lead on its way to JetStream.
struct Pending {
    line: u64,
    subject: String,
    key: String,
    headers: HeaderMap,
    payload: Bytes,
    attempt: u32,
}

type Acked = (Pending, Result<PublishAck, PublishError>);

struct Runner {
    job_plan: Plan,
    grouping: Grouping,
    input: Box<dyn AsyncBufRead + Unpin + Send>,
    rejects_out: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    rejects_error: Option<String>,
    header_name: String,
    concurrency: usize,
    js: jetstream::Context,
    bar: ProgressBar,
    inflight: FuturesUnordered<BoxFuture<'static, Acked>>,
    summary: ImportSummary,
    dropped_names: BTreeSet<String>,
    failures_in_a_row: u64,
}

impl Runner {
    fn new(job: Job, js: jetstream::Context, grouping: Grouping) -> Runner {
        let bar = progress_bar(job.quiet, job.input_len);
        Runner {
            job_plan: job.plan,
            grouping,
            input: job.input,
            rejects_out: job.rejects,
            rejects_error: None,
            header_name: job.header_name,
            concurrency: job.concurrency,
            js,
            bar,
            inflight: FuturesUnordered::new(),
            summary: ImportSummary {
                file: job.display_name,
                lines_read: 0,
                published: 0,
                duplicates: 0,
                rejected: 0,
                failed: 0,
                blank: 0,
                fields_dropped_lines: 0,
                fields_dropped: Vec::new(),
                elapsed_secs: 0.0,
                rate: 0.0,
                rejects: Vec::new(),
                rejects_file: None,
                aborted: None,
                ok: false,
            },
            dropped_names: BTreeSet::new(),
            failures_in_a_row: 0,
        }
    }

    async fn go(mut self) -> ImportSummary {
        let started = Instant::now();
        tracing::info!(target: "leadrouter::import", file = %self.summary.file, concurrency = self.concurrency, "import started");
        let mut buf = Vec::with_capacity(4096);
        let mut offset: u64 = 0;
        loop {
            if self.failures_in_a_row >= ABORT_AFTER_FAILURES {
                self.summary.aborted = Some(format!(
                    "{ABORT_AFTER_FAILURES} lines in a row could not be stored in {STREAM_LEADS}"
                ));
                break;
            }
            // Bounded in-flight acks; collecting finished ones also keeps counters current.
            while self.inflight.len() >= self.concurrency {
                if let Some(done) = self.inflight.next().await {
                    self.settle(done);
                }
            }
            while let Some(Some(done)) = self.inflight.next().now_or_never() {
                self.settle(done);
            }
            let read = match read_line_bounded(&mut self.input, &mut buf, MAX_LINE_BYTES).await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.summary.aborted = Some(format!(
                        "reading the input failed after line {}: {}",
                        self.summary.lines_read,
                        chain(&e)
                    ));
                    break;
                }
            };
            offset += read.consumed as u64;
            self.summary.lines_read += 1;
            let line_no = self.summary.lines_read;
            self.bar.set_position(offset);
            if line_no % 512 == 0 {
                self.bar.set_message(self.progress_message());
            }
            if read.len > MAX_LINE_BYTES {
                self.reject(line_no, LineError::TooLong(MAX_LINE_BYTES));
                continue;
            }
            let mut line = buf.as_slice();
            if line_no == 1 {
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                self.summary.blank += 1;
                continue;
            }
            match self.job_plan.lead(&self.grouping, line, &import_time()) {
                Ok(lead) => self.publish(line_no, lead).await,
                Err(e) => self.reject(line_no, e),
            }
        }
        // Drain: every line sent gets its outcome before the summary.
        while let Some(done) = self.inflight.next().await {
            self.settle(done);
        }
        self.bar.finish_and_clear();
        self.finish(started.elapsed())
    }

    async fn publish(&mut self, line: u64, lead: Lead) {
        if !lead.dropped.is_empty() {
            self.summary.fields_dropped_lines += 1;
            self.dropped_names.extend(lead.dropped);
        }
        let message = lead.message.imported_from(self.header_name.as_str());
        let (subject, headers, payload) = match message.encode() {
            Ok(parts) => parts,
            Err(e) => return self.reject(line, LineError::Encode(e)),
        };
        let pending = Pending {
            line,
            subject,
            key: message.envelope.key,
            headers,
            payload,
            attempt: 1,
        };
        // Sent here, in file order, on the one connection: the stream stores leads in the
        // order of the file, so per-lead FIFO in the handlers follows it. Only the acks are
        // awaited concurrently.
        let sent = self
            .js
            .publish_with_headers(
                pending.subject.clone(),
                pending.headers.clone(),
                pending.payload.clone(),
            )
            .await;
        let fut: BoxFuture<'static, Acked> = match sent {
            Ok(ack) => async move { (pending, ack.await) }.boxed(),
            Err(e) => async move { (pending, Err(e)) }.boxed(),
        };
        self.inflight.push(fut);
    }

    /// Books one finished publish, or schedules its retry.
    fn settle(&mut self, (mut pending, result): Acked) {
        match result {
            Ok(ack) => {
                self.failures_in_a_row = 0;
                if ack.duplicate {
                    self.summary.duplicates += 1;
                } else {
                    self.summary.published += 1;
                }
            }
            Err(e) => {
                let permanent = matches!(
                    e.kind(),
                    PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::StreamNotFound
                );
                if !permanent && pending.attempt < PUBLISH_ATTEMPTS {
                    tracing::warn!(target: "leadrouter::import", line = pending.line, key = %pending.key, attempt = pending.attempt, error = %chain(&e), "publish not acknowledged; retrying");
                    pending.attempt += 1;
                    let js = self.js.clone();
                    let delay = PUBLISH_BACKOFF.delay(pending.attempt, None);
                    self.inflight.push(
                        async move {
                            tokio::time::sleep(delay).await;
                            let result = match js
                                .publish_with_headers(
                                    pending.subject.clone(),
                                    pending.headers.clone(),
                                    pending.payload.clone(),
                                )
                                .await
                            {
                                Ok(ack) => ack.await,
                                Err(e) => Err(e),
                            };
                            (pending, result)
                        }
                        .boxed(),
                    );
                    return;
                }
                if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                    // The line's own fault: a bad line, not a queue failure.
                    self.reject(pending.line, LineError::NotStored(e));
                    return;
                }
                self.failures_in_a_row += 1;
                self.summary.failed += 1;
                let why = chain(&LineError::NotStored(e));
                tracing::warn!(target: "leadrouter::import", line = pending.line, key = %pending.key, error = %why, "lead not stored");
                self.record(pending.line, why);
            }
        }
    }

    fn reject(&mut self, line: u64, error: LineError) {
        self.summary.rejected += 1;
        let why = chain(&error);
        tracing::debug!(target: "leadrouter::import", line, error = %why, "line rejected");
        self.record(line, why);
    }

    fn record(&mut self, line: u64, error: String) {
        let rec = RejectedLine { line, error };
        if let Some((path, out)) = &mut self.rejects_out {
            let written = serde_json::to_writer(&mut *out, &rec)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = written {
                // Keep importing: the summary still counts every line; say the file is short.
                if self.rejects_error.is_none() {
                    self.rejects_error = Some(format!("writing {}: {}", path.display(), chain(&e)));
                }
            }
        }
        let samples = &mut self.summary.rejects;
        samples.push(rec);
        // Failures settle out of order; keep the lowest line numbers without growing unbounded.
        if samples.len() >= SUMMARY_REJECTS * 2 {
            samples.sort_by_key(|r| r.line);
            samples.truncate(SUMMARY_REJECTS);
        }
    }

    fn progress_message(&self) -> String {
        let s = &self.summary;
        format!(
            "{} lines, {} published, {} duplicates, {} rejected, {} failed",
            s.lines_read, s.published, s.duplicates, s.rejected, s.failed
        )
    }

    fn finish(mut self, elapsed: Duration) -> ImportSummary {
        if let Some((path, mut out)) = self.rejects_out.take() {
            if let Err(e) = out.flush() {
                self.rejects_error
                    .get_or_insert_with(|| format!("writing {}: {}", path.display(), chain(&e)));
            }
            self.summary.rejects_file = Some(path.display().to_string());
        }
        let s = &mut self.summary;
        s.rejects.sort_by_key(|r| r.line);
        s.rejects.truncate(SUMMARY_REJECTS);
        s.fields_dropped = std::mem::take(&mut self.dropped_names)
            .into_iter()
            .collect();
        s.elapsed_secs = elapsed.as_secs_f64();
        s.rate = if s.elapsed_secs > 0.0 {
            s.lines_read as f64 / s.elapsed_secs
        } else {
            0.0
        };
        if let Some(e) = self.rejects_error.take() {
            // Not fatal to the import, but the operator asked for the file: fail the run.
            s.aborted
                .get_or_insert(format!("the rejects file is incomplete ({e})"));
        }
        s.ok = s.rejected == 0 && s.failed == 0 && s.aborted.is_none();
        tracing::info!(
            target: "leadrouter::import",
            file = %s.file,
            lines = s.lines_read,
            published = s.published,
            duplicates = s.duplicates,
            rejected = s.rejected,
            failed = s.failed,
            elapsed_ms = elapsed.as_millis() as u64,
            ok = s.ok,
            "import finished"
        );
        self.summary
    }
}

fn progress_bar(quiet: bool, len: Option<u64>) -> ProgressBar {
    // Only for a person watching: never in pipes, logs or CI output.
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {bytes} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct LineRead {
    /// Bytes taken from the input, terminator included.
    consumed: usize,
    /// The line's full length without the terminator (may exceed what was kept).
    len: usize,
}

/// Reads one line into `buf` without its `\n` / `\r\n`, keeping at most `max` bytes so a file
/// without newlines cannot exhaust memory. `None` at the end of the input.
async fn read_line_bounded<R: AsyncBufRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<LineRead>> {
    buf.clear();
    let mut consumed = 0usize;
    let mut len = 0usize;
    let mut any = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            break;
        }
        any = true;
        let (part, used, end) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        let room = (max + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        len += part.len();
        consumed += used;
        r.consume(used);
        if end {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if len <= max && buf.last() == Some(&b'\r') {
        buf.pop();
        len -= 1;
    }
    Ok(Some(LineRead { consumed, len }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::envelope::{body_event_id, email_hash, idempotency_key};
    use crate::intake::group_key::KeySource;
    use std::path::Path;

    const NO_ENV: [(&str, &str); 0] = [];

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[[senders]]
id = "demo"
scheme = "standard-webhooks"
secret_env = ["X"]
event_id = {{ header = "webhook-id" }}
[senders.mapping.fields]
email = "$.email"
first_name = "$.first_name"

[[senders]]
id = "ptr"
scheme = "standard-webhooks"
secret_env = ["X"]
event_id = {{ pointer = "/id" }}
schema = "lead.v2"
[senders.mapping.fields]
email = "$.email"

[[senders]]
id = "form"
scheme = "standard-webhooks"
secret_env = ["X"]
[senders.mapping]
format = "form"
[senders.mapping.fields]
email = "$.email"
{extra}"#
        );
        Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap()
    }

    fn grouping() -> Grouping {
        Grouping {
            key: GroupKey::from_secret(b"import-unit-test-key", KeySource::Env("T".into())),
            partitions: 16,
        }
    }

    /// A plan with the routers' grouping, as `Job::run` has it.
    struct Planned(Plan, Grouping);

    impl Planned {
        fn lead(&self, line: &[u8], now: &str) -> Result<Lead, LineError> {
            self.0.lead(&self.1, line, now)
        }
    }

    fn plan(sender: Option<&str>, pointer: Option<&str>) -> Planned {
        let mut o = ImportOptions::new("x.jsonl");
        o.sender = sender.map(str::to_string);
        o.received_at_pointer = pointer.map(str::to_string);
        Planned(Plan::new(&config(""), &o).unwrap(), grouping())
    }

    const NOW: &str = "2030-01-01T00:00:00.000Z";

    #[test]
    fn envelope_without_key_gets_the_edge_key_and_allowlist() {
        let p = plan(None, None);
        let line = br#"{"sender":"demo","source_event_id":"e1","fields":{"email":"A@B.co","ssn":"1","first_name":"A"},"flags":[]}"#;
        let lead = p.lead(line, NOW).unwrap();
        let fields = lead.message.envelope.fields.clone();
        assert_eq!(
            lead.message.envelope.key,
            idempotency_key("demo", "e1", &email_hash(&fields))
        );
        assert!(!fields.contains_key("ssn"));
        assert_eq!(lead.dropped, vec!["ssn".to_string()]);
        assert_eq!(lead.message.envelope.schema, "lead.v1");
        assert_eq!(lead.message.envelope.received_at, NOW);
        let (group, subject) = grouping().place("demo", &fields);
        assert_eq!(lead.message.subject(), subject);
        assert_eq!(lead.message.headers.group, Some(group));
    }

    #[test]
    fn envelope_keeps_given_key_schema_and_time() {
        let p = plan(None, None);
        let line = br#"{"schema":"lead.v9","sender":"demo","source_event_id":"e1","received_at":"2020-01-01T00:00:00Z","key":"lr_abc","fields":{"email":"a@b.co"}}"#;
        let lead = p.lead(line, NOW).unwrap().message;
        assert_eq!(lead.envelope.key, "lr_abc");
        assert_eq!(lead.envelope.schema, "lead.v9");
        assert_eq!(lead.envelope.received_at, "2020-01-01T00:00:00Z");
        assert_eq!(lead.headers.msg_id.as_deref(), Some("lr_abc"));
    }

    #[test]
    fn bad_envelopes_are_rejected_with_reasons() {
        let p = plan(None, None);
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"sender":"nope","source_event_id":"e","fields":{}}"#,
                "unknown sender `nope`",
            ),
            (br#"{"sender":"demo","fields":{}}"#, "source_event_id"),
            (
                br#"{"sender":"demo","source_event_id":"e","fields":[]}"#,
                "invalid envelope",
            ),
            (
                br#"{"sender":"demo","source_event_id":"e","received_at":"yesterday","fields":{}}"#,
                "RFC 3339",
            ),
            (
                br#"{"sender":"demo","source_event_id":"e","key":"a b","fields":{}}"#,
                "`key`",
            ),
            (b"{not json", "not JSON"),
        ];
        for (line, want) in cases {
            // What the summary and the rejects file say of the line.
            let err = chain(&p.lead(line, NOW).unwrap_err());
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let err = p.lead(br#"{"email":"a@b.co"}"#, NOW).unwrap_err();
        assert!(matches!(err, LineError::NoSender), "{err}");
    }

    #[test]
    fn raw_lines_map_like_the_edge() {
        // Header event id: falls back to the hash of the line's bytes.
        let p = plan(Some("demo"), None);
        let line = br#"{"email":"a@b.co","first_name":"A","notes":"secret"}"#;
        let lead = p.lead(line, NOW).unwrap().message;
        assert_eq!(lead.envelope.source_event_id, body_event_id(line));
        assert!(!lead.envelope.fields.contains_key("notes"));

        let p = plan(Some("ptr"), Some("/at"));
        let lead = p
            .lead(
                br#"{"id":7,"email":"a@b.co","at":"2026-11-20T15:03:27+01:00"}"#,
                NOW,
            )
            .unwrap()
            .message;
        assert_eq!(lead.envelope.source_event_id, "7");
        assert_eq!(lead.envelope.schema, "lead.v2");
        assert_eq!(lead.envelope.received_at, "2026-11-20T14:03:27.000Z");
        let err = p.lead(br#"{"email":"a@b.co","at":"2026-11-20T15:03:27Z"}"#, NOW);
        assert!(matches!(err, Err(LineError::MissingEventId(_))));
        let err = p.lead(br#"{"id":"x","email":"a@b.co"}"#, NOW);
        assert!(matches!(err, Err(LineError::ReceivedAt { .. })));
    }

    #[test]
    fn form_senders_take_a_json_string() {
        let p = plan(Some("form"), None);
        let lead = p.lead(br#""email=a%40b.co&x=1""#, NOW).unwrap().message;
        assert_eq!(lead.envelope.fields["email"], "a@b.co");
        assert_eq!(
            lead.envelope.source_event_id,
            body_event_id(b"email=a%40b.co&x=1")
        );
        assert!(matches!(
            p.lead(br#"{"email":"a@b.co"}"#, NOW),
            Err(LineError::FormNeedsString(_))
        ));
    }

    #[test]
    fn options_are_checked() {
        let cfg = config("");
        let mut o = ImportOptions::new("x");
        o.sender = Some("ghost".into());
        assert!(matches!(
            Plan::new(&cfg, &o),
            Err(ImportError::UnknownSender(_))
        ));
        let mut o = ImportOptions::new("x");
        o.received_at_pointer = Some("at".into());
        assert!(matches!(
            Plan::new(&cfg, &o),
            Err(ImportError::InvalidOption { .. })
        ));
    }

    #[test]
    fn embedded_url_is_the_loopback_port() {
        let mut cfg = config("");
        cfg.nats.embedded.port = 4333;
        assert_eq!(nats_url(&cfg), "nats://127.0.0.1:4333");
        cfg.nats.url = "nats://10.0.0.1:4222".into();
        assert_eq!(nats_url(&cfg), "nats://10.0.0.1:4222");
    }

    #[test]
    fn header_value_strips_control_characters() {
        assert_eq!(header_value(Path::new("/a/b/x\ny.jsonl")), "x?y.jsonl");
    }

    #[tokio::test]
    async fn lines_are_bounded_and_crlf_is_trimmed() {
        let data: &[u8] = b"ab\r\n\ncdefgh\nlast";
        let mut r = BufReader::with_capacity(3, data);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(l) = read_line_bounded(&mut r, &mut buf, 4).await.unwrap() {
            got.push((buf.clone(), l.len, l.consumed));
        }
        assert_eq!(
            got,
            vec![
                (b"ab".to_vec(), 2, 4),
                (Vec::new(), 0, 1),
                (b"cdefg".to_vec(), 6, 7),
                (b"last".to_vec(), 4, 4),
            ]
        );
    }
}
