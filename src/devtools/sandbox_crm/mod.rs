//! Sandbox CRM: a real HTTP server standing in for a CRM API and a Segment-like analytics API,
//! with fault injection on demand. Used by the tests, the benches, the chaos drill and
//! `leadrouter sandbox-crm`.
//!
//! CRM: `POST /leads` (create, honours `Idempotency-Key`), `PUT /leads/{key}` (upsert),
//! `GET /leads/{key}`, `GET /leads`. Analytics: `POST /v1/identify`, `/v1/track`, `/v1/batch`
//! (recorded by `messageId`). Control and inspection, JSON, under `/_sandbox/`: see
//! [`SandboxCrm`] and `docs/sinks.md`.
//!
//! Two personalities behave like vendor APIs on the same port: HubSpot (`/crm/v3/objects/
//! contacts/...`, in `hubspot.rs`) and Salesforce (`/services/...`, in `salesforce.rs`), with
//! the vendors' auth, rate limits, batch caps and error shapes. Their `SandboxCrm` methods
//! (`set_hubspot`, `salesforce_records`, ...) live in those files; see
//! `docs/sandbox-crm-personalities.md`.
//!
//! Faults are kept per path kind ([`Scope::Crm`] for `/leads` and both personalities,
//! [`Scope::Analytics`] for `/v1/`), each with its own `fail_next` counter and flap clock, so one sandbox can serve a CRM
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

mod faults;
mod hubspot;
mod records;
mod routes;
mod salesforce;
mod server;
mod state;
mod wire;

pub use faults::{FaultMode, Faults, Scope};
pub use hubspot::{HubspotConfig, HubspotContact, HubspotStats};
pub use records::{AnalyticsMessage, CrmRecord, IdempotencyMode, KeyStats, Stats};
pub use salesforce::{SalesforceConfig, SalesforceRecord, SalesforceStats};

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;

use faults::ScopeState;
use hubspot::HubspotState;
use records::{messages_in_order, Data};
use salesforce::SalesforceState;
use server::accept_loop;
use state::{reset, set_faults, Shared, State};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox CRM cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
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
                hubspot: HubspotState::default(),
                salesforce: SalesforceState::default(),
            }),
            addr: local,
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

    /// Forgets every record and counter, heals all faults, idempotency back to `honor`, both
    /// personalities back to their default config with no contacts, records or tokens.
    pub fn reset(&self) {
        reset(&mut self.shared.lock());
    }
}

impl Drop for SandboxCrm {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
