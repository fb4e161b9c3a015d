//! `kind = "file"`: JSON lines, one per lead key, each with `persisted_at`.
//!
//! The sink keeps the set of keys it has written (loaded from the file when built), so a
//! redelivery, a replay or a restart never appends a second line for a key. Appends are
//! serialized by one mutex and each line is written and flushed before `deliver` returns;
//! `fsync = true` also syncs it to disk (survives an OS crash, much slower).
//!
//! One process, one sink per file: the key set lives in memory, so two writers on the same
//! file would not see each other's keys. Memory grows with the number of keys in the file
//! (roughly 100 bytes per lead); rotate the file (move it away while stopped) when it matters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{
    class, Delivered, LeadRecord, Sink, SinkBuildError, SinkContext, SinkError, DEFAULT_FILE_PATH,
};

/// The keys of a `kind = "file"` sink, besides `name`, `kind` and `ordering`. Unset keys take
/// their defaults in [`FileSpec::from_config`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Default `{data_dir}/sinks/leads.jsonl`; relative paths are relative to the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// fsync each line (slow, survives an OS crash); default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<bool>,
}

/// Validated `file` sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// As configured; `None` means `{data_dir}/sinks/leads.jsonl`.
    pub path: Option<PathBuf>,
    pub fsync: bool,
}

impl FileSpec {
    pub(crate) fn from_config(
        index: usize,
        cfg: &FileSinkConfig,
    ) -> Result<FileSpec, SinkBuildError> {
        if let Some(p) = &cfg.path {
            if p.as_os_str().is_empty() {
                return Err(SinkBuildError::new(index, "path", "must not be empty"));
            }
        }
        Ok(FileSpec {
            path: cfg.path.clone(),
            fsync: cfg.fsync.unwrap_or(false),
        })
    }

    /// The file this spec writes, given the data dir.
    pub fn resolve(&self, data_dir: &Path) -> PathBuf {
        match &self.path {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => data_dir.join(p),
            None => data_dir.join(DEFAULT_FILE_PATH),
        }
    }
}

/// One line of the file: the lead plus when we wrote it.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    lead: &'a LeadRecord,
    persisted_at: String,
}

/// What loading needs from an existing line.
#[derive(Deserialize)]
struct Seen {
    key: String,
    #[serde(default)]
    persisted_at: Option<String>,
}

struct State {
    file: tokio::fs::File,
    /// Written keys and when; a redelivery answers with the original time.
    written: HashMap<String, SystemTime>,
    /// The file may end in a partial line (a crash or a failed write mid-line): start the next
    /// line on a fresh one so it stays parseable.
    needs_newline: bool,
}

pub struct FileSink {
    name: String,
    path: PathBuf,
    fsync: bool,
    state: Mutex<State>,
}

impl FileSink {
    pub(crate) async fn open(
        index: usize,
        name: &str,
        spec: FileSpec,
        ctx: &SinkContext,
    ) -> Result<FileSink, SinkBuildError> {
        let path = spec.resolve(&ctx.data_dir);
        let err = |what: &str, e: std::io::Error| {
            SinkBuildError::new(index, "path", format!("{what} {}", path.display())).with_source(e)
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| err("cannot create the directory of", e))?;
        }
        let (written, needs_newline) = match tokio::fs::File::open(&path).await {
            Ok(f) => load_keys(f, &path)
                .await
                .map_err(|e| err("cannot read", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), false),
            Err(e) => return Err(err("cannot read", e)),
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| err("cannot open for appending", e))?;
        tracing::info!(sink = %name, path = %path.display(), keys = written.len(), "file sink loaded");
        Ok(FileSink {
            name: name.to_string(),
            path,
            fsync: spec.fsync,
            state: Mutex::new(State {
                file,
                written,
                needs_newline,
            }),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many keys the file holds.
    pub async fn len(&self) -> usize {
        self.state.lock().await.written.len()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

async fn load_keys(
    f: tokio::fs::File,
    path: &Path,
) -> std::io::Result<(HashMap<String, SystemTime>, bool)> {
    let mut reader = tokio::io::BufReader::new(f);
    let mut written = HashMap::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut needs_newline = false;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).await?;
        if n == 0 {
            break;
        }
        line_no += 1;
        needs_newline = buf.last() != Some(&b'\n');
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Seen>(text) {
            Ok(seen) => {
                let at = seen
                    .persisted_at
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
                    .map(SystemTime::from)
                    .unwrap_or_else(SystemTime::now);
                written.entry(seen.key).or_insert(at);
            }
            // Typically the torn last line of a crash; the lead was not confirmed then, so it
            // will be redelivered and written again in full.
            Err(_) => {
                tracing::warn!(path = %path.display(), line = line_no, "skipping an unparseable line")
            }
        }
    }
    Ok((written, needs_newline))
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        let mut st = self.state.lock().await;
        if let Some(at) = st.written.get(&lead.key) {
            return Ok(Delivered {
                persisted_at: *at,
                remote_id: None,
                created: None,
            });
        }
        let now = SystemTime::now();
        let mut bytes = Vec::with_capacity(512);
        if st.needs_newline {
            bytes.push(b'\n');
        }
        serde_json::to_writer(
            &mut bytes,
            &Line {
                lead,
                persisted_at: crate::timestamp::format_system(now),
            },
        )
        .map_err(|_| SinkError::permanent(class::UNSERIALIZABLE, "cannot encode the lead"))?;
        bytes.push(b'\n');
        let fsync = self.fsync;
        let res = async {
            st.file.write_all(&bytes).await?;
            st.file.flush().await?;
            if fsync {
                st.file.sync_data().await?;
            }
            std::io::Result::Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                st.needs_newline = false;
                st.written.insert(lead.key.clone(), now);
                Ok(Delivered {
                    persisted_at: now,
                    remote_id: None,
                    created: None,
                })
            }
            Err(e) => {
                // Part of the line may be in the file; the next one starts on a fresh line.
                st.needs_newline = true;
                tracing::warn!(sink = %self.name, path = %self.path.display(), error = %crate::error_chain::chain(&e), "append failed");
                Err(
                    SinkError::transient(class::IO, format!("cannot append: {}", e.kind()))
                        .with_source(e),
                )
            }
        }
    }
}
