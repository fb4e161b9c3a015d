//! leadrouter: a buffered webhook lead router. Signed intake at the edge, NATS JetStream as the
//! queue, idempotent fan-out to CRM and analytics sinks.

pub mod admin_client;
pub mod cli;
pub mod config;
pub mod console;
pub mod devtools;
pub mod dlq;
pub mod drill;
pub mod import;
pub mod intake;
pub mod ops_cli;
pub mod pipeline;
pub mod queue;
pub mod sandbox_crm;
pub mod send;
pub mod service;
pub mod sinks;
pub mod telemetry;
