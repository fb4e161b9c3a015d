//! What the load benchmarks share: the real `leadrouter serve` process with its embedded
//! nats-server, pre-signed intake requests, and closed- and open-loop drivers that time them
//! (`benches/load.rs`, `benches/durability.rs`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use leadrouter::config::Config;
use leadrouter::devtools::harness::probe::{percentile, Cores, CpuProbe};
use leadrouter::devtools::harness::report::f2;
use leadrouter::devtools::harness::{
    free_ports, http_sink, sender_signer, signed_headers, RouterConfig, RouterProcess, SenderSpec,
};
use leadrouter::devtools::sandbox_crm::SandboxCrm;
use leadrouter::intake::schemes::Verifier;
use leadrouter::sinks::SinkConfig;
use reqwest::header::HeaderMap;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ADMIN_TOKEN: &str = "bench-admin-token-not-a-secret-0123";
pub const POOL_SIZE: usize = 32;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The router process

pub enum Role {
    /// Intake only: phases 1 and 2.
    Edge,
    /// Handler pool and an http sink at the sandbox CRM: phase 3.
    Pipeline { crm_url: String },
    /// Handler pool and these sinks (the pool grows to fill batching sinks).
    Sinks(Vec<SinkConfig>),
}

/// The NATS a router uses: its own embedded nats-server, or one the bench runs (so that a
/// backlog stored by one router outlives it, for the next to drain).
pub enum Nats<'a> {
    Embedded,
    External { url: &'a str, pid: u32 },
}

pub struct Router {
    pub proc: RouterProcess,
    pub pid: u32,
    pub nats_pid: u32,
    pub admin: SocketAddr,
    pub nats_url: String,
    pub verifier: Verifier,
    pub cfg: Config,
    // Held for the router's lifetime: its data dir, config and log live here.
    pub _dir: tempfile::TempDir,
}

impl Router {
    /// `tune` adjusts the config (durability, group commit) before the process starts.
    pub async fn start(role: &Role, tune: impl FnOnce(RouterConfig) -> RouterConfig) -> Router {
        Router::start_on(Nats::Embedded, role, tune).await
    }

    pub async fn start_on(
        nats: Nats<'_>,
        role: &Role,
        tune: impl FnOnce(RouterConfig) -> RouterConfig,
    ) -> Router {
        let dir = tempfile::tempdir().expect("tempdir for the router");
        let data = dir.path().join("data");
        let [nats_port, intake_port, admin_port] = free_ports(3)
            .expect("free loopback ports")
            .try_into()
            .expect("three ports");
        let intake = SocketAddr::from(([127, 0, 0, 1], intake_port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let mut rc = RouterConfig::new()
            .header("Written by a bench (benches/).")
            .data_dir(&data)
            .intake_listen(intake)
            .admin_listen(admin);
        rc = match nats {
            Nats::Embedded => rc.embedded_nats(nats_port, root().join("nats")),
            // Routers on one NATS account share the DLQ key (a generated local one would
            // differ per router, and the second refuses to start).
            Nats::External { url, .. } => rc.nats_url(url).dlq_key("bench", "BENCH_DLQ_KEY"),
        };
        match role {
            Role::Edge => rc.handlers.enabled = Some(false),
            Role::Pipeline { crm_url } => {
                rc.handlers.pool_size = Some(POOL_SIZE);
                rc.handlers.schemas_dir = Some(root().join("config/schemas"));
                rc = rc.sink(http_sink("crm", format!("{crm_url}/leads"), None));
            }
            Role::Sinks(sinks) => {
                rc.handlers.schemas_dir = Some(root().join("config/schemas"));
                for s in sinks {
                    rc = rc.sink(s.clone());
                }
            }
        }
        let rc = tune(rc).sender(
            SenderSpec::standard_webhooks("demo", "BENCH_SECRET")
                // The rate limiter must never be what the bench measures.
                .rate(1_000_000, 1_000_000)
                .fields(&["email", "first_name", "last_name", "phone", "utm_source"]),
        );
        let env = HashMap::from([
            ("BENCH_SECRET".to_string(), SECRET.to_string()),
            (
                "LEADROUTER_ADMIN_TOKEN".to_string(),
                ADMIN_TOKEN.to_string(),
            ),
            // Routers that share a NATS account (a backlog stored by one, drained by the
            // next) must hash leads with one group key.
            (
                "LEADROUTER_GROUP_KEY".to_string(),
                "bench-group-key-shared-by-every-router".to_string(),
            ),
            // 32 bytes, base64: the DLQ key of routers on a shared nats-server.
            (
                "BENCH_DLQ_KEY".to_string(),
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string(),
            ),
            // The sandbox's HubSpot personality takes any bearer token.
            (
                "HUBSPOT_TOKEN".to_string(),
                "bench-hubspot-token".to_string(),
            ),
        ]);
        // Parsed here too: a config mistake fails with the key's name before a process starts,
        // and the sender's scheme options build the signer.
        let cfg_path = dir.path().join("leadrouter.toml");
        let cfg = rc.parse(&cfg_path, &env).expect("bench config is valid");
        let verifier = sender_signer(&cfg, "demo", &env).expect("verifier for demo");

        // The harness scrubs the caller's LEADROUTER_* settings (listen addresses, data dir,
        // store key, ...), which would override the config written here; the bench's router
        // sees only its own.
        let mut proc = RouterProcess::for_config(env!("CARGO_BIN_EXE_leadrouter"), &rc, &cfg_path)
            .expect("write leadrouter.toml")
            .env("LEADROUTER_TOOLS_DIR", root().join(".tools"))
            .envs(env);
        // The first run on a machine installs the pinned nats-server, hence the generous
        // deadline.
        if let Err(e) = proc.start(Duration::from_secs(300)).await {
            panic!("{e}:\n{}", proc.log_tail(30));
        }
        let pid = proc.pid().expect("the router is running");
        let (nats_pid, nats_url) = match nats {
            Nats::Embedded => (
                proc.nats_pid()
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or_else(|| {
                        panic!("no pid in {}", data.join("nats/nats-server.pid").display())
                    }),
                format!("nats://127.0.0.1:{nats_port}"),
            ),
            Nats::External { url, pid } => (pid, url.to_string()),
        };
        Router {
            proc,
            pid,
            nats_pid,
            admin,
            nats_url,
            verifier,
            cfg,
            _dir: dir,
        }
    }

    pub fn intake_url(&self) -> String {
        format!("{}/v1/intake/demo", self.proc.intake_url())
    }

    /// CPU of this router and its nats-server from now until [`CpuProbe::stop`].
    pub fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::start(&[self.pid], &[self.nats_pid])
    }

    /// SIGTERM, as an orchestrator stops it, then waits for the graceful shutdown.
    pub async fn stop(mut self) -> String {
        self.proc
            .stop_with_nats(Duration::from_secs(60))
            .await
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One pre-signed request.
pub struct Prepared {
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub fn lead_body(tag: &str, i: usize) -> Vec<u8> {
    format!(
        r#"{{"email":"{tag}{i}@example.com","first_name":"Bench","last_name":"Mark","phone":"+1 650 555 {:04}","utm_source":"bench"}}"#,
        i % 10_000
    )
    .into_bytes()
}

/// `n` signed requests, event ids `{tag}-{i}`: every one is a new lead (no dedupe hits).
pub fn prepare(router: &Router, tag: &str, n: usize) -> Vec<Prepared> {
    let url = router.intake_url();
    (0..n)
        .map(|i| {
            let body = lead_body(tag, i);
            let headers = signed_headers(&router.verifier, &url, &format!("{tag}-{i}"), &body)
                .expect("sign a bench request");
            Prepared {
                headers,
                body: Bytes::from(body),
            }
        })
        .collect()
}

pub fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("load client")
}

/// Latencies (microseconds, sorted) and counts of one closed-loop or open-loop run.
pub struct Run {
    pub requests: usize,
    pub ok: usize,
    pub secs: f64,
    pub lat_us: Vec<u64>,
    pub cores: Cores,
}

impl Run {
    /// requests | errors | throughput | p50 | p95 | p99
    pub fn cells(&self) -> String {
        format!(
            "{} | {} | {:.0} | {} | {} | {}",
            self.requests,
            self.errors(),
            self.ok_per_sec(),
            f2(self.p(0.50)),
            f2(self.p(0.95)),
            f2(self.p(0.99)),
        )
    }

    pub fn errors(&self) -> usize {
        self.requests - self.ok
    }
    pub fn ok_per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn p(&self, p: f64) -> f64 {
        pct_ms(&self.lat_us, p)
    }
}

/// [`percentile`] of sorted microsecond samples, in ms; NaN (printed as `n/a`) when there are
/// none.
pub fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    percentile(sorted_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// `concurrency` workers run `op(0..n)` as fast as each one finishes; an op that succeeds
/// (returns true) is a latency sample.
pub async fn timed_closed_loop<F, Fut>(router: &Router, n: usize, concurrency: usize, op: F) -> Run
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let probe = router.cpu_probe();
    let start = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, op) = (next.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                if op(i).await {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            lat
        }));
    }
    let mut lat_us = Vec::with_capacity(n);
    for w in workers {
        lat_us.extend(w.await.expect("closed-loop worker"));
    }
    let secs = start.elapsed().as_secs_f64();
    let cores = probe.stop();
    lat_us.sort_unstable();
    Run {
        requests: n,
        ok: lat_us.len(),
        secs,
        lat_us,
        cores,
    }
}

/// `concurrency` workers post as fast as answers come back.
pub async fn closed_loop(
    router: &Router,
    http: &reqwest::Client,
    reqs: Vec<Prepared>,
    concurrency: usize,
) -> Run {
    let n = reqs.len();
    let reqs = Arc::new(reqs);
    let (url, http) = (router.intake_url(), http.clone());
    timed_closed_loop(router, n, concurrency, move |i| {
        let p = &reqs[i];
        let sent = http
            .post(&url)
            .headers(p.headers.clone())
            .body(p.body.clone())
            .send();
        async move {
            // The latency includes reading the (small) answer: the request is done then.
            match sent.await {
                Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

/// What one open-loop request saw.
pub struct Sample {
    pub due: Instant,
    /// From the scheduled send time to the answer, when it was a 202.
    pub latency: Option<Duration>,
    /// How late the request left (pacer + runtime scheduling): the generator's own share.
    pub send_lag: Duration,
    /// The lead key from a 202's body.
    pub key: Option<String>,
}

/// Sends request `i` at `start + i / rate`, whatever happened to earlier ones.
pub async fn open_loop(
    router: &Router,
    http: &reqwest::Client,
    reqs: Vec<Prepared>,
    rate: f64,
) -> (Vec<Sample>, f64) {
    let url = router.intake_url();
    let rt = tokio::runtime::Handle::current();
    let http = http.clone();
    // A few ms of slack so the first request is not already late when the pacer starts.
    let start = Instant::now() + Duration::from_millis(20);
    let tasks = tokio::task::spawn_blocking(move || {
        let mut tasks = Vec::with_capacity(reqs.len());
        for (i, p) in reqs.into_iter().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (http, url) = (http.clone(), url.clone());
            tasks.push(rt.spawn(async move {
                let send_lag = due.elapsed();
                let sent = http.post(&url).headers(p.headers).body(p.body).send().await;
                let mut sample = Sample {
                    due,
                    latency: None,
                    send_lag,
                    key: None,
                };
                if let Ok(r) = sent {
                    let accepted = r.status().as_u16() == 202;
                    if let (true, Ok(body)) = (accepted, r.bytes().await) {
                        sample.latency = Some(due.elapsed());
                        sample.key = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned));
                    }
                }
                sample
            }));
        }
        tasks
    })
    .await
    .expect("open-loop pacer");
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        samples.push(t.await.expect("open-loop request"));
    }
    (samples, start.elapsed().as_secs_f64())
}

pub fn sorted_us(d: impl Iterator<Item = Duration>) -> Vec<u64> {
    let mut v: Vec<u64> = d.map(|d| d.as_micros() as u64).collect();
    v.sort_unstable();
    v
}

/// Waits until every key has a CRM write; returns each key's `first_write` and the keys still
/// missing at the deadline.
pub async fn wait_at_crm(
    crm: &SandboxCrm,
    keys: Vec<String>,
    deadline: Duration,
) -> (HashMap<String, SystemTime>, Vec<String>) {
    let until = Instant::now() + deadline;
    let mut pending = keys;
    let mut written = HashMap::with_capacity(pending.len());
    loop {
        pending.retain(|k| {
            let first = crm.record(k).and_then(|r| r.first_write);
            match first.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()) {
                Some(t) => {
                    written.insert(k.clone(), SystemTime::from(t));
                    false
                }
                None => true,
            }
        });
        if pending.is_empty() || Instant::now() > until {
            return (written, pending);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces what docs/performance.md holds between the `begin` and `end` markers.
pub fn write_doc_block(begin_marker: &str, end_marker: &str, markdown: &str) {
    let path = root().join("docs/performance.md");
    let text = std::fs::read_to_string(&path).expect("read docs/performance.md");
    let begin = text
        .find(begin_marker)
        .unwrap_or_else(|| panic!("docs/performance.md has no {begin_marker} marker"));
    let after_begin = begin + begin_marker.len();
    let end = text[after_begin..]
        .find(end_marker)
        .map(|i| after_begin + i)
        .unwrap_or_else(|| {
            panic!("docs/performance.md has no {end_marker} marker after {begin_marker}")
        });
    let updated = format!(
        "{}\n{}\n{}",
        &text[..after_begin],
        markdown.trim_end(),
        &text[end..]
    );
    std::fs::write(&path, updated).expect("write docs/performance.md");
}

/// Counts the fsync-family system calls of a process (all its threads) while attached:
/// `strace -f -c` on the running pid. strace slows what it traces, so counting runs are kept
/// apart from timed ones.
pub struct SyscallCount {
    child: std::process::Child,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SyscallCount {
    /// `None` when strace is missing or may not attach (no ptrace permission).
    pub fn attach(pid: u32) -> Option<SyscallCount> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().ok()?;
        let out = dir.path().join("strace.txt");
        let mut child = std::process::Command::new("strace")
            .args([
                "-f",
                "-c",
                "-e",
                "trace=fsync,fdatasync,sync_file_range",
                "-o",
            ])
            .arg(&out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        // strace reports each attached thread on stderr; the first line means it is tracing.
        let stderr = child.stderr.take()?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        match lines.next() {
            Some(Ok(l)) if l.contains("attached") => {}
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
        // Keep draining, so strace never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // The remaining threads attach within milliseconds of the first.
        std::thread::sleep(Duration::from_millis(200));
        Some(SyscallCount {
            child,
            out,
            _dir: dir,
        })
    }

    /// Detaches and returns the calls counted (fsync + fdatasync + sync_file_range).
    pub fn stop(mut self) -> Option<u64> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).ok()?)?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT).ok()?;
        self.child.wait().ok()?;
        let text = std::fs::read_to_string(&self.out).ok()?;
        let mut calls = 0;
        for line in text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let Some(name) = cols.last() {
                if ["fsync", "fdatasync", "sync_file_range"].contains(name) && cols.len() >= 5 {
                    calls += cols[3].parse::<u64>().unwrap_or(0);
                }
            }
        }
        Some(calls)
    }
}
