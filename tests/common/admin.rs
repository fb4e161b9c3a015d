//! A service with the admin API on and a sandbox CRM as its `crm` sink: where the console, DLQ
//! replay, metrics and browser tests start. The CRM is the fault switch (fail it and leads are
//! dead-lettered, heal it and replays deliver); the admin API is what the tests drive.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use leadrouter::devtools::sandbox_crm::SandboxCrm;
use leadrouter::pipeline::PipelineStats;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{any_port, crm_sink, quick_handlers, App, NatsServer, RouterConfig, SenderSpec};

/// 32 bytes, base64: the DLQ key `k1`, in `TEST_DLQ_KEY`.
pub const KEY_K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The test env, the admin token `token`, and [`KEY_K1`] in `TEST_DLQ_KEY`.
pub fn admin_env(token: &str) -> HashMap<String, String> {
    let mut e = super::test_env();
    e.insert("LEADROUTER_ADMIN_TOKEN".into(), token.into());
    e.insert("TEST_DLQ_KEY".into(), KEY_K1.into());
    e
}

/// A copy of the shipped `lead.v1` schema in a directory of the test's own, which a test may
/// edit (a stricter schema, then the fix).
pub fn schemas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        super::shipped_schemas().join("lead.v1.json"),
        dir.path().join("lead.v1.json"),
    )
    .unwrap();
    dir
}

/// The admin API on any port, [`quick_handlers`] that re-read the schemas at every check (a
/// fixed schema counts at once), and the DLQ key `k1`. The senders are the caller's;
/// [`AdminApp::start`] adds the CRM.
pub fn admin_config(schemas_dir: &Path) -> RouterConfig {
    RouterConfig::new()
        .admin_listen(any_port())
        .handlers(leadrouter::devtools::harness::HandlersSection {
            schema_reload: Some(Duration::ZERO),
            ..quick_handlers(schemas_dir)
        })
        .dlq_key("k1", "TEST_DLQ_KEY")
}

/// The demo sender plus `company`, which masked previews show: markup in it reaches the
/// console.
pub fn console_sender() -> SenderSpec {
    super::demo_sender().field("company", "$.company")
}

/// What the console's tests start from: a fresh nats-server, [`admin_config`] on a copy of the
/// shipped schema with [`console_sender`], and the admin token `token`. The schema directory
/// is the caller's to keep.
pub async fn start_console(token: &str) -> (AdminApp, tempfile::TempDir) {
    let dir = schemas();
    let cfg = admin_config(dir.path()).sender(console_sender());
    let s = AdminApp::start(
        NatsServer::start(),
        super::sandbox_crm().await,
        cfg,
        admin_env(token),
    )
    .await;
    (s, dir)
}

pub struct AdminApp {
    pub app: App,
    pub crm: SandboxCrm,
    pub nats: NatsServer,
    /// `http://{admin listener}`.
    pub admin: String,
    pub token: String,
    /// Follows no redirects: where an answer sends the browser is what some tests check.
    pub http: reqwest::Client,
}

impl AdminApp {
    /// The service on `nats` with `cfg` (which must turn the admin API on), `crm` as its first
    /// sink (`crm`), and `env` (which must hold `LEADROUTER_ADMIN_TOKEN`).
    pub async fn start(
        nats: NatsServer,
        crm: SandboxCrm,
        mut cfg: RouterConfig,
        env: HashMap<String, String>,
    ) -> AdminApp {
        let token = env
            .get("LEADROUTER_ADMIN_TOKEN")
            .cloned()
            .expect("an admin token in the env");
        cfg.sinks.insert(0, crm_sink(&crm.url()));
        let app = App::start_with(&nats.url(), cfg, env).await;
        let admin = format!("http://{}", app.service.admin_addr().expect("admin API on"));
        AdminApp {
            app,
            crm,
            nats,
            admin,
            token,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// The service's graceful shutdown; returns its NATS server for a restart on it.
    pub async fn shutdown(self) -> NatsServer {
        self.app.service.shutdown().await;
        self.nats
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// GET with the admin token.
    pub async fn get(&self, path: &str) -> (u16, Value, HeaderMap) {
        super::send(self.http.get(self.url(path)).bearer_auth(&self.token)).await
    }

    /// POST of JSON with the admin token.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let req = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body);
        let (s, b, _) = super::send(req).await;
        (s, b)
    }

    /// `POST /api/dlq/{id}/replay` with `reason`, as the admin token.
    pub async fn replay(&self, id: u64, reason: &str) -> (u16, Value) {
        let body = serde_json::json!({ "reason": reason });
        self.post(&format!("/api/dlq/{id}/replay"), body).await
    }

    pub async fn wait(&self, what: &str, cond: impl Fn(&PipelineStats) -> bool) {
        self.app.wait_for(what, cond).await;
    }

    /// Leads dead-lettered for `reason` so far.
    pub fn dead(&self, reason: &str) -> u64 {
        self.app
            .service
            .pipeline_stats()
            .unwrap()
            .dead()
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    pub fn delivered(&self) -> u64 {
        self.app.service.pipeline_stats().unwrap().delivered()
    }
}
