//! The import's run: reading the file line by line (bounded), publishing with a window of
//! PubAcks in flight, retrying what JetStream did not acknowledge, and stopping when too many
//! lines in a row could not be stored.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{
    self,
    context::{PublishError, PublishErrorKind},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::error::{ImportError, LineError};
use super::options::{
    ImportOptions, ABORT_AFTER_FAILURES, MAX_LINE_BYTES, MIN_ACK_TIMEOUT, PUBLISH_ATTEMPTS,
    PUBLISH_BACKOFF, SUMMARY_REJECTS,
};
use super::plan::{import_time, Lead, Plan};
use super::summary::{ImportSummary, RejectedLine};
use crate::config::Config;
use crate::error_chain::chain;
use crate::intake::group_key::GroupKey;
use crate::intake::Grouping;
use crate::queue::STREAM_LEADS;

/// Everything checked and opened before touching NATS.
pub(super) struct Job {
    pub(super) plan: Plan,
    pub(super) input: Box<dyn AsyncBufRead + Unpin + Send>,
    pub(super) input_len: Option<u64>,
    pub(super) display_name: String,
    pub(super) header_name: String,
    pub(super) rejects: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    pub(super) ack_timeout: Duration,
    pub(super) concurrency: usize,
    pub(super) quiet: bool,
}

impl Job {
    pub(super) async fn prepare(cfg: &Config, opts: &ImportOptions) -> Result<Job, ImportError> {
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
    pub(super) async fn run(
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
pub(super) fn header_value(path: &Path) -> String {
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
pub(super) struct Pending {
    pub(super) line: u64,
    pub(super) subject: String,
    pub(super) key: String,
    pub(super) headers: HeaderMap,
    pub(super) payload: Bytes,
    pub(super) attempt: u32,
    /// The lead's root span while traces are exported (its context is in `headers`); it ends
    /// when the publish is settled.
    pub(super) span: tracing::Span,
}

pub(super) type Acked = (Pending, Result<PublishAck, PublishError>);

pub(super) struct Runner {
    pub(super) job_plan: Plan,
    pub(super) grouping: Grouping,
    pub(super) input: Box<dyn AsyncBufRead + Unpin + Send>,
    pub(super) rejects_out: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    pub(super) rejects_error: Option<String>,
    pub(super) header_name: String,
    pub(super) concurrency: usize,
    pub(super) js: jetstream::Context,
    pub(super) bar: ProgressBar,
    pub(super) inflight: FuturesUnordered<BoxFuture<'static, Acked>>,
    pub(super) summary: ImportSummary,
    pub(super) dropped_names: BTreeSet<String>,
    pub(super) failures_in_a_row: u64,
}

impl Runner {
    pub(super) fn new(job: Job, js: jetstream::Context, grouping: Grouping) -> Runner {
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

    pub(super) async fn go(mut self) -> ImportSummary {
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

    pub(super) async fn publish(&mut self, line: u64, lead: Lead) {
        if !lead.dropped.is_empty() {
            self.summary.fields_dropped_lines += 1;
            self.dropped_names.extend(lead.dropped);
        }
        let message = lead.message.imported_from(self.header_name.as_str());
        let (subject, mut headers, payload) = match message.encode() {
            Ok(parts) => parts,
            Err(e) => return self.reject(line, LineError::Encode(e)),
        };
        let span = crate::telemetry::traces::trace_span!(
            parent: None,
            "import",
            key = %message.envelope.key,
            sender = %message.envelope.sender,
            leadrouter.line = line as i64,
            otel.kind = "producer",
        );
        crate::telemetry::traces::inject(&span, &mut headers);
        let pending = Pending {
            line,
            subject,
            key: message.envelope.key,
            headers,
            payload,
            attempt: 1,
            span,
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
    pub(super) fn settle(&mut self, (mut pending, result): Acked) {
        match result {
            Ok(ack) => {
                self.failures_in_a_row = 0;
                crate::telemetry::traces::set_attribute(
                    &pending.span,
                    "leadrouter.duplicate",
                    ack.duplicate,
                );
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
                crate::telemetry::traces::set_error(&pending.span, "not_stored");
                self.failures_in_a_row += 1;
                self.summary.failed += 1;
                let why = chain(&LineError::NotStored(e));
                tracing::warn!(target: "leadrouter::import", line = pending.line, key = %pending.key, error = %why, "lead not stored");
                self.record(pending.line, why);
            }
        }
    }

    pub(super) fn reject(&mut self, line: u64, error: LineError) {
        self.summary.rejected += 1;
        let why = chain(&error);
        tracing::debug!(target: "leadrouter::import", line, error = %why, "line rejected");
        self.record(line, why);
    }

    pub(super) fn record(&mut self, line: u64, error: String) {
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

    pub(super) fn progress_message(&self) -> String {
        let s = &self.summary;
        format!(
            "{} lines, {} published, {} duplicates, {} rejected, {} failed",
            s.lines_read, s.published, s.duplicates, s.rejected, s.failed
        )
    }

    pub(super) fn finish(mut self, elapsed: Duration) -> ImportSummary {
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

pub(super) fn progress_bar(quiet: bool, len: Option<u64>) -> ProgressBar {
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

pub(super) struct LineRead {
    /// Bytes taken from the input, terminator included.
    pub(super) consumed: usize,
    /// The line's full length without the terminator (may exceed what was kept).
    pub(super) len: usize,
}

/// Reads one line into `buf` without its `\n` / `\r\n`, keeping at most `max` bytes so a file
/// without newlines cannot exhaust memory. `None` at the end of the input.
pub(super) async fn read_line_bounded<R: AsyncBufRead + Unpin + ?Sized>(
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
