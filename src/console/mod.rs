//! The admin listener: the operator console (pages under `/`, served from this binary) and the
//! JSON API that the console and the CLI use. Loopback by default and always behind the admin
//! token; with no token configured the service does not start it at all (see `service.rs`).
//!
//! One hand-written router rather than a tree of warp filters: every request passes the same
//! steps in a visible order (route, authenticate, CSRF check for state changes, handle), and
//! every response, error or not, gets the same security headers.
//!
//! - [`auth`]: the admin token (Bearer), login sessions (HttpOnly, SameSite=Strict cookie),
//!   CSRF tokens, the failed-attempt gate.
//! - [`api`]: the JSON API (`/api/...`).
//! - [`pages`]: the HTML pages and their static assets (`assets/`, embedded with
//!   `include_str!`).
//! - [`overview`]: the figures and time series behind the overview page.
//! - [`lookup`]: lead lookup (the index itself is `ledger::lead_index`).
//! - [`nats_service`]: the same operator verbs as a NATS micro service, for any NATS client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde_json::json;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::dlq::store::DlqStore;

mod api;
mod auth;
pub mod lookup;
pub mod nats_service;
mod overview;
mod pages;
pub mod stats;

pub struct AdminState {
    pub token: String,
    /// Hashes an email given to a lookup the way the edge did.
    pub group_key: crate::intake::group_key::GroupKey,
    pub dlq: DlqStore,
    pub observed: Arc<stats::Observed>,
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
    crate::timestamp::parse(s).ok_or_else(|| BadSince(s.to_string()))
}

/// Request bodies (login form, replay requests) are small.
const BODY_LIMIT: usize = 64 * 1024;

/// The Content-Security-Policy of every response: scripts and styles only from this origin's
/// files (no inline code), nothing framed, forms and fetches to this origin only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// What every request handler shares: the state the service built, plus the console's own.
pub(crate) struct Ctx {
    pub state: Arc<AdminState>,
    pub token: auth::AdminToken,
    pub sessions: auth::Sessions,
    pub samples: overview::Samples,
}

impl Ctx {
    fn new(state: Arc<AdminState>) -> Ctx {
        Ctx {
            token: auth::AdminToken::new(&state.token),
            state,
            sessions: auth::Sessions::default(),
            samples: overview::Samples::default(),
        }
    }
}

/// One request, read in full.
pub(crate) struct Req {
    pub method: Method,
    /// Decoded path segments, empty ones dropped (`/api/dlq/` is `["api", "dlq"]`).
    pub segments: Vec<String>,
    /// The raw query string (without `?`).
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = Response::new(serde_json::to_vec(&body).unwrap_or_default().into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    json_response(
        status,
        json!({"error": code, "message": message.to_string()}),
    )
}

/// Headers every answer carries, pages, assets, API and errors alike.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    // Operator data must not linger in caches; the assets are a few KiB, so they too.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `%XX` decoding of one path segment (`+` stays `+`: this is a path, not a form). Invalid
/// escapes stay as they are and invalid UTF-8 becomes U+FFFD, so a lookup simply finds nothing.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

async fn read_body<S, B>(body: S) -> Result<Bytes, Response>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    futures::pin_mut!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                crate::error_chain::chain(&e),
            )
        })?;
        if out.len() + chunk.remaining() > BODY_LIMIT {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request bodies are limited to 64 KiB",
            ));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

async fn handle(ctx: Arc<Ctx>, req: Req) -> Response {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["login"] => auth::login_route(&ctx, &req).await,
        ["logout"] => auth::logout_route(&ctx, &req).await,
        ["assets", name] => pages::asset(&req, name),
        [] | ["dlq"] | ["leads"] => auth::console_page(&ctx, &req).await,
        ["api", rest @ ..] => match auth::authenticate(&ctx, &req).await {
            Ok(caller) => api::handle(&ctx, &caller, rest, &req).await,
            Err(resp) => resp,
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

fn router(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body| {
                let ctx = ctx.clone();
                async move {
                    let body = match read_body(body).await {
                        Ok(b) => b,
                        Err(resp) => return secure(resp),
                    };
                    let segments = path
                        .as_str()
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(percent_decode)
                        .collect();
                    let req = Req {
                        method,
                        segments,
                        query,
                        headers,
                        body,
                    };
                    secure(handle(ctx, req).await)
                }
            },
        )
        .recover(|_| async {
            Ok::<_, std::convert::Infallible>(secure(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request could not be read",
            )))
        })
        .unify()
}

/// The admin listener's routes (console pages, login, JSON API) without the background
/// sampler that [`serve`] runs for the overview's queue chart.
pub fn routes(
    state: Arc<AdminState>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    router(Arc::new(Ctx::new(state)))
}

pub async fn serve(
    state: Arc<AdminState>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    if state.token.trim().chars().count() < 16 {
        tracing::warn!("the admin token is shorter than 16 characters: anyone who can reach the admin listener can guess it; use e.g. head -c 24 /dev/urandom | base64");
    }
    let ctx = Arc::new(Ctx::new(state));
    let (addr, server) = crate::listener::serve(router(ctx.clone()), addr, shutdown).await?;
    let sampler = tokio::spawn(overview::run_sampler(ctx));
    Ok((addr, async move {
        server.await;
        sampler.abort();
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("ada%40example.com"), "ada@example.com");
        assert_eq!(percent_decode("a+b%20c"), "a+b c");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
        assert_eq!(percent_decode("%é%"), "%é%");
    }
}
