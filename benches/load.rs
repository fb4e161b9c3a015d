//! The load benchmark: the real `leadrouter serve` binary in its own process, with its embedded
//! nats-server child, driven from this process. One run reports:
//!
//! 1. **Raw ceiling**: async-nats publishes of 420-byte messages, each awaiting its PubAck,
//!    straight to a JetStream stream on the router's own nats-server. The stream
//!    (`BENCH_CEILING`, subjects `bench.ceiling.>`) has the `LEADS` stream's configuration (file
//!    storage, dedupe window; every message carries a `Nats-Msg-Id`); the bench creates it and
//!    deletes it afterwards. Closed loop at concurrency 1, 16 and 64.
//! 2. **Intake**: signed Standard Webhooks POSTs (pre-signed before the clock starts, so signing
//!    is not load-generator cost) to `/v1/intake/demo`, closed loop at the same concurrencies
//!    (interleaved with the ceiling runs, so both see the same machine state), each with its
//!    ratio to the ceiling; then an open loop at 2,000 req/s. The open loop is paced by a plain
//!    OS thread (`std::thread::sleep` has ~0.1 ms precision, tokio's timer 1 ms) and its latency
//!    is measured from each request's *scheduled* send time, so a stalled server shows up as
//!    latency instead of silently lowering the offered load. These phases run against an
//!    edge-only router (`handlers.enabled = false`): the handler pool would drain the intake's
//!    own leads on the same cores and make the edge's figures depend on how fast the sinks are.
//! 3. **End to end**: a second router with a handler pool of 32 and an `http` sink at the
//!    in-process sandbox CRM answering after 5 ms. 1,000 leads/s offered through the intake for
//!    `BENCH_SECONDS`, then the bench waits until every accepted lead is at the CRM. Latency is
//!    measured with timestamps this process owns: from each lead's scheduled send time to the
//!    CRM's `first_write` of its key (recorded after the injected 5 ms, just before the CRM
//!    answers). Both clocks are this process's wall clock; `first_write` has millisecond
//!    resolution (truncated), so the figures read up to 1 ms low. The router's own view
//!    (admin API `/api/latency`: `received_at` to sink confirmation, 10%-wide buckets, the
//!    warm-up leads included) is printed next to it as a cross-check.
//! 4. **Resources**: CPU of the router and of its nats-server (and of this process: load
//!    generator, ceiling client, sandbox CRM) over each phase as cores used = delta of
//!    utime+stime in `/proc/<pid>/stat` / wall time, plus "other": the machine's busy time
//!    (`/proc/stat`) minus those three, i.e. whatever else ran on a shared box during the
//!    phase (plus kernel interrupt time no process is charged for). On two cores the tail
//!    latencies move with it (an open-loop p99 of 0.6-0.9 ms on a quiet machine read 5-18 ms
//!    next to a parallel build), so read the figures with that column.
//!    Peak RSS = `VmHWM` of each router and its nats-server (pid from
//!    `<data_dir>/nats/nats-server.pid`), read just before shutdown.
//! 5. **Targets**: intake p99 <= 5 ms at 2,000 req/s; accepted throughput >= 40% of the raw
//!    ceiling (at every concurrency); end-to-end p95 <= 50 ms at 1,000 leads/s with a 5 ms sink;
//!    router peak RSS <= 150 MiB (the larger of the two routers).
//!
//! The routers run as operators run them: default log level (`info`, one JSON line per intake
//! request and per handler stage, here to `<tempdir>/router.log`), metrics on, traces off.
//! Everything shares the machine's cores, so the load generator competes with what it measures.
//!
//! Run: `cargo bench --bench load`. Knobs: `BENCH_REQUESTS` (closed-loop requests per
//! concurrency, default 5000), `BENCH_SECONDS` (open-loop and end-to-end phases, default 5),
//! `BENCH_QUICK=1` (a small smoke run that only prints). A full run prints the markdown, writes
//! it to `benches/results/load.md` and into docs/performance.md between the load-bench markers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use leadrouter::config::Config;
use leadrouter::devtools::harness::probe::{
    load_average, machine, peak_rss_mib, percentile, Cores, CpuProbe,
};
use leadrouter::devtools::harness::report::{
    cores_cells, f2, knob_count, knob_number, met, quick, reproduce,
};
use leadrouter::devtools::harness::{
    free_ports, http_sink, sender_signer, signed_headers, RouterConfig, RouterProcess, SenderSpec,
};
use leadrouter::devtools::sandbox_crm::{Faults, SandboxCrm};
use leadrouter::intake::schemes::Verifier;
use reqwest::header::HeaderMap;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN_TOKEN: &str = "bench-admin-token-not-a-secret-0123";
const README_BEGIN: &str =
    "<!-- load-bench:begin: written by `cargo bench --bench load`; edit the bench, not this block -->";
const README_END: &str = "<!-- load-bench:end -->";

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const OPEN_RATE: f64 = 2_000.0;
const E2E_RATE: f64 = 1_000.0;
const CRM_LATENCY: Duration = Duration::from_millis(5);
const POOL_SIZE: usize = 32;
const CEILING_STREAM: &str = "BENCH_CEILING";
const CEILING_PAYLOAD_BYTES: usize = 420;

const TARGET_INTAKE_P99_MS: f64 = 5.0;
const TARGET_CEILING_RATIO: f64 = 0.40;
const TARGET_E2E_P95_MS: f64 = 50.0;
const TARGET_RSS_MIB: f64 = 150.0;

struct Knobs {
    quick: bool,
    requests: usize,
    seconds: f64,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            quick: quick(),
            requests: knob_count("BENCH_REQUESTS", 300, 5_000),
            seconds: knob_number("BENCH_SECONDS", 1.0, 5.0),
        }
    }

    fn warmup(&self) -> usize {
        if self.quick {
            100
        } else {
            1_000
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The router process

enum Role {
    /// Intake only: phases 1 and 2.
    Edge,
    /// Handler pool and an http sink at the sandbox CRM: phase 3.
    Pipeline { crm_url: String },
}

struct Router {
    proc: RouterProcess,
    pid: u32,
    nats_pid: u32,
    admin: SocketAddr,
    nats_url: String,
    verifier: Verifier,
    cfg: Config,
    // Held for the router's lifetime: its data dir, config and log live here.
    _dir: tempfile::TempDir,
}

impl Router {
    async fn start(role: &Role) -> Router {
        let dir = tempfile::tempdir().expect("tempdir for the router");
        let data = dir.path().join("data");
        let [nats_port, intake_port, admin_port] = free_ports(3)
            .expect("free loopback ports")
            .try_into()
            .expect("three ports");
        let intake = SocketAddr::from(([127, 0, 0, 1], intake_port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let mut rc = RouterConfig::new()
            .header("Written by benches/load.rs.")
            .data_dir(&data)
            .embedded_nats(nats_port, root().join("nats"))
            .intake_listen(intake)
            .admin_listen(admin);
        match role {
            Role::Edge => rc.handlers.enabled = Some(false),
            Role::Pipeline { crm_url } => {
                rc.handlers.pool_size = Some(POOL_SIZE);
                rc.handlers.schemas_dir = Some(root().join("config/schemas"));
                rc = rc.sink(http_sink("crm", format!("{crm_url}/leads"), None));
            }
        }
        let rc = rc.sender(
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
        let nats_pid = proc
            .nats_pid()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no pid in {}", data.join("nats/nats-server.pid").display()));
        Router {
            proc,
            pid,
            nats_pid,
            admin,
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            verifier,
            cfg,
            _dir: dir,
        }
    }

    fn intake_url(&self) -> String {
        format!("{}/v1/intake/demo", self.proc.intake_url())
    }

    /// CPU of this router and its nats-server from now until [`CpuProbe::stop`].
    fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::start(&[self.pid], &[self.nats_pid])
    }

    /// SIGTERM, as an orchestrator stops it, then waits for the graceful shutdown.
    async fn stop(mut self) -> String {
        self.proc
            .stop_with_nats(Duration::from_secs(60))
            .await
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One pre-signed request.
struct Prepared {
    headers: HeaderMap,
    body: Bytes,
}

fn lead_body(tag: &str, i: usize) -> Vec<u8> {
    format!(
        r#"{{"email":"{tag}{i}@example.com","first_name":"Bench","last_name":"Mark","phone":"+1 650 555 {:04}","utm_source":"bench"}}"#,
        i % 10_000
    )
    .into_bytes()
}

/// `n` signed requests, event ids `{tag}-{i}`: every one is a new lead (no dedupe hits).
fn prepare(router: &Router, tag: &str, n: usize) -> Vec<Prepared> {
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

fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("load client")
}

/// Latencies (microseconds, sorted) and counts of one closed-loop or open-loop run.
struct Run {
    requests: usize,
    ok: usize,
    secs: f64,
    lat_us: Vec<u64>,
    cores: Cores,
}

impl Run {
    /// requests | errors | throughput | p50 | p95 | p99
    fn cells(&self) -> String {
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

    fn errors(&self) -> usize {
        self.requests - self.ok
    }
    fn ok_per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn p(&self, p: f64) -> f64 {
        pct_ms(&self.lat_us, p)
    }
}

/// [`percentile`] of sorted microsecond samples, in ms; NaN (printed as `n/a`) when there are
/// none.
fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    percentile(sorted_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// `concurrency` workers run `op(0..n)` as fast as each one finishes; an op that succeeds
/// (returns true) is a latency sample.
async fn timed_closed_loop<F, Fut>(router: &Router, n: usize, concurrency: usize, op: F) -> Run
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
async fn closed_loop(
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
struct Sample {
    due: Instant,
    /// From the scheduled send time to the answer, when it was a 202.
    latency: Option<Duration>,
    /// How late the request left (pacer + runtime scheduling): the generator's own share.
    send_lag: Duration,
    /// The lead key from a 202's body.
    key: Option<String>,
}

/// Sends request `i` at `start + i / rate`, whatever happened to earlier ones.
async fn open_loop(
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

fn sorted_us(d: impl Iterator<Item = Duration>) -> Vec<u64> {
    let mut v: Vec<u64> = d.map(|d| d.as_micros() as u64).collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------------------------
// The raw ceiling

/// A stream like `LEADS` (same config, other name and subjects), so the ceiling pays the same
/// storage and dedupe costs as the intake's publishes.
async fn create_ceiling_stream(router: &Router) -> async_nats::jetstream::Context {
    let client = async_nats::connect(&router.nats_url)
        .await
        .expect("connect to the router's nats-server");
    let js = async_nats::jetstream::new(client);
    let mut cfg = leadrouter::queue::topology::leads_stream(&router.cfg.streams);
    cfg.name = CEILING_STREAM.into();
    cfg.description = Some("benches/load.rs: raw publish ceiling (deleted after the run)".into());
    cfg.subjects = vec!["bench.ceiling.>".into()];
    js.create_stream(cfg).await.expect("create BENCH_CEILING");
    js
}

async fn raw_ceiling(
    router: &Router,
    js: &async_nats::jetstream::Context,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> Run {
    let payload = Bytes::from(vec![b'x'; CEILING_PAYLOAD_BYTES]);
    let (js, tag) = (js.clone(), tag.to_owned());
    timed_closed_loop(router, n, concurrency, move |i| {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("{tag}-{i}").as_str());
        let (js, subject, payload) = (js.clone(), format!("bench.ceiling.{tag}"), payload.clone());
        async move {
            match js.publish_with_headers(subject, h, payload).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// End to end

struct E2e {
    offered: usize,
    accepted: usize,
    delivered: usize,
    duplicates: u64,
    send_secs: f64,
    lat_us: Vec<u64>,
    cores: Cores,
    /// The router's own p50/p95/p99 from the admin API, with its sample count.
    router_view: Option<([Option<f64>; 3], u64)>,
    warmup: usize,
}

/// Waits until every key has a CRM write; returns each key's `first_write` and the keys still
/// missing at the deadline.
async fn wait_at_crm(
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

async fn admin_latency(router: &Router, http: &reqwest::Client) -> Option<([Option<f64>; 3], u64)> {
    let mut out = [None; 3];
    let mut samples = 0;
    for (slot, p) in out.iter_mut().zip(["50", "95", "99"]) {
        let v: serde_json::Value = http
            .get(format!("http://{}/api/latency", router.admin))
            .query(&[("window", "5m"), ("percentile", p)])
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        *slot = v["latency_ms"].as_f64();
        samples = v["samples"].as_u64().unwrap_or(0);
    }
    Some((out, samples))
}

async fn end_to_end(knobs: &Knobs, rss: &mut Vec<(String, Option<f64>)>) -> E2e {
    let crm = SandboxCrm::start("127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("sandbox CRM starts");
    let mut faults = Faults::healthy();
    faults.latency = CRM_LATENCY;
    crm.set_faults(faults);
    let router = Router::start(&Role::Pipeline { crm_url: crm.url() }).await;
    let http = load_client();

    // Warm-up: connections, the idempotency bucket, the CRM client's pool.
    let warmup = knobs.warmup() / 5;
    let (samples, _) = open_loop(
        &router,
        &http,
        prepare(&router, "e2ewarm", warmup),
        E2E_RATE,
    )
    .await;
    let keys: Vec<String> = samples.into_iter().filter_map(|s| s.key).collect();
    let (_, missing) = wait_at_crm(&crm, keys, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "warm-up leads never reached the CRM");

    let n = (E2E_RATE * knobs.seconds).round() as usize;
    let reqs = prepare(&router, "e2e", n);
    let probe = router.cpu_probe();
    // Anchors the pacer's Instants to the wall clock the CRM stamps `first_write` with.
    let (anchor_instant, anchor_wall) = (Instant::now(), SystemTime::now());
    let (samples, send_secs) = open_loop(&router, &http, reqs, E2E_RATE).await;
    let due_wall: HashMap<String, SystemTime> = samples
        .iter()
        .filter_map(|s| {
            let key = s.key.clone()?;
            Some((
                key,
                anchor_wall + s.due.saturating_duration_since(anchor_instant),
            ))
        })
        .collect();
    let accepted = due_wall.len();
    let (written, missing) = wait_at_crm(
        &crm,
        due_wall.keys().cloned().collect(),
        Duration::from_secs(120),
    )
    .await;
    let cores = probe.stop();
    if !missing.is_empty() {
        eprintln!(
            "{} accepted leads not at the CRM after 120 s (e.g. {})",
            missing.len(),
            missing[0]
        );
    }
    let lat_us = sorted_us(written.iter().map(|(k, at)| {
        due_wall
            .get(k)
            .and_then(|due| at.duration_since(*due).ok())
            .unwrap_or_default()
    }));
    let router_view = admin_latency(&router, &http).await;
    let duplicates = crm.stats().duplicate_keys;
    rss.push((
        "router (pool 32, end to end)".into(),
        peak_rss_mib(router.pid),
    ));
    rss.push(("its nats-server".into(), peak_rss_mib(router.nats_pid)));
    let exit = router.stop().await;
    eprintln!("end-to-end router stopped: {exit}");
    crm.stop().await;
    E2e {
        offered: n,
        accepted,
        delivered: written.len(),
        duplicates,
        send_secs,
        lat_us,
        cores,
        router_view,
        warmup,
    }
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report {
    knobs_line: String,
    machine: String,
    load_before: String,
    ceilings: Vec<(usize, Run)>,
    intakes: Vec<(usize, Run)>,
    open: Run,
    open_lag_p99: f64,
    e2e: E2e,
    rss: Vec<(String, Option<f64>)>,
}

impl Report {
    fn markdown(&self) -> String {
        let mut s = String::new();
        let date = chrono::Utc::now().format("%Y-%m-%d");
        s.push_str(&format!(
            "**Load benchmark**, measured {date} on {}; load average {} before the run. \
             Reproduce: `{}`. Release build; the router is the real `leadrouter serve` process \
             (default `info` logs to a file, metrics on, traces off) with its embedded \
             nats-server; the load generator, the raw-ceiling client and the sandbox CRM run in \
             the bench process on the same cores. Cores = CPU time / wall time over the phase; \
             \"other\" is the rest of the machine (other builds and tests on a shared box, \
             kernel interrupt time), the gauge of how disturbed a phase was.\n\n",
            self.machine, self.load_before, self.knobs_line
        ));

        s.push_str(
            "Raw ceiling: async-nats publish of 420-byte messages with a PubAck each, to a stream \
             configured like `LEADS` on the router's nats-server, closed loop.\n\n",
        );
        s.push_str("| concurrency | messages | errors | throughput (msg/s) | p50 ms | p95 ms | p99 ms | nats-server cores | bench cores | other cores |\n");
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (c, r) in &self.ceilings {
            s.push_str(&format!(
                "| {c} | {} | {} | {} | {} |\n",
                r.cells(),
                f2(r.cores.nats),
                f2(r.cores.bench),
                f2(r.cores.other),
            ));
        }

        s.push_str(
            "\nIntake: signed Standard Webhooks POSTs to an edge-only router \
             (`handlers.enabled = false`), latency to the 202; throughput counts 202s only. \
             The open loop's latency runs from each request's scheduled send time.\n\n",
        );
        s.push_str("| run | requests | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms | vs raw ceiling | router cores | nats-server cores | bench cores | other cores |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (c, r) in &self.intakes {
            s.push_str(&format!(
                "| closed loop, concurrency {c} | {} | {:.0}% | {} |\n",
                r.cells(),
                100.0 * self.ratio(*c),
                cores_cells(&r.cores),
            ));
        }
        let o = &self.open;
        s.push_str(&format!(
            "| open loop, {OPEN_RATE:.0} req/s offered | {} | | {} |\n",
            o.cells(),
            cores_cells(&o.cores),
        ));
        s.push_str(&format!(
            "\nThe open loop's own send lag (pacer and runtime, part of its latency): p99 {} ms.\n",
            f2(self.open_lag_p99)
        ));

        let e = &self.e2e;
        s.push_str(&format!(
            "\nEnd to end: a router with a handler pool of {POOL_SIZE} and an `http` sink at the \
             sandbox CRM answering after {} ms; {E2E_RATE:.0} leads/s offered through the intake \
             for {:.1} s ({} warm-up leads before). Latency from each lead's scheduled send time \
             to the CRM's `first_write` of its key (wall clock of the bench process; the CRM \
             stamps milliseconds, so figures read up to 1 ms low); the bench waits until every \
             accepted lead is at the CRM.\n\n",
            CRM_LATENCY.as_millis(),
            e.send_secs,
            e.warmup,
        ));
        s.push_str("| run | offered | accepted | at the CRM | CRM duplicates | p50 ms | p95 ms | p99 ms | router cores | nats-server cores | bench cores | other cores |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        s.push_str(&format!(
            "| send -> CRM write | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            e.offered,
            e.accepted,
            e.delivered,
            e.duplicates,
            f2(pct_ms(&e.lat_us, 0.50)),
            f2(pct_ms(&e.lat_us, 0.95)),
            f2(pct_ms(&e.lat_us, 0.99)),
            cores_cells(&e.cores),
        ));
        match &e.router_view {
            Some(([p50, p95, p99], samples)) => {
                let f = |v: &Option<f64>| v.map_or("n/a".into(), f2);
                s.push_str(&format!(
                    "| router's own view (`/api/latency`: `received_at` -> sink confirmed, 10% buckets, warm-up included) | | | {samples} | | {} | {} | {} | | | | |\n",
                    f(p50),
                    f(p95),
                    f(p99),
                ));
            }
            None => s.push_str(
                "| router's own view (`/api/latency`) | | | | | n/a | n/a | n/a | | | | |\n",
            ),
        }

        s.push_str("\nPeak RSS (`VmHWM`, read before SIGTERM):\n\n| process | peak RSS MiB |\n|---|---:|\n");
        for (name, mib) in &self.rss {
            s.push_str(&format!(
                "| {name} | {} |\n",
                mib.map_or("n/a".into(), |m| format!("{m:.1}"))
            ));
        }

        s.push_str("\n| target | measured | result |\n|---|---|---|\n");
        let open_p99 = o.p(0.99);
        s.push_str(&format!(
            "| intake p99 <= {TARGET_INTAKE_P99_MS} ms at {OPEN_RATE:.0} req/s | {} ms, {} errors | {} |\n",
            f2(open_p99),
            o.errors(),
            met(open_p99 <= TARGET_INTAKE_P99_MS && o.errors() == 0)
        ));
        let ratios: Vec<f64> = self.intakes.iter().map(|(c, _)| self.ratio(*c)).collect();
        let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        s.push_str(&format!(
            "| accepted throughput >= {:.0}% of the raw ceiling | {} at concurrency {} | {} |\n",
            TARGET_CEILING_RATIO * 100.0,
            ratios
                .iter()
                .map(|r| format!("{:.0}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(" / "),
            CONCURRENCY.map(|c| c.to_string()).join(" / "),
            met(min_ratio >= TARGET_CEILING_RATIO)
        ));
        let p95 = pct_ms(&e.lat_us, 0.95);
        let all_there = e.delivered == e.accepted && e.accepted == e.offered;
        s.push_str(&format!(
            "| end-to-end p95 <= {TARGET_E2E_P95_MS} ms at {E2E_RATE:.0} leads/s, {} ms sink | {} ms, {} of {} offered at the CRM | {} |\n",
            CRM_LATENCY.as_millis(),
            f2(p95),
            e.delivered,
            e.offered,
            met(p95 <= TARGET_E2E_P95_MS && all_there)
        ));
        let routers: Vec<f64> = self
            .rss
            .iter()
            .filter(|(name, _)| name.starts_with("router"))
            .filter_map(|(_, m)| *m)
            .collect();
        let peak = routers.iter().copied().fold(f64::NAN, f64::max);
        s.push_str(&format!(
            "| router peak RSS <= {TARGET_RSS_MIB} MiB | {} MiB (larger of the two routers) | {} |\n",
            if peak.is_nan() {
                "n/a".into()
            } else {
                format!("{peak:.1}")
            },
            met(routers.len() == 2 && peak <= TARGET_RSS_MIB)
        ));
        s
    }

    fn ratio(&self, c: usize) -> f64 {
        let intake = self.intakes.iter().find(|(k, _)| *k == c);
        let raw = self.ceilings.iter().find(|(k, _)| *k == c);
        match (intake, raw) {
            (Some((_, i)), Some((_, r))) if r.ok_per_sec() > 0.0 => i.ok_per_sec() / r.ok_per_sec(),
            _ => f64::NAN,
        }
    }
}

/// Replaces what sits between the markers; nothing else in the file changes.
fn write_readme_block(markdown: &str) {
    let path = root().join("docs/performance.md");
    let text = std::fs::read_to_string(&path).expect("read docs/performance.md");
    let begin = text
        .find(README_BEGIN)
        .expect("docs/performance.md has the load-bench:begin marker");
    let after_begin = begin + README_BEGIN.len();
    let end = text[after_begin..]
        .find(README_END)
        .map(|i| after_begin + i)
        .expect("docs/performance.md has the load-bench:end marker after the begin marker");
    let updated = format!(
        "{}\n{}\n{}",
        &text[..after_begin],
        markdown.trim_end(),
        &text[end..]
    );
    std::fs::write(&path, updated).expect("write docs/performance.md");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let knobs = Knobs::from_env();
    let knobs_line = reproduce(
        "load",
        &[
            ("BENCH_REQUESTS", knobs.requests.to_string()),
            ("BENCH_SECONDS", knobs.seconds.to_string()),
        ],
    );
    let load_before = load_average();
    eprintln!("load bench: {knobs_line}");
    let mut rss = Vec::new();

    // Phases 1 and 2: the edge-only router.
    let edge = Router::start(&Role::Edge).await;
    let http = load_client();
    let js = create_ceiling_stream(&edge).await;
    // Warm-up, not measured: connections at the highest concurrency, the stream's first blocks.
    let _ = closed_loop(&edge, &http, prepare(&edge, "warm", knobs.warmup()), 64).await;
    let _ = raw_ceiling(&edge, &js, "warm", knobs.warmup(), 64).await;

    let mut ceilings = Vec::new();
    let mut intakes = Vec::new();
    for c in CONCURRENCY {
        let raw = raw_ceiling(&edge, &js, &format!("c{c}"), knobs.requests, c).await;
        eprintln!("raw ceiling c{c}: {:.0} msg/s", raw.ok_per_sec());
        ceilings.push((c, raw));
        let reqs = prepare(&edge, &format!("c{c}"), knobs.requests);
        let run = closed_loop(&edge, &http, reqs, c).await;
        eprintln!("intake c{c}: {:.0} req/s", run.ok_per_sec());
        intakes.push((c, run));
    }
    js.delete_stream(CEILING_STREAM)
        .await
        .expect("delete BENCH_CEILING");

    let n = (OPEN_RATE * knobs.seconds).round() as usize;
    let reqs = prepare(&edge, "open", n);
    let probe = edge.cpu_probe();
    let (samples, secs) = open_loop(&edge, &http, reqs, OPEN_RATE).await;
    let open_cores = probe.stop();
    let open_lag_p99 = pct_ms(&sorted_us(samples.iter().map(|s| s.send_lag)), 0.99);
    let lat_us = sorted_us(samples.iter().filter_map(|s| s.latency));
    let open = Run {
        requests: samples.len(),
        ok: lat_us.len(),
        secs,
        lat_us,
        cores: open_cores,
    };
    eprintln!("open loop: p99 {} ms", f2(open.p(0.99)));
    rss.push((
        "router (edge only, intake phases)".into(),
        peak_rss_mib(edge.pid),
    ));
    rss.push(("its nats-server".into(), peak_rss_mib(edge.nats_pid)));
    drop(http);
    let exit = edge.stop().await;
    eprintln!("edge router stopped: {exit}");

    // Phase 3: the full pipeline.
    let e2e = end_to_end(&knobs, &mut rss).await;

    let report = Report {
        knobs_line,
        machine: machine(),
        load_before,
        ceilings,
        intakes,
        open,
        open_lag_p99,
        e2e,
        rss,
    };
    let md = report.markdown();
    println!("\n{md}");
    if knobs.quick {
        eprintln!("BENCH_QUICK=1: docs/performance.md and benches/results/load.md left alone");
        return;
    }
    let results = root().join("benches/results");
    std::fs::create_dir_all(&results).expect("create benches/results");
    std::fs::write(
        results.join("load.md"),
        format!("# Load benchmark\n\nWritten by `cargo bench --bench load`; docs/performance.md (\"One router\") carries the same text.\n\n{md}"),
    )
    .expect("write benches/results/load.md");
    write_readme_block(&md);
    eprintln!("wrote benches/results/load.md and docs/performance.md's load-bench block");
}
