//! `--baseline direct`: the seed's "before" design, rebuilt inside the drill only, so one command
//! shows before and after under the same storm.
//!
//! A synchronous pass-through: parse, validate, check a naive "same email in the last hour"
//! dedupe, POST to the CRM (no idempotency key) and only then answer the vendor: 200 when the
//! CRM wrote, 502 when it did not (so the vendor retries). The dedupe table stands for the seed's
//! database: it outlives a crash of the pass-through, and an email is recorded in it once the CRM
//! write succeeded. A "kill -9" aborts the accept loop and every in-flight request at once,
//! exactly where they are, CRM calls included.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::crm;
use super::error::DrillError;
use super::options::{CrmKind, DrillOptions};
use super::report::{self, Evidence, RunReport};
use super::secrets::{base64_of, random_hex};
use super::storm::{FaultKind, FaultRecord, RESTART_DELAY};
use super::storm_run::{storm_run, Target};
use super::ui::Ui;
use super::vendor::{LeadSpec, Vendor};
use crate::devtools::sandbox_crm::{IdempotencyMode, SandboxCrm};
use crate::intake::schemes::Verifier;

/// The seed's dedupe window.
const DEDUPE_WINDOW: Duration = Duration::from_secs(3600);
/// The seed's CRM client timeout.
const CRM_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    crm_url: String,
    http: reqwest::Client,
    /// email -> when its CRM write succeeded.
    seen: Mutex<HashMap<String, Instant>>,
}

pub struct DirectPassThrough {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DirectPassThrough {
    pub async fn start(crm_url: &str) -> Result<DirectPassThrough, DrillError> {
        let http = reqwest::Client::builder()
            .timeout(CRM_TIMEOUT)
            .build()
            .map_err(|e| DrillError::start("baseline HTTP client", e))?;
        let shared = Arc::new(Shared {
            crm_url: format!("{}/leads", crm_url.trim_end_matches('/')),
            http,
            seen: Mutex::new(HashMap::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| DrillError::start("baseline listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| DrillError::start("baseline listener", e))?;
        let mut me = DirectPassThrough {
            addr,
            shared,
            task: None,
        };
        me.task = Some(tokio::spawn(accept_loop(listener, me.shared.clone())));
        Ok(me)
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/intake/drill", self.addr)
    }

    /// The crash: the accept loop and every connection task die where they stand.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Comes back on the same port with the same dedupe table (it lives in a database).
    pub async fn restart(&mut self) -> Result<(), DrillError> {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|e| DrillError::start(format!("baseline listener {}", self.addr), e))?;
        self.task = Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
        Ok(())
    }
}

impl Drop for DirectPassThrough {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set: aborting the loop drops the set, which aborts them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn answer(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "POST only"}),
        );
    }
    let event_id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, json!({"error": "body"}));
    };
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, json!({"error": "not JSON"}));
    };
    let raw_email = doc.get("email").and_then(Value::as_str).unwrap_or_default();
    let email = raw_email.trim().to_lowercase();
    if !email.contains('@') {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": "email"}));
    }
    let fresh = |t: &Instant| t.elapsed() < DEDUPE_WINDOW;
    let duplicate = shared
        .seen
        .lock()
        .map(|seen| seen.get(&email).is_some_and(fresh))
        .unwrap_or(false);
    if duplicate {
        return answer(StatusCode::OK, json!({"status": "duplicate"}));
    }
    // The drill keys the CRM's bookkeeping by the lead's key; the seed sent no idempotency key,
    // and the drill's CRM for this run creates a record on every POST.
    let key = super::vendor::lead_key(&event_id, raw_email);
    let record = json!({
        "key": key,
        "email": email,
        "first_name": doc.get("first_name"),
        "last_name": doc.get("last_name"),
        "phone": doc.get("phone"),
    });
    match shared.http.post(&shared.crm_url).json(&record).send().await {
        Ok(r) if r.status().is_success() => {
            if let Ok(mut seen) = shared.seen.lock() {
                seen.insert(email, Instant::now());
            }
            answer(StatusCode::OK, json!({"status": "created"}))
        }
        Ok(r) => answer(
            StatusCode::BAD_GATEWAY,
            json!({"error": "crm", "status": r.status().as_u16()}),
        ),
        Err(e) => answer(
            StatusCode::BAD_GATEWAY,
            json!({"error": "crm", "why": crate::error_chain::chain(&e)}),
        ),
    }
}

/// The pass-through as the storm's target: its kill is the accept loop's abort, and it has no
/// queue to restart.
struct Direct {
    server: DirectPassThrough,
}

impl Target for Direct {
    async fn kill_and_restart(&mut self, _nth: usize) -> FaultRecord {
        let t0 = Instant::now();
        self.server.kill();
        tokio::time::sleep(RESTART_DELAY).await;
        let recovered = self.server.restart().await.is_ok();
        FaultRecord {
            unavailable_ms: t0.elapsed().as_millis() as u64,
            recovered,
            ..FaultRecord::new(FaultKind::KillRouter)
        }
    }

    async fn restart_nats(&mut self) -> FaultRecord {
        FaultRecord {
            recovered: true,
            skipped: Some("the direct design has no queue".into()),
            ..FaultRecord::new(FaultKind::RestartNats)
        }
    }
}

pub(super) async fn run_direct(
    opts: &DrillOptions,
    leads: Arc<Vec<LeadSpec>>,
    ui: &Ui,
) -> Result<RunReport, DrillError> {
    let crm = SandboxCrm::start(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| DrillError::start("sandbox CRM", e))?;
    // The seed sent no idempotency key: every POST is a new record.
    crm.set_idempotency(IdempotencyMode::Ignore);
    let crm = Arc::new(crm);
    let server = DirectPassThrough::start(&crm.url()).await?;
    // The pass-through does not check signatures; the vendor signs anyway, as it always does.
    let verifier = Verifier::new(
        crate::intake::schemes::SchemeName::StandardWebhooks,
        &Default::default(),
        vec![format!("whsec_{}", base64_of(&random_hex(24)))],
        Duration::from_secs(300),
    )
    .map_err(|e| DrillError::start("signing", e))?;
    let vendor = Arc::new(
        Vendor::new(vec![server.url()], verifier, opts.vendor.clone())
            .map_err(|e| DrillError::start("vendor HTTP client", e))?,
    );
    let counters = vendor.counters.clone();
    let mut target = Direct { server };
    let stormed = storm_run(opts, &leads, vendor, crm, &mut target, ui, "direct").await;
    // Synchronous: when the vendor is done, so is the design (nothing is queued).
    target.server.kill();
    Ok(report::reconcile(Evidence {
        design: "direct",
        crm_kind: CrmKind::Http,
        leads: &leads,
        outcomes: &stormed.outcomes,
        vendor: counters.snapshot(),
        crm: crm::books(CrmKind::Http, &stormed.crm),
        dlq: None,
        superseded: Default::default(),
        faults: stormed.faults,
        send_seconds: stormed.send_seconds,
        drain_seconds: 0.0,
        topology: None,
        crm_api: None,
        edge: None,
    }))
}
