//! The scale-out benchmark: 1, 2 and 3 real `leadrouter serve` processes on one nats-server,
//! then kill -9 failover. Issue 12, "Drill and benchmark".
//!
//! 1. **Throughput by router count.** For N = 1, 2, 3, each with a fresh nats-server, a fresh
//!    sandbox CRM and fresh routers (so no run inherits a stream, a backlog or a warm cache from
//!    the one before), the bench waits until partition ownership has settled (every partition
//!    in exactly one live router's `leads_routers` record, every router owning some), sends
//!    warm-up leads, then `BENCH_LEADS` signed Standard Webhooks requests (pre-signed before the
//!    clock starts) spread round-robin over the routers' intakes, closed loop at concurrency
//!    64. It measures the intake rate (202s per second), the end-to-end rate (first send to the
//!    last lead's first CRM write), each lead's latency from its send to its first CRM write,
//!    and CPU (cores) of the routers, the nats-server, this process and the rest of the
//!    machine. Then it checks correctness: every accepted lead created exactly once at the CRM,
//!    nothing left pending or unacknowledged on the partition consumers, nothing dead-lettered.
//!    Ratios are against the 1-router run of the same round (`BENCH_ROUNDS` rounds of 1, 2, 3
//!    routers): the machine is shared and noisy, so absolute figures from different runs do
//!    not compare, and the rounds show the spread.
//! 2. **Failover after kill -9.** 3 routers under a steady open-loop load of 200 leads/s. Five
//!    times: kill -9 the router owning the most partitions, time until the survivors' own
//!    records cover all 16 partitions disjointly (the killed router's record stays in KV until
//!    it ages out, so only live routers' records count), start a replacement and wait until it
//!    has its share, then let the load run steadily before the next kill. Afterwards every lead
//!    must be at the CRM exactly once.
//!
//! The CRM is the in-process sandbox CRM (`Idempotency-Key` honoured) answering after a fixed
//! 3 ms, as a remote CRM would. The routers run as operators run them: default `info` logs to a
//! file (one JSON line per intake request and per handler stage), metrics on, traces off.
//!
//! Run: `cargo bench --bench scale_out`. Knobs: `BENCH_LEADS` (leads per row, default 20000),
//! `BENCH_ROUNDS` (default 3), `BENCH_KILLS` (default 5), `BENCH_QUICK=1` (1000 leads, 1 round,
//! 2 kills; prints only). A full run prints the markdown and writes it to
//! `benches/results/scale_out.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use leadrouter::config::Config;
use leadrouter::devtools::harness::probe::{load_average, machine, percentile, Cores, CpuProbe};
use leadrouter::devtools::harness::report::{
    cores_cells, f0, f2, knob_count, quick, reproduce, yes,
};
use leadrouter::devtools::harness::{
    self, http_sink, sender_signer, HandlersSection, NatsServer, RouterConfig, RouterProcess,
    SenderSpec,
};
use leadrouter::devtools::sandbox_crm::{Faults, KeyStats, SandboxCrm};
use leadrouter::intake::group_key::GroupKey;
use leadrouter::intake::schemes::Verifier;
use leadrouter::queue::partition::partition_of;
use reqwest::header::HeaderMap;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// 32 bytes, base64: the `[dlq] keys` entry every router shares.
const DLQ_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const GROUP_KEY: &str = "scale-out-bench-group-key-shared-by-all";
const GROUP_KEY_ENV: &str = "BENCH_GROUP_KEY";

const PARTITIONS: u16 = 16;
const OWNERSHIP_TIMEOUT: Duration = Duration::from_secs(3);
/// Leads a killed router's handlers held come back after this; short so phase 2 ends soon
/// (the shipped default is 30 s). It bounds the worst lead's delay, not the ownership move.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Per router. Large enough that one router's handler pool is not the limit at 3 ms per CRM
/// call (32 / 3 ms is ~10,000 leads/s): the figures are about CPU, not about a pool size that
/// grows with the router count.
const POOL_SIZE: usize = 32;
const CRM_LATENCY: Duration = Duration::from_millis(3);
const CONCURRENCY: usize = 64;
const FAILOVER_RATE: f64 = 200.0;
/// Steady load between a replacement's settling and the next kill.
const STEADY: Duration = Duration::from_secs(3);
/// A request to a live router answers in ms; one that hangs this long is a failure to retry.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A kill's "worst lead" counts leads sent from this long before it.
const PRE_KILL: Duration = Duration::from_secs(1);

struct Knobs {
    quick: bool,
    leads: usize,
    kills: usize,
    rounds: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            quick: quick(),
            leads: knob_count("BENCH_LEADS", 1_000, 20_000),
            kills: knob_count("BENCH_KILLS", 2, 5),
            rounds: knob_count("BENCH_ROUNDS", 1, 3),
        }
    }

    fn warmup(&self) -> usize {
        (self.leads / 20).clamp(100, 1_000)
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bench_env() -> HashMap<String, String> {
    HashMap::from([
        ("BENCH_SECRET".to_string(), SECRET.to_string()),
        ("BENCH_DLQ_KEY".to_string(), DLQ_KEY.to_string()),
        (GROUP_KEY_ENV.to_string(), GROUP_KEY.to_string()),
    ])
}

// ---------------------------------------------------------------------------------------------
// The fleet: one nats-server, one sandbox CRM, N routers

/// Where a sender may post; `alive` is cleared right after a kill -9 (requests in flight at
/// that moment still fail and move on, as a vendor's would).
#[derive(Clone)]
struct Target {
    url: String,
    alive: Arc<AtomicBool>,
}

struct Member {
    proc: RouterProcess,
    pid: u32,
    alive: Arc<AtomicBool>,
}

struct Fleet {
    nats: NatsServer,
    crm: SandboxCrm,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Shared with the load generator; only appended to (a killed router stays, marked dead).
    targets: Arc<RwLock<Vec<Target>>>,
    /// Instance ids of killed routers: their records linger in KV until they age out.
    dead_instances: BTreeSet<String>,
    verifier: Arc<Verifier>,
    group_key: GroupKey,
    js: async_nats::jetstream::Context,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(n: usize) -> Fleet {
        // Blocks for the few ms until "Server is ready": fine on the multi-thread runtime.
        let nats = NatsServer::start().expect("nats-server starts (pinned binary in .tools)");
        let crm = SandboxCrm::start("127.0.0.1:0".parse().expect("loopback address"))
            .await
            .expect("sandbox CRM starts");
        let mut faults = Faults::healthy();
        faults.latency = CRM_LATENCY;
        crm.set_faults(faults);
        let dir = tempfile::tempdir().expect("tempdir for the fleet");
        // Parsed as the routers parse it: a config mistake fails here with the key's name, and
        // the sender's scheme options build the signer, the handlers section the group key.
        let probe = Fleet::config(&nats, &crm, dir.path(), 0);
        let env = bench_env();
        let cfg: Config = probe
            .parse(&dir.path().join("probe.toml"), &env)
            .expect("bench config is valid");
        let verifier = sender_signer(&cfg, "demo", &env).expect("verifier for demo");
        let group_key = GroupKey::load(&cfg.handlers, &cfg.data_dir, &env)
            .expect("group key from BENCH_GROUP_KEY");
        let js = async_nats::jetstream::new(
            async_nats::connect(nats.url())
                .await
                .expect("connect to the bench's nats-server"),
        );
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("load client");
        let mut fleet = Fleet {
            nats,
            crm,
            dir,
            members: Vec::new(),
            targets: Arc::new(RwLock::new(Vec::new())),
            dead_instances: BTreeSet::new(),
            verifier: Arc::new(verifier),
            group_key,
            js,
            http,
        };
        // One at a time: the first one creates the streams and buckets, and a router that
        // starts while another is provisioning only adds noise to the start-up.
        for _ in 0..n {
            fleet.add_router().await;
        }
        fleet
    }

    fn config(nats: &NatsServer, crm: &SandboxCrm, dir: &Path, i: usize) -> RouterConfig {
        let port = harness::free_port().expect("a free loopback port");
        RouterConfig::new()
            .header("Written by benches/scale_out.rs.")
            .data_dir(dir.join(format!("r{i}")))
            .nats_url(nats.url())
            .intake_listen(
                format!("127.0.0.1:{port}")
                    .parse()
                    .expect("loopback address"),
            )
            // No token in this env var: the admin listener stays off, so routers do not fight
            // over its default port.
            .admin_token_env("BENCH_NO_ADMIN")
            .handlers(HandlersSection {
                pool_size: Some(POOL_SIZE),
                ack_wait: Some(ACK_WAIT),
                schemas_dir: Some(root().join("config/schemas")),
                partitions: Some(u32::from(PARTITIONS)),
                ownership_timeout: Some(OWNERSHIP_TIMEOUT),
                group_key_env: Some(GROUP_KEY_ENV.into()),
                ..HandlersSection::default()
            })
            .sender(
                SenderSpec::standard_webhooks("demo", "BENCH_SECRET")
                    // The rate limiter must never be what the bench measures.
                    .rate(1_000_000, 1_000_000)
                    .fields(&["email", "first_name", "last_name", "phone", "utm_source"]),
            )
            .sink(http_sink("crm", format!("{}/leads", crm.url()), None))
            .dlq_key("k1", "BENCH_DLQ_KEY")
    }

    /// Starts one more router and waits for its `/readyz`; returns how long that took.
    async fn add_router(&mut self) -> Duration {
        let i = self.members.len();
        let cfg = Fleet::config(&self.nats, &self.crm, self.dir.path(), i);
        let mut proc = RouterProcess::for_config(
            env!("CARGO_BIN_EXE_leadrouter"),
            &cfg,
            self.dir.path().join(format!("r{i}.toml")),
        )
        .expect("write the router config")
        // One log per router: the default is `router.log` next to the config, shared by all.
        .log(self.dir.path().join(format!("r{i}.log")))
        .envs(bench_env())
        .env("LEADROUTER_TOOLS_DIR", harness::tools_dir());
        let ready = match proc.start(Duration::from_secs(120)).await {
            Ok(d) => d,
            Err(e) => panic!("router r{i}: {e}:\n{}", proc.log_tail(30)),
        };
        let pid = proc.pid().expect("the router is running");
        let alive = Arc::new(AtomicBool::new(true));
        self.targets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Target {
                url: format!("{}/v1/intake/demo", proc.intake_url()),
                alive: alive.clone(),
            });
        self.members.push(Member { proc, pid, alive });
        ready
    }

    fn live_pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|m| m.alive.load(Ordering::Relaxed))
            .map(|m| m.pid)
            .collect()
    }

    fn nats_pid(&self) -> u32 {
        self.nats.pid().expect("nats-server running")
    }

    /// kill -9, as a crashed host; the instance ids its records carry are remembered as dead.
    async fn kill(&mut self, pid: u32) {
        let owners = leadrouter::pipeline::ownership::members(&self.js).await;
        self.dead_instances.extend(
            owners
                .keys()
                .filter(|i| instance_pid(i) == Some(pid))
                .cloned(),
        );
        let m = self
            .members
            .iter_mut()
            .find(|m| m.pid == pid)
            .expect("a router of ours");
        m.proc.kill9();
        m.alive.store(false, Ordering::Relaxed);
    }

    /// The live routers' records (pid -> owned partitions), if ownership is settled on them:
    /// every live router has one record and owns some, and together they own every partition
    /// exactly once.
    fn settled_view(&self, owners: &BTreeMap<String, Vec<u16>>) -> Option<BTreeMap<u32, Vec<u16>>> {
        let live = self.live_pids();
        let mut view = BTreeMap::new();
        for (instance, owned) in owners {
            if self.dead_instances.contains(instance) {
                continue;
            }
            let Some(pid) = instance_pid(instance).filter(|p| live.contains(p)) else {
                continue;
            };
            // Two live records for one pid (pid reuse after a kill): not settled yet.
            if view.insert(pid, owned.clone()).is_some() {
                return None;
            }
        }
        let mut seen = BTreeSet::new();
        let disjoint = view.values().flatten().all(|p| seen.insert(*p));
        let ok = view.len() == live.len()
            && view.values().all(|o| !o.is_empty())
            && disjoint
            && seen.len() == usize::from(PARTITIONS);
        ok.then_some(view)
    }

    /// Polls `leads_routers` every 50 ms until ownership is settled on the live routers.
    async fn wait_settled(&self, deadline: Duration) -> (Duration, BTreeMap<u32, Vec<u16>>) {
        let start = Instant::now();
        loop {
            let o = leadrouter::pipeline::ownership::members(&self.js).await;
            if let Some(view) = self.settled_view(&o) {
                return (start.elapsed(), view);
            }
            assert!(
                start.elapsed() < deadline,
                "partitions never settled on {} live routers within {deadline:?}: {o:?}",
                self.live_pids().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every live router (SIGTERM, graceful) so their logs end cleanly; the nats-server
    /// and the CRM go with the fleet.
    async fn stop(mut self) {
        for m in &mut self.members {
            if m.alive.load(Ordering::Relaxed) {
                let s = m.proc.stop(Duration::from_secs(30)).await;
                eprintln!("  router pid {} stopped: {s}", m.pid);
            }
        }
        self.crm.stop().await;
    }
}

/// The pid inside an instance id (`{host}-{pid}-{random}`).
fn instance_pid(instance: &str) -> Option<u32> {
    let mut parts = instance.rsplitn(3, '-');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Requests

fn email(tag: &str, i: usize) -> String {
    format!("{tag}{i}@example.com")
}

fn lead_body(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"email":"{}","first_name":"Bench","last_name":"Mark","phone":"+1 650 555 {:04}","utm_source":"bench"}}"#,
        email(tag, i),
        i % 10_000
    ))
}

/// The lead key from a 202's body, or what went wrong.
async fn accepted_key(sent: Result<reqwest::Response, reqwest::Error>) -> Result<String, String> {
    let r = sent.map_err(|e| e.to_string())?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    if status.as_u16() != 202 {
        return Err(format!("{status}"));
    }
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .ok_or_else(|| "202 without an id".to_string())
}

/// What a vendor does: post, and on a failure post again (same event id, so the same lead key)
/// to the next live router, until a 202 or the deadline. `presigned` is a first attempt signed
/// before the clock started; every other attempt is signed as it leaves (the harness's
/// `post_signed`). Returns the key and the failures seen.
async fn send_until_accepted(
    http: &reqwest::Client,
    signer: &Verifier,
    targets: &RwLock<Vec<Target>>,
    mut next: usize,
    event_id: &str,
    body: Bytes,
    presigned: Option<(&str, HeaderMap)>,
) -> (Option<String>, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = 0;
    let mut presigned = presigned;
    loop {
        let outcome = match presigned.take() {
            Some((url, headers)) => {
                let sent = http.post(url).headers(headers).body(body.clone()).send();
                accepted_key(sent.await).await
            }
            None => {
                let live: Vec<Target> = targets
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|t| t.alive.load(Ordering::Relaxed))
                    .cloned()
                    .collect();
                let Some(t) = live.get(next % live.len().max(1)) else {
                    return (None, failures);
                };
                next += 1;
                let sent =
                    harness::post_signed(http, signer, &t.url, event_id, &body, REQUEST_TIMEOUT);
                accepted_key(sent.await).await
            }
        };
        match outcome {
            Ok(key) => return (Some(key), failures),
            Err(e) => {
                failures += 1;
                if Instant::now() > deadline {
                    eprintln!("  {event_id}: given up after {failures} failures, last: {e}");
                    return (None, failures);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One pre-signed request for its round-robin target.
struct Prepared {
    target: usize,
    url: String,
    event_id: String,
    headers: HeaderMap,
    body: Bytes,
}

fn prepare(fleet: &Fleet, tag: &str, n: usize) -> Vec<Prepared> {
    let targets = fleet.targets.read().unwrap_or_else(|p| p.into_inner());
    (0..n)
        .map(|i| {
            let target = i % targets.len();
            let url = targets[target].url.clone();
            let event_id = format!("{tag}-{i}");
            let body = lead_body(tag, i);
            let headers = harness::signed_headers(&fleet.verifier, &url, &event_id, &body)
                .expect("sign a bench request");
            Prepared {
                target,
                url,
                event_id,
                headers,
                body,
            }
        })
        .collect()
}

/// One accepted lead.
struct Accepted {
    key: String,
    /// When its first attempt left (wall clock, to compare with the CRM's stamps).
    sent: SystemTime,
    /// Index in the batch (its email), for the partition.
    index: usize,
}

struct ClosedLoop {
    accepted: Vec<Accepted>,
    failures: u32,
    lost: usize,
    /// First send to last 202.
    intake_secs: f64,
}

/// `CONCURRENCY` workers post as fast as answers come back, each request to its round-robin
/// router; a failed request is retried on the next one (counted, never dropped silently).
async fn closed_loop(fleet: &Fleet, reqs: Vec<Prepared>) -> ClosedLoop {
    let reqs = Arc::new(reqs);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let (reqs, next, http) = (reqs.clone(), next.clone(), fleet.http.clone());
        let (verifier, targets) = (fleet.verifier.clone(), fleet.targets.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let (mut failures, mut lost) = (0, 0);
            let mut last = start;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = reqs.get(i) else { break };
                let sent = SystemTime::now();
                let (key, f) = send_until_accepted(
                    &http,
                    &verifier,
                    &targets,
                    p.target + 1,
                    &p.event_id,
                    p.body.clone(),
                    Some((p.url.as_str(), p.headers.clone())),
                )
                .await;
                failures += f;
                last = Instant::now();
                match key {
                    Some(key) => out.push(Accepted {
                        key,
                        sent,
                        index: i,
                    }),
                    None => lost += 1,
                }
            }
            (out, failures, lost, last)
        }));
    }
    let mut r = ClosedLoop {
        accepted: Vec::with_capacity(reqs.len()),
        failures: 0,
        lost: 0,
        intake_secs: 0.0,
    };
    let mut last = start;
    for w in workers {
        let (out, f, l, t) = w.await.expect("closed-loop worker");
        r.accepted.extend(out);
        r.failures += f;
        r.lost += l;
        last = last.max(t);
    }
    r.intake_secs = last.duration_since(start).as_secs_f64();
    r
}

// ---------------------------------------------------------------------------------------------
// Checks at the CRM and on NATS

fn parse_stamp(s: &Option<String>) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(s.as_deref()?).ok()?;
    Some(SystemTime::from(t))
}

/// Waits until the CRM holds at least `expected` records and every key in `keys` among them,
/// or the deadline passes; returns the CRM's view of each key found.
///
/// Polls the cheap record count; the full key listing (a clone of every key's stats) is taken
/// only once the count says everything could be there, so the check does not compete with the
/// CRM it measures.
async fn wait_at_crm(
    crm: &SandboxCrm,
    keys: &[&str],
    expected: u64,
    deadline: Duration,
) -> HashMap<String, KeyStats> {
    let until = Instant::now() + deadline;
    loop {
        let enough = crm.stats().records >= expected;
        if enough || Instant::now() > until {
            let all: HashMap<String, KeyStats> =
                crm.keys().into_iter().map(|k| (k.key.clone(), k)).collect();
            if keys.iter().all(|k| all.contains_key(*k)) || Instant::now() > until {
                return all;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the correctness check found.
#[derive(Default)]
struct Correctness {
    /// Accepted leads (a 202).
    accepted: usize,
    /// Accepted leads whose key has exactly one CRM record.
    exactly_once: usize,
    /// Accepted leads with no CRM record at the deadline.
    missing: usize,
    /// Keys with more than one record (the CRM's own count).
    duplicate_keys: u64,
    /// 2xx writes beyond the first per key: repeats the CRM recognised by `Idempotency-Key`.
    honoured_repeats: u64,
    /// Leads no router accepted within a minute of retries.
    lost_at_intake: usize,
    pending: u64,
    ack_pending: u64,
    dead_lettered: u64,
}

impl Correctness {
    fn ok(&self) -> bool {
        self.exactly_once == self.accepted
            && self.missing == 0
            && self.duplicate_keys == 0
            && self.lost_at_intake == 0
            && self.pending == 0
            && self.ack_pending == 0
            && self.dead_lettered == 0
    }
}

async fn check(
    fleet: &Fleet,
    accepted: &[&Accepted],
    crm_view: &HashMap<String, KeyStats>,
    lost_at_intake: usize,
) -> Correctness {
    let mut c = Correctness {
        accepted: accepted.len(),
        lost_at_intake,
        duplicate_keys: fleet.crm.stats().duplicate_keys,
        ..Correctness::default()
    };
    for a in accepted {
        match crm_view.get(&a.key) {
            Some(k) if k.created == 1 => c.exactly_once += 1,
            Some(_) => {}
            None => c.missing += 1,
        }
    }
    c.honoured_repeats = crm_view.values().map(|k| k.writes.saturating_sub(1)).sum();
    // The consumers finish acking shortly after the last CRM write: give them a moment.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match leadrouter::queue::backlog::read(&fleet.js, PARTITIONS).await {
            Ok(b) => {
                (c.pending, c.ack_pending) = (b.pending, b.ack_pending);
                if (b.pending == 0 && b.ack_pending == 0) || Instant::now() > until {
                    break;
                }
            }
            Err(e) => {
                eprintln!("  backlog: {e}");
                (c.pending, c.ack_pending) = (u64::MAX, u64::MAX);
                if Instant::now() > until {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.dead_lettered = match fleet.js.get_stream(leadrouter::queue::STREAM_DLQ).await {
        Ok(mut s) => s.info().await.map_or(u64::MAX, |i| i.state.messages),
        Err(_) => 0,
    };
    c
}

/// [`percentile`], NaN when there are no samples (the tables print it as such).
fn pct(sorted: &[f64], p: f64) -> f64 {
    percentile(sorted, p).unwrap_or(f64::NAN)
}

fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        // The CRM stamps whole milliseconds (truncated): a write can read up to 1 ms before
        // the send it answers.
        Err(e) => -(e.duration().as_secs_f64() * 1e3),
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1

struct ScaleRun {
    round: usize,
    routers: usize,
    settle: Duration,
    leads: usize,
    intake_per_sec: f64,
    e2e_per_sec: f64,
    e2e_secs: f64,
    /// Send -> first CRM write, ms, sorted.
    lat_ms: Vec<f64>,
    failures: u32,
    cores: Cores,
    /// Partitions per router when settled.
    shares: Vec<usize>,
    correct: Correctness,
}

impl ScaleRun {
    /// End-to-end leads per CPU-second of the system under test (routers, nats-server, and the
    /// bench's load generator and CRM): what a lead costs, whatever CPU the rest of a shared
    /// machine left over. Extra routers that cost extra work per lead show here.
    fn per_cpu_sec(&self) -> f64 {
        self.e2e_per_sec / (self.cores.routers + self.cores.nats + self.cores.bench)
    }
}

async fn scale_run(knobs: &Knobs, round: usize, n: usize) -> ScaleRun {
    eprintln!("phase 1, round {round}: {n} router(s)");
    let fleet = Fleet::start(n).await;
    let (settle, view) = fleet.wait_settled(Duration::from_secs(60)).await;
    let shares: Vec<usize> = view.values().map(Vec::len).collect();
    eprintln!(
        "  settled after {:.2} s: {shares:?} partitions",
        settle.as_secs_f64()
    );

    // Warm-up, not measured: connections, the buckets' first blocks, the CRM client's pool.
    let warm = closed_loop(&fleet, prepare(&fleet, "warm", knobs.warmup())).await;
    let warm_keys: Vec<&str> = warm.accepted.iter().map(|a| a.key.as_str()).collect();
    let _ = wait_at_crm(
        &fleet.crm,
        &warm_keys,
        warm_keys.len() as u64,
        Duration::from_secs(120),
    )
    .await;

    let reqs = prepare(&fleet, &format!("r{round}n{n}-"), knobs.leads);
    let expected = (warm.accepted.len() + knobs.leads) as u64;
    let probe = CpuProbe::start(&fleet.live_pids(), &[fleet.nats_pid()]);
    let start_wall = SystemTime::now();
    let run = closed_loop(&fleet, reqs).await;
    let keys: Vec<&str> = run.accepted.iter().map(|a| a.key.as_str()).collect();
    let view = wait_at_crm(&fleet.crm, &keys, expected, Duration::from_secs(300)).await;
    let cores = probe.stop();

    let mut lat_ms = Vec::with_capacity(run.accepted.len());
    let mut last_write = start_wall;
    for a in &run.accepted {
        if let Some(w) = view.get(&a.key).and_then(|k| parse_stamp(&k.first_write)) {
            lat_ms.push(ms_between(a.sent, w));
            last_write = last_write.max(w);
        }
    }
    lat_ms.sort_unstable_by(f64::total_cmp);
    let e2e_secs = ms_between(start_wall, last_write) / 1e3;
    let accepted: Vec<&Accepted> = run.accepted.iter().collect();
    let correct = check(&fleet, &accepted, &view, run.lost).await;
    let r = ScaleRun {
        round,
        routers: n,
        settle,
        leads: knobs.leads,
        intake_per_sec: run.accepted.len() as f64 / run.intake_secs,
        e2e_per_sec: lat_ms.len() as f64 / e2e_secs,
        e2e_secs,
        lat_ms,
        failures: run.failures,
        cores,
        shares,
        correct,
    };
    eprintln!(
        "  intake {:.0} req/s, end to end {:.0} leads/s over {:.1} s, p50 {:.0} ms; {} of {} exactly once",
        r.intake_per_sec,
        r.e2e_per_sec,
        r.e2e_secs,
        pct(&r.lat_ms, 0.5),
        r.correct.exactly_once,
        r.correct.accepted
    );
    fleet.stop().await;
    r
}

// ---------------------------------------------------------------------------------------------
// Phase 2

struct Kill {
    victim_owned: Vec<u16>,
    /// Kill -> the survivors' records cover every partition.
    failover: Duration,
    /// The replacement's start until `/readyz`, and from then until it has its share.
    replacement_ready: Duration,
    replacement_settled: Duration,
    at: SystemTime,
}

struct Sent {
    index: usize,
    due: SystemTime,
    key: Option<String>,
    failures: u32,
}

struct Failover {
    kills: Vec<Kill>,
    /// Per kill: the latest, over the victim's partitions, of the first CRM write of a lead
    /// sent after the kill (ms after the kill).
    resumed_ms: Vec<Option<f64>>,
    /// Per kill: the worst send -> CRM write of the leads sent between it and the next kill.
    worst_ms: Vec<f64>,
    /// Every lead's send -> first CRM write, ms, sorted.
    lat_ms: Vec<f64>,
    sent: usize,
    failures: u32,
    secs: f64,
    correct: Correctness,
}

async fn failover(knobs: &Knobs) -> Failover {
    eprintln!(
        "phase 2: 3 routers, {FAILOVER_RATE:.0} leads/s, {} kills",
        knobs.kills
    );
    let mut fleet = Fleet::start(3).await;
    fleet.wait_settled(Duration::from_secs(60)).await;

    // Open loop: lead i is due at start + i / rate, whatever happened to earlier ones, so a
    // failover shows as latency instead of silently lowering the offered load.
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (stop, http) = (stop.clone(), fleet.http.clone());
        let (verifier, targets) = (fleet.verifier.clone(), fleet.targets.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let start_wall = SystemTime::now();
            let mut tasks = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let offset = Duration::from_secs_f64(i as f64 / FAILOVER_RATE);
                tokio::time::sleep_until((start + offset).into()).await;
                let (http, verifier, targets) = (http.clone(), verifier.clone(), targets.clone());
                tasks.push(tokio::spawn(async move {
                    let event_id = format!("f-{i}");
                    let (key, failures) = send_until_accepted(
                        &http,
                        &verifier,
                        &targets,
                        i,
                        &event_id,
                        lead_body("f", i),
                        None,
                    )
                    .await;
                    Sent {
                        index: i,
                        due: start_wall + offset,
                        key,
                        failures,
                    }
                }));
                i += 1;
            }
            (tasks, start.elapsed())
        })
    };

    tokio::time::sleep(STEADY).await;
    let mut kills = Vec::with_capacity(knobs.kills);
    for k in 0..knobs.kills {
        let o = leadrouter::pipeline::ownership::members(&fleet.js).await;
        let view = fleet
            .settled_view(&o)
            .expect("settled before each kill (the replacement was waited for)");
        let (victim, owned) = view
            .iter()
            .max_by_key(|(_, o)| o.len())
            .map(|(p, o)| (*p, o.clone()))
            .expect("some owner");
        let at = SystemTime::now();
        let t = Instant::now();
        fleet.kill(victim).await;
        let (_, survivors) = fleet.wait_settled(Duration::from_secs(60)).await;
        let failover = t.elapsed();
        eprintln!(
            "  kill {}: pid {victim} (owned {owned:?}); survivors own all {PARTITIONS} after {:.2} s: {:?}",
            k + 1,
            failover.as_secs_f64(),
            survivors.values().map(Vec::len).collect::<Vec<_>>()
        );
        let replacement_ready = fleet.add_router().await;
        let (replacement_settled, _) = fleet.wait_settled(Duration::from_secs(60)).await;
        kills.push(Kill {
            victim_owned: owned,
            failover,
            replacement_ready,
            replacement_settled,
            at,
        });
        tokio::time::sleep(STEADY).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (tasks, elapsed) = generator.await.expect("load generator");
    let mut sent = Vec::with_capacity(tasks.len());
    for t in tasks {
        sent.push(t.await.expect("a lead's sender"));
    }
    let failures = sent.iter().map(|s| s.failures).sum();
    let lost = sent.iter().filter(|s| s.key.is_none()).count();
    let accepted: Vec<Accepted> = sent
        .iter()
        .filter_map(|s| {
            Some(Accepted {
                key: s.key.clone()?,
                sent: s.due,
                index: s.index,
            })
        })
        .collect();
    let keys: Vec<&str> = accepted.iter().map(|a| a.key.as_str()).collect();
    let view = wait_at_crm(
        &fleet.crm,
        &keys,
        keys.len() as u64,
        Duration::from_secs(180),
    )
    .await;
    let refs: Vec<&Accepted> = accepted.iter().collect();
    let correct = check(&fleet, &refs, &view, lost).await;

    let written: Vec<(usize, SystemTime, SystemTime)> = accepted
        .iter()
        .filter_map(|a| {
            let w = parse_stamp(&view.get(&a.key)?.first_write)?;
            Some((a.index, a.sent, w))
        })
        .collect();
    let mut lat_ms: Vec<f64> = written.iter().map(|(_, s, w)| ms_between(*s, *w)).collect();
    lat_ms.sort_unstable_by(f64::total_cmp);
    let partition =
        |i: usize| partition_of(&fleet.group_key.hash_email(&email("f", i)), PARTITIONS);
    let mut resumed_ms = Vec::with_capacity(kills.len());
    let mut worst_ms = Vec::with_capacity(kills.len());
    for (k, kill) in kills.iter().enumerate() {
        let until = kills.get(k + 1).map(|n| n.at);
        let after_kill = |s: &SystemTime| *s >= kill.at && until.is_none_or(|u| *s < u);
        // Leads sent after the kill cannot have been handled by the killed router: the first
        // such write in each of its partitions is when that partition worked again.
        let mut first: BTreeMap<u16, SystemTime> = BTreeMap::new();
        for (i, s, w) in &written {
            let p = partition(*i);
            if after_kill(s) && kill.victim_owned.contains(&p) {
                let e = first.entry(p).or_insert(*w);
                *e = (*e).min(*w);
            }
        }
        resumed_ms.push((first.len() == kill.victim_owned.len()).then(|| {
            first
                .values()
                .map(|w| ms_between(kill.at, *w))
                .fold(0.0, f64::max)
        }));
        // The worst lead also counts those sent just before the kill: the ones the killed
        // router held, which come back only after `ack_wait`. At 200 leads/s and a p50 of a few
        // ms, a lead sent more than a second before the kill was long written.
        let from = kill.at - PRE_KILL;
        let to = until.map(|u| u - PRE_KILL);
        worst_ms.push(
            written
                .iter()
                .filter(|(_, s, _)| *s >= from && to.is_none_or(|u| *s < u))
                .map(|(_, s, w)| ms_between(*s, *w))
                .fold(0.0, f64::max),
        );
    }
    let r = Failover {
        kills,
        resumed_ms,
        worst_ms,
        lat_ms,
        sent: sent.len(),
        failures,
        secs: elapsed.as_secs_f64(),
        correct,
    };
    fleet.stop().await;
    r
}

// ---------------------------------------------------------------------------------------------
// Report

fn correctness_cell(c: &Correctness) -> String {
    let mut s = format!("{} of {} exactly once", c.exactly_once, c.accepted);
    let mut extra = Vec::new();
    if c.missing > 0 {
        extra.push(format!("{} missing", c.missing));
    }
    if c.duplicate_keys > 0 {
        extra.push(format!("{} keys created twice", c.duplicate_keys));
    }
    if c.lost_at_intake > 0 {
        extra.push(format!("{} never accepted", c.lost_at_intake));
    }
    if c.pending > 0 || c.ack_pending > 0 {
        extra.push(format!("{} pending, {} unacked", c.pending, c.ack_pending));
    }
    if c.dead_lettered > 0 {
        extra.push(format!("{} dead-lettered", c.dead_lettered));
    }
    if !extra.is_empty() {
        s.push_str(&format!(" (**{}**)", extra.join(", ")));
    }
    s
}

struct Medians {
    rounds: usize,
    e2e: f64,
    e2e_min: f64,
    e2e_max: f64,
    cpu: f64,
    cpu_min: f64,
    cpu_max: f64,
    rate: f64,
}

struct Report {
    reproduce: String,
    machine: String,
    load_before: String,
    load_after: String,
    runs: Vec<ScaleRun>,
    failover: Failover,
}

impl Report {
    /// A row's end-to-end rate and leads per CPU-second, each against its round's 1-router row.
    fn ratios(&self, r: &ScaleRun) -> (f64, f64) {
        match self
            .runs
            .iter()
            .find(|b| b.round == r.round && b.routers == 1)
        {
            Some(b) => (
                r.e2e_per_sec / b.e2e_per_sec,
                r.per_cpu_sec() / b.per_cpu_sec(),
            ),
            None => (f64::NAN, f64::NAN),
        }
    }

    /// Per router count: the median over rounds of (e2e ratio, per-CPU-second ratio, e2e
    /// rate), with the e2e ratio's range.
    fn medians(&self, routers: usize) -> Option<Medians> {
        let rows: Vec<&ScaleRun> = self.runs.iter().filter(|r| r.routers == routers).collect();
        if rows.is_empty() {
            return None;
        }
        let sorted = |f: &dyn Fn(&ScaleRun) -> f64| {
            let mut v: Vec<f64> = rows.iter().map(|r| f(r)).collect();
            v.sort_unstable_by(f64::total_cmp);
            v
        };
        let e2e = sorted(&|r| self.ratios(r).0);
        let cpu = sorted(&|r| self.ratios(r).1);
        let rate = sorted(&|r| r.e2e_per_sec);
        Some(Medians {
            rounds: rows.len(),
            e2e: pct(&e2e, 0.5),
            e2e_min: e2e[0],
            e2e_max: e2e[e2e.len() - 1],
            cpu: pct(&cpu, 0.5),
            cpu_min: cpu[0],
            cpu_max: cpu[cpu.len() - 1],
            rate: pct(&rate, 0.5),
        })
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let date = chrono::Utc::now().format("%Y-%m-%d");
        s.push_str(&format!(
            "**Scale-out benchmark**, measured {date} on {}; load average {} before the run, {} \
             after. Reproduce: `{}`. Release build; each router is a real `leadrouter serve` \
             process (default `info` logs to a file, metrics on, traces off) on one shared \
             nats-server (harness `NatsServer`, R1); the load generator and the sandbox CRM \
             (`Idempotency-Key` honoured, answering after {} ms) run in the bench process. \
             Routers share `[dlq] keys` and the group key, {PARTITIONS} partitions, \
             `ownership_timeout = {}s`, `ack_wait = {}s`, a handler pool of {POOL_SIZE} each.\n\n",
            self.machine,
            self.load_before,
            self.load_after,
            self.reproduce,
            CRM_LATENCY.as_millis(),
            OWNERSHIP_TIMEOUT.as_secs(),
            ACK_WAIT.as_secs(),
        ));
        s.push_str(
            "**What bounds these figures.** Everything runs on the same 2 cores: the routers, \
             the nats-server, the load generator and the CRM stand-in. A second or third router \
             brings no CPU of its own here; it only splits the same work over more processes \
             (and adds their heartbeats and per-partition pull loops). So the expectation on \
             this machine is *no collapse and no loss*, not linear scaling: the end-to-end rate \
             should stay roughly flat as routers are added. On hosts of their own, each router \
             would bring its own cores and the shared nats-server would become the bound; that \
             is not measured here.",
        );
        // The machine is shared with other work; say from this run's own readings how much of
        // it the system under test actually had.
        let other: Vec<f64> = self.runs.iter().map(|r| r.cores.other).collect();
        let (lo, hi) = (
            other.iter().copied().fold(f64::INFINITY, f64::min),
            other.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let mean = other.iter().sum::<f64>() / other.len().max(1) as f64;
        s.push_str(&format!(
            " In this run the rest of the machine (other processes: on this shared box, other \
             sessions' test routers and nats-servers) took {lo:.2}-{hi:.2} cores per row (\"other \
             cores\"), so the system under test had about {:.1} of the 2 cores; \"leads per \
             CPU-s\" is the figure that does not depend on that.\n\n",
            2.0 - mean
        ));

        s.push_str(&format!(
            "Throughput by router count: a fresh nats-server, CRM and routers per row; leads \
             pre-signed, posted round-robin over the routers' intakes, closed loop at \
             concurrency {CONCURRENCY}; the handlers drain while the intake runs. Intake rate = \
             202s / (first send to last 202). End to end = leads / (first send to the last \
             lead's first CRM write). Latency = a lead's send to its first CRM write (the CRM \
             stamps whole ms); in a closed loop that outruns the handlers it is mostly queueing \
             in `LEADS`. Cores = CPU time / wall time from the first send to the last CRM write \
             (\"other\" is the rest of the machine; \"all\" near 2.00 means the 2 cores were \
             saturated). Leads per CPU-second = the end-to-end rate / the cores of routers, \
             nats-server and bench: what a lead costs, whatever CPU the neighbours left. Ratios \
             are against the 1-router row of the same round.\n\n",
        ));
        s.push_str("| round | routers | partitions each | leads | intake req/s | end-to-end leads/s | e2e vs 1 router | leads per CPU-s | per CPU-s vs 1 router | e2e p50 ms | e2e p95 ms | e2e max ms | routers' cores | nats-server cores | bench cores | other cores | all cores | retried requests | correctness |\n");
        s.push_str(
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.runs {
            let (e2e_ratio, cpu_ratio) = self.ratios(r);
            let shares = r
                .shares
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" / ");
            s.push_str(&format!(
                "| {} | {} | {shares} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.round,
                r.routers,
                r.leads,
                f0(r.intake_per_sec),
                f0(r.e2e_per_sec),
                e2e_ratio,
                f0(r.per_cpu_sec()),
                cpu_ratio,
                f0(pct(&r.lat_ms, 0.50)),
                f0(pct(&r.lat_ms, 0.95)),
                f0(r.lat_ms.last().copied().unwrap_or(f64::NAN)),
                cores_cells(&r.cores),
                f2(r.cores.routers + r.cores.nats + r.cores.bench + r.cores.other),
                r.failures,
                correctness_cell(&r.correct),
            ));
        }
        s.push_str(
            "\nMedians over the rounds (range in brackets):\n\n\
             | routers | rounds | end-to-end leads/s | e2e vs 1 router | leads per CPU-s vs 1 router |\n\
             |---:|---:|---:|---|---|\n",
        );
        for n in 1..=3 {
            if let Some(m) = self.medians(n) {
                s.push_str(&format!(
                    "| {n} | {} | {} | {:.2} ({:.2}-{:.2}) | {:.2} ({:.2}-{:.2}) |\n",
                    m.rounds,
                    f0(m.rate),
                    m.e2e,
                    m.e2e_min,
                    m.e2e_max,
                    m.cpu,
                    m.cpu_min,
                    m.cpu_max,
                ));
            }
        }
        let settle: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("{:.1} s", r.settle.as_secs_f64()))
            .collect();
        s.push_str(&format!(
            "\nOwnership settled (every partition in one live router's record) this long after \
             the last router's `/readyz`, row by row: {}.\n",
            settle.join(", ")
        ));

        let f = &self.failover;
        s.push_str(&format!(
            "\nFailover: 3 routers, {FAILOVER_RATE:.0} leads/s offered open loop (each lead due at \
             a fixed time, sent to the next live router, retried on the next one on any failure, \
             as a vendor would); {} times: kill -9 of the router owning the most partitions, \
             then a replacement started once the survivors own everything, then {} s of steady \
             load. **Failover** = kill to the survivors' `leads_routers` records covering all \
             {PARTITIONS} partitions, disjointly (polled every 50 ms; a record is rewritten every \
             `ownership_timeout / 4`, and it shows a takeover only at the router's next \
             heartbeat, so this reads up to one heartbeat, {} ms, late). **Writes resumed** = \
             kill to the latest, over the victim's partitions, of the first CRM write of a lead \
             sent after the kill: the same event seen from the data. **Worst lead** = the \
             longest send -> CRM write of the leads sent from {} s before this kill to {} s \
             before the next (leads the killed router held come back after `ack_wait`).\n\n",
            f.kills.len(),
            STEADY.as_secs(),
            (OWNERSHIP_TIMEOUT / 4).as_millis(),
            PRE_KILL.as_secs(),
            PRE_KILL.as_secs(),
        ));
        s.push_str("| kill | victim's partitions | failover s | writes resumed s | replacement ready s | replacement has its share s | worst lead s |\n");
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
        for (i, k) in f.kills.iter().enumerate() {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} |\n",
                i + 1,
                k.victim_owned.len(),
                k.failover.as_secs_f64(),
                f.resumed_ms
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or("n/a".into(), |m| format!("{:.2}", m / 1e3)),
                k.replacement_ready.as_secs_f64(),
                k.replacement_settled.as_secs_f64(),
                f.worst_ms.get(i).copied().unwrap_or(f64::NAN) / 1e3,
            ));
        }
        let mut fo: Vec<f64> = f.kills.iter().map(|k| k.failover.as_secs_f64()).collect();
        fo.sort_unstable_by(f64::total_cmp);
        let mut rs: Vec<f64> = f.resumed_ms.iter().flatten().map(|m| m / 1e3).collect();
        rs.sort_unstable_by(f64::total_cmp);
        // The median of 5 is the 3rd; for an even count, the lower middle (nearest rank).
        s.push_str(&format!(
            "| **p50 / max** | | **{} / {}** | {} / {} | | | |\n",
            f2(pct(&fo, 0.5)),
            f2(fo.last().copied().unwrap_or(f64::NAN)),
            f2(pct(&rs, 0.5)),
            f2(rs.last().copied().unwrap_or(f64::NAN)),
        ));
        s.push_str(&format!(
            "\nOver the whole failover phase ({:.0} s, {} leads sent, {} requests retried on \
             another router): {}; e2e latency p50 {} ms, p99 {} ms, max {} ms. Expected bound \
             for the failover: `ownership_timeout` + one heartbeat = {:.2} s, plus up to one \
             heartbeat of reporting lag in this measurement.\n",
            f.secs,
            f.sent,
            f.failures,
            correctness_cell(&f.correct),
            f0(pct(&f.lat_ms, 0.50)),
            f0(pct(&f.lat_ms, 0.99)),
            f0(f.lat_ms.last().copied().unwrap_or(f64::NAN)),
            (OWNERSHIP_TIMEOUT + OWNERSHIP_TIMEOUT / 4).as_secs_f64(),
        ));
        let repeats: u64 = self
            .runs
            .iter()
            .map(|r| r.correct.honoured_repeats)
            .sum::<u64>()
            + f.correct.honoured_repeats;
        s.push_str(&format!(
            "\n| check | result |\n|---|---|\n\
             | every accepted lead created exactly once at the CRM, none pending, none dead-lettered (all runs) | {} |\n\
             | no collapse: median over rounds of the end-to-end rate with 2 and with 3 routers >= 70% of the same round's 1 router | {} |\n\
             | failover max <= `ownership_timeout` + 2 heartbeats ({:.2} s) | {} |\n\
             \nCRM writes the CRM recognised as repeats by `Idempotency-Key` (a lead written, then redelivered before its ack): {repeats}.\n",
            yes(self.runs.iter().all(|r| r.correct.ok()) && f.correct.ok()),
            yes([2, 3]
                .iter()
                .all(|n| self.medians(*n).is_some_and(|m| m.e2e >= 0.7))),
            (OWNERSHIP_TIMEOUT + OWNERSHIP_TIMEOUT / 2).as_secs_f64(),
            yes(fo
                .last()
                .is_some_and(|m| *m <= (OWNERSHIP_TIMEOUT + OWNERSHIP_TIMEOUT / 2).as_secs_f64())),
        ));
        s
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let knobs = Knobs::from_env();
    let reproduce = reproduce(
        "scale_out",
        &[
            ("BENCH_LEADS", knobs.leads.to_string()),
            ("BENCH_ROUNDS", knobs.rounds.to_string()),
            ("BENCH_KILLS", knobs.kills.to_string()),
        ],
    );
    eprintln!("scale-out bench: {reproduce}");
    let load_before = load_average();
    let mut runs = Vec::new();
    // Rounds of 1, 2, 3 routers rather than each count several times in a row: a disturbance
    // of the shared machine then hits one round, and the rounds show the spread.
    for round in 1..=knobs.rounds {
        for n in 1..=3 {
            runs.push(scale_run(&knobs, round, n).await);
        }
    }
    let failover = failover(&knobs).await;
    let report = Report {
        reproduce,
        machine: machine(),
        load_before,
        load_after: load_average(),
        runs,
        failover,
    };
    let md = report.markdown();
    println!("\n{md}");
    if knobs.quick {
        eprintln!("BENCH_QUICK=1: benches/results/scale_out.md left as it is");
        return;
    }
    let path: PathBuf = root().join("benches/results/scale_out.md");
    std::fs::write(
        &path,
        format!("# Scale-out benchmark\n\nWritten by `cargo bench --bench scale_out`.\n\n{md}"),
    )
    .expect("write benches/results/scale_out.md");
    eprintln!("wrote {}", path.display());
}
