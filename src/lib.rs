//! leadrouter: a buffered webhook lead router. Signed intake at the edge, NATS JetStream as the
//! queue, idempotent fan-out to CRM and analytics sinks.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod console;
pub mod devtools;
pub mod dlq;
pub mod error_chain;
pub mod intake;
pub mod ledger;
mod listener;
pub mod pii;
pub mod pipeline;
pub mod queue;
pub mod service;
pub mod sinks;
pub mod telemetry;
pub mod timestamp;
