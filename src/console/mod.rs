//! The admin listener: the JSON API the CLI (and, later, the web console) use. Loopback by
//! default and always behind the admin token; with no token configured it does not start.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::hyper::Body;
use warp::Filter;

use crate::dlq::store::{DlqFilter, DlqStore, DlqStoreError};

pub mod stats;

pub struct AdminState {
    pub token: String,
    pub dlq: DlqStore,
    pub observed: Arc<stats::Observed>,
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
    percentile: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("`since`: `{0}` is neither a duration like 1h / 30m / 7d nor an RFC 3339 time")]
pub struct BadSince(pub String);

/// `1h`, `30m`, `7d` (ago) or an RFC 3339 timestamp.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, BadSince> {
    if let Ok(d) = humantime::parse_duration(s.trim()) {
        let d = chrono::Duration::from_std(d).map_err(|_| BadSince(s.to_string()))?;
        return Ok(Utc::now() - d);
    }
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| BadSince(s.to_string()))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response<Body> {
    json_response(
        status,
        json!({"error": code, "message": message.to_string()}),
    )
}

fn store_error(e: DlqStoreError) -> Response<Body> {
    match e {
        DlqStoreError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", e),
        DlqStoreError::NoReason => error(StatusCode::BAD_REQUEST, "reason_required", e),
        DlqStoreError::Unreadable { .. } => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "unreadable", e)
        }
        DlqStoreError::Nats(_) => error(StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable", e),
    }
}

#[derive(Debug, Default)]
struct ListQuery {
    reason: Option<String>,
    sender: Option<String>,
    since: Option<String>,
    hide_replayed: Option<bool>,
    after_id: Option<u64>,
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

#[derive(Debug, Deserialize)]
struct ReplayBatch {
    #[serde(default)]
    filter: ListQuery,
    reason: Option<String>,
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
            Some(serde_json::Value::String(s)) => Some(s == "true" || s == "1"),
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

/// Who asked, for the replay audit: the caller may name itself; the default says "api".
fn actor(h: Option<String>) -> String {
    h.map(|v| v.chars().filter(|c| !c.is_control()).take(64).collect())
        .filter(|v: &String| !v.is_empty())
        .unwrap_or_else(|| "api".into())
}

pub fn routes(
    state: Arc<AdminState>,
) -> impl Filter<Extract = (Response<Body>,), Error = std::convert::Infallible> + Clone {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let auth = {
        let state = state.clone();
        warp::header::optional::<String>("authorization").and_then(move |h: Option<String>| {
            let state = state.clone();
            async move {
                let ok = h
                    .as_deref()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|t| bool::from(t.as_bytes().ct_eq(state.token.as_bytes())));
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized))
                }
            }
        })
    }
    .untuple_one();

    let list = warp::path!("api" / "dlq")
        .and(warp::get())
        .and(warp::query::<ListQuery>())
        .and(with_state.clone())
        .then(|q: ListQuery, state: Arc<AdminState>| async move {
            let filter = match filter_from(q) {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_since", e),
            };
            match state.dlq.list(&filter).await {
                Ok(entries) => json_response(StatusCode::OK, json!({ "entries": entries })),
                Err(e) => store_error(e),
            }
        });
    let show = warp::path!("api" / "dlq" / u64)
        .and(warp::get())
        .and(with_state.clone())
        .then(|id: u64, state: Arc<AdminState>| async move {
            match state.dlq.get(id).await {
                Ok(e) => json_response(StatusCode::OK, json!(e)),
                Err(e) => store_error(e),
            }
        });
    let replay_one = warp::path!("api" / "dlq" / u64 / "replay")
        .and(warp::post())
        .and(warp::header::optional::<String>("x-leadrouter-actor"))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json::<ReplayOne>())
        .and(with_state.clone())
        .then(
            |id: u64, who: Option<String>, body: ReplayOne, state: Arc<AdminState>| async move {
                let reason = body.reason.unwrap_or_default();
                match state.dlq.replay(id, &reason, &actor(who)).await {
                    Ok(r) => json_response(StatusCode::OK, json!(r)),
                    Err(e) => store_error(e),
                }
            },
        );
    let replay_batch = warp::path!("api" / "replay")
        .and(warp::post())
        .and(warp::header::optional::<String>("x-leadrouter-actor"))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json::<ReplayBatch>())
        .and(with_state.clone())
        .then(
            |who: Option<String>, body: ReplayBatch, state: Arc<AdminState>| async move {
                let reason = body.reason.unwrap_or_default();
                if reason.trim().is_empty() {
                    return store_error(DlqStoreError::NoReason);
                }
                let filter = match filter_from(body.filter) {
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
                match state
                    .dlq
                    .replay_matching(&filter, &reason, &actor(who), |_, _| {})
                    .await
                {
                    Ok(s) => json_response(StatusCode::OK, json!(s)),
                    Err(e) => store_error(e),
                }
            },
        );
    let stats = warp::path!("api" / "stats")
        .and(warp::get())
        .and(warp::query::<WindowQuery>())
        .and(with_state.clone())
        .then(|q: WindowQuery, state: Arc<AdminState>| async move {
            let window = match stats::parse_window(q.window.as_deref().unwrap_or("15m")) {
                Ok(w) => w,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_window", e),
            };
            json_response(StatusCode::OK, state.observed.stats(window).await)
        });
    let latency = warp::path!("api" / "latency")
        .and(warp::get())
        .and(warp::query::<WindowQuery>())
        .and(with_state)
        .then(|q: WindowQuery, state: Arc<AdminState>| async move {
            let window = match stats::parse_window(q.window.as_deref().unwrap_or("15m")) {
                Ok(w) => w,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_window", e),
            };
            let p = match stats::parse_percentile(q.percentile.as_deref().unwrap_or("95")) {
                Ok(p) => p,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_percentile", e),
            };
            json_response(StatusCode::OK, state.observed.latency(window, p))
        });

    auth.and(
        list.or(show)
            .unify()
            .or(replay_one)
            .unify()
            .or(replay_batch)
            .unify()
            .or(stats)
            .unify()
            .or(latency)
            .unify(),
    )
    .recover(
        |rej: warp::Rejection| async move { Ok::<_, std::convert::Infallible>(rejection(rej)) },
    )
    .unify()
}

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

fn rejection(rej: warp::Rejection) -> Response<Body> {
    if rej.find::<Unauthorized>().is_some() {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <admin token>",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"leadrouter\""),
        );
        return r;
    }
    if let Some(e) = rej.find::<warp::filters::body::BodyDeserializeError>() {
        return error(StatusCode::BAD_REQUEST, "invalid_body", e);
    }
    if rej.find::<warp::reject::InvalidQuery>().is_some() {
        return error(StatusCode::BAD_REQUEST, "invalid_query", "bad query string");
    }
    if rej.find::<warp::reject::UnsupportedMediaType>().is_some() {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with content-type: application/json",
        );
    }
    if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request bodies are limited to 64 KiB",
        );
    }
    if rej.is_not_found() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "wrong method",
        );
    }
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn serve(
    state: Arc<AdminState>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), warp::Error> {
    warp::serve(routes(state)).try_bind_with_graceful_shutdown(addr, shutdown)
}
