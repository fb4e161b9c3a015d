//! Versioned JSON Schemas for lead `fields`, compiled once, hot-reloaded from their directory.
//!
//! Layout: one file per schema version in a directory (default `config/schemas/`), named
//! `<schema>.json`, e.g. `lead.v1.json` for the schema `lead.v1` that senders name in their
//! `schema` key and the edge stamps into the envelope. Schema names are `[a-z0-9._-]+` (at most
//! 128 bytes, not starting with a dot); anything else is rejected, so a name taken from a message
//! can never reach outside the directory (names are only ever looked up in the compiled map,
//! never joined onto a path, but they are checked anyway).
//!
//! **What is validated**: the envelope's `fields` object (the sender's mapped fields), not the
//! whole envelope. The envelope's own shape is the edge's business and is typed by serde.
//!
//! **Formats are asserted**: `format` keywords (e.g. `"format": "email"`) are validated, whatever
//! the draft's default, because a schema that says `format: email` means it.
//!
//! **Errors carry no values**: each error is `"<instance path>: <keyword>: <message>"` with the
//! offending value masked (`/email: format: value is not a "email"`), or
//! `"<path>/<property>: required"` for a missing property. Field *names* and schema-side values
//! (limits, patterns, enum options) appear; the lead's *values* never do, because these strings
//! end up in the DLQ reason, headers and logs, and lead values are PII. At most
//! [`MAX_REPORTED_ERRORS`] errors are listed, followed by `... and N more`.
//!
//! **Hot fix, then replay**: [`SchemaRegistry::validate`] re-checks the directory at most once
//! per check interval (default 1 s; [`SchemaRegistry::set_check_interval`]) by comparing each
//! file's modification time and length with what was compiled, and recompiles changed or new
//! files. A broken new version is logged (`tracing::error!`) and the previous compiled version
//! stays in force; a deleted file also keeps its last compiled version (a warning is logged), so
//! a botched edit never turns every lead into a dead letter. [`SchemaRegistry::reload`] forces
//! the same check now and reports broken files as an error. The check is a `read_dir` plus one
//! `stat` per file, done inline by whichever caller finds the interval elapsed (the others do
//! not wait for it); compiling a changed file is done outside the map's lock.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::error_chain::chain;

/// How many validation errors one [`SchemaError::Invalid`] lists; the rest are counted.
pub const MAX_REPORTED_ERRORS: usize = 10;
/// Default minimum time between two checks of the schema directory for changed files.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest schema name accepted.
pub const MAX_SCHEMA_NAME_LEN: usize = 128;
/// Longest single error string kept (patterns or enum lists in a message can be long).
const MAX_ERROR_LEN: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No schema file of that name (or the name is not a valid schema name).
    #[error("unknown schema `{0}`")]
    Unknown(String),
    /// The fields do not match; `errors` are value-free `"path: keyword: message"` strings.
    #[error("lead does not match {schema}: {}", errors.join("; "))]
    Invalid { schema: String, errors: Vec<String> },
    /// Schema files or the directory cannot be read, parsed or compiled: every problem, each
    /// naming its file, with its cause.
    #[error("{}", problem_lines(.0))]
    Load(Vec<LoadProblem>),
}

/// One schema file (or the directory) that did not load. The text names the file; the cause
/// (the I/O, JSON or compile error) is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum LoadProblem {
    #[error("schema directory {}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schema file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schema file {}: the name `{name}` is not a valid schema name ([a-z0-9._-]+)", path.display())]
    BadName { path: PathBuf, name: String },
    #[error("schema file {}: not JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("schema file {}: invalid schema", path.display())]
    Compile {
        path: PathBuf,
        #[source]
        source: ValidationError<'static>,
    },
}

/// `SchemaError::Load`'s text: several problems (each with its cause) rather than one source.
fn problem_lines(problems: &[LoadProblem]) -> String {
    problems.iter().map(chain).collect::<Vec<_>>().join("; ")
}

/// The compiled schemas of one directory. `Send + Sync`: share it between handlers via `Arc`.
pub struct SchemaRegistry {
    dir: PathBuf,
    /// Compiled schemas by name; swapped entry by entry when a file changes.
    state: RwLock<State>,
    /// Serializes directory checks so two callers never compile the same file twice.
    scan: Mutex<()>,
    /// Reference point for `last_check_ms` (an `Instant` cannot live in an atomic).
    epoch: Instant,
    /// Milliseconds after `epoch` of the last directory check.
    last_check_ms: AtomicU64,
    check_interval_ms: AtomicU64,
}

#[derive(Default)]
struct State {
    compiled: HashMap<String, Entry>,
    /// The stamp of the last version of a file that failed to compile, so a broken file is
    /// reported once, not at every check.
    failed: HashMap<String, Stamp>,
}

struct Entry {
    validator: Arc<Validator>,
    stamp: Stamp,
    /// The file has disappeared; the last compiled version stays in use.
    gone: bool,
}

/// What "the file changed" means: modification time and length (a same-second rewrite on a
/// coarse-mtime filesystem usually changes the length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// One pass over the directory: what to apply, and what went wrong.
#[derive(Default)]
struct ScanResult {
    compiled: Vec<(String, Arc<Validator>, Stamp)>,
    failed: Vec<(String, Stamp, LoadProblem)>,
    /// Problems that are not a single file's compile error (unreadable dir, bad file name).
    problems: Vec<LoadProblem>,
    seen: Vec<String>,
}

impl SchemaRegistry {
    /// Compile every `*.json` in `dir`. Any unreadable, unparsable or invalid schema file, a file
    /// whose name is not a valid schema name, or an unreadable directory is a
    /// [`SchemaError::Load`] naming the file(s) and the problem(s). Hidden files (`.*`) are
    /// ignored (editors leave lock files such as `.#lead.v1.json`).
    pub fn load(dir: &Path) -> Result<SchemaRegistry, SchemaError> {
        let registry = SchemaRegistry {
            dir: dir.to_path_buf(),
            state: RwLock::new(State::default()),
            scan: Mutex::new(()),
            epoch: Instant::now(),
            last_check_ms: AtomicU64::new(0),
            check_interval_ms: AtomicU64::new(duration_ms(DEFAULT_CHECK_INTERVAL)),
        };
        let scan = registry.scan_dir();
        if scan.has_errors() {
            return Err(SchemaError::Load(scan.into_problems()));
        }
        registry.apply(scan);
        registry.mark_checked();
        let names = registry.names();
        if names.is_empty() {
            tracing::warn!(dir = %dir.display(), "no *.json schema files; every lead will be rejected as unknown schema");
        } else {
            tracing::info!(dir = %dir.display(), schemas = ?names, "schemas loaded");
        }
        Ok(registry)
    }

    /// Validate a lead's `fields` object (not the whole envelope) against schema `schema`.
    ///
    /// Checks the directory for changed files first if the check interval has elapsed.
    /// Errors: [`SchemaError::Unknown`] (no such schema, or an invalid name),
    /// [`SchemaError::Invalid`] with every violation (capped, values masked).
    pub fn validate(&self, schema: &str, doc: &Value) -> Result<(), SchemaError> {
        if !is_valid_schema_name(schema) {
            return Err(SchemaError::Unknown(truncate(schema, MAX_SCHEMA_NAME_LEN)));
        }
        self.maybe_refresh();
        let validator = self
            .read_state()
            .compiled
            .get(schema)
            .map(|e| Arc::clone(&e.validator))
            .ok_or_else(|| SchemaError::Unknown(schema.to_owned()))?;
        // Fast path: valid leads (nearly all) never build error values.
        if validator.is_valid(doc) {
            return Ok(());
        }
        let mut errors = Vec::new();
        let mut more = 0usize;
        for error in validator.iter_errors(doc) {
            if errors.len() < MAX_REPORTED_ERRORS {
                errors.push(describe(&error));
            } else {
                more += 1;
            }
        }
        if more > 0 {
            errors.push(format!("... and {more} more"));
        }
        Err(SchemaError::Invalid {
            schema: schema.to_owned(),
            errors,
        })
    }

    /// Re-check the directory now (whatever the interval) and recompile changed or new files.
    /// Good files are applied even if others are broken; broken ones keep their previous
    /// compiled version and are reported as one [`SchemaError::Load`].
    pub fn reload(&self) -> Result<(), SchemaError> {
        let _guard = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        // A file that failed before and has not changed is still broken: report it again here,
        // since the caller explicitly asked.
        let scan = self.scan_dir_inner(true);
        let errors = self.apply(scan);
        self.mark_checked();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Load(errors))
        }
    }

    /// Minimum time between two automatic directory checks in [`validate`](Self::validate)
    /// (default 1 s). `Duration::ZERO` checks on every call (tests).
    pub fn set_check_interval(&self, interval: Duration) {
        self.check_interval_ms
            .store(duration_ms(interval), Ordering::Relaxed);
    }

    /// Whether a schema of that name is compiled (e.g. to check senders' `schema` at start-up).
    pub fn contains(&self, schema: &str) -> bool {
        self.read_state().compiled.contains_key(schema)
    }

    /// The compiled schema names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read_state().compiled.keys().cloned().collect();
        names.sort();
        names
    }

    /// The directory the schemas are loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied entry (each insert is one
        // map operation), so a poisoned lock is still consistent.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_checked(&self) {
        self.last_check_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The periodic check: at most once per interval, by one caller; others carry on with the
    /// compiled map they have.
    fn maybe_refresh(&self) {
        let now = self.now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.check_interval_ms.load(Ordering::Relaxed) {
            return;
        }
        // Claim this interval's check; losing the race means someone else is doing it.
        if self
            .last_check_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let Ok(_guard) = self.scan.try_lock() else {
            return;
        };
        let scan = self.scan_dir();
        for problem in &scan.problems {
            tracing::error!(dir = %self.dir.display(), problem = %chain(problem), "schema directory check failed; keeping the compiled schemas");
        }
        for (name, _, problem) in &scan.failed {
            tracing::error!(schema = %name, error = %chain(problem), "changed schema file does not compile; keeping the previous version");
        }
        self.apply(scan);
    }

    fn scan_dir(&self) -> ScanResult {
        self.scan_dir_inner(false)
    }

    /// List the directory and compile every file whose stamp differs from the compiled (or last
    /// failed) version. `recheck_failed`: also retry files whose broken version is unchanged.
    fn scan_dir_inner(&self, recheck_failed: bool) -> ScanResult {
        let mut out = ScanResult::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(source) => {
                out.problems.push(LoadProblem::Dir {
                    dir: self.dir.clone(),
                    source,
                });
                return out;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    out.problems.push(LoadProblem::Dir {
                        dir: self.dir.clone(),
                        source,
                    });
                    continue;
                }
            };
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue; // not UTF-8, so cannot be `<schema>.json`
            };
            let Some(name) = file_name.strip_suffix(".json") else {
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // `fs::metadata` follows symlinks: mounted config maps swap a symlink, and the
            // target's stamp is what changes.
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(source) => {
                    out.problems.push(LoadProblem::Read { path, source });
                    continue;
                }
            };
            if !meta.is_file() {
                continue;
            }
            if !is_valid_schema_name(name) {
                out.problems.push(LoadProblem::BadName {
                    path,
                    name: name.to_owned(),
                });
                continue;
            }
            out.seen.push(name.to_owned());
            let stamp = Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
            };
            {
                let state = self.read_state();
                if state.compiled.get(name).is_some_and(|e| e.stamp == stamp) {
                    continue;
                }
                if !recheck_failed && state.failed.get(name) == Some(&stamp) {
                    continue;
                }
            }
            match compile_file(path) {
                Ok(validator) => out
                    .compiled
                    .push((name.to_owned(), Arc::new(validator), stamp)),
                Err(problem) => out.failed.push((name.to_owned(), stamp, problem)),
            }
        }
        out
    }

    /// Applies what compiled; returns the problems of the scan (directory problems first).
    fn apply(&self, scan: ScanResult) -> Vec<LoadProblem> {
        let mut problems = scan.problems;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        for (name, validator, stamp) in scan.compiled {
            let replaced = state.compiled.insert(
                name.clone(),
                Entry {
                    validator,
                    stamp,
                    gone: false,
                },
            );
            state.failed.remove(&name);
            if replaced.is_some() {
                tracing::info!(schema = %name, "schema file changed; recompiled");
            }
        }
        // Only trust the listing for deletions if it was complete.
        let listing_complete = problems.is_empty();
        for (name, stamp, problem) in scan.failed {
            state.failed.insert(name, stamp);
            problems.push(problem);
        }
        if listing_complete {
            for (name, entry) in state.compiled.iter_mut() {
                let present = scan.seen.iter().any(|s| s == name);
                if !present && !entry.gone {
                    tracing::warn!(schema = %name, "schema file removed; keeping the compiled version until restart");
                }
                entry.gone = !present;
            }
        }
        problems
    }
}

impl ScanResult {
    fn has_errors(&self) -> bool {
        !self.problems.is_empty() || !self.failed.is_empty()
    }

    /// Directory problems first, then the files that failed to compile.
    fn into_problems(self) -> Vec<LoadProblem> {
        let mut out = self.problems;
        out.extend(self.failed.into_iter().map(|(_, _, p)| p));
        out
    }
}

/// `[a-z0-9._-]+`, at most [`MAX_SCHEMA_NAME_LEN`] bytes, not starting with a dot (so neither
/// `..` nor hidden files).
pub fn is_valid_schema_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SCHEMA_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

fn compile_file(path: PathBuf) -> Result<Validator, LoadProblem> {
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(LoadProblem::Read { path, source }),
    };
    let schema: Value = match serde_json::from_str(&text) {
        Ok(schema) => schema,
        Err(source) => return Err(LoadProblem::Json { path, source }),
    };
    // The draft comes from `$schema` (2020-12 when absent). Formats are asserted explicitly:
    // 2019-09 and later only annotate them by default. Without the resolve-http/resolve-file
    // features, a remote `$ref` fails here, at load, rather than at validation.
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|source| LoadProblem::Compile { path, source })
}

/// One value-free error line. `Required` names the missing property in the path, since that is
/// what an operator looks for; everything else is `path: keyword: masked message`.
fn describe(error: &ValidationError<'_>) -> String {
    let path = error.instance_path().as_str();
    let mut out = String::new();
    if let ValidationErrorKind::Required {
        property: Value::String(property),
    } = error.kind()
    {
        out.push_str(path);
        out.push('/');
        // JSON Pointer escaping, so the result is itself a valid instance path.
        out.push_str(&property.replace('~', "~0").replace('/', "~1"));
        out.push_str(": required");
        return truncate(&out, MAX_ERROR_LEN);
    }
    out.push_str(if path.is_empty() { "/" } else { path });
    let _ = write!(out, ": {}: {}", error.kind().keyword(), error.masked());
    truncate(&out, MAX_ERROR_LEN)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
