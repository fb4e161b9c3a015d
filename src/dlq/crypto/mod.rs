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
mod tests;
