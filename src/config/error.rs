//! The one error type of configuration: every message names the key (or file) at fault; the
//! cause, when there is one (the I/O or TOML error), is its `source`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or not our schema (an unknown or mistyped key): the parser's
    /// message names the line and the key.
    #[error("config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// `[dlq] keys` names a key that cannot be used (the cause names the key id and setting).
    #[error("config key `dlq.keys`")]
    DlqKeys(#[source] crate::dlq::crypto::KeyError),
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}
