//! The NATS operator service: `leadrouter` (NATS micro, discoverable with `nats micro ls`),
//! endpoints `leadrouter.dlq.list`, `leadrouter.dlq.replay`, `leadrouter.stats`. JSON in and
//! out; errors use the micro error headers (`Nats-Service-Error`, `Nats-Service-Error-Code`).

use std::sync::Arc;

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::parse_since;
use super::stats::{parse_window, Observed};
use crate::dlq::store::{DlqFilter, DlqStore, DlqStoreError};

pub const SERVICE_NAME: &str = "leadrouter";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterRequest {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    hide_replayed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    filter: Option<FilterRequest>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    by: Option<String>,
}

fn err(code: usize, status: impl std::fmt::Display) -> service::error::Error {
    service::error::Error {
        code,
        status: status.to_string(),
    }
}

fn filter_of(f: FilterRequest) -> Result<DlqFilter, service::error::Error> {
    Ok(DlqFilter {
        reason: f.reason.filter(|v| !v.is_empty()),
        sender: f.sender.filter(|v| !v.is_empty()),
        since: f
            .since
            .filter(|v| !v.is_empty())
            .map(|s| parse_since(&s))
            .transpose()
            .map_err(|e| err(400, e))?,
        hide_replayed: f.hide_replayed,
        after_id: None,
    })
}

fn store_err(e: DlqStoreError) -> service::error::Error {
    let code = match e {
        DlqStoreError::NotFound { .. } => 404,
        DlqStoreError::NoReason => 400,
        DlqStoreError::Unreadable { .. } => 422,
        DlqStoreError::Nats { .. } => 503,
    };
    err(code, crate::error_chain::chain(&e))
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, service::error::Error> {
    let body: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    serde_json::from_slice(body).map_err(|e| err(400, format!("invalid JSON request: {e}")))
}

async fn list(store: &DlqStore, payload: &[u8]) -> Result<Bytes, service::error::Error> {
    let f: FilterRequest = parse(payload)?;
    let entries = store.list(&filter_of(f)?).await.map_err(store_err)?;
    Ok(Bytes::from(
        serde_json::to_vec(&json!({ "entries": entries })).unwrap_or_default(),
    ))
}

async fn replay(store: &DlqStore, payload: &[u8]) -> Result<Bytes, service::error::Error> {
    let r: ReplayRequest = parse(payload)?;
    let by = r.by.unwrap_or_else(|| "nats".into());
    let body = match (r.id, r.filter) {
        (Some(id), None) => json!(store.replay(id, &r.reason, &by).await.map_err(store_err)?),
        (None, Some(f)) => {
            let filter = filter_of(f)?;
            if filter.reason.is_none() && filter.sender.is_none() && filter.since.is_none() {
                return Err(err(
                    400,
                    "a batch replay needs a filter: reason, sender or since",
                ));
            }
            json!(store
                .replay_matching(&filter, &r.reason, &by, |_, _| {})
                .await
                .map_err(store_err)?)
        }
        _ => {
            return Err(err(
                400,
                "send either \"id\" or \"filter\", and a \"reason\"",
            ))
        }
    };
    Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatsRequest {
    #[serde(default)]
    window: Option<String>,
}

async fn stats(observed: &Observed, payload: &[u8]) -> Result<Bytes, service::error::Error> {
    let r: StatsRequest = parse(payload)?;
    let window = parse_window(r.window.as_deref().unwrap_or("15m")).map_err(|e| err(400, e))?;
    Ok(Bytes::from(
        serde_json::to_vec(&observed.stats(window).await).unwrap_or_default(),
    ))
}

/// Runs the service until `stop` turns true.
pub async fn run(
    client: async_nats::Client,
    store: DlqStore,
    observed: Arc<Observed>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), async_nats::Error> {
    let svc = client
        .service_builder()
        .description("leadrouter operator service: DLQ listing, replay, stats")
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await?;
    let mut list_ep = svc
        .endpoint_builder()
        .name("dlq_list")
        .add("leadrouter.dlq.list")
        .await?;
    let mut replay_ep = svc
        .endpoint_builder()
        .name("dlq_replay")
        .add("leadrouter.dlq.replay")
        .await?;
    let mut stats_ep = svc
        .endpoint_builder()
        .name("stats")
        .add("leadrouter.stats")
        .await?;
    // List and replay requests run as tasks, so a long batch replay does not hold up a listing
    // or stats; in-flight ones finish before the service stops.
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(req) = list_ep.next() => {
                let store = store.clone();
                inflight.spawn(async move {
                    let r = list(&store, &req.message.payload).await;
                    let _ = req.respond(r).await;
                });
            }
            Some(req) = replay_ep.next() => {
                let store = store.clone();
                inflight.spawn(async move {
                    let r = replay(&store, &req.message.payload).await;
                    let _ = req.respond(r).await;
                });
            }
            Some(req) = stats_ep.next() => {
                let observed = observed.clone();
                inflight.spawn(async move {
                    let r = stats(&observed, &req.message.payload).await;
                    let _ = req.respond(r).await;
                });
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            else => break,
        }
    }
    while inflight.join_next().await.is_some() {}
    let _ = svc.stop().await;
    Ok(())
}
