//! What an import did, line by line where it matters: the summary printed (or written as
//! JSON) at the end, with the rejected lines.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::queue::STREAM_LEADS;

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
