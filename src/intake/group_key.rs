//! The keyed group key: which events belong to one lead, for order and partitioning.
//!
//! A lead's group is HMAC-SHA256 of its normalized email under a secret every router shares.
//! A plain hash would let anyone who can read the stream (or the lookup index) test guesses of
//! an address against it; the key makes that impossible without the secret. Partitions derive
//! from the group, so routers with different secrets would scatter one lead's events across
//! partitions and lose their order: [`GroupKey::check`] refuses a key that differs from the one
//! already on record for the NATS account.
//!
//! The secret comes from `handlers.group_key_env`, else `handlers.group_key_file`, else a
//! generated `{data_dir}/group.key` (fine for one router; several routers must share it).

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::envelope::normalize_email;
use crate::config::{EnvSource, HandlersConfig};

/// File name of the generated key, inside the data directory.
pub const LOCAL_FILE: &str = "group.key";
/// The record in `leads_dlq_keys` that every router's key must reproduce.
const CHECK_RECORD: &str = "group-key.check";
const CHECK_TEXT: &[u8] = b"leadrouter group key check v1";
/// Shorter secrets are placeholders, not keys.
const MIN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum GroupKeyError {
    #[error("env var {var} (handlers.group_key_env) holds {len} bytes; use at least {MIN_LEN} random bytes, e.g. export {var}=$(head -c 32 /dev/urandom | base64)")]
    TooShortEnv { var: String, len: usize },
    #[error("{} (handlers.group_key_file) holds {len} bytes; use at least {MIN_LEN} random bytes", path.display())]
    TooShortFile { path: PathBuf, len: usize },
    #[error("cannot read the group key {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the group key {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("group key check in bucket {bucket}")]
    Store {
        bucket: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("this process's group key ({source_label}) differs from the one the routers on this NATS account already use. Every router must hash leads with the same key, or one lead's events land in different partitions and lose their order. {fix}")]
    Mismatch { source_label: String, fix: String },
}

/// What failed in the key-check bucket.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] async_nats::jetstream::context::KeyValueError),
    #[error(transparent)]
    Read(#[from] async_nats::jetstream::kv::EntryError),
    #[error(transparent)]
    Write(#[from] async_nats::jetstream::kv::CreateError),
}

/// Where the secret came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
    Generated(PathBuf),
}

#[derive(Clone)]
pub struct GroupKey {
    mac: Hmac<Sha256>,
    source: KeySource,
    /// `handlers.group_key_env`, named in the fix when the key was generated.
    env_var: String,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl GroupKey {
    pub fn from_secret(secret: &[u8], source: KeySource) -> GroupKey {
        // HMAC takes keys of any length; the error arm cannot happen.
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| Hmac::<Sha256>::new_from_slice(&[0u8; 32]).expect("fixed key"));
        GroupKey {
            mac,
            source,
            env_var: "LEADROUTER_GROUP_KEY".into(),
        }
    }

    /// The env var, else the configured file, else `{data_dir}/group.key` (created on first use).
    pub fn load(
        cfg: &HandlersConfig,
        data_dir: &Path,
        env: &dyn EnvSource,
    ) -> Result<GroupKey, GroupKeyError> {
        if let Some(v) = env.var(&cfg.group_key_env).filter(|v| !v.is_empty()) {
            let v = v.trim();
            if v.len() < MIN_LEN {
                return Err(GroupKeyError::TooShortEnv {
                    var: cfg.group_key_env.clone(),
                    len: v.len(),
                });
            }
            return Ok(GroupKey::from_secret(
                v.as_bytes(),
                KeySource::Env(cfg.group_key_env.clone()),
            ));
        }
        if let Some(path) = &cfg.group_key_file {
            let text = read(path)?;
            if text.len() < MIN_LEN {
                return Err(GroupKeyError::TooShortFile {
                    path: path.clone(),
                    len: text.len(),
                });
            }
            return Ok(GroupKey::from_secret(
                text.as_bytes(),
                KeySource::File(path.clone()),
            ));
        }
        let path = data_dir.join(LOCAL_FILE);
        if !path.exists() {
            create(&path)?;
        }
        let text = read(&path)?;
        let mut key = GroupKey::from_secret(text.as_bytes(), KeySource::Generated(path));
        key.env_var = cfg.group_key_env.clone();
        Ok(key)
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Hex HMAC of a normalized email.
    pub fn hash_email(&self, email: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(normalize_email(email).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The group of a lead's mapped fields (a lead without an email shares the empty group).
    pub fn group_of(&self, fields: &Map<String, Value>) -> String {
        self.hash_email(fields.get("email").and_then(Value::as_str).unwrap_or(""))
    }

    fn check_value(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(CHECK_TEXT);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Compares this key with the one on record in `leads_dlq_keys` (an HMAC of a fixed text,
    /// which says nothing about the key), writing the record on the account's first start.
    pub async fn check(&self, js: &async_nats::jetstream::Context) -> Result<(), GroupKeyError> {
        let bucket = crate::queue::KV_DLQ_KEYS;
        let store_err = |source: StoreError| GroupKeyError::Store { bucket, source };
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| store_err(e.into()))?;
        let mine = self.check_value();
        let on_record = match kv
            .get(CHECK_RECORD)
            .await
            .map_err(|e| store_err(e.into()))?
        {
            Some(v) => v,
            None => match kv.create(CHECK_RECORD, mine.clone().into()).await {
                Ok(_) => return Ok(()),
                // Another router started at the same moment: compare with what it wrote.
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    kv.get(CHECK_RECORD)
                        .await
                        .map_err(|e| store_err(e.into()))?
                        .unwrap_or_default()
                }
                Err(e) => return Err(store_err(e.into())),
            },
        };
        if subtle::ConstantTimeEq::ct_eq(on_record.as_ref(), mine.as_bytes()).into() {
            return Ok(());
        }
        let (source_label, fix) = match &self.source {
            KeySource::Generated(p) => (
                format!("generated at {}", p.display()),
                format!(
                    "It generated its own key because {var} (handlers.group_key_env) is unset. Copy the first router's {LOCAL_FILE} over {}, or set the same secret in {var} on every router.",
                    p.display(),
                    var = self.env_var,
                ),
            ),
            KeySource::Env(v) => (
                format!("from env var {v}"),
                format!("Set {v} to the secret the other routers use."),
            ),
            KeySource::File(p) => (
                format!("from {}", p.display()),
                format!("Put the secret the other routers use into {}.", p.display()),
            ),
        };
        Err(GroupKeyError::Mismatch { source_label, fix })
    }
}

fn read(path: &Path) -> Result<String, GroupKeyError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| GroupKeyError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// 32 random bytes, hex, mode 0600, written to a temp file and linked into place so two
/// processes starting together end up with one key.
fn create(path: &Path) -> Result<(), GroupKeyError> {
    use rand::RngCore;
    let err = |source: std::io::Error| GroupKeyError::Create {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let text = format!("{}\n", hex::encode(secret));
    let tmp = dir.join(format!(".{LOCAL_FILE}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct Env(HashMap<String, String>);
    impl EnvSource for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
        fn snapshot(&self) -> HashMap<String, String> {
            self.0.clone()
        }
    }

    #[test]
    fn keyed_normalized_and_not_the_plain_hash() {
        let k = GroupKey::from_secret(b"0123456789abcdef0123", KeySource::Env("X".into()));
        let a = k.group_of(json!({"email": " Ada@Example.COM "}).as_object().unwrap());
        let b = k.hash_email("ada@example.com");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            crate::intake::envelope::email_hash(
                json!({"email": "ada@example.com"}).as_object().unwrap()
            )
        );
        let other = GroupKey::from_secret(b"another-secret-of-20b", KeySource::Env("X".into()));
        assert_ne!(a, other.hash_email("ada@example.com"));
    }

    #[test]
    fn env_wins_then_file_then_a_generated_key_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HandlersConfig::default();
        let none = Env(HashMap::new());
        let g1 = GroupKey::load(&cfg, dir.path(), &none).unwrap();
        assert_eq!(
            g1.source(),
            &KeySource::Generated(dir.path().join(LOCAL_FILE))
        );
        let g2 = GroupKey::load(&cfg, dir.path(), &none).unwrap();
        assert_eq!(g1.hash_email("a@b.c"), g2.hash_email("a@b.c"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(LOCAL_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let env = Env(HashMap::from([(
            "LEADROUTER_GROUP_KEY".to_string(),
            "a-shared-secret-of-enough-length".to_string(),
        )]));
        let g3 = GroupKey::load(&cfg, dir.path(), &env).unwrap();
        assert_eq!(g3.source(), &KeySource::Env("LEADROUTER_GROUP_KEY".into()));
        assert_ne!(g1.hash_email("a@b.c"), g3.hash_email("a@b.c"));
        let short = Env(HashMap::from([(
            "LEADROUTER_GROUP_KEY".to_string(),
            "short".to_string(),
        )]));
        let e = GroupKey::load(&cfg, dir.path(), &short).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
    }
}
