//! The public edge: `POST /v1/intake/{sender}` verifies, rate-limits, maps and durably enqueues
//! a lead, answering 202 only after JetStream acknowledged it.

pub mod admit;
pub mod envelope;
pub mod group_key;
pub mod mapping;
pub mod schemes;
pub mod sender;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::config::{resolve_secrets, Config, EnvSource, SenderConfig};
use crate::error_chain::chain;
use crate::queue::Publisher;
use admit::SenderMapping;
use mapping::BodyFormat;
use schemes::{HeaderSource, Request, Verifier};
use sender::{Admission, Outcome, Senders};

#[derive(Debug, thiserror::Error)]
pub enum IntakeSetupError {
    /// The sender's `signature` settings (or secrets) cannot work.
    #[error("config key `senders[{index}].signature`")]
    Signature {
        index: usize,
        #[source]
        source: schemes::SchemeError,
    },
    /// The sender's mapping or event id path does not compile; `key` is under `senders[i].`.
    #[error("config key `senders[{index}].{key}`")]
    Mapping {
        index: usize,
        key: &'static str,
        #[source]
        source: mapping::MappingError,
    },
    #[error(transparent)]
    Actors(#[from] sender::SenderUnavailable),
}

/// Everything the request path needs for one sender, built once at start-up.
struct SenderRuntime {
    id: String,
    verifier: Verifier,
    mapping: SenderMapping,
    /// Named in the 503 body so whoever sees it knows what to set.
    missing_secrets: Vec<String>,
    /// This sender's metric handles, looked up once.
    metrics: crate::telemetry::metrics::SenderMetrics,
}

pub struct IntakeState {
    /// 202s answered since start (the `stats` intake rate).
    accepted: std::sync::atomic::AtomicU64,
    senders: HashMap<String, SenderRuntime>,
    actors: Senders,
    publisher: Publisher,
    max_body_bytes: u64,
    filing: Filing,
}

/// Where intake stores a lead.
#[derive(Debug, Clone)]
pub enum Filing {
    /// In its partition of `LEADS`, by its keyed group: a router on the hub's NATS.
    Partitioned(Grouping),
    /// At the edge named here: on `leads.edge.{edge}.{sender}` in `LEADS_EDGE`. The edge holds
    /// no group key; the hub groups and partitions the lead when its `LEADS` has sourced it.
    Edge(String),
}

impl Filing {
    /// The streams intake writes to, for `/readyz`.
    pub fn streams(&self) -> &'static [&'static str] {
        match self {
            Filing::Partitioned(_) => &[crate::queue::STREAM_LEADS, crate::queue::STREAM_DLQ],
            Filing::Edge(_) => &[crate::queue::STREAM_EDGE],
        }
    }

    /// The grouping, on the hub's NATS.
    pub fn grouping(&self) -> Option<&Grouping> {
        match self {
            Filing::Partitioned(g) => Some(g),
            Filing::Edge(_) => None,
        }
    }

    /// The subject of an encoded lead: an edge's own, or the lead's `LEADS` subject.
    fn subject(&self, sender: &str, leads_subject: String) -> String {
        match self {
            Filing::Partitioned(_) => leads_subject,
            Filing::Edge(edge) => crate::queue::partition::edge_subject(edge, sender),
        }
    }
}

/// How the edge files a lead: its keyed group and the partition that follows from it.
#[derive(Debug, Clone)]
pub struct Grouping {
    pub key: group_key::GroupKey,
    pub partitions: u16,
}

impl Grouping {
    /// The group key and the partition of a lead with these mapped fields.
    pub fn locate(&self, fields: &serde_json::Map<String, Value>) -> (String, u16) {
        let group = self.key.group_of(fields);
        let p = crate::queue::partition::partition_of(&group, self.partitions);
        (group, p)
    }

    /// The group key and the subject of a lead with these mapped fields.
    pub fn place(&self, sender: &str, fields: &serde_json::Map<String, Value>) -> (String, String) {
        let (group, p) = self.locate(fields);
        (group, crate::queue::partition::lead_subject(sender, p))
    }
}

/// Senders that cannot accept requests yet, with what the operator must set.
pub struct Unconfigured {
    pub sender: String,
    pub missing: Vec<String>,
}

impl IntakeState {
    pub async fn build(
        cfg: &Config,
        env: &dyn EnvSource,
        publisher: Publisher,
        filing: Filing,
    ) -> Result<(IntakeState, Vec<Unconfigured>), IntakeSetupError> {
        let mut senders = HashMap::new();
        let mut unconfigured = Vec::new();
        for (index, s) in cfg.senders.iter().enumerate() {
            let rt = build_sender(index, s, env)?;
            if !rt.missing_secrets.is_empty() && !rt.verifier.has_secrets() {
                unconfigured.push(Unconfigured {
                    sender: s.id.clone(),
                    missing: rt.missing_secrets.clone(),
                });
            }
            senders.insert(s.id.clone(), rt);
        }
        let rates = cfg
            .senders
            .iter()
            .map(|s| (s.id.clone(), s.rate.clone()))
            .collect();
        let actors = Senders::start(rates).await?;
        Ok((
            IntakeState {
                accepted: Default::default(),
                senders,
                actors,
                publisher,
                max_body_bytes: cfg.intake.max_body_bytes,
                filing,
            },
            unconfigured,
        ))
    }

    pub fn filing(&self) -> &Filing {
        &self.filing
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn sender_actors(&self) -> &Senders {
        &self.actors
    }

    pub fn stop(&self) {
        self.actors.stop();
    }

    /// 202s answered since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn build_sender(
    index: usize,
    s: &SenderConfig,
    env: &dyn EnvSource,
) -> Result<SenderRuntime, IntakeSetupError> {
    let secrets = resolve_secrets(s, env);
    let verifier = Verifier::new(s.scheme, &s.signature, secrets.secrets, s.tolerance)
        .map_err(|source| IntakeSetupError::Signature { index, source })?;
    let mapping = SenderMapping::new(s).map_err(|e| IntakeSetupError::Mapping {
        index,
        key: e.key,
        source: e.source,
    })?;
    Ok(SenderRuntime {
        id: s.id.clone(),
        verifier,
        mapping,
        missing_secrets: secrets.missing,
        metrics: crate::telemetry::metrics::metrics().sender(&s.id),
    })
}

/// An answer with a JSON body: 202 or one of the contract's errors.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Answer {
    fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Answer {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code,
            message: &self.message,
        })
        .unwrap_or_default();
        let mut resp = json_response(self.status, body);
        if let Some(d) = self.retry_after {
            // Whole seconds, rounded up: "0" would invite an immediate retry.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// One answered intake request, recorded once: the sender actor's tally, the service's own
/// accepted count (what `stats` shows), the Prometheus series and the log line all come from
/// one call, as the pipeline's outcomes do (`pipeline::events`).
struct Answered<'a> {
    state: &'a IntakeState,
    sender: &'a str,
    started: Instant,
}

impl Answered<'_> {
    fn known(&self) -> Option<(&str, &crate::telemetry::metrics::SenderMetrics)> {
        self.state
            .senders
            .get(self.sender)
            .map(|s| (s.id.as_str(), &s.metrics))
    }

    fn accepted(self, key: &str, duplicate: bool) {
        let took = self.started.elapsed();
        self.state
            .actors
            .record(self.sender, Outcome::Accepted { duplicate });
        self.state
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::telemetry::metrics::metrics().intake(self.known(), 202, None, duplicate, took);
        tracing::info!(target: "leadrouter::intake", sender = %self.sender, key = %key, duplicate, stage = "intake", outcome = "accepted", duration_ms = took.as_secs_f64() * 1e3);
    }

    fn refused(self, status: u16, code: &'static str) {
        let took = self.started.elapsed();
        if self.state.senders.contains_key(self.sender) {
            self.state
                .actors
                .record(self.sender, Outcome::Rejected(code));
        }
        crate::telemetry::metrics::metrics().intake(self.known(), status, Some(code), false, took);
        tracing::info!(target: "leadrouter::intake", sender = %self.sender, status, error = code, stage = "intake", outcome = "rejected", duration_ms = took.as_secs_f64() * 1e3);
    }
}

/// The accepted answer's body.
#[derive(Debug, Serialize)]
struct Accepted<'a> {
    id: &'a str,
    duplicate: bool,
}

/// All routes of the public listener.
pub fn routes(
    state: Arc<IntakeState>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let intake = warp::post()
        .and(warp::path!("v1" / "intake" / String))
        .and(warp::path::full())
        .and(
            warp::query::raw()
                .or(warp::any().map(String::new))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(
            |sender: String,
             full: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             body,
             state: Arc<IntakeState>| async move {
                let received = SystemTime::now();
                let started = Instant::now();
                // Trace-only (Span::none() while traces are off); a vendor's `traceparent` is honoured.
                let span = crate::telemetry::traces::trace_span!("intake", sender = %sender, otel.kind = "server", http.request.method = "POST", http.route = "/v1/intake/{sender}", http.response.status_code = tracing::field::Empty, key = tracing::field::Empty, leadrouter.duplicate = tracing::field::Empty, error.type = tracing::field::Empty);
                crate::telemetry::traces::set_parent(&span, crate::telemetry::traces::from_http(&headers));
                let answer = handle_intake(&state, &sender, &full, &query, &headers, body, received).instrument(span.clone()).await;
                trace_answer(&span, &answer);
                let answered = Answered { state: &state, sender: &sender, started };
                match answer {
                    Ok((key, duplicate)) => {
                        answered.accepted(&key, duplicate);
                        let body = serde_json::to_vec(&Accepted { id: &key, duplicate }).unwrap_or_default();
                        json_response(StatusCode::ACCEPTED, body)
                    }
                    Err(a) => {
                        answered.refused(a.status.as_u16(), a.code);
                        a.into_response()
                    }
                }
            },
        );
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()));
    let readyz = warp::get().and(warp::path!("readyz")).and(with_state).then(
        |state: Arc<IntakeState>| async move {
            let connected = state.publisher.is_connected();
            let streams = connected
                && crate::queue::topology::streams_present(
                    state.publisher.context(),
                    state.filing.streams(),
                )
                .await;
            let status = if connected && streams {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({
                "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
                "nats_connected": connected,
                "streams_present": streams,
            });
            json_response(status, serde_json::to_vec(&body).unwrap_or_default())
        },
    );
    let metrics = warp::get().and(warp::path!("metrics")).map(|| {
        let mut resp = Response::new(crate::telemetry::metrics::metrics().encode().into());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
        );
        resp
    });
    intake
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .recover(
            |rej: warp::Rejection| async move { Ok::<_, std::convert::Infallible>(rejection(rej)) },
        )
        .unify()
}

fn rejection(rej: warp::Rejection) -> Response {
    if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Answer::err(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST /v1/intake/{sender}",
        )
        .into_response();
    }
    Answer::err(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

async fn handle_intake<S, B>(
    state: &IntakeState,
    sender_id: &str,
    full: &warp::path::FullPath,
    query: &str,
    headers: &HeaderMap,
    body: S,
    received: SystemTime,
) -> Result<(String, bool), Answer>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let Some(sender) = state.senders.get(sender_id) else {
        return Err(Answer::err(
            StatusCode::NOT_FOUND,
            "unknown_sender",
            format!("no sender named `{sender_id}` is configured"),
        ));
    };
    let limit = state.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large(limit));
        }
    }
    check_content_type(headers, sender.mapping.mapper().format())?;
    let body = read_limited(body, limit).await?;

    if !sender.verifier.has_secrets() {
        return Err(Answer::err(
            StatusCode::SERVICE_UNAVAILABLE,
            "sender_unconfigured",
            format!(
                "sender `{}` has no live secret configured yet; the operator must set {}",
                sender.id,
                sender.missing_secrets.join(", ")
            ),
        )
        .retry_after(Duration::from_secs(60)));
    }

    // The token-in-body scheme needs the parsed document before it can verify.
    let mut doc: Option<Value> = None;
    if sender.verifier.needs_body_doc() {
        doc = Some(parse_body(sender, &body)?);
    }
    // Scoped: the request view borrows non-Sync data and must not live across an await.
    let verify_span =
        crate::telemetry::traces::trace_span!("verify", error.type = tracing::field::Empty);
    let verified = verify_span.in_scope(|| {
        let path_and_query = full_path_and_query(full, query);
        let req = Request {
            method: "POST",
            path_and_query: &path_and_query,
            host: headers.header("host"),
            headers,
            query: (!query.is_empty()).then_some(query),
            body: &body,
            body_doc: doc.as_ref(),
        };
        sender.verifier.verify(&req, received)
    });
    if let Err(e) = verified {
        verify_span.record("error.type", e.code());
        return Err(Answer::err(StatusCode::UNAUTHORIZED, e.code(), chain(&e)));
    }

    // After verification, so forged requests cannot spend a real sender's budget.
    match state.actors.admit(&sender.id).await {
        Ok(Admission::Admit) => {}
        Ok(Admission::Limited { retry_after }) => {
            return Err(Answer::err(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("sender `{}` is over its rate limit", sender.id),
            )
            .retry_after(retry_after));
        }
        Err(e) => {
            return Err(Answer::err(
                StatusCode::SERVICE_UNAVAILABLE,
                "intake_unavailable",
                chain(&e),
            )
            .retry_after(Duration::from_secs(1)));
        }
    }

    let doc = match doc {
        Some(d) => d,
        None => parse_body(sender, &body)?,
    };
    let received_at = crate::timestamp::format_system(received);
    let admitted = sender
        .mapping
        .admit(
            state.filing.grouping(),
            Some(headers as &dyn HeaderSource),
            &doc,
            &body,
            received_at,
        )
        .map_err(|e| {
            Answer::err(
                StatusCode::BAD_REQUEST,
                "missing_event_id",
                format!(
                    "the request carries no event id where sender `{}` is configured to send one",
                    e.sender
                ),
            )
        })?;
    let lead = admitted.into_message();
    let (subject, nats_headers, payload) = lead.encode().map_err(|e| {
        Answer::err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode envelope: {}", chain(&e)),
        )
    })?;
    let subject = state.filing.subject(&lead.sender, subject);
    let key = lead.envelope.key;
    let publish_span = crate::telemetry::traces::trace_span!("publish", otel.kind = "producer", messaging.system = "nats", messaging.operation.type = "send", messaging.destination.name = %subject);
    match state
        .publisher
        .publish(subject, nats_headers, payload)
        .instrument(publish_span.clone())
        .await
    {
        Ok(stored) => Ok((key, stored.duplicate)),
        Err(e) => {
            crate::telemetry::traces::set_error(&publish_span, "queue_unavailable");
            let why = chain(&e);
            tracing::warn!(target: "leadrouter::intake", sender = %sender.id, key = %key, error = %why, "lead not stored; answering 503");
            // A full store (an edge holding leads through a long hub outage) frees room only
            // as the hub catches up: a later retry is kinder than a quick one.
            let (message, retry) = if e.is_store_full() {
                (
                    format!("the lead was not stored: this router's store is full of leads waiting to be forwarded ({why}); retry later with the same request"),
                    Duration::from_secs(30),
                )
            } else {
                (
                    format!("the lead was not stored ({why}); retry later with the same request"),
                    Duration::from_secs(2),
                )
            };
            Err(Answer::err(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                message,
            )
            .retry_after(retry))
        }
    }
}

/// The intake span's outcome attributes (ids and codes only).
fn trace_answer(span: &tracing::Span, answer: &Result<(String, bool), Answer>) {
    if span.is_none() {
        return;
    }
    match answer {
        Ok((key, duplicate)) => {
            // i64: the trace layer exports unsigned integers as strings.
            span.record("http.response.status_code", 202i64);
            span.record("key", key.as_str());
            span.record("leadrouter.duplicate", *duplicate);
        }
        Err(a) => {
            span.record("http.response.status_code", i64::from(a.status.as_u16()));
            span.record("error.type", a.code);
            if a.status.is_server_error() {
                crate::telemetry::traces::set_error(span, a.code);
            }
        }
    }
}

fn full_path_and_query<'a>(
    full: &'a warp::path::FullPath,
    query: &str,
) -> std::borrow::Cow<'a, str> {
    if query.is_empty() {
        std::borrow::Cow::Borrowed(full.as_str())
    } else {
        std::borrow::Cow::Owned(format!("{}?{query}", full.as_str()))
    }
}

fn too_large(limit: u64) -> Answer {
    Answer::err(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is over the {limit}-byte limit (intake.max_body_bytes)"),
    )
}

fn check_content_type(headers: &HeaderMap, format: BodyFormat) -> Result<(), Answer> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    let ok = match format {
        BodyFormat::Json => {
            essence.eq_ignore_ascii_case("application/json")
                || (essence.len() > 5
                    && essence[..essence.len() - 5].contains('/')
                    && essence.to_ascii_lowercase().ends_with("+json"))
        }
        BodyFormat::Form => essence.eq_ignore_ascii_case("application/x-www-form-urlencoded"),
    };
    if ok {
        Ok(())
    } else {
        let want = match format {
            BodyFormat::Json => "application/json",
            BodyFormat::Form => "application/x-www-form-urlencoded",
        };
        Err(Answer::err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type `{}` is not accepted for this sender; send {want}",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        ))
    }
}

/// Reads at most `limit` bytes; a chunked body that grows past it is cut off with 413.
async fn read_limited<S, B>(body: S, limit: u64) -> Result<Bytes, Answer>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    futures::pin_mut!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            Answer::err(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("the request body could not be read: {}", chain(&e)),
            )
        })?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

fn parse_body(sender: &SenderRuntime, body: &[u8]) -> Result<Value, Answer> {
    sender.mapping.mapper().parse(body).map_err(|e| {
        let what = match sender.mapping.mapper().format() {
            BodyFormat::Json => "not valid JSON",
            BodyFormat::Form => "not a valid form body",
        };
        Answer::err(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body is {what}: {}", chain(&e)),
        )
    })
}

/// Serves the public listener until `shutdown` resolves.
pub async fn serve(
    state: Arc<IntakeState>,
    addr: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(std::net::SocketAddr, impl std::future::Future<Output = ()>)> {
    crate::listener::serve(routes(state), addr, shutdown).await
}
