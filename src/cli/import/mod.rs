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

mod error;
mod options;
mod plan;
mod runner;
mod summary;
#[cfg(test)]
mod tests;

use crate::config::{Config, EnvSource};
use crate::intake::group_key::GroupKey;

pub use error::{ImportError, LineError};
pub use options::{
    ImportArgs, ImportOptions, ABORT_AFTER_FAILURES, DEFAULT_CONCURRENCY, SUMMARY_REJECTS,
};
use runner::Job;
pub use summary::{print_summary, ImportSummary, RejectedLine};

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
