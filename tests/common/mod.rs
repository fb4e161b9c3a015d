//! Shared test helpers: a real nats-server per test (own port, own temp store, stopped on drop;
//! the process harness in `leadrouter::devtools::harness`), the leadrouter service embedded in
//! the test process and configured through the harness's typed [`RouterConfig`], and the
//! `serve` child process for what only a process shows (logs, traces).
#![allow(dead_code)]

pub mod admin;
pub mod otlp;
pub mod upsert_crm;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use leadrouter::config::Config;
use leadrouter::devtools::harness;
use leadrouter::devtools::harness::RouterProcess;
pub use leadrouter::devtools::harness::{http_sink, HandlersSection, RouterConfig, SenderSpec};
use leadrouter::intake::schemes::Verifier;
use leadrouter::pipeline::PipelineStats;
use leadrouter::service::Service;
use serde_json::Value;

pub const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned nats-server (installed into `.tools/` on first use).
pub fn nats_server_bin() -> PathBuf {
    harness::nats_server_bin().expect("nats-server available")
}

/// A real nats-server with JetStream on a random loopback port: the shared harness's
/// [`harness::NatsServer`] with the panicking API tests use. Everything else of the harness's
/// (`pid()`, `is_alive()`, `log_path()`, `sigterm()`) is reachable through `Deref`.
pub struct NatsServer {
    pub port: u16,
    inner: harness::NatsServer,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let inner = harness::NatsServer::start().expect("nats-server ready within 30 s");
        NatsServer {
            port: inner.port(),
            inner,
        }
    }

    /// A harness server started with options of the test's own.
    pub fn wrap(inner: harness::NatsServer) -> NatsServer {
        NatsServer {
            port: inner.port(),
            inner,
        }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub fn store_dir(&self) -> &Path {
        self.inner.store_dir()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Same port, same store.
    pub fn restart(&mut self) {
        self.inner.restart().expect("nats-server restarts");
    }
}

impl std::ops::Deref for NatsServer {
    type Target = harness::NatsServer;

    fn deref(&self) -> &harness::NatsServer {
        &self.inner
    }
}

impl std::ops::DerefMut for NatsServer {
    fn deref_mut(&mut self) -> &mut harness::NatsServer {
        &mut self.inner
    }
}

/// The demo sender as the tests' vendors sign for it: Standard Webhooks, its secret in
/// `TEST_DEMO_SECRET`, the event id in `webhook-id`, `email`, `first_name` and `phone` kept.
pub fn demo_sender() -> SenderSpec {
    SenderSpec::standard_webhooks("demo", "TEST_DEMO_SECRET")
        .rate(1000, 1000)
        .fields(&["email", "first_name", "phone"])
}

/// A config with only the demo sender; [`App`] adds NATS, the data dir and the listener.
pub fn demo_config() -> RouterConfig {
    RouterConfig::new().sender(demo_sender())
}

/// Handlers that give up quickly: two attempts 20-50 ms apart, a 3 s ack wait, the schemas in
/// `schemas_dir`. What a test that dead-letters leads wants.
pub fn quick_handlers(schemas_dir: &Path) -> HandlersSection {
    HandlersSection {
        max_deliver: Some(2),
        ack_wait: Some(Duration::from_secs(3)),
        backoff_base: Some(Duration::from_millis(20)),
        backoff_cap: Some(Duration::from_millis(50)),
        schemas_dir: Some(schemas_dir.to_path_buf()),
        ..HandlersSection::default()
    }
}

/// The shipped schemas (`config/schemas`).
pub fn shipped_schemas() -> PathBuf {
    manifest_dir().join("config/schemas")
}

/// The `crm` sink: the `http` sink at a CRM stand-in's `/leads`, 2 s per request.
pub fn crm_sink(crm_url: &str) -> leadrouter::sinks::SinkConfig {
    http_sink(
        "crm",
        format!("{crm_url}/leads"),
        Some(Duration::from_secs(2)),
    )
}

/// The in-process sandbox CRM on any loopback port.
pub async fn sandbox_crm() -> leadrouter::devtools::sandbox_crm::SandboxCrm {
    leadrouter::devtools::sandbox_crm::SandboxCrm::start(any_port())
        .await
        .expect("sandbox CRM starts")
}

/// `127.0.0.1:0`: the kernel picks, for listeners of a service in this process (it reports
/// the address it bound).
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address free right now, for a child process that must be told its port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The service running inside the test process against `nats_url`.
pub struct App {
    pub service: Service,
    pub base: String,
    pub data: tempfile::TempDir,
    pub http: reqwest::Client,
    pub cfg: Config,
    pub env: HashMap<String, String>,
}

pub fn test_env() -> HashMap<String, String> {
    HashMap::from([
        ("TEST_DEMO_SECRET".to_string(), DEMO_SECRET.to_string()),
        // Services of one test share a NATS account, so they share the group key (as routers
        // of one deployment must).
        (
            "LEADROUTER_GROUP_KEY".to_string(),
            "test-group-key-shared-by-every-service".to_string(),
        ),
    ])
}

/// A client that keeps no idle connections, so a service's graceful shutdown never waits
/// on the test's keep-alive pool.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// `TEST_LOG=leadrouter=debug cargo test ... -- --nocapture` shows the service's events, which
/// is how a hanging or flaky test is diagnosed; silent otherwise.
pub fn init_test_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Waits, without sleeping, until `cond` holds: re-checked after every finished delivery. The
/// failure says where the pool got to.
pub async fn wait_stats(stats: &PipelineStats, what: &str, cond: impl Fn(&PipelineStats) -> bool) {
    let mut progress = stats.subscribe();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond(stats) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what} (delivered {}, duplicates {}, dead {:?})",
            stats.delivered(),
            stats.duplicates(),
            stats.dead()
        );
        let _ = tokio::time::timeout(left, progress.changed()).await;
    }
}

impl App {
    pub async fn start(nats_url: &str, cfg: RouterConfig) -> App {
        App::start_with(nats_url, cfg, test_env()).await
    }

    /// `cfg` with a data dir of the test's own, `nats_url`, and unless `cfg` says otherwise a
    /// 1 s publish timeout (an outage test waits it out per request) and intake on any port.
    /// Parsed from its rendered text, as the router parses its file.
    pub async fn start_with(
        nats_url: &str,
        cfg: RouterConfig,
        env: HashMap<String, String>,
    ) -> App {
        init_test_logs();
        let data = tempfile::tempdir().expect("tempdir");
        let mut cfg = cfg.data_dir(data.path()).nats_url(nats_url);
        cfg.nats
            .publish_timeout
            .get_or_insert(Duration::from_secs(1));
        cfg.intake.listen.get_or_insert(any_port());
        let cfg = cfg
            .parse(Path::new("test.toml"), &env)
            .expect("valid test config");
        App::start_cfg(cfg, env, data).await
    }

    /// Starts a service on an existing config and data dir (a restart, as an operator would).
    pub async fn start_cfg(
        cfg: Config,
        env: HashMap<String, String>,
        data: tempfile::TempDir,
    ) -> App {
        let service = Service::start(&cfg, &env).await.expect("service starts");
        let base = format!("http://{}", service.intake_addr());
        App {
            service,
            base,
            data,
            http: http_client(),
            cfg,
            env,
        }
    }

    pub fn verifier(&self, sender: &str) -> Verifier {
        harness::sender_signer(&self.cfg, sender, &self.env).expect("verifier")
    }

    /// `{base}/v1/intake/{sender}`.
    pub fn intake_url(&self, sender: &str) -> String {
        format!("{}/v1/intake/{sender}", self.base)
    }

    /// Signs `body` as the sender's vendor would and posts it.
    pub async fn post_signed(
        &self,
        sender: &str,
        event_id: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        self.post_signed_at(sender, event_id, body, SystemTime::now())
            .await
    }

    pub async fn post_signed_at(
        &self,
        sender: &str,
        event_id: &str,
        body: &[u8],
        now: SystemTime,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let s = self.cfg.sender(sender).expect("sender");
        let content_type = leadrouter::cli::send::content_type(&s.mapping);
        let signed = harness::sign_request(
            &self.verifier(sender),
            &self.intake_url(sender),
            event_id,
            body,
            now,
            content_type,
        )
        .expect("sign");
        let resp = self
            .http
            .post(signed.url)
            .headers(signed.headers)
            .body(signed.body)
            .send()
            .await
            .expect("request sent");
        read(resp).await
    }

    /// Posts a signed lead that must be accepted (202); returns its key.
    pub async fn accept(&self, sender: &str, event_id: &str, body: &[u8]) -> String {
        let (status, b, _) = self.post_signed(sender, event_id, body).await;
        assert_eq!(status, 202, "{sender} {event_id}: {b}");
        b["id"].as_str().expect("a 202 names the key").to_string()
    }

    /// Waits on the handler pool's progress until `cond` holds.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&PipelineStats) -> bool) {
        let stats = self.service.pipeline_stats().expect("handlers on");
        wait_stats(stats, what, cond).await;
    }
}

/// Sends `req` and reads the answer (JSON when it is JSON, else the text as a JSON string).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    read(req.send().await.expect("request sent")).await
}

pub async fn read(resp: reqwest::Response) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json, headers)
}

/// Every message in a stream: (Nats-Msg-Id, payload).
pub async fn stream_messages(nats_url: &str, stream: &str) -> Vec<(String, Vec<u8>)> {
    let client = async_nats::connect(nats_url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let info = s.info().await.expect("info").clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        if let Ok(m) = s.get_raw_message(seq).await {
            let id = m
                .headers
                .get(leadrouter::queue::message::header::MSG_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((id, m.payload.to_vec()));
        }
    }
    out
}

/// A loopback port free right now (for servers that must be told their port up front).
pub fn free_port() -> u16 {
    harness::free_port().expect("a free loopback port")
}

/// An HTTP server on a loopback port of its own, for a stand-in the router talks to (a CRM,
/// an OTLP receiver): every connection served with `handler`, HTTP/1.1 or HTTP/2 (prior
/// knowledge, as gRPC speaks it). Abort the task to stop it.
pub async fn serve_http<F, Fut, B>(
    what: &str,
    handler: F,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(handler.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, task)
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The config of a `leadrouter serve` child: its data dir in `dir`, `nats_url`, intake and
/// admin API on free loopback ports, [`quick_handlers`] on the shipped schemas, the demo
/// sender and the `crm` sink at `crm_url`.
pub fn served_config(dir: &Path, nats_url: &str, crm_url: &str) -> RouterConfig {
    RouterConfig::new()
        .data_dir(dir.join("data"))
        .nats_url(nats_url)
        .intake_listen(free_addr())
        .admin_listen(free_addr())
        .handlers(quick_handlers(&shipped_schemas()))
        .sender(demo_sender())
        .sink(crm_sink(crm_url))
}

/// `leadrouter serve` on `cfg` as a child process, its config written to `dir`, run from the
/// checkout (as an operator runs it there). Call [`serve`] once its environment is set.
pub fn served(cfg: &RouterConfig, dir: &Path) -> RouterProcess {
    RouterProcess::for_config(
        env!("CARGO_BIN_EXE_leadrouter"),
        cfg,
        dir.join("leadrouter.toml"),
    )
    .expect("router config written")
    .current_dir(manifest_dir())
}

/// Starts the child and waits until it is ready (`/readyz`) within 60 s, or fails the test
/// with the child's log.
pub async fn serve(mut router: RouterProcess) -> RouterProcess {
    if let Err(e) = router.start(Duration::from_secs(60)).await {
        panic!("leadrouter serve: {e}\n{}", router.log_text());
    }
    router
}

/// SIGTERM, as an orchestrator stops it: the child must exit cleanly within 30 s. Returns its
/// whole log, the last lines flushed by the exit.
pub async fn stop_cleanly(router: &mut RouterProcess) -> String {
    match router.stop(Duration::from_secs(30)).await {
        harness::Stopped::Exited(status) => {
            assert!(
                status.success(),
                "serve exits cleanly on SIGTERM: {status}:\n{}",
                router.log_text()
            )
        }
        other => panic!(
            "serve exits cleanly on SIGTERM: {other}:\n{}",
            router.log_text()
        ),
    }
    router.log_text()
}
