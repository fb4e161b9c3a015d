//! Who may use the admin listener, and how.
//!
//! - **Token**: `Authorization: Bearer <admin token>` (the CLI, scripts). Compared as SHA-256
//!   digests in constant time, so neither its bytes nor its length leak through timing. Needs
//!   no CSRF token: a browser never adds this header on its own.
//! - **Session**: `POST /login` with the admin token (a form, or JSON) sets a random 256-bit
//!   session id in a cookie (`HttpOnly; SameSite=Strict; Path=/`, plus `Secure` when a proxy
//!   says the request came over https). Sessions live in memory for [`SESSION_TTL`], so a
//!   restart logs everybody out. State-changing calls made with the cookie also need the
//!   session's CSRF token in `x-csrf-token` and a same-origin `Origin` / `Sec-Fetch-Site`.
//! - **Failed attempts**: every wrong token (Bearer or login form) waits [`FAILED_DELAY`]
//!   behind one shared gate, so guessing runs at a few attempts per second however many
//!   connections try. Requests with the right token never queue at the gate.

// The error side of these results is the HTTP answer itself, made once per request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;

use super::{error, json_response, pages, Ctx, Req};

pub const COOKIE: &str = "leadrouter_session";
/// How long a login lasts (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; the oldest go first beyond this.
const MAX_SESSIONS: usize = 256;
/// What a wrong token costs, serialized over all callers.
pub const FAILED_DELAY: Duration = Duration::from_millis(300);
/// The operator name given at login is recorded as `console:<name>` in replay audits.
const MAX_NAME: usize = 32;

#[derive(Debug)]
pub struct Session {
    /// Recorded as the replay's `by`: `console` or `console:<name given at login>`.
    pub user: String,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    expires: Instant,
    created: Instant,
}

#[derive(Default)]
pub struct Sessions {
    /// Keyed by the SHA-256 of the session id, so the map never holds a usable cookie value.
    map: Mutex<HashMap<[u8; 32], Arc<Session>>>,
    gate: tokio::sync::Mutex<()>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// A new session; returns its id (the cookie value) and the session.
    pub fn create(&self, user: String) -> (String, Arc<Session>) {
        let id = random_token();
        let now = Instant::now();
        let session = Arc::new(Session {
            user,
            csrf: random_token(),
            expires_at: Utc::now()
                + chrono::Duration::from_std(SESSION_TTL).unwrap_or(chrono::Duration::zero()),
            expires: now + SESSION_TTL,
            created: now,
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(digest(&id), session.clone());
        (id, session)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let key = digest(id);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(id));
    }

    /// Slows guessing down: one failed attempt at a time, each taking [`FAILED_DELAY`].
    pub async fn failed_attempt(&self) {
        let _turn = self.gate.lock().await;
        tokio::time::sleep(FAILED_DELAY).await;
    }
}

/// Who is calling.
pub enum Caller {
    /// The admin token; `actor` from `x-leadrouter-actor` (default `api`).
    Token {
        actor: String,
    },
    Session(Arc<Session>),
}

impl Caller {
    /// The replay audit's `by`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Token { actor } => actor.clone(),
            Caller::Session(s) => s.user.clone(),
        }
    }
}

/// Who asked, for the replay audit: the caller may name itself; the default says "api".
fn actor(h: Option<&str>) -> String {
    h.map(|v| v.chars().filter(|c| !c.is_control()).take(64).collect())
        .filter(|v: &String| !v.is_empty())
        .unwrap_or_else(|| "api".into())
}

/// The configured admin token, kept as its SHA-256 digest. Both sides are hashed before the
/// constant-time compare because comparing the raw bytes returns early on a length mismatch,
/// which would tell a guesser how long the token is; digests are always 32 bytes.
pub(crate) struct AdminToken {
    /// `None` for an empty token: it matches nothing, so the listener never runs open.
    digest: Option<[u8; 32]>,
}

impl AdminToken {
    /// Surrounding whitespace is not part of the token (it sneaks in from env files).
    pub fn new(configured: &str) -> AdminToken {
        let want = configured.trim();
        AdminToken {
            digest: (!want.is_empty()).then(|| digest(want)),
        }
    }

    pub fn matches(&self, given: &str) -> bool {
        let offered = digest(given.trim());
        self.digest
            .as_ref()
            .is_some_and(|want| bool::from(offered.ct_eq(want)))
    }
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

pub fn unauthorized() -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <admin token>, or log in to the console",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"leadrouter\""),
    );
    r
}

/// The request's session, if its cookie names a live one.
pub fn session_of(ctx: &Ctx, req: &Req) -> Option<Arc<Session>> {
    cookie(&req.headers, COOKIE).and_then(|id| ctx.sessions.get(&id))
}

/// Bearer token first (a wrong one is an answer, not a fall-through to the cookie), then the
/// session cookie. State-changing calls with a session must also pass the CSRF check.
pub async fn authenticate(ctx: &Ctx, req: &Req) -> Result<Caller, Response> {
    if let Some(value) = req.header(header::AUTHORIZATION) {
        let ok = value
            .strip_prefix("Bearer ")
            .is_some_and(|t| ctx.token.matches(t));
        if ok {
            return Ok(Caller::Token {
                actor: actor(req.header("x-leadrouter-actor")),
            });
        }
        ctx.sessions.failed_attempt().await;
        return Err(unauthorized());
    }
    let Some(session) = session_of(ctx, req) else {
        return Err(unauthorized());
    };
    if changes_state(&req.method) {
        csrf_check(&session, &req.headers)?;
    }
    Ok(Caller::Session(session))
}

fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request comes from a page of this origin. `Sec-Fetch-Site` (sent by every current
/// browser, and not settable by page scripts) must be `same-origin` (or `none`: typed by the
/// user). `Origin`, when it names an origin, must be this host. Because every answer carries
/// `Referrer-Policy: no-referrer`, browsers send `Origin: null` on same-origin POSTs; that is
/// accepted only together with `Sec-Fetch-Site: same-origin`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let site = get("sec-fetch-site");
    if let Some(site) = site {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match get("origin") {
        None => true,
        Some("null") => site == Some("same-origin"),
        Some(origin) => get("host").is_some_and(|host| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }),
    }
}

fn forbidden(message: &str) -> Response {
    error(StatusCode::FORBIDDEN, "csrf", message)
}

fn csrf_check(session: &Session, headers: &HeaderMap) -> Result<(), Response> {
    if !same_origin(headers) {
        return Err(forbidden(
            "cross-site request refused: the console only accepts changes from its own pages",
        ));
    }
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes())) {
        return Err(forbidden(
            "missing or wrong x-csrf-token (the console sends it; reload the page)",
        ));
    }
    Ok(())
}

fn set_cookie(req: &Req, value: &str, max_age: u64) -> HeaderValue {
    // Loopback HTTP by default: `Secure` only when a TLS-terminating proxy says so, else the
    // browser would drop the cookie.
    let secure = req
        .header("x-forwarded-proto")
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let c = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn redirect(to: &'static str) -> Response {
    let mut r = Response::default();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    name: String,
}

/// `console`, or `console:<name>` with the name cleaned: printable, at most 32 characters.
fn user_label(name: &str) -> String {
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if clean.trim().is_empty() {
        "console".into()
    } else {
        format!("console:{}", clean.trim())
    }
}

fn is_json(req: &Req) -> bool {
    req.header(header::CONTENT_TYPE)
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|c| c == "application/json" || c.ends_with("+json"))
}

/// `GET /`, `/dlq`, `/leads`: the console. Without a session (or a Bearer token) it sends the
/// browser to the login page.
pub async fn console_page(ctx: &Ctx, req: &Req) -> Response {
    if req.method != Method::GET && req.method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET");
    }
    let allowed = if req.header(header::AUTHORIZATION).is_some() {
        match authenticate(ctx, req).await {
            Ok(_) => true,
            Err(resp) => return resp,
        }
    } else {
        session_of(ctx, req).is_some()
    };
    if !allowed {
        return redirect("/login");
    }
    pages::index()
}

/// `GET /login`: the login page (or on to the console when already logged in).
/// `POST /login`: a form (`token`, optional `name`) answered with a redirect, or JSON
/// (`{"token", "name"}`) answered with `{"user", "csrf", "expires_at"}`.
pub async fn login_route(ctx: &Ctx, req: &Req) -> Response {
    match req.method {
        Method::GET => {
            if session_of(ctx, req).is_some() {
                return redirect("/");
            }
            pages::login_page(StatusCode::OK, None)
        }
        Method::POST => login(ctx, req).await,
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET or POST",
        ),
    }
}

async fn login(ctx: &Ctx, req: &Req) -> Response {
    let json = is_json(req);
    // Login CSRF: a foreign page must not log this browser in (to a session it knows).
    if !same_origin(&req.headers) {
        return forbidden("cross-site login refused");
    }
    let form: LoginForm = if json {
        match serde_json::from_slice(&req.body) {
            Ok(f) => f,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_body", e),
        }
    } else {
        match serde_urlencoded::from_bytes(&req.body) {
            Ok(f) => f,
            Err(_) => {
                return pages::login_page(
                    StatusCode::BAD_REQUEST,
                    Some("The form could not be read."),
                )
            }
        }
    };
    if form.token.is_empty() || !ctx.token.matches(&form.token) {
        ctx.sessions.failed_attempt().await;
        tracing::warn!(
            stage = "console",
            outcome = "login_refused",
            "console login with a wrong admin token"
        );
        if json {
            return unauthorized();
        }
        return pages::login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token (LEADROUTER_ADMIN_TOKEN of the running service)."),
        );
    }
    let (id, session) = ctx.sessions.create(user_label(&form.name));
    tracing::info!(stage = "console", outcome = "login", user = %session.user, "console login");
    let mut resp = if json {
        json_response(
            StatusCode::OK,
            json!({
                "user": session.user,
                "csrf": session.csrf,
                "expires_at": crate::timestamp::format_secs(session.expires_at),
            }),
        )
    } else {
        redirect("/")
    };
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(req, &id, SESSION_TTL.as_secs()),
    );
    resp
}

/// `POST /logout` (session and CSRF token): ends the session and clears the cookie.
pub async fn logout_route(ctx: &Ctx, req: &Req) -> Response {
    if req.method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "POST");
    }
    let Some(id) = cookie(&req.headers, COOKIE) else {
        return unauthorized();
    };
    let Some(session) = ctx.sessions.get(&id) else {
        return unauthorized();
    };
    if let Err(r) = csrf_check(&session, &req.headers) {
        return r;
    }
    ctx.sessions.remove(&id);
    let mut resp = json_response(StatusCode::OK, json!({"ok": true}));
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(req, "", 0));
    resp
}

/// `GET /api/session`: who the caller is and, for a console session, its CSRF token.
pub fn describe(caller: &Caller) -> serde_json::Value {
    match caller {
        Caller::Token { actor } => json!({"auth": "token", "user": actor, "csrf": null}),
        Caller::Session(s) => json!({
            "auth": "session",
            "user": s.user,
            "csrf": s.csrf,
            "expires_at": crate::timestamp::format_secs(s.expires_at),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; leadrouter_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:9091"));
        assert!(same_origin(&h));
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:9091"));
        assert!(same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(same_origin(&h), "no-referrer pages send Origin: null");
        h.remove("sec-fetch-site");
        assert!(!same_origin(&h), "null without Sec-Fetch-Site");
    }

    #[test]
    fn user_labels_are_clean() {
        assert_eq!(user_label(""), "console");
        assert_eq!(user_label("  alice \n"), "console:alice");
        assert_eq!(
            user_label(&"x".repeat(100)).len(),
            "console:".len() + MAX_NAME
        );
    }

    #[test]
    fn admin_token_compare() {
        let t = AdminToken::new(" s3cret-admin-token-0123\n");
        assert!(t.matches("s3cret-admin-token-0123"));
        assert!(t.matches("  s3cret-admin-token-0123 "));
        assert!(!t.matches("s3cret-admin-token-012"), "a prefix");
        assert!(!t.matches("s3cret-admin-token-01234"), "longer");
        assert!(!t.matches("S3cret-admin-token-0123"));
        assert!(!t.matches(""));
        // An empty token (or only whitespace) must not let an empty Bearer value in.
        for empty in ["", "  \t"] {
            let t = AdminToken::new(empty);
            assert!(!t.matches(""));
            assert!(!t.matches(empty));
            assert!(!t.matches("anything"));
        }
    }

    #[test]
    fn sessions_expire_and_are_removed() {
        let s = Sessions::default();
        let (id, sess) = s.create("console".into());
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
        for _ in 0..(MAX_SESSIONS + 10) {
            s.create("c".into());
        }
        assert!(s.map.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
