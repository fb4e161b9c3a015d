//! Shared test helpers: a real nats-server per test (own port, own temp store, stopped on drop;
//! the process harness in `leadrouter::devtools::harness`) and the leadrouter service embedded
//! in the test process.
#![allow(dead_code)]

pub mod otlp;
pub mod upsert_crm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use leadrouter::config::Config;
use leadrouter::devtools::harness;
use leadrouter::intake::schemes::{SignInput, Verifier};
use leadrouter::service::Service;

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

pub fn demo_sender_toml() -> &'static str {
    r#"
[[senders]]
id = "demo"
scheme = "standard-webhooks"
secret_env = ["TEST_DEMO_SECRET"]
event_id = { header = "webhook-id" }
rate = { per_second = 1000, burst = 1000 }
[senders.mapping.fields]
email = "$.email"
first_name = "$.first_name"
phone = "$.phone"
"#
}

/// [`demo_sender_toml`] as the harness's typed sender, for [`harness::RouterConfig`].
pub fn demo_sender() -> harness::SenderSpec {
    harness::SenderSpec::standard_webhooks("demo", "TEST_DEMO_SECRET")
        .rate(1000, 1000)
        .fields(&["email", "first_name", "phone"])
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

impl App {
    pub async fn start(nats_url: &str, senders_toml: &str) -> App {
        App::start_with(nats_url, senders_toml, "", test_env()).await
    }

    pub async fn start_with(
        nats_url: &str,
        senders_toml: &str,
        extra_toml: &str,
        env: HashMap<String, String>,
    ) -> App {
        init_test_logs();
        let data = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "data_dir = {:?}\n[nats]\nurl = {:?}\npublish_timeout = \"1s\"\n[intake]\nlisten = \"127.0.0.1:0\"\n{extra_toml}\n{senders_toml}",
            data.path().display().to_string(),
            nats_url
        );
        let cfg =
            Config::from_toml(&text, Path::new("test.toml"), &env).expect("valid test config");
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
        let s = self.cfg.sender(sender).expect("sender configured");
        let secrets = leadrouter::config::resolve_secrets(s, &self.env).secrets;
        Verifier::new(s.scheme, &s.signature, secrets, s.tolerance).expect("verifier")
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
        let url = format!("{}/v1/intake/{sender}", self.base);
        let signed = self
            .verifier(sender)
            .sign(&SignInput {
                body,
                now,
                event_id,
                method: "POST",
                url: &url,
            })
            .expect("sign");
        let s = self.cfg.sender(sender).expect("sender");
        let url = match &signed.query {
            Some(q) => format!("{url}?{q}"),
            None => url,
        };
        let mut req = self.http.post(url).header(
            "content-type",
            leadrouter::cli::send::content_type(&s.mapping),
        );
        for (k, v) in &signed.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req
            .body(signed.body.unwrap_or_else(|| body.to_vec()))
            .send()
            .await
            .expect("request sent");
        read(resp).await
    }
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
