//! DLQ payload encryption at rest.
//!
//! A dead-lettered lead still holds the lead's PII, and `LEADS_DLQ` may live on a NATS cluster
//! someone else runs. So leadrouter seals every DLQ payload with an AEAD (XChaCha20-Poly1305)
//! under a key only leadrouter holds; the operator-facing parts of an entry (reason, masked last
//! error, masked preview) stay readable without it.
//!
//! Keys are named. A [`KeyRing`] is an ordered list: the first key seals, every key opens, so a
//! key rotates by putting the new one first and keeping the old one listed until the entries it
//! sealed have aged out of `LEADS_DLQ` (`streams.dlq_max_age`).
//!
//! ```toml
//! [dlq]
//! keys = [
//!   { id = "k2026a", env = "LEADROUTER_DLQ_KEY" },        # active: seals new entries
//!   { id = "k2025", file = "/run/secrets/dlq_old" },      # still opens older entries
//! ]
//! ```
//!
//! Key material is 32 bytes, written as standard base64 (`openssl rand -base64 32`) or as 64 hex
//! characters (`openssl rand -hex 32`); surrounding whitespace is ignored.
//!
//! With no `[dlq]` keys configured, [`KeyRing::load_or_create`] generates a local key in
//! `{data_dir}/dlq.key` (id `local`, mode 0600) so a first `serve` works and still encrypts.
//! **Losing that file makes every DLQ payload sealed with it unreadable**; copy it to a secret
//! store, or configure real keys. To move from the local key to configured keys without losing
//! old entries, list it last: `{ id = "local", file = "data/dlq.key" }`.
//!
//! Wire format of a sealed payload (version 1, all lengths in bytes):
//!
//! ```text
//! "LRD1" | id_len (1) | key id (id_len, 1..=32, [A-Za-z0-9._-]) | nonce (24) | ciphertext | tag (16)
//! ```
//!
//! The AEAD's associated data is the header (`"LRD1" | id_len | key id`) followed by the caller's
//! AAD, the DLQ entry id (`LEADS:12`): the header cannot be edited and a ciphertext cannot be
//! moved to another entry without failing authentication. The key id also travels in the
//! [`HDR_KEY_ID`] NATS header so listings can tell which key an entry needs without parsing the
//! payload; [`KeyRing::open`] checks that the two agree.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::{RngCore, TryRngCore};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::queue::message::header::dlq::KEY_ID as HDR_KEY_ID;

/// Id of the generated local key used when no `[dlq]` keys are configured.
pub const LOCAL_KEY_ID: &str = "local";
/// File name of the generated local key, inside the data directory.
pub const LOCAL_KEY_FILE: &str = "dlq.key";
/// Longest key id accepted.
pub const MAX_KEY_ID_LEN: usize = 32;

const MAGIC: &[u8; 3] = b"LRD";
const VERSION: u8 = b'1';
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Key files are a line of text; refusing anything bigger keeps a mistaken path (a log file,
/// `/dev/zero`) from being read whole.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// The `[dlq]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqCryptoConfig {
    /// Named keys, active first. Empty: use the generated local key (see module docs).
    #[serde(default)]
    pub keys: Vec<DlqKeyConfig>,
}

/// One `[dlq] keys` entry: an id and exactly one of `env` or `file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqKeyConfig {
    /// `[A-Za-z0-9._-]{1,32}`, unique; stored with every entry the key seals, so never reuse an
    /// id for different key material.
    pub id: String,
    /// Name of the env var holding the key.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the key (relative paths are relative to the working directory).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl DlqCryptoConfig {
    /// Checks ids and sources without reading any key, so config loading can reject a bad
    /// `[dlq]` table before anything starts.
    pub fn validate(&self) -> Result<(), KeyError> {
        let mut seen: Vec<&str> = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            check_key_id(&k.id)?;
            if seen.contains(&k.id.as_str()) {
                return Err(KeyError::DuplicateId { id: k.id.clone() });
            }
            seen.push(&k.id);
            match (&k.env, &k.file) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(KeyError::Source { id: k.id.clone() })
                }
                (Some(name), None) if name.trim().is_empty() => {
                    return Err(KeyError::Source { id: k.id.clone() })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Why a key ring could not be built. Messages name the key id and the setting (env var name or
/// file path), never the key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("[dlq] keys: key id {id:?} is invalid: use 1 to 32 characters from A-Z a-z 0-9 . _ -")]
    BadId { id: String },
    #[error("[dlq] keys: key id `{id}` is listed more than once")]
    DuplicateId { id: String },
    #[error("[dlq] key `{id}`: set exactly one of `env` (an env var name) or `file`")]
    Source { id: String },
    #[error("[dlq] key `{id}`: {setting} is not set")]
    Missing { id: String, setting: String },
    #[error("[dlq] key `{id}`: cannot read {setting}")]
    Read {
        id: String,
        setting: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "[dlq] key `{id}`: {setting} must hold 32 bytes as standard base64 or 64 hex characters ({problem})"
    )]
    Material {
        id: String,
        setting: String,
        problem: String,
    },
    #[error("[dlq] keys is empty: configure at least one key")]
    NoKeys,
    #[error("cannot create the local DLQ key {}", path.display())]
    LocalKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the local DLQ key {}: no randomness from the OS", path.display())]
    Randomness {
        path: PathBuf,
        #[source]
        source: rand::rand_core::OsError,
    },
}

/// Why a sealed DLQ payload could not be opened. No variant carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "DLQ entry sealed with key `{key_id}` which is not configured: add it to [dlq] keys to read it"
    )]
    UnknownKey { key_id: String },
    #[error("DLQ payload is not a sealed payload this leadrouter can read: {0}")]
    Format(String),
    #[error(
        "DLQ entry names key `{header}` in its {HDR_KEY_ID} header but its payload was sealed with `{embedded}`: tampered or mis-copied entry"
    )]
    KeyIdMismatch { header: String, embedded: String },
    #[error("DLQ payload does not open with key `{key_id}`: wrong key or tampered entry")]
    Auth { key_id: String },
}

/// A sealed payload: publish `bytes` as the DLQ message payload and `key_id` as [`HDR_KEY_ID`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// What [`KeyRing::load_or_create`] returns.
#[derive(Debug, Clone)]
pub struct LoadedKeyRing {
    pub ring: KeyRing,
    /// Set when the generated local key is in use: log it at WARN on every start-up.
    pub warning: Option<String>,
    /// True when this call generated `{data_dir}/dlq.key`.
    pub created_local_key: bool,
}

struct NamedKey {
    id: String,
    // The cipher owns the only long-lived copy of the key and zeroizes it on drop
    // (chacha20poly1305 implements `ZeroizeOnDrop`).
    cipher: XChaCha20Poly1305,
}

/// Named 32-byte keys, active (sealing) key first; every key opens. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    // Never empty: every constructor checks it.
    keys: Arc<[NamedKey]>,
}

impl fmt::Debug for KeyRing {
    // Ids only: a `{:?}` in a log line must not print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active_key_id())
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// Builds a ring from raw keys, active first (tests, tools).
    pub fn from_keys<I>(keys: I) -> Result<KeyRing, KeyError>
    where
        I: IntoIterator<Item = (String, [u8; KEY_LEN])>,
    {
        let mut out: Vec<NamedKey> = Vec::new();
        for (id, mut material) in keys {
            check_key_id(&id)?;
            if out.iter().any(|k| k.id == id) {
                return Err(KeyError::DuplicateId { id });
            }
            let cipher = XChaCha20Poly1305::new(&Key::from(material));
            material.zeroize();
            out.push(NamedKey { id, cipher });
        }
        if out.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(KeyRing { keys: out.into() })
    }

    /// Resolves every configured key (env vars through `env`, files from disk). Fails on the
    /// first key that is missing or malformed: a DLQ that silently lost an old key would make
    /// its entries unreadable, so this is fatal at start-up.
    pub fn from_config(
        cfg: &DlqCryptoConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<KeyRing, KeyError> {
        cfg.validate()?;
        let mut keys = Vec::with_capacity(cfg.keys.len());
        for k in &cfg.keys {
            let material = match (&k.env, &k.file) {
                (Some(name), None) => {
                    let setting = format!("env var {name}");
                    let mut value =
                        env(name).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                            KeyError::Missing {
                                id: k.id.clone(),
                                setting: setting.clone(),
                            }
                        })?;
                    let parsed = parse_key_material(&value);
                    value.zeroize();
                    parsed.map_err(|problem| KeyError::Material {
                        id: k.id.clone(),
                        setting,
                        problem,
                    })?
                }
                (None, Some(path)) => read_key_file(&k.id, path)?,
                // `validate` above rules these out; kept as an error, not a panic.
                _ => return Err(KeyError::Source { id: k.id.clone() }),
            };
            keys.push((k.id.clone(), material));
        }
        KeyRing::from_keys(keys)
    }

    /// The ring for `serve`: the configured keys, or, when `[dlq] keys` is empty, the local key
    /// `{data_dir}/dlq.key` (id `local`), generated with mode 0600 on first start and reused
    /// after. In that case `warning` is set; the service should log it. Losing that file makes
    /// the payloads it sealed unreadable.
    pub fn load_or_create(
        cfg: &DlqCryptoConfig,
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LoadedKeyRing, KeyError> {
        if !cfg.keys.is_empty() {
            return Ok(LoadedKeyRing {
                ring: KeyRing::from_config(cfg, env)?,
                warning: None,
                created_local_key: false,
            });
        }
        let path = data_dir.join(LOCAL_KEY_FILE);
        let created = ensure_local_key(&path)?;
        let material = read_key_file(LOCAL_KEY_ID, &path)?;
        let ring = KeyRing::from_keys([(LOCAL_KEY_ID.to_string(), material)])?;
        let mut warning = format!(
            "DLQ payloads are encrypted with a generated local key at {}; configure [dlq] keys for \
             production (losing that file makes the DLQ payloads it sealed unreadable)",
            path.display()
        );
        if let Some(mode) = loose_mode(&path) {
            warning.push_str(&format!(
                "; {} is readable by other users (mode {mode:o}): chmod 600 it",
                path.display()
            ));
        }
        Ok(LoadedKeyRing {
            ring,
            warning: Some(warning),
            created_local_key: created,
        })
    }

    /// The id new entries are sealed with.
    pub fn active_key_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or("")
    }

    /// Every key id, active first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|k| k.id.as_str())
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// Seals `plaintext` with the active key, binding it to `aad` (the DLQ entry id, e.g.
    /// `LEADS:12`). The nonce is 24 random bytes: XChaCha's nonce is long enough that random
    /// nonces never collide in practice, so no counter state is needed across restarts.
    ///
    /// # Panics
    /// Only if `plaintext` is 256 GiB or more (the XChaCha20 block-counter limit); NATS payloads
    /// are capped far below that (64 MiB at most).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        // Constructors guarantee a non-empty ring.
        Self::seal_with_key(&self.keys[0], plaintext, aad)
    }

    /// Seals with a named key of the ring rather than the active one (key-check records).
    pub fn seal_with(&self, key_id: &str, plaintext: &[u8], aad: &[u8]) -> Option<Sealed> {
        let key = self.keys.iter().find(|k| k.id == key_id)?;
        Some(Self::seal_with_key(key, plaintext, aad))
    }

    fn seal_with_key(key: &NamedKey, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let header = header_bytes(&key.id);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let full_aad = [header.as_slice(), aad].concat();
        let ciphertext = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .expect("XChaCha20-Poly1305 refuses only plaintexts of 256 GiB or more");
        let mut bytes = Vec::with_capacity(header.len() + NONCE_LEN + ciphertext.len());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: key.id.clone(),
            bytes,
        }
    }

    /// Opens a payload sealed by [`KeyRing::seal`]. `key_id` is the entry's [`HDR_KEY_ID`]
    /// header (use [`sealed_key_id`] if the header is missing), `aad` the same entry id given to
    /// `seal`.
    pub fn open(&self, key_id: &str, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let parsed = parse(sealed)?;
        if parsed.key_id != key_id {
            return Err(CryptoError::KeyIdMismatch {
                header: printable_id(key_id),
                embedded: parsed.key_id.to_string(),
            });
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == parsed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey {
                key_id: parsed.key_id.to_string(),
            })?;
        let full_aad = [parsed.header, aad].concat();
        key.cipher
            .decrypt(
                XNonce::from_slice(parsed.nonce),
                Payload {
                    msg: parsed.ciphertext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| CryptoError::Auth {
                key_id: parsed.key_id.to_string(),
            })
    }
}

/// The key id written inside a sealed payload, for entries whose [`HDR_KEY_ID`] header is
/// missing. Not authenticated by itself: [`KeyRing::open`] is what proves it.
pub fn sealed_key_id(sealed: &[u8]) -> Result<&str, CryptoError> {
    parse(sealed).map(|p| p.key_id)
}

/// Whether `bytes` starts like a sealed payload (of any version). Entries written before
/// encryption existed hold plain JSON (starting with `{`) and carry no [`HDR_KEY_ID`].
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

struct Parsed<'a> {
    header: &'a [u8],
    key_id: &'a str,
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse(b: &[u8]) -> Result<Parsed<'_>, CryptoError> {
    if b.is_empty() {
        return Err(CryptoError::Format("the payload is empty".into()));
    }
    if !b.starts_with(MAGIC) {
        return Err(CryptoError::Format(
            "it does not start with LRD (written before DLQ encryption, or not by leadrouter)"
                .into(),
        ));
    }
    match b.get(MAGIC.len()) {
        Some(&VERSION) => {}
        Some(v) => {
            return Err(CryptoError::Format(format!(
                "format version {:?} is not supported (this build reads version 1)",
                char::from(*v)
            )))
        }
        None => return Err(CryptoError::Format("it is truncated".into())),
    }
    let truncated = || CryptoError::Format("it is truncated".into());
    let id_len = usize::from(*b.get(4).ok_or_else(truncated)?);
    if id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return Err(CryptoError::Format("its key id length is invalid".into()));
    }
    let header_len = 5 + id_len;
    let header = b.get(..header_len).ok_or_else(truncated)?;
    let id_bytes = b.get(5..header_len).ok_or_else(truncated)?;
    let key_id = std::str::from_utf8(id_bytes)
        .ok()
        .filter(|id| valid_key_id(id))
        .ok_or_else(|| CryptoError::Format("its key id is not valid".into()))?;
    let nonce = b
        .get(header_len..header_len + NONCE_LEN)
        .ok_or_else(truncated)?;
    let ciphertext = b.get(header_len + NONCE_LEN..).ok_or_else(truncated)?;
    if ciphertext.len() < TAG_LEN {
        return Err(truncated());
    }
    Ok(Parsed {
        header,
        key_id,
        nonce,
        ciphertext,
    })
}

fn header_bytes(key_id: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(5 + key_id.len());
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    // Ids are validated to 1..=32 ASCII bytes, so the length fits a byte.
    h.push(key_id.len() as u8);
    h.extend_from_slice(key_id.as_bytes());
    h
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_key_id(id: &str) -> Result<(), KeyError> {
    if valid_key_id(id) {
        Ok(())
    } else {
        Err(KeyError::BadId {
            id: printable_id(id),
        })
    }
}

/// Header values come from the stream, not from us: show a bad one escaped and bounded.
fn printable_id(id: &str) -> String {
    if valid_key_id(id) {
        return id.to_string();
    }
    let escaped: String = id.escape_debug().take(48).collect();
    if escaped.len() < id.escape_debug().count() {
        format!("{escaped}…")
    } else {
        escaped
    }
}

/// 64 hex characters, or standard base64 (padding optional) of exactly 32 bytes. The problem
/// text never quotes the input: a typo'd key is still mostly key.
fn parse_key_material(raw: &str) -> Result<[u8; KEY_LEN], String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("it is empty".into());
    }
    // Hex first: 64 hex characters are also valid base64 (of 48 bytes). Any even run of hex
    // digits that is not base64-of-32-bytes length is taken as hex, so a truncated hex key is
    // reported by its decoded length rather than as gibberish.
    let looks_hex = s.len() % 2 == 0 && s.len() != 44 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut decoded = if looks_hex {
        hex::decode(s).map_err(|_| "it is not valid hex".to_string())?
    } else {
        const B64: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        B64.decode(s)
            .map_err(|_| format!("{} characters that are neither hex nor base64", s.len()))?
    };
    let out: Result<[u8; KEY_LEN], String> = decoded
        .as_slice()
        .try_into()
        .map_err(|_| format!("it decodes to {} bytes", decoded.len()));
    decoded.zeroize();
    out
}

fn read_key_file(id: &str, path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let setting = format!("file {}", path.display());
    let file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            KeyError::Missing {
                id: id.to_string(),
                setting: format!("{setting} (it does not exist)"),
            }
        } else {
            KeyError::Read {
                id: id.to_string(),
                setting: setting.clone(),
                source,
            }
        }
    })?;
    let mut buf = Vec::with_capacity(128);
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| KeyError::Read {
            id: id.to_string(),
            setting: setting.clone(),
            source,
        })?;
    let material = |problem: String| KeyError::Material {
        id: id.to_string(),
        setting: setting.clone(),
        problem,
    };
    let result = if buf.len() as u64 > MAX_KEY_FILE_BYTES {
        Err(material(format!(
            "the file is larger than {MAX_KEY_FILE_BYTES} bytes"
        )))
    } else {
        match std::str::from_utf8(&buf) {
            Ok(text) => parse_key_material(text).map_err(material),
            Err(_) => Err(material("the file is not text".into())),
        }
    };
    buf.zeroize();
    result
}

/// Creates `path` with a fresh random key unless it exists. Returns whether it created it.
///
/// The key is written to a private temp file and hard-linked into place, so a concurrent start
/// never reads a half-written key and two starts never create two different keys.
fn ensure_local_key(path: &Path) -> Result<bool, KeyError> {
    let err = |source: io::Error| KeyError::LocalKey {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;

    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|source| KeyError::Randomness {
            path: path.to_path_buf(),
            source,
        })?;
    let mut text = base64::engine::general_purpose::STANDARD.encode(key);
    key.zeroize();
    text.push('\n');

    let tmp = dir.join(format!(
        ".{LOCAL_KEY_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        rand::rng().next_u64()
    ));
    let written = write_private(&tmp, text.as_bytes());
    text.zeroize();
    written.map_err(err)?;

    let created = match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // Filesystems without hard links: a plain exclusive create still never overwrites.
        Err(_) => match std::fs::read(&tmp) {
            Ok(mut bytes) => {
                let r = match write_private(path, &bytes) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(err(e)),
                };
                bytes.zeroize();
                r
            }
            Err(e) => Err(err(e)),
        },
    };
    let _ = std::fs::remove_file(&tmp);
    if created? {
        // The key must survive a crash right after start: without it the DLQ is unreadable.
        sync_dir(dir);
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Exclusive create with mode 0600 (owner only), written and fsynced.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let r = f.write_all(bytes).and_then(|()| f.sync_all());
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    // Best effort: some filesystems refuse fsync on directories.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

/// The mode of `path` if group or others can access it.
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const AAD: &[u8] = b"LEADS:12";

    fn ring(keys: &[(&str, u8)]) -> KeyRing {
        KeyRing::from_keys(keys.iter().map(|(id, b)| (id.to_string(), [*b; 32]))).unwrap()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn cfg(toml_text: &str) -> DlqCryptoConfig {
        #[derive(Deserialize)]
        struct Top {
            dlq: DlqCryptoConfig,
        }
        toml::from_str::<Top>(toml_text).unwrap().dlq
    }

    // 32 bytes 0x00..0x1f in both encodings.
    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn round_trip() {
        let r = ring(&[("k1", 7)]);
        let plain = br#"{"schema":"lead.v1","fields":{"email":"ada@example.com"}}"#;
        let s = r.seal(plain, AAD);
        assert_eq!(s.key_id, "k1");
        assert!(s.bytes.starts_with(b"LRD1"));
        assert!(is_sealed(&s.bytes));
        assert!(!s.bytes.windows(7).any(|w| w == b"example"));
        assert_eq!(s.bytes.len(), 4 + 1 + 2 + 24 + plain.len() + 16);
        assert_eq!(r.open("k1", &s.bytes, AAD).unwrap(), plain.to_vec());
        assert_eq!(sealed_key_id(&s.bytes).unwrap(), "k1");
        // Empty plaintext is fine too.
        let e = r.seal(b"", AAD);
        assert_eq!(r.open("k1", &e.bytes, AAD).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn nonces_are_fresh() {
        let r = ring(&[("k1", 7)]);
        let a = r.seal(b"same", AAD);
        let b = r.seal(b"same", AAD);
        assert_ne!(a.bytes, b.bytes);
    }

    #[test]
    fn rotation_new_seals_old_still_opens() {
        let old = ring(&[("k2025", 1)]);
        let rotated = ring(&[("k2026a", 2), ("k2025", 1)]);
        assert_eq!(rotated.active_key_id(), "k2026a");
        assert_eq!(rotated.key_ids().collect::<Vec<_>>(), ["k2026a", "k2025"]);

        let before = old.seal(b"old entry", AAD);
        assert_eq!(
            rotated.open("k2025", &before.bytes, AAD).unwrap(),
            b"old entry"
        );

        let after = rotated.seal(b"new entry", AAD);
        assert_eq!(after.key_id, "k2026a");
        assert_eq!(sealed_key_id(&after.bytes).unwrap(), "k2026a");
        assert_eq!(
            rotated.open("k2026a", &after.bytes, AAD).unwrap(),
            b"new entry"
        );
        // The old-only ring cannot read what the new key sealed.
        assert_eq!(
            old.open("k2026a", &after.bytes, AAD).unwrap_err(),
            CryptoError::UnknownKey {
                key_id: "k2026a".into()
            }
        );
    }

    #[test]
    fn wrong_key_with_same_id_is_an_auth_error() {
        let s = ring(&[("k1", 1)]).seal(b"x", AAD);
        let err = ring(&[("k1", 2)]).open("k1", &s.bytes, AAD).unwrap_err();
        assert_eq!(
            err,
            CryptoError::Auth {
                key_id: "k1".into()
            }
        );
        assert!(err.to_string().contains("wrong key or tampered entry"));
    }

    #[test]
    fn unknown_key_id_says_what_to_do() {
        let s = ring(&[("k2024", 1)]).seal(b"x", AAD);
        let err = ring(&[("k2026a", 2)])
            .open("k2024", &s.bytes, AAD)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "DLQ entry sealed with key `k2024` which is not configured: add it to [dlq] keys to read it"
        );
    }

    #[test]
    fn header_and_payload_key_ids_must_agree() {
        let r = ring(&[("k1", 1), ("k2", 2)]);
        let s = r.seal(b"x", AAD);
        let err = r.open("k2", &s.bytes, AAD).unwrap_err();
        assert_eq!(
            err,
            CryptoError::KeyIdMismatch {
                header: "k2".into(),
                embedded: "k1".into()
            }
        );
        // A hostile header value is shown escaped.
        let err = r.open("k\n1", &s.bytes, AAD).unwrap_err();
        assert!(err.to_string().contains("k\\n1"), "{err}");
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let r = ring(&[("k1", 1)]);
        let s = r.seal(b"payload with some length", AAD);
        for i in 0..s.bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut t = s.bytes.clone();
                t[i] ^= bit;
                assert!(r.open("k1", &t, AAD).is_err(), "flip at {i} accepted");
            }
        }
        // A byte in the ciphertext body: authentication, not format.
        let mut t = s.bytes.clone();
        let last = t.len() - 20;
        t[last] ^= 1;
        assert_eq!(
            r.open("k1", &t, AAD).unwrap_err(),
            CryptoError::Auth {
                key_id: "k1".into()
            }
        );
    }

    #[test]
    fn aad_binds_the_entry_id() {
        let r = ring(&[("k1", 1)]);
        let s = r.seal(b"lead of entry 12", b"LEADS:12");
        assert_eq!(
            r.open("k1", &s.bytes, b"LEADS:13").unwrap_err(),
            CryptoError::Auth {
                key_id: "k1".into()
            }
        );
        assert_eq!(
            r.open("k1", &s.bytes, b"LEADS:1").unwrap_err(),
            CryptoError::Auth {
                key_id: "k1".into()
            }
        );
        assert!(r.open("k1", &s.bytes, b"LEADS:12").is_ok());
    }

    #[test]
    fn malformed_payloads_are_format_errors() {
        let r = ring(&[("k1", 1)]);
        let s = r.seal(b"x", AAD);
        let is_format = |b: &[u8]| matches!(r.open("k1", b, AAD), Err(CryptoError::Format(_)));
        assert!(is_format(b""));
        assert!(is_format(br#"{"schema":"lead.v1"}"#));
        assert!(is_format(b"LRD"));
        assert!(is_format(b"LRD2\x02k1"));
        assert!(is_format(b"LRD1"));
        assert!(is_format(b"LRD1\x00"));
        assert!(is_format(b"LRD1\x21"));
        assert!(is_format(&s.bytes[..7 + 24 + 15]));
        let mut bad_id = s.bytes.clone();
        bad_id[5] = b'/';
        assert!(is_format(&bad_id));
        assert!(!is_sealed(br#"{"a":1}"#));
        let err = r.open("k1", b"LRD9xxxx", AAD).unwrap_err();
        assert!(err.to_string().contains("version '9'"), "{err}");
    }

    #[test]
    fn key_material_parses_from_base64_and_hex() {
        let expected: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(parse_key_material(HEX_KEY).unwrap(), expected);
        assert_eq!(
            parse_key_material(&HEX_KEY.to_uppercase()).unwrap(),
            expected
        );
        assert_eq!(parse_key_material(B64_KEY).unwrap(), expected);
        assert_eq!(
            parse_key_material(B64_KEY.trim_end_matches('=')).unwrap(),
            expected
        );
        assert_eq!(
            parse_key_material(&format!("  {B64_KEY}\n")).unwrap(),
            expected
        );
    }

    #[test]
    fn bad_key_material_is_named_without_quoting_it() {
        let short_b64 = "AAECAwQFBgcICQoLDA0ODw=="; // 16 bytes
        let short_hex = &HEX_KEY[..62];
        let long_b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 48]);
        for (material, needle) in [
            (short_b64, "decodes to 16 bytes"),
            (short_hex, "decodes to"),
            (long_b64.as_str(), "decodes to 48 bytes"),
            ("not a key!", "neither hex nor base64"),
            ("   ", "is not set"),
        ] {
            let c = cfg(r#"dlq.keys = [{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }]"#);
            let env = env_of(&[("LEADROUTER_DLQ_KEY", material)]);
            let err = KeyRing::from_config(&c, &env).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("`k2026a`"), "{text}");
            assert!(text.contains("env var LEADROUTER_DLQ_KEY"), "{text}");
            assert!(text.contains(needle), "{text}");
            if !material.trim().is_empty() {
                assert!(!text.contains(material), "material leaked: {text}");
            }
        }
    }

    #[test]
    fn config_builds_the_ring_in_order_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("dlq_old");
        std::fs::write(&old, format!("{HEX_KEY}\n")).unwrap();
        let c = cfg(&format!(
            r#"
            [dlq]
            keys = [
              {{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }},
              {{ id = "k2025", file = "{}" }},
            ]"#,
            old.display()
        ));
        let env = env_of(&[(
            "LEADROUTER_DLQ_KEY",
            &base64::engine::general_purpose::STANDARD.encode([5u8; 32]),
        )]);
        let r = KeyRing::from_config(&c, &env).unwrap();
        assert_eq!(r.key_ids().collect::<Vec<_>>(), ["k2026a", "k2025"]);
        // The file key is the one from the file: a ring built from raw bytes opens its output.
        let from_file =
            KeyRing::from_keys([("k2025".to_string(), std::array::from_fn(|i| i as u8))]).unwrap();
        let s = from_file.seal(b"x", AAD);
        assert_eq!(r.open("k2025", &s.bytes, AAD).unwrap(), b"x");
        assert!(r.contains("k2025") && !r.contains("k2024"));
        // Debug output names ids, never bytes.
        let dbg = format!("{r:?}");
        assert!(dbg.contains("k2026a") && !dbg.contains("[5, 5"), "{dbg}");
    }

    #[test]
    fn missing_sources_are_named() {
        let c = cfg(r#"dlq.keys = [{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }]"#);
        let err = KeyRing::from_config(&c, &env_of(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[dlq] key `k2026a`: env var LEADROUTER_DLQ_KEY is not set"
        );
        let c = cfg(r#"dlq.keys = [{ id = "k2025", file = "/nonexistent/dlq_old" }]"#);
        let err = KeyRing::from_config(&c, &env_of(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("`k2025`: file /nonexistent/dlq_old (it does not exist)"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_key_file_keeps_its_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory opens but cannot be read.
        let c = cfg(&format!(
            r#"dlq.keys = [{{ id = "k1", file = "{}" }}]"#,
            dir.path().display()
        ));
        let err = KeyRing::from_config(&c, &env_of(&[])).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err:?}");
        assert!(err
            .to_string()
            .ends_with(&format!("cannot read file {}", dir.path().display())));
        let text = crate::error_chain::chain(&err);
        assert!(
            text.len() > err.to_string().len() + 2,
            "the cause follows: {text}"
        );
    }

    #[test]
    fn key_ids_are_validated() {
        for bad in ["", "has space", "a/b", "ключ", &"x".repeat(33)] {
            let c = DlqCryptoConfig {
                keys: vec![DlqKeyConfig {
                    id: bad.to_string(),
                    env: Some("X".into()),
                    file: None,
                }],
            };
            assert!(
                matches!(c.validate(), Err(KeyError::BadId { .. })),
                "{bad:?} accepted"
            );
        }
        for good in ["k2026a", "local", "prod.2026-01_a", &"x".repeat(32)] {
            assert!(valid_key_id(good), "{good:?} refused");
        }
        let dup = cfg(r#"dlq.keys = [{ id = "k1", env = "A" }, { id = "k1", env = "B" }]"#);
        assert_eq!(
            dup.validate().unwrap_err().to_string(),
            "[dlq] keys: key id `k1` is listed more than once"
        );
        let both = cfg(r#"dlq.keys = [{ id = "k1", env = "A", file = "/x" }]"#);
        assert!(matches!(both.validate(), Err(KeyError::Source { .. })));
        let neither = cfg(r#"dlq.keys = [{ id = "k1" }]"#);
        assert!(matches!(neither.validate(), Err(KeyError::Source { .. })));
        assert!(matches!(
            KeyRing::from_keys([("k".to_string(), [0; 32]), ("k".to_string(), [1; 32])]),
            Err(KeyError::DuplicateId { .. })
        ));
        assert!(matches!(
            KeyRing::from_keys(Vec::new()),
            Err(KeyError::NoKeys)
        ));
    }

    #[test]
    fn config_rejects_unknown_keys() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Top {
            dlq: DlqCryptoConfig,
        }
        assert!(toml::from_str::<Top>("[dlq]\nkey = []").is_err());
        assert!(toml::from_str::<Top>(r#"dlq.keys = [{ id = "a", envv = "X" }]"#).is_err());
        assert_eq!(cfg("[dlq]"), DlqCryptoConfig::default());
    }

    #[cfg(unix)]
    #[test]
    fn local_key_is_created_once_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let none = DlqCryptoConfig::default();

        let first = KeyRing::load_or_create(&none, &data, &env_of(&[])).unwrap();
        assert!(first.created_local_key);
        assert_eq!(first.ring.active_key_id(), LOCAL_KEY_ID);
        let warning = first.warning.clone().unwrap();
        assert!(warning.contains("generated local key at"), "{warning}");
        assert!(warning.contains("dlq.key"), "{warning}");
        assert!(
            warning.contains("configure [dlq] keys for production"),
            "{warning}"
        );
        assert!(!warning.contains("chmod"), "{warning}");

        let path = data.join(LOCAL_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.trim().len(), 44, "base64 of 32 bytes");
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);

        let s = first.ring.seal(b"kept across restarts", AAD);
        let second = KeyRing::load_or_create(&none, &data, &env_of(&[])).unwrap();
        assert!(!second.created_local_key);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        assert_eq!(
            second.ring.open(LOCAL_KEY_ID, &s.bytes, AAD).unwrap(),
            b"kept across restarts"
        );

        // A loosened file still works but the warning says to fix it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let third = KeyRing::load_or_create(&none, &data, &env_of(&[])).unwrap();
        assert!(third.warning.unwrap().contains("chmod 600"));
    }

    #[test]
    fn configured_keys_win_over_the_local_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(r#"dlq.keys = [{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }]"#);
        let env = env_of(&[("LEADROUTER_DLQ_KEY", B64_KEY)]);
        let loaded = KeyRing::load_or_create(&c, dir.path(), &env).unwrap();
        assert_eq!(loaded.ring.active_key_id(), "k2026a");
        assert!(loaded.warning.is_none());
        assert!(!dir.path().join(LOCAL_KEY_FILE).exists());
        // A configured key that is missing is fatal, not a silent fallback to a local key.
        assert!(KeyRing::load_or_create(&c, dir.path(), &env_of(&[])).is_err());
    }

    #[test]
    fn a_corrupt_local_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCAL_KEY_FILE), "garbage\n").unwrap();
        let err = KeyRing::load_or_create(&DlqCryptoConfig::default(), dir.path(), &env_of(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("`local`"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCAL_KEY_FILE)).unwrap(),
            "garbage\n"
        );
    }
}
