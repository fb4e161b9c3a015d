//! Sandbox CRM: a real HTTP server standing in for a CRM API and a Segment-like analytics API,
//! with fault injection on demand. Used by the tests, the benches, the chaos drill and
//! `leadrouter sandbox-crm`.
//!
//! CRM: `POST /leads` (create, honours `Idempotency-Key`), `PUT /leads/{key}` (upsert),
//! `GET /leads/{key}`, `GET /leads`. Analytics: `POST /v1/identify`, `/v1/track`, `/v1/batch`
//! (recorded by `messageId`). Control and inspection, JSON, under `/_sandbox/`: see
//! [`SandboxCrm`] and `docs/sinks.md`.
//!
//! Faults are kept per path kind ([`Scope::Crm`] for `/leads`, [`Scope::Analytics`] for
//! `/v1/`), each with its own `fail_next` counter and flap clock, so one sandbox can serve a CRM
//! sink and a Segment sink with different faults. Control routes are never faulted.
//!
//! The `reset` fault drops the connection without any response byte: every connection is
//! served by hyper over a small wrapper around the `TcpStream`; the handler flips that
//! connection's flag, and the wrapper then fails hyper's next read or write, setting
//! `SO_LINGER` to zero first so the close sends a TCP RST. The client sees "connection reset"
//! or "connection closed before message completed" — exactly what a crashing CRM looks like.
//!
//! State sits behind one `std::sync::Mutex`, held only for map updates (never across an
//! await), which keeps thousands of requests per second cheap.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::sinks::rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox CRM cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// How the sandbox misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    #[default]
    Healthy,
    /// Every request: 500.
    Error500,
    /// Every request: 429 with `Retry-After` (`retry_after_secs`).
    Rate429,
    /// Hold every request for `hold` (default 1 h), so the client times out.
    Timeout,
    /// Drop the connection without a response (TCP RST).
    Reset,
    /// Cycle healthy, 500, 429, slow (`slow` extra latency), timeout; `flap_period` each.
    Flap,
}

/// Fault settings of one scope. JSON: every field optional, durations as humantime strings,
/// e.g. `{"mode":"rate429","retry_after_secs":7}` or `{"fail_next":3,"latency":"20ms"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub mode: FaultMode,
    /// Added to every request of the scope (faulted or not).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// `Retry-After` on 429 (and on `fail_status` 429/503).
    pub retry_after_secs: u64,
    /// Send `Retry-After` as an HTTP-date (now + `retry_after_secs`) instead of seconds.
    pub retry_after_date: bool,
    /// How long the `timeout` mode holds a request.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Length of each `flap` phase.
    #[serde(with = "humantime_serde")]
    pub flap_period: Duration,
    /// Extra latency of the `flap` mode's slow phase.
    #[serde(with = "humantime_serde")]
    pub slow: Duration,
    /// Answer the next N requests with `fail_status`, then apply `mode` again.
    pub fail_next: u32,
    pub fail_status: u16,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            mode: FaultMode::Healthy,
            latency: Duration::ZERO,
            retry_after_secs: 1,
            retry_after_date: false,
            hold: Duration::from_secs(3600),
            flap_period: Duration::from_secs(2),
            slow: Duration::from_secs(1),
            fail_next: 0,
            fail_status: 500,
        }
    }
}

impl Faults {
    pub fn healthy() -> Faults {
        Faults::default()
    }
    pub fn mode(mode: FaultMode) -> Faults {
        Faults {
            mode,
            ..Faults::default()
        }
    }
    /// The next `n` requests get `status`, then healthy.
    pub fn fail_next(n: u32, status: u16) -> Faults {
        Faults {
            fail_next: n,
            fail_status: status,
            ..Faults::default()
        }
    }
}

/// Which paths a fault setting applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    All,
    /// `/leads...`
    Crm,
    /// `/v1/...`
    Analytics,
}

/// How `POST /leads` treats a repeated `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyMode {
    /// 200 with the existing record's id, `"created": false`.
    #[default]
    Honor,
    /// Like a legacy CRM: every POST creates a record, so duplicates become visible.
    Ignore,
    /// 409 Conflict with the existing record's id (some CRMs answer so).
    Conflict,
}

/// One CRM record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRecord {
    /// `crm_<n>`.
    pub id: String,
    /// The idempotency key (POST), the path key (PUT) or the body's `key`.
    pub key: Option<String>,
    pub body: Value,
    pub created_at: String,
    pub updated_at: String,
    /// 2xx answers for this record (creates, honoured repeats, upserts).
    pub writes: u64,
}

/// Everything the sandbox saw for one lead key on the CRM paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyStats {
    pub key: String,
    /// Write requests (POST/PUT) for the key that reached the server, faulted ones included.
    pub requests: u64,
    /// Of those, answered 2xx.
    pub writes: u64,
    /// Records created for the key: 1 means exactly once.
    pub created: u64,
    pub record_ids: Vec<String>,
    /// Body of the key's current record.
    pub latest_body: Option<Value>,
    pub first_write: Option<String>,
    pub last_write: Option<String>,
    /// Headers of the latest request for the key (lower-case names), e.g. to check auth.
    pub last_headers: BTreeMap<String, String>,
}

/// One analytics message, by `messageId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsMessage {
    pub message_id: String,
    /// `identify`, `track`, ...
    pub kind: String,
    /// Requests carrying this messageId (faulted ones included).
    pub requests: u64,
    /// Answered 2xx; more than 1 means the client sent it again (deduped by messageId).
    pub calls: u64,
    pub user_id: Option<String>,
    pub event: Option<String>,
    /// The latest body.
    pub body: Value,
    pub last_headers: BTreeMap<String, String>,
}

/// Totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request except the control routes.
    pub requests: u64,
    pub crm_requests: u64,
    pub analytics_requests: u64,
    /// Requests answered with an injected fault (status, hold or reset).
    pub faults_injected: u64,
    /// CRM 2xx writes.
    pub writes: u64,
    /// CRM records created.
    pub records: u64,
    /// Distinct CRM keys seen.
    pub keys: u64,
    /// Keys with more than one record: exactly-once violations.
    pub duplicate_keys: u64,
    pub identify_calls: u64,
    pub track_calls: u64,
    pub batch_calls: u64,
    /// Distinct analytics messageIds.
    pub analytics_messages: u64,
    /// messageIds accepted more than once.
    pub duplicate_messages: u64,
    pub idempotency: IdempotencyMode,
}

struct ScopeState {
    faults: Faults,
    since: Instant,
    fail_left: u32,
}

impl ScopeState {
    fn new(faults: Faults) -> ScopeState {
        ScopeState {
            fail_left: faults.fail_next,
            faults,
            since: Instant::now(),
        }
    }
}

#[derive(Default)]
struct Data {
    next_id: u64,
    records: Vec<CrmRecord>,
    /// Key -> index of its latest record.
    by_key: HashMap<String, usize>,
    keys: HashMap<String, KeyStats>,
    messages: HashMap<String, AnalyticsMessage>,
    /// First-seen order, for listing.
    message_order: Vec<String>,
    stats: Stats,
}

struct State {
    idempotency: IdempotencyMode,
    crm: ScopeState,
    analytics: ScopeState,
    data: Data,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a test double; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to a running sandbox. Dropping it stops the server too.
pub struct SandboxCrm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SandboxCrm {
    /// Binds `addr` (port 0 picks one) and serves until [`stop`](Self::stop) or drop.
    pub async fn start(addr: SocketAddr) -> Result<SandboxCrm, SandboxError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                idempotency: IdempotencyMode::Honor,
                crm: ScopeState::new(Faults::default()),
                analytics: ScopeState::new(Faults::default()),
                data: Data::default(),
            }),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        tracing::info!(addr = %local, "sandbox CRM listening");
        Ok(SandboxCrm {
            addr: local,
            shared,
            shutdown: tx,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`: the base for a `segment` sink's `endpoint`; the CRM is `{url}/leads`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drops every open connection (held requests included) and waits for
    /// the accept loop to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Sets the faults of every path kind.
    pub fn set_faults(&self, faults: Faults) {
        self.set_faults_for(Scope::All, faults);
    }

    /// Sets the faults of one path kind; restarts its flap clock and `fail_next` counter.
    pub fn set_faults_for(&self, scope: Scope, faults: Faults) {
        set_faults(&mut self.shared.lock(), scope, faults);
    }

    /// The current faults of a scope (`All` answers the CRM's).
    pub fn faults(&self, scope: Scope) -> Faults {
        let st = self.shared.lock();
        match scope {
            Scope::Analytics => st.analytics.faults.clone(),
            Scope::All | Scope::Crm => st.crm.faults.clone(),
        }
    }

    /// Back to healthy everywhere.
    pub fn heal(&self) {
        self.set_faults(Faults::healthy());
    }

    pub fn set_idempotency(&self, mode: IdempotencyMode) {
        self.shared.lock().idempotency = mode;
    }

    pub fn idempotency(&self) -> IdempotencyMode {
        self.shared.lock().idempotency
    }

    /// Every CRM record, in creation order.
    pub fn records(&self) -> Vec<CrmRecord> {
        self.shared.lock().data.records.clone()
    }

    /// What the sandbox saw for one key on the CRM paths.
    pub fn record(&self, key: &str) -> Option<KeyStats> {
        self.shared.lock().data.keys.get(key).cloned()
    }

    /// Every key's stats (unordered).
    pub fn keys(&self) -> Vec<KeyStats> {
        self.shared.lock().data.keys.values().cloned().collect()
    }

    pub fn message(&self, message_id: &str) -> Option<AnalyticsMessage> {
        self.shared.lock().data.messages.get(message_id).cloned()
    }

    /// Every analytics message, first-seen order.
    pub fn messages(&self) -> Vec<AnalyticsMessage> {
        let st = self.shared.lock();
        messages_in_order(&st.data)
    }

    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        let mut s = st.data.stats.clone();
        s.idempotency = st.idempotency;
        s
    }

    /// Forgets every record and counter, heals all faults, idempotency back to `honor`.
    pub fn reset(&self) {
        reset(&mut self.shared.lock());
    }
}

impl Drop for SandboxCrm {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn set_faults(st: &mut State, scope: Scope, faults: Faults) {
    if matches!(scope, Scope::All | Scope::Crm) {
        st.crm = ScopeState::new(faults.clone());
    }
    if matches!(scope, Scope::All | Scope::Analytics) {
        st.analytics = ScopeState::new(faults);
    }
}

fn reset(st: &mut State) {
    st.data = Data::default();
    st.idempotency = IdempotencyMode::Honor;
    set_faults(st, Scope::All, Faults::default());
}

fn messages_in_order(d: &Data) -> Vec<AnalyticsMessage> {
    d.message_order
        .iter()
        .filter_map(|id| d.messages.get(id).cloned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server plumbing.

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            // A change means stop; an error means the handle is gone: stop too.
            _ = rx.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_conn(stream, shared.clone(), rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::debug!("sandbox CRM stopped");
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    if *rx.borrow() {
        return;
    }
    let reset = Arc::new(AtomicBool::new(false));
    let io = ConnIo {
        inner: stream,
        reset: reset.clone(),
    };
    let svc = TowerToHyperService::new(warp::service(routes(shared, reset)));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "sandbox connection ended");
            }
        }
        // Dropping the connection future closes the socket and cancels a held request.
        _ = rx.changed() => {}
    }
}

/// The `TcpStream` with a kill switch for the `reset` fault.
struct ConnIo {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ConnIo {
    fn check(&mut self) -> io::Result<()> {
        if self.reset.load(Ordering::Relaxed) {
            // Zero linger: closing sends RST, and no buffered byte goes out.
            let _ = self.inner.set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "sandbox reset fault",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// One catch-all route; dispatch is by hand, which keeps the filter type small and lets every
/// answer (404 included) be JSON.
fn routes(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body: Bytes| {
                let shared = shared.clone();
                let reset = reset.clone();
                async move {
                    let req = Req {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        body,
                    };
                    handle(&shared, &reset, req).await
                }
            },
        )
}

struct Req {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

fn json_response(status: u16, v: &Value) -> Response {
    let mut resp = Response::new(v.to_string().into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn to_json<T: Serialize>(status: u16, v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => json_response(status, &v),
        Err(_) => json_response(500, &json!({"error": "encode"})),
    }
}

fn not_found() -> Response {
    json_response(404, &json!({"error": "not_found"}))
}

fn bad_request(msg: &str) -> Response {
    json_response(400, &json!({"error": "bad_request", "message": msg}))
}

/// Decodes `%XX` escapes of one path segment (keys are plain, but clients encode anyway).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn header_map(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn now() -> String {
    rfc3339(SystemTime::now())
}

/// What to do with a request after counting it.
enum Action {
    Pass,
    Status {
        code: u16,
        retry_after: Option<u64>,
        date: bool,
    },
    Hold(Duration),
    Reset,
}

/// Decides the fault for one request of a scope; consumes `fail_next`.
fn decide(sc: &mut ScopeState) -> (Duration, Action) {
    let f = &sc.faults;
    let mut latency = f.latency;
    let with_ra = |code: u16| Action::Status {
        code,
        retry_after: matches!(code, 429 | 503).then_some(f.retry_after_secs),
        date: f.retry_after_date,
    };
    if sc.fail_left > 0 {
        sc.fail_left -= 1;
        return (latency, with_ra(f.fail_status));
    }
    let action = match f.mode {
        FaultMode::Healthy => Action::Pass,
        FaultMode::Error500 => with_ra(500),
        FaultMode::Rate429 => with_ra(429),
        FaultMode::Timeout => Action::Hold(f.hold),
        FaultMode::Reset => Action::Reset,
        FaultMode::Flap => {
            let period = f.flap_period.as_nanos().max(1);
            match (sc.since.elapsed().as_nanos() / period) % 5 {
                0 => Action::Pass,
                1 => with_ra(500),
                2 => with_ra(429),
                3 => {
                    latency += f.slow;
                    Action::Pass
                }
                _ => Action::Hold(f.hold),
            }
        }
    };
    (latency, action)
}

/// Applies latency and the fault; `None` means go on with the real operation.
async fn apply(latency: Duration, action: Action, reset: &AtomicBool) -> Option<Response> {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match action {
        Action::Pass => None,
        Action::Status {
            code,
            retry_after,
            date,
        } => {
            let mut resp = json_response(code, &json!({"error": "sandbox_fault", "status": code}));
            if let Some(secs) = retry_after {
                let v = if date {
                    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
                } else {
                    secs.to_string()
                };
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut()
                        .insert(warp::http::header::RETRY_AFTER, v);
                }
            }
            Some(resp)
        }
        Action::Hold(d) => {
            tokio::time::sleep(d).await;
            Some(json_response(
                504,
                &json!({"error": "sandbox_hold_elapsed"}),
            ))
        }
        Action::Reset => {
            reset.store(true, Ordering::Relaxed);
            // Never reaches the client: the connection wrapper fails hyper's write of it.
            Some(json_response(599, &json!({"error": "sandbox_reset"})))
        }
    }
}

fn is_fault(action: &Action) -> bool {
    !matches!(action, Action::Pass)
}

async fn handle(shared: &Shared, reset: &AtomicBool, req: Req) -> Response {
    let path = req.path.trim_start_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.first().copied() {
        Some("_sandbox") => control(shared, &req, &segs[1..]),
        Some("leads") => crm(shared, reset, &req, &segs[1..]).await,
        Some("v1") => analytics(shared, reset, &req, &segs[1..]).await,
        _ => not_found(),
    }
}

// ---------------------------------------------------------------------------------------------
// CRM.

async fn crm(shared: &Shared, reset: &AtomicBool, req: &Req, rest: &[&str]) -> Response {
    enum Op {
        Create,
        Upsert(String),
        Get(String),
        List,
    }
    let op = match (&req.method, rest) {
        (&Method::POST, []) => Op::Create,
        (&Method::GET, []) => Op::List,
        (&Method::PUT, [k]) => Op::Upsert(percent_decode(k)),
        (&Method::GET, [k]) => Op::Get(percent_decode(k)),
        (_, [] | [_]) => {
            return json_response(405, &json!({"error": "method_not_allowed"}));
        }
        _ => return not_found(),
    };
    let body: Option<Value> = match op {
        Op::Create | Op::Upsert(_) => serde_json::from_slice(&req.body).ok(),
        _ => None,
    };
    let key = match &op {
        Op::Create => req
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                body.as_ref()
                    .and_then(|b| b.get("key"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
        Op::Upsert(k) => Some(k.clone()),
        _ => None,
    };
    let is_write = matches!(op, Op::Create | Op::Upsert(_));

    let (latency, action) = {
        let mut st = shared.lock();
        let (latency, action) = decide(&mut st.crm);
        let d = &mut st.data;
        d.stats.requests += 1;
        d.stats.crm_requests += 1;
        if is_fault(&action) {
            d.stats.faults_injected += 1;
        }
        if let (true, Some(k)) = (is_write, &key) {
            let ks = key_stats(d, k);
            ks.requests += 1;
            ks.last_headers = header_map(&req.headers);
        }
        (latency, action)
    };
    if let Some(resp) = apply(latency, action, reset).await {
        return resp;
    }

    let mut st = shared.lock();
    let idem = st.idempotency;
    let d = &mut st.data;
    match op {
        Op::List => to_json(200, &d.records),
        Op::Get(k) => match d.by_key.get(&k).and_then(|&i| d.records.get(i)) {
            Some(r) => to_json(200, r),
            None => not_found(),
        },
        Op::Create => {
            let Some(body) = body else {
                return bad_request("body is not JSON");
            };
            let existing = key.as_ref().and_then(|k| d.by_key.get(k).copied());
            match (existing, idem) {
                (Some(i), IdempotencyMode::Honor) => {
                    let id = d.records[i].id.clone();
                    d.records[i].writes += 1;
                    note_write(d, key.as_deref());
                    json_response(200, &json!({"id": id, "created": false}))
                }
                (Some(i), IdempotencyMode::Conflict) => {
                    let id = d.records[i].id.clone();
                    json_response(409, &json!({"id": id, "error": "duplicate"}))
                }
                _ => {
                    let id = create(d, key, body);
                    json_response(201, &json!({"id": id, "created": true}))
                }
            }
        }
        Op::Upsert(k) => {
            let Some(body) = body else {
                return bad_request("body is not JSON");
            };
            match d.by_key.get(&k).copied() {
                Some(i) => {
                    let r = &mut d.records[i];
                    r.body = body.clone();
                    r.updated_at = now();
                    r.writes += 1;
                    let id = r.id.clone();
                    key_stats(d, &k).latest_body = Some(body);
                    note_write(d, Some(&k));
                    json_response(200, &json!({"id": id, "created": false}))
                }
                None => {
                    let id = create(d, Some(k), body);
                    json_response(201, &json!({"id": id, "created": true}))
                }
            }
        }
    }
}

fn key_stats<'a>(d: &'a mut Data, key: &str) -> &'a mut KeyStats {
    let stats = &mut d.stats;
    d.keys.entry(key.to_string()).or_insert_with(|| {
        stats.keys += 1;
        KeyStats {
            key: key.to_string(),
            requests: 0,
            writes: 0,
            created: 0,
            record_ids: Vec::new(),
            latest_body: None,
            first_write: None,
            last_write: None,
            last_headers: BTreeMap::new(),
        }
    })
}

/// Counts a 2xx write for `key`.
fn note_write(d: &mut Data, key: Option<&str>) {
    d.stats.writes += 1;
    if let Some(k) = key {
        let t = now();
        let ks = key_stats(d, k);
        ks.writes += 1;
        if ks.first_write.is_none() {
            ks.first_write = Some(t.clone());
        }
        ks.last_write = Some(t);
    }
}

fn create(d: &mut Data, key: Option<String>, body: Value) -> String {
    d.next_id += 1;
    let id = format!("crm_{}", d.next_id);
    let t = now();
    d.records.push(CrmRecord {
        id: id.clone(),
        key: key.clone(),
        body: body.clone(),
        created_at: t.clone(),
        updated_at: t,
        writes: 1,
    });
    d.stats.records += 1;
    if let Some(k) = &key {
        d.by_key.insert(k.clone(), d.records.len() - 1);
        let ks = key_stats(d, k);
        ks.created += 1;
        ks.record_ids.push(id.clone());
        ks.latest_body = Some(body);
        if ks.created == 2 {
            d.stats.duplicate_keys += 1;
        }
    }
    note_write(d, key.as_deref());
    id
}

// ---------------------------------------------------------------------------------------------
// Analytics (Segment-like).

async fn analytics(shared: &Shared, reset: &AtomicBool, req: &Req, rest: &[&str]) -> Response {
    let kind = match (&req.method, rest) {
        (&Method::POST, [k @ ("identify" | "track" | "batch" | "page" | "alias" | "group")]) => *k,
        (_, [_]) => return json_response(405, &json!({"error": "method_not_allowed"})),
        _ => return not_found(),
    };
    let body: Option<Value> = serde_json::from_slice(&req.body).ok();
    // (messageId, type, message) for each message in the request.
    let msgs: Vec<(String, String, Value)> = match (&body, kind) {
        (Some(b), "batch") => b
            .get("batch")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| {
                        let id = m.get("messageId")?.as_str()?.to_string();
                        let t = m.get("type").and_then(Value::as_str).unwrap_or("track");
                        Some((id, t.to_string(), m.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        (Some(b), k) => b
            .get("messageId")
            .and_then(Value::as_str)
            .map(|id| vec![(id.to_string(), k.to_string(), b.clone())])
            .unwrap_or_default(),
        (None, _) => Vec::new(),
    };

    let (latency, action) = {
        let mut st = shared.lock();
        let (latency, action) = decide(&mut st.analytics);
        let d = &mut st.data;
        d.stats.requests += 1;
        d.stats.analytics_requests += 1;
        if is_fault(&action) {
            d.stats.faults_injected += 1;
        }
        let headers = header_map(&req.headers);
        for (id, t, m) in &msgs {
            let msg = d.messages.entry(id.clone()).or_insert_with(|| {
                d.message_order.push(id.clone());
                d.stats.analytics_messages += 1;
                AnalyticsMessage {
                    message_id: id.clone(),
                    kind: t.clone(),
                    requests: 0,
                    calls: 0,
                    user_id: None,
                    event: None,
                    body: m.clone(),
                    last_headers: BTreeMap::new(),
                }
            });
            msg.requests += 1;
            msg.last_headers = headers.clone();
        }
        (latency, action)
    };
    if let Some(resp) = apply(latency, action, reset).await {
        return resp;
    }
    if body.is_none() {
        return json_response(
            400,
            &json!({"success": false, "message": "body is not JSON"}),
        );
    }
    if msgs.is_empty() {
        return json_response(
            400,
            &json!({"success": false, "message": "messageId missing"}),
        );
    }

    let mut st = shared.lock();
    let d = &mut st.data;
    match kind {
        "identify" => d.stats.identify_calls += 1,
        "track" => d.stats.track_calls += 1,
        "batch" => d.stats.batch_calls += 1,
        _ => {}
    }
    for (id, _, m) in msgs {
        if let Some(msg) = d.messages.get_mut(&id) {
            msg.calls += 1;
            if msg.calls == 2 {
                d.stats.duplicate_messages += 1;
            }
            msg.user_id = m.get("userId").and_then(Value::as_str).map(str::to_string);
            msg.event = m.get("event").and_then(Value::as_str).map(str::to_string);
            msg.body = m;
        }
    }
    json_response(200, &json!({"success": true}))
}

// ---------------------------------------------------------------------------------------------
// Control and inspection.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdempotencyBody {
    mode: IdempotencyMode,
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn control(shared: &Shared, req: &Req, rest: &[&str]) -> Response {
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    match rest {
        ["stats"] if get => {
            let st = shared.lock();
            let mut s = st.data.stats.clone();
            s.idempotency = st.idempotency;
            to_json(200, &s)
        }
        ["records"] if get => to_json(200, &shared.lock().data.records),
        ["keys"] if get => {
            let st = shared.lock();
            let keys: Vec<&KeyStats> = st.data.keys.values().collect();
            to_json(200, &keys)
        }
        ["keys", k] if get => match shared.lock().data.keys.get(&percent_decode(k)) {
            Some(ks) => to_json(200, ks),
            None => not_found(),
        },
        ["messages"] if get => to_json(200, &messages_in_order(&shared.lock().data)),
        ["messages", id] if get => match shared.lock().data.messages.get(&percent_decode(id)) {
            Some(m) => to_json(200, m),
            None => not_found(),
        },
        ["reset"] if post => {
            reset(&mut shared.lock());
            json_response(200, &json!({"reset": true}))
        }
        ["faults"] if get => {
            let st = shared.lock();
            json_response(
                200,
                &json!({"crm": st.crm.faults, "analytics": st.analytics.faults}),
            )
        }
        ["faults"] if post => {
            let scope = match query_param(&req.query, "scope").as_deref() {
                None | Some("all") => Scope::All,
                Some("crm") => Scope::Crm,
                Some("analytics") => Scope::Analytics,
                Some(_) => return bad_request("scope is one of all, crm, analytics"),
            };
            let faults: Faults = if req.body.iter().all(u8::is_ascii_whitespace) {
                Faults::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(f) => f,
                    Err(e) => return bad_request(&format!("faults: {e}")),
                }
            };
            if StatusCode::from_u16(faults.fail_status).is_err() || faults.fail_status < 200 {
                return bad_request("fail_status must be an HTTP status 200-999");
            }
            tracing::info!(?scope, ?faults, "sandbox faults set");
            set_faults(&mut shared.lock(), scope, faults.clone());
            to_json(200, &json!({"scope": scope, "faults": faults}))
        }
        ["idempotency"] if get => json_response(200, &json!({"mode": shared.lock().idempotency})),
        ["idempotency"] if post => match serde_json::from_slice::<IdempotencyBody>(&req.body) {
            Ok(b) => {
                shared.lock().idempotency = b.mode;
                json_response(200, &json!({"mode": b.mode}))
            }
            Err(e) => bad_request(&format!("idempotency: {e}")),
        },
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("lr_abc"), "lr_abc");
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("end%4"), "end%4");
        assert_eq!(percent_decode("%+1"), "%+1", "only hex digits after %");
    }

    #[test]
    fn query_params_are_form_decoded() {
        assert_eq!(query_param("scope=crm", "scope").as_deref(), Some("crm"));
        assert_eq!(
            query_param("x=1&scope=%61ll", "scope").as_deref(),
            Some("all")
        );
        assert_eq!(query_param("scope", "scope").as_deref(), Some(""));
        assert_eq!(query_param("", "scope"), None);
    }

    #[test]
    fn fail_next_then_mode() {
        let mut sc = ScopeState::new(Faults {
            fail_next: 2,
            fail_status: 503,
            retry_after_secs: 4,
            ..Faults::default()
        });
        for _ in 0..2 {
            match decide(&mut sc).1 {
                Action::Status {
                    code: 503,
                    retry_after: Some(4),
                    ..
                } => {}
                _ => panic!("expected 503"),
            }
        }
        assert!(matches!(decide(&mut sc).1, Action::Pass));
    }

    #[test]
    fn flap_cycles_through_its_phases() {
        let period = Duration::from_secs(1);
        let mut sc = ScopeState::new(Faults {
            flap_period: period,
            slow: Duration::from_millis(300),
            ..Faults::mode(FaultMode::Flap)
        });
        let phase = |sc: &mut ScopeState, n: u32| {
            sc.since = Instant::now() - period * n - period / 2;
            decide(sc)
        };
        assert!(matches!(phase(&mut sc, 0), (l, Action::Pass) if l.is_zero()));
        assert!(matches!(
            phase(&mut sc, 1).1,
            Action::Status { code: 500, .. }
        ));
        assert!(matches!(
            phase(&mut sc, 2).1,
            Action::Status {
                code: 429,
                retry_after: Some(1),
                ..
            }
        ));
        assert!(matches!(phase(&mut sc, 3), (l, Action::Pass) if l == Duration::from_millis(300)));
        assert!(matches!(phase(&mut sc, 4).1, Action::Hold(h) if h == Duration::from_secs(3600)));
        assert!(matches!(phase(&mut sc, 5).1, Action::Pass));
    }

    #[test]
    fn faults_json_defaults() {
        let f: Faults =
            serde_json::from_str(r#"{"mode":"rate429","retry_after_secs":7,"latency":"20ms"}"#)
                .unwrap();
        assert_eq!(f.mode, FaultMode::Rate429);
        assert_eq!(f.retry_after_secs, 7);
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.hold, Duration::from_secs(3600));
        assert!(serde_json::from_str::<Faults>(r#"{"mode":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Faults>(r#"{"latncy":"1s"}"#).is_err());
    }
}
