//! A CRM stand-in that behaves like the CRMs that hurt ordering: it upserts a contact **by
//! email** (last write wins, as HubSpot's and Salesforce's upserts by external id do), honours
//! `Idempotency-Key` (a repeated key is answered 200 and changes nothing), and refuses a share of
//! first attempts with `503` so retries race the lead's next event.
//!
//! It records every applied write per email in arrival order, so a test can count what matters:
//! the version each contact ends on, inversions (an older event applied after a newer one),
//! and keys applied more than once.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use leadrouter::devtools::harness::{self, RouterConfig, SenderSpec};
use serde_json::Value;
use tokio::sync::watch;

/// One applied write.
#[derive(Debug, Clone)]
pub struct Applied {
    pub key: String,
    /// The lead's `first_name` field: the tests put the event's version there (`v1`, `v2`).
    pub version: String,
}

#[derive(Default)]
struct State {
    /// Email -> writes applied, in order.
    contacts: HashMap<String, Vec<Applied>>,
    /// Keys applied (a repeat is honoured, not applied).
    applied_keys: HashMap<String, u32>,
    /// Keys refused once already (their first attempt).
    refused: HashSet<String>,
    requests: u64,
    repeats: u64,
    refusals: u64,
}

pub struct UpsertCrm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Whether this key's first attempt is refused: a stable hash, so about `percent`% are.
fn refuse_first(key: &str, percent: u64) -> bool {
    let h = leadrouter::queue::partition::fnv1a32(key.as_bytes());
    u64::from(h % 100) < percent
}

impl UpsertCrm {
    /// Refuses `refuse_percent`% of first attempts (by key) with 503.
    pub async fn start(refuse_percent: u64) -> UpsertCrm {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let st = state.clone();
        let (addr, task) = super::serve_http("upsert CRM", move |req: Request<Incoming>| {
            let (st, tx) = (st.clone(), tx.clone());
            async move { Ok::<_, Infallible>(handle(req, &st, &tx, refuse_percent).await) }
        })
        .await;
        UpsertCrm {
            addr,
            state,
            changed,
            task,
        }
    }

    /// The URL for an `http` sink in `create` mode.
    pub fn url(&self) -> String {
        format!("http://{}/contacts", self.addr)
    }

    /// A router in front of this CRM: the `demo` sender (Standard Webhooks, `email` and
    /// `first_name` kept), an `http` sink here declared `latest-wins` (the CRM keeps one contact
    /// per email, so a late, older event must not overwrite), the DLQ key `k1` from
    /// `TEST_DLQ_KEY`, no admin listener, a free intake port. Tests add NATS and `[handlers]`.
    pub fn router_config(&self, data_dir: &std::path::Path) -> RouterConfig {
        let port = harness::free_port().expect("port");
        RouterConfig::new()
            .data_dir(data_dir)
            .intake_listen(format!("127.0.0.1:{port}").parse().expect("addr"))
            .admin_token_env("TEST_NO_ADMIN_TOKEN")
            .sender(
                SenderSpec::standard_webhooks("demo", "TEST_DEMO_SECRET")
                    .rate(10_000, 10_000)
                    .fields(&["email", "first_name"]),
            )
            .sink(leadrouter::sinks::SinkConfig {
                ordering: Some(leadrouter::sinks::SinkOrdering::LatestWins),
                ..harness::http_sink("crm", self.url(), Some(Duration::from_secs(2)))
            })
            .dlq_key("k1", "TEST_DLQ_KEY")
    }

    /// Waits until `cond` holds over the contacts, re-checking after every write.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: std::time::Duration,
        cond: impl Fn(&HashMap<String, Vec<Applied>>) -> bool,
    ) {
        let mut rx = self.changed.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if cond(&self.state.lock().unwrap().contacts) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let s = self.summary();
                panic!("timed out after {limit:?} waiting for {what}: {s:?}");
            }
        }
    }

    pub fn contacts(&self) -> HashMap<String, Vec<Applied>> {
        self.state.lock().unwrap().contacts.clone()
    }

    /// Keys applied more than once (a repeated key is honoured, so this stays empty unless a
    /// write slipped past both our idempotency and the CRM's).
    pub fn keys_applied_twice(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.applied_keys
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// (requests, honoured repeats, 503 refusals).
    pub fn summary(&self) -> (u64, u64, u64) {
        let s = self.state.lock().unwrap();
        (s.requests, s.repeats, s.refusals)
    }
}

impl Drop for UpsertCrm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per email: the final version and the number of inversions (a `v1` applied after a `v2`).
pub fn verdict(writes: &[Applied]) -> (Option<String>, usize) {
    let mut seen_v2 = false;
    let mut inversions = 0;
    for w in writes {
        if w.version == "v2" {
            seen_v2 = true;
        } else if seen_v2 {
            inversions += 1;
        }
    }
    (writes.last().map(|w| w.version.clone()), inversions)
}

async fn handle(
    req: Request<Incoming>,
    st: &Mutex<State>,
    tx: &watch::Sender<u64>,
    refuse_percent: u64,
) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let Some(key) = key else {
        return answer(StatusCode::BAD_REQUEST, "Idempotency-Key required");
    };
    let Ok(lead) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, "not JSON");
    };
    let field = |name: &str| {
        lead.pointer(&format!("/fields/{name}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (Some(email), Some(version)) = (field("email"), field("first_name")) else {
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "email and first_name required",
        );
    };
    let mut s = st.lock().unwrap();
    s.requests += 1;
    if s.applied_keys.contains_key(&key) {
        s.repeats += 1;
        return answer(StatusCode::OK, "{\"created\":false}");
    }
    if refuse_first(&key, refuse_percent) && s.refused.insert(key.clone()) {
        s.refusals += 1;
        return answer(StatusCode::SERVICE_UNAVAILABLE, "try again");
    }
    *s.applied_keys.entry(key.clone()).or_default() += 1;
    s.contacts
        .entry(email.to_lowercase())
        .or_default()
        .push(Applied { key, version });
    drop(s);
    tx.send_modify(|n| *n += 1);
    answer(StatusCode::OK, "{\"created\":true}")
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
