//! leadrouter: a buffered webhook lead router. Signed intake at the edge, NATS JetStream as the
//! queue, idempotent fan-out to CRM and analytics sinks.

pub mod cli;
pub mod config;
pub mod intake;
pub mod queue;
pub mod send;
pub mod service;
pub mod telemetry;
