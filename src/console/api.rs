//! The JSON API under `/api/`, shared by the console's pages and the CLI. The caller is already
//! authenticated (and CSRF-checked, for a console session) when a request gets here.

// The error side of these results is the HTTP answer itself, made once per request.
#![allow(clippy::result_large_err)]

use serde::Deserialize;
use serde_json::json;
use warp::http::{header, Method, StatusCode};
use warp::reply::Response;

use super::auth::{self, Caller};
use super::{error, json_response, lookup, overview, parse_since, stats, BadSince, Ctx, Req};
use crate::dlq::store::{DlqFilter, DlqStoreError, ReplayResult, ReplaySummary};
use crate::error_chain::chain;

fn store_error(e: DlqStoreError) -> Response {
    let (status, code) = match e {
        DlqStoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        DlqStoreError::NoReason => (StatusCode::BAD_REQUEST, "reason_required"),
        DlqStoreError::Unreadable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unreadable"),
        DlqStoreError::Nats { .. } => (StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable"),
    };
    error(status, code, chain(&e))
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
    percentile: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LookupQuery {
    by: Option<String>,
}

#[derive(Debug, Default)]
struct ListQuery {
    reason: Option<String>,
    sender: Option<String>,
    since: Option<String>,
    hide_replayed: Option<bool>,
    after_id: Option<u64>,
}

impl<'de> Deserialize<'de> for ListQuery {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            reason: Option<String>,
            sender: Option<String>,
            since: Option<String>,
            hide_replayed: Option<serde_json::Value>,
            after_id: Option<serde_json::Value>,
        }
        let r = Raw::deserialize(d)?;
        // Query strings carry everything as text; JSON bodies carry real types. Accept both.
        let as_bool = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::Bool(b)) => Some(b),
            Some(serde_json::Value::String(s)) => Some(s == "true" || s == "1" || s == "on"),
            _ => None,
        };
        let as_u64 = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        Ok(ListQuery {
            reason: r.reason,
            sender: r.sender,
            since: r.since,
            hide_replayed: as_bool(r.hide_replayed),
            after_id: as_u64(r.after_id),
        })
    }
}

fn filter_from(q: ListQuery) -> Result<DlqFilter, BadSince> {
    let nonempty = |o: Option<String>| o.filter(|v| !v.trim().is_empty());
    Ok(DlqFilter {
        reason: nonempty(q.reason),
        sender: nonempty(q.sender),
        since: nonempty(q.since).map(|s| parse_since(&s)).transpose()?,
        hide_replayed: q.hide_replayed.unwrap_or(false),
        after_id: q.after_id,
    })
}

#[derive(Debug, Deserialize)]
struct ReplayOne {
    reason: Option<String>,
}

/// `POST /api/replay`: a filter (replays what matches and was not replayed before) or a list
/// of ids (the console's "replay selected"; each is replayed as `POST /api/dlq/{id}/replay`
/// would), never both.
#[derive(Debug, Deserialize)]
struct ReplayBatch {
    filter: Option<ListQuery>,
    ids: Option<Vec<u64>>,
    reason: Option<String>,
}

/// Most ids one request may name.
const MAX_IDS: usize = 1000;

fn query<T: serde::de::DeserializeOwned>(req: &Req) -> Result<T, Response> {
    serde_urlencoded::from_str(&req.query)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_query", e))
}

fn body<T: serde::de::DeserializeOwned>(req: &Req) -> Result<T, Response> {
    let json = req
        .header(header::CONTENT_TYPE)
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|c| c == "application/json" || c.ends_with("+json"));
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with content-type: application/json",
        ));
    }
    serde_json::from_slice(&req.body).map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_body", e))
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(resp) => return resp,
        }
    };
}

fn window_of(q: &WindowQuery, default: &str) -> Result<std::time::Duration, Response> {
    stats::parse_window(q.window.as_deref().unwrap_or(default))
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_window", e))
}

fn method_not_allowed(allowed: &str) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this route takes {allowed}"),
    )
}

pub async fn handle(ctx: &Ctx, caller: &Caller, rest: &[&str], req: &Req) -> Response {
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    match rest {
        ["session"] if get => json_response(StatusCode::OK, auth::describe(caller)),
        ["dlq"] if get => list(ctx, req).await,
        ["dlq", id] if get => match id.parse::<u64>() {
            Ok(id) => match ctx.state.dlq.get(id).await {
                Ok(e) => json_response(StatusCode::OK, json!(e)),
                Err(e) => store_error(e),
            },
            Err(_) => error(StatusCode::NOT_FOUND, "not_found", "no such DLQ entry"),
        },
        ["dlq", id, "replay"] if post => match id.parse::<u64>() {
            Ok(id) => {
                let b: ReplayOne = tri!(body(req));
                let reason = b.reason.unwrap_or_default();
                match ctx.state.dlq.replay(id, &reason, &caller.actor()).await {
                    Ok(r) => json_response(StatusCode::OK, json!(r)),
                    Err(e) => store_error(e),
                }
            }
            Err(_) => error(StatusCode::NOT_FOUND, "not_found", "no such DLQ entry"),
        },
        ["replay"] if post => replay_batch(ctx, caller, req).await,
        ["stats"] if get => {
            let q: WindowQuery = tri!(query(req));
            let window = tri!(window_of(&q, "15m"));
            json_response(StatusCode::OK, ctx.state.observed.stats(window).await)
        }
        ["latency"] if get => {
            let q: WindowQuery = tri!(query(req));
            let window = tri!(window_of(&q, "15m"));
            let p = match stats::parse_percentile(q.percentile.as_deref().unwrap_or("95")) {
                Ok(p) => p,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_percentile", e),
            };
            json_response(StatusCode::OK, ctx.state.observed.latency(window, p))
        }
        ["overview"] if get => {
            let q: WindowQuery = tri!(query(req));
            let window = tri!(window_of(&q, "1h"));
            json_response(StatusCode::OK, overview::overview(ctx, window).await)
        }
        ["leads", what] if get => {
            let q: LookupQuery = tri!(query(req));
            let by = match lookup::By::parse(what, q.by.as_deref(), &ctx.state.group_key) {
                Ok(by) => by,
                Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_lookup", e),
            };
            match lookup::lookup(&ctx.state, &by).await {
                Ok(Some(v)) => json_response(StatusCode::OK, v),
                Ok(None) => error(StatusCode::NOT_FOUND, "not_found", by.not_found()),
                Err(e) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "nats_unavailable",
                    chain(&e),
                ),
            }
        }
        ["session"]
        | ["dlq"]
        | ["dlq", _]
        | ["stats"]
        | ["latency"]
        | ["overview"]
        | ["leads", _] => method_not_allowed("GET"),
        ["dlq", _, "replay"] | ["replay"] => method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

async fn list(ctx: &Ctx, req: &Req) -> Response {
    let q: ListQuery = tri!(query(req));
    let filter = match filter_from(q) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_since", e),
    };
    match ctx.state.dlq.list(&filter).await {
        Ok(entries) => json_response(StatusCode::OK, json!({ "entries": entries })),
        Err(e) => store_error(e),
    }
}

async fn replay_batch(ctx: &Ctx, caller: &Caller, req: &Req) -> Response {
    let b: ReplayBatch = tri!(body(req));
    let reason = b.reason.unwrap_or_default();
    if reason.trim().is_empty() {
        return store_error(DlqStoreError::NoReason);
    }
    let by = caller.actor();
    match (b.filter, b.ids) {
        (Some(_), Some(_)) => error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "give either a filter or ids, not both",
        ),
        (None, Some(ids)) => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("ids: between 1 and {MAX_IDS} DLQ entry ids"),
                );
            }
            let mut summary = ReplaySummary::default();
            for id in ids {
                let r = match ctx.state.dlq.replay(id, &reason, &by).await {
                    Ok(r) => r,
                    // NATS gone: the rest of the batch would fail the same way.
                    Err(e @ DlqStoreError::Nats { .. }) => return store_error(e),
                    Err(e) => ReplayResult::Failed {
                        id,
                        error: chain(&e),
                    },
                };
                match &r {
                    ReplayResult::Replayed { .. } => summary.replayed += 1,
                    ReplayResult::Skipped { .. } => summary.skipped += 1,
                    ReplayResult::Failed { .. } => summary.failed += 1,
                }
                summary.results.push(r);
            }
            json_response(StatusCode::OK, json!(summary))
        }
        (filter, None) => {
            let filter = match filter_from(filter.unwrap_or_default()) {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_since", e),
            };
            if filter.reason.is_none() && filter.sender.is_none() && filter.since.is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "filter_required",
                    "a batch replay needs a filter: reason, sender or since",
                );
            }
            match ctx
                .state
                .dlq
                .replay_matching(&filter, &reason, &by, |_, _| {})
                .await
            {
                Ok(s) => json_response(StatusCode::OK, json!(s)),
                Err(e) => store_error(e),
            }
        }
    }
}
