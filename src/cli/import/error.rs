//! Why an import stopped ([`ImportError`]) and why one line was not imported ([`LineError`]).

use std::path::PathBuf;

use async_nats::jetstream::context::{GetStreamError, PublishError};

use crate::intake::admit::MissingEventId;
use crate::intake::mapping::MappingError;
use crate::queue::message::EncodeError;
use crate::queue::{QueueError, STREAM_LEADS};

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
