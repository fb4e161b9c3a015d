//! What the router has recorded about each lead, in NATS KV: the idempotency records (the
//! pipeline's claim and per-sink completions) and the lead index (where a lead is). The
//! pipeline writes them and the operator surfaces read them, so they live below both.

pub mod idempotency;
pub mod lead_index;
