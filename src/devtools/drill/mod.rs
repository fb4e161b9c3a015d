//! `leadrouter drill`: the seed's outage, reproduced on one machine, with the books balanced at
//! the end.
//!
//! The drill starts a sandbox CRM that flaps on a schedule ([`storm`]), the router as a real child
//! process ([`router`]), and a simulated form vendor ([`vendor`]) that posts signed leads at a
//! fixed rate, retries like a vendor and double-submits a share of them. While the vendor sends,
//! the router is killed with SIGKILL three times and its nats-server once; the drill restarts the
//! router like a process supervisor would and measures how long intake was unavailable. When the
//! vendor is done and the queue has drained, every lead is looked up at the CRM and in the DLQ
//! ([`report`]). `--baseline direct` runs the same storm first against the seed's synchronous
//! design ([`baseline`]).
//!
//! `--routers N` and `--nats-cluster N` run the same storm against several routers sharing one
//! NATS account, and against a JetStream cluster ([`fleet`]): the kills go round the routers
//! and the NATS fault kills the `LEADS` leader's node.

pub mod baseline;
pub mod fleet;
pub mod report;
pub mod router;
pub mod storm;
pub mod vendor;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::cli::admin_client::AdminClient;
use crate::config::Config;
use crate::devtools::harness::{free_ports, http_sink, HandlersSection, RouterConfig, SenderSpec};
use crate::devtools::sandbox_crm::{IdempotencyMode, SandboxCrm};
use crate::dlq::store::DlqEntry;
use crate::intake::envelope::{email_hash, idempotency_key};
use crate::intake::schemes::Verifier;
use fleet::Nats;
use report::{Evidence, RunReport};
use storm::{FaultKind, FaultRecord};
use vendor::{Balancer, Counters, LeadSpec, RetryPolicy, Vendor};

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Leads the vendor sends.
    #[arg(long, default_value_t = 100_000)]
    pub leads: usize,
    /// Leads per second the vendor offers (retries and duplicate submits come on top).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Share of leads submitted twice or three times at once (double clicks, retry storms).
    #[arg(long, default_value_t = 0.30)]
    pub duplicates: f64,
    /// Share of payloads that are malformed: most fail the schema (-> DLQ), a fifth is not JSON
    /// (-> refused with 400 at the edge).
    #[arg(long, default_value_t = 0.005)]
    pub malformed: f64,
    /// Share of good leads that reuse an earlier lead's email (shared inboxes).
    #[arg(long, default_value_t = 0.01)]
    pub shared_inbox: f64,
    /// Seed of the lead generator (same seed, same leads).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the same storm first against another design and show both.
    #[arg(long, value_enum)]
    pub baseline: Option<crate::devtools::drill::Baseline>,
    /// Leave out the kill -9s and the nats-server restart (the CRM still flaps).
    #[arg(long)]
    pub no_process_faults: bool,
    /// How long to wait after the storm for every lead to be placed.
    #[arg(long, default_value = "3m")]
    pub drain_timeout: humantime::Duration,
    /// The vendor's patience per request.
    #[arg(long, default_value = "5s")]
    pub vendor_timeout: humantime::Duration,
    /// Where the router's config, data and log go (default: a temp dir, removed when the
    /// drill passes).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the temp work dir even when the drill passes.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Run the router against this NATS (a cluster, a leaf node) instead of the embedded
    /// default; the nats-server restart is then skipped. Use a NATS account of its own: the
    /// drill's router creates and uses the standard streams and buckets there.
    #[arg(long)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub topology: crate::devtools::drill::TopologyArgs,
}

/// The sender id the drill's router is configured with.
pub const SENDER: &str = "drill";
/// Restart delay of the drill's "process supervisor" after a kill.
const RESTART_DELAY: Duration = Duration::from_millis(100);
/// How long a component may take to come back before the drill calls it a failure.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {exe}: {why}")]
    Spawn { exe: PathBuf, why: String },
    #[error("leadrouter exited during start-up ({status}); its log: {log}")]
    RouterExited { status: String, log: PathBuf },
    #[error("{what} was not ready after {waited:?}; its log: {log}")]
    NotReady {
        what: String,
        waited: Duration,
        log: PathBuf,
    },
    #[error("reading the DLQ from the router's admin API: {0}")]
    Dlq(String),
}

impl DrillError {
    fn io(path: &Path, source: std::io::Error) -> DrillError {
        DrillError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// The seed's synchronous pass-through with a naive 1-hour email dedupe.
    Direct,
}

#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub leads: usize,
    pub rate: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
    pub shared_inbox_share: f64,
    pub seed: u64,
    pub baseline: Option<Baseline>,
    /// No kills or nats-server restart (the CRM still flaps).
    pub no_process_faults: bool,
    pub drain_timeout: Duration,
    pub work_dir: Option<PathBuf>,
    pub keep: bool,
    pub json: bool,
    pub vendor: RetryPolicy,
    /// Run the router against this NATS instead of the embedded default (its nats-server is
    /// not the drill's to restart).
    pub nats_url: Option<String>,
    pub topology: TopologyArgs,
}

/// `--routers` and `--nats-cluster`: the design under test beyond one router on its embedded
/// nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct TopologyArgs {
    /// Routers to run: `leadrouter serve` processes sharing one NATS account (same DLQ and group
    /// keys), behind the vendor's load balancer; the kills go round them. With more than one and
    /// no --nats-url or --nats-cluster they share a nats-server the drill starts.
    #[arg(long, default_value_t = 1)]
    pub routers: usize,
    /// Run the routers on a JetStream cluster of this many nats-server nodes the drill starts
    /// (odd, 3 or more; streams R3). The storm's NATS fault is then kill -9 of the node leading
    /// LEADS, restarted once a new leader is elected.
    #[arg(long, value_name = "NODES")]
    pub nats_cluster: Option<usize>,
}

impl Default for TopologyArgs {
    fn default() -> Self {
        TopologyArgs {
            routers: 1,
            nats_cluster: None,
        }
    }
}

/// More routers than partitions would leave some with nothing to pull.
const MAX_ROUTERS: usize = 16;
/// A bigger cluster is no different a test, only slower to start on one machine.
const MAX_NATS_NODES: usize = 7;

impl DrillOptions {
    pub fn validate(&self) -> Result<(), DrillError> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(DrillError::Setup(format!(
                    "{name} must be a share between 0 and 1, got {v}"
                )))
            }
        };
        share("--duplicates", self.duplicate_share)?;
        share("--malformed", self.malformed_share)?;
        share("--shared-inbox", self.shared_inbox_share)?;
        if self.leads == 0 {
            return Err(DrillError::Setup("--leads must be at least 1".into()));
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(DrillError::Setup(format!(
                "--rate must be a positive number of leads per second, got {}",
                self.rate
            )));
        }
        let t = &self.topology;
        if t.routers == 0 {
            return Err(DrillError::Setup("--routers must be at least 1".into()));
        }
        if t.routers > MAX_ROUTERS {
            return Err(DrillError::Setup(format!(
                "--routers must be at most {MAX_ROUTERS} (one of the 16 partitions each at least), got {}",
                t.routers
            )));
        }
        if let Some(n) = t.nats_cluster {
            if n < 3 || n % 2 == 0 || n > MAX_NATS_NODES {
                return Err(DrillError::Setup(format!(
                    "--nats-cluster must be an odd number of nodes from 3 to {MAX_NATS_NODES} (a majority must survive the node kill to elect a leader; R3 streams need 3), got {n}"
                )));
            }
            if self.nats_url.is_some() {
                return Err(DrillError::Setup(
                    "--nats-cluster starts the drill's own NATS cluster; it cannot be combined with --nats-url (to use your cluster, give its URLs to --nats-url alone)".into(),
                ));
            }
        }
        Ok(())
    }

    /// One router on its embedded nats-server or on `--nats-url`: the drill as it was before
    /// `--routers` and `--nats-cluster`, same faults, same report.
    pub fn single_router(&self) -> bool {
        self.topology.routers == 1 && self.topology.nats_cluster.is_none()
    }
}

/// Everything the drill measured; `--json` prints this.
#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub leads: usize,
    pub rate: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
    pub seed: u64,
    pub process_faults: bool,
    pub runs: Vec<RunReport>,
    /// The leadrouter run lost nothing, duplicated nothing and needed nobody.
    pub passed: bool,
    pub table: String,
    pub work_dir: String,
}

/// The key leadrouter derives for a drill lead (the CRM's bookkeeping is keyed by it).
pub fn lead_key(event_id: &str, email: &str) -> String {
    let mut fields = Map::new();
    if !email.is_empty() {
        fields.insert("email".into(), Value::String(email.to_string()));
    }
    idempotency_key(SENDER, event_id, &email_hash(&fields))
}

/// Progress on a terminal, event lines otherwise (unless `--json`).
struct Ui {
    bar: Option<ProgressBar>,
    lines: bool,
}

impl Ui {
    fn new(json: bool, total: u64) -> Ui {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} {prefix:>10} [{bar:30}] {pos}/{len} leads {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b
        });
        Ui {
            lines: bar.is_none() && !json,
            bar,
        }
    }

    fn event(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("  {msg}")),
            None if self.lines => eprintln!("drill: {msg}"),
            None => {}
        }
    }

    fn stage(&self, prefix: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(total);
            b.set_prefix(prefix.to_string());
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("d{ms:x}")
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    hex::encode(b)
}

/// The assets the router's config points at, from the checkout the drill runs in.
fn checkout_dirs() -> Result<(PathBuf, PathBuf), DrillError> {
    let cwd = std::env::current_dir().map_err(|e| DrillError::Setup(e.to_string()))?;
    let tmpl = cwd.join("nats");
    let schemas = cwd.join("config/schemas");
    if !tmpl.join("nats-server.conf.tmpl").is_file() || !schemas.join("lead.v1.json").is_file() {
        return Err(DrillError::Setup(format!(
            "run the drill from the leadrouter checkout: {} needs nats/nats-server.conf.tmpl and config/schemas/lead.v1.json",
            cwd.display()
        )));
    }
    Ok((tmpl, schemas))
}

/// Runs the drill and returns its report (the caller prints it and picks the exit code).
pub async fn run(opts: &DrillOptions) -> Result<DrillReport, DrillError> {
    opts.validate()?;
    let id = run_id();
    let work = match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("leadrouter-drill-{id}")),
    };
    std::fs::create_dir_all(&work).map_err(|e| DrillError::io(&work, e))?;
    let plan = vendor::Plan {
        leads: opts.leads,
        duplicate_share: opts.duplicate_share,
        malformed_share: opts.malformed_share,
        shared_inbox_share: opts.shared_inbox_share,
        seed: opts.seed,
        run_id: id.clone(),
    };
    let leads = Arc::new(vendor::generate(&plan, SENDER));
    let ui = Ui::new(opts.json, opts.leads as u64);
    let mut runs = Vec::new();
    if opts.baseline == Some(Baseline::Direct) {
        ui.event("storm 1 of 2: the seed's direct pass-through (before)");
        runs.push(run_direct(opts, leads.clone(), &ui).await?);
        ui.event("storm 2 of 2: leadrouter (after)");
    }
    let result = run_leadrouter(opts, leads, &work, &id, &ui).await;
    ui.finish();
    runs.push(result?);
    let passed = runs.last().is_some_and(RunReport::clean);
    let table = report::render_table(&runs.iter().collect::<Vec<_>>());
    if passed && opts.work_dir.is_none() && !opts.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(DrillReport {
        leads: opts.leads,
        rate: opts.rate,
        duplicate_share: opts.duplicate_share,
        malformed_share: opts.malformed_share,
        seed: opts.seed,
        process_faults: !opts.no_process_faults,
        runs,
        passed,
        table,
        work_dir: work.display().to_string(),
    })
}

/// What the storm does to the design under test.
trait Target {
    /// Kills the front door (SIGKILL or its equivalent), restarts it, and reports. `nth` counts
    /// the kills from 0, so several routers are killed in turn.
    async fn kill_and_restart(&mut self, nth: usize) -> FaultRecord;
    /// The storm's NATS fault: a nats-server restart, or a cluster node's kill.
    async fn restart_nats(&mut self) -> FaultRecord;
}

struct Storm {
    crm: Arc<SandboxCrm>,
    phase: Arc<Mutex<&'static str>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Storm {
    fn start(crm: Arc<SandboxCrm>) -> Storm {
        let phase = Arc::new(Mutex::new("healthy"));
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(storm::flap(crm.clone(), phase.clone(), rx));
        Storm {
            crm,
            phase,
            stop,
            task,
        }
    }

    async fn calm(self) -> Arc<SandboxCrm> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.crm
    }
}

/// Sends the leads through `vendor` while the CRM flaps and the faults strike; returns the
/// outcomes, the fault records and the send time.
async fn storm_run(
    opts: &DrillOptions,
    leads: &Arc<Vec<LeadSpec>>,
    vendor: Arc<Vendor>,
    crm: Arc<SandboxCrm>,
    target: &mut impl Target,
    ui: &Ui,
    label: &str,
) -> (
    Vec<vendor::LeadOutcome>,
    Vec<FaultRecord>,
    f64,
    Arc<SandboxCrm>,
) {
    ui.stage(label, leads.len() as u64);
    let storm = Storm::start(crm);
    let started = Instant::now();
    let counters = vendor.counters.clone();
    let sender = tokio::spawn(vendor.run(leads.clone(), opts.rate));
    let ticker = ui.bar.clone().map(|bar| {
        let counters = counters.clone();
        let phase = storm.phase.clone();
        tokio::spawn(async move {
            loop {
                let c = counters.snapshot();
                let p = phase.lock().map(|p| *p).unwrap_or("?");
                bar.set_position(counters.leads_done.load(Relaxed));
                bar.set_message(format!(
                    "| sent {} | 2xx {} | retries {} | gave up {} | CRM: {p}",
                    counters.scheduled.load(Relaxed),
                    c.accepted_answers,
                    c.retries,
                    c.gave_up
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let window = Duration::from_secs_f64(leads.len() as f64 / opts.rate);
    let mut faults = Vec::new();
    if !opts.no_process_faults {
        let mut kills = 0;
        let plan = storm::fault_plan(window);
        let planned = plan.len();
        for (at, kind) in plan {
            tokio::time::sleep_until((started + at).into()).await;
            if sender.is_finished() {
                // Only when earlier recoveries ran past the send window: say so, or a short
                // list of faults would look like the whole plan.
                ui.event(&format!(
                    "{} of {planned} planned faults not run: the vendor was done first (a lower --rate or more --leads gives a longer send window)",
                    planned - faults.len()
                ));
                break;
            }
            let fault_started = started.elapsed();
            let mut rec = match kind {
                FaultKind::KillRouter => {
                    kills += 1;
                    target.kill_and_restart(kills - 1).await
                }
                FaultKind::RestartNats | FaultKind::KillNatsNode => target.restart_nats().await,
            };
            // When it struck: the planned time, or later when the previous fault's recovery ran
            // past it (several routers take a while to share the partitions out again).
            let late = fault_started.saturating_sub(at) > Duration::from_secs(1);
            rec.at_s = if late { fault_started } else { at }.as_secs_f64();
            let what = rec.what();
            match (&rec.skipped, rec.recovered, fleet::fault_line(&rec)) {
                (Some(why), _, _) => ui.event(&format!("{what}: skipped ({why})")),
                (None, _, Some(line)) => ui.event(&line),
                (None, true, None) => ui.event(&format!(
                    "{what} at {:.1} s: intake back after {} ms",
                    rec.at_s, rec.unavailable_ms
                )),
                (None, false, None) => ui.event(&format!(
                    "{what} at {:.1} s: NOT back after {} ms",
                    rec.at_s, rec.unavailable_ms
                )),
            }
            let stop = !rec.recovered;
            faults.push(rec);
            if stop {
                break;
            }
        }
    }
    // A vendor task that died leaves every lead unsent: counted as lost, never passed over.
    let outcomes = sender.await.unwrap_or_else(|_| {
        let unsent = vendor::LeadOutcome {
            answer: vendor::Answer::GaveUp,
            first_sent: SystemTime::now(),
            attempts: 0,
        };
        vec![unsent; leads.len()]
    });
    let send_seconds = started.elapsed().as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
    }
    let crm = storm.calm().await;
    ui.event(&format!(
        "{label}: vendor done in {send_seconds:.1} s; CRM healthy; draining"
    ));
    (outcomes, faults, send_seconds, crm)
}

// ---------------------------------------------------------------------------------------------
// leadrouter.

/// The design under test: one router or several, and their NATS.
struct Leadrouter {
    /// In start order; the kills go round them.
    routers: Vec<router::RouterProcess>,
    nats: Nats,
    /// One router on its embedded nats-server or `--nats-url`: faulted and reported exactly as
    /// before `--routers` existed. Otherwise [`fleet`] performs the faults.
    single: bool,
    /// The vendor's balancer, told when a router goes down and comes back.
    balancer: Arc<Balancer>,
    counters: Arc<Counters>,
    /// `handlers.partitions` of every router.
    partitions: u16,
    /// For the routers' `/metrics` (partitions owned).
    http: reqwest::Client,
    /// The drill's own JetStream client for the routers' membership records (several routers
    /// only; see [`fleet`]).
    js: Option<async_nats::jetstream::Context>,
}

impl Target for Leadrouter {
    async fn kill_and_restart(&mut self, nth: usize) -> FaultRecord {
        if self.single {
            self.kill_single().await
        } else {
            self.kill_router(nth % self.routers.len().max(1)).await
        }
    }

    async fn restart_nats(&mut self) -> FaultRecord {
        if self.single {
            self.restart_embedded_nats().await
        } else {
            self.fleet_nats_fault().await
        }
    }
}

impl Leadrouter {
    fn external_nats(&self) -> bool {
        matches!(self.nats, Nats::External(_))
    }

    /// The one router: kill -9, restart 100 ms later, and check its embedded nats-server left
    /// with it.
    async fn kill_single(&mut self) -> FaultRecord {
        let external_nats = self.external_nats();
        let Some(proc) = self.routers.first_mut() else {
            return FaultRecord::new(FaultKind::KillRouter);
        };
        let old_nats = proc.nats_pid();
        let t0 = Instant::now();
        proc.kill9();
        tokio::time::sleep(RESTART_DELAY).await;
        let ready = match proc.spawn() {
            Ok(()) => proc.wait_ready(RECOVERY_LIMIT).await.is_ok(),
            Err(_) => false,
        };
        let unavailable_ms = t0.elapsed().as_millis() as u64;
        // The old nats-server went down with its parent (PR_SET_PDEATHSIG) or was stopped as
        // stale by the new router; either way it must be gone now.
        let orphan = match (old_nats, proc.nats_pid()) {
            _ if external_nats => false,
            (Some(old), new) if new != Some(old) => !router::wait_gone(old, RECOVERY_LIMIT).await,
            (Some(old), Some(_)) => !crate::queue::embedded::process_alive(old),
            _ => false,
        };
        FaultRecord {
            unavailable_ms,
            recovered: ready && !orphan,
            nats_orphan_left: (!external_nats).then_some(orphan),
            ..FaultRecord::new(FaultKind::KillRouter)
        }
    }

    /// SIGKILL of the one router's embedded nats-server; its own supervisor must restart it.
    async fn restart_embedded_nats(&mut self) -> FaultRecord {
        let mut rec = FaultRecord::new(FaultKind::RestartNats);
        if self.external_nats() {
            rec.skipped = Some("external NATS (--nats-url) is not the drill's to restart".into());
            rec.recovered = true;
            return rec;
        }
        let Some(proc) = self.routers.first_mut() else {
            return rec;
        };
        let Some(old) = proc.nats_pid() else {
            rec.skipped = Some("no embedded nats-server pid file".into());
            rec.recovered = true;
            return rec;
        };
        let t0 = Instant::now();
        router::signal(old, crate::devtools::harness::Signal::KILL);
        // Back means: a new nats-server wrote its pid file and the router is ready on it.
        let mut back = false;
        while t0.elapsed() < RECOVERY_LIMIT {
            let new = proc.nats_pid();
            if new.is_some_and(|p| p != old && crate::queue::embedded::process_alive(p)) {
                back = proc.wait_ready(RECOVERY_LIMIT).await.is_ok();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rec.unavailable_ms = t0.elapsed().as_millis() as u64;
        rec.recovered = back;
        rec
    }
}

/// How long a stopped router may take for its graceful shutdown before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(20);

fn router_config(
    work: &Path,
    ports: (u16, u16, u16),
    crm_url: &str,
    tmpl: &Path,
    schemas: &Path,
    nats_url: Option<&str>,
    run_id: &str,
) -> RouterConfig {
    let (intake, admin, nats) = ports;
    let loopback = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut cfg = RouterConfig::new()
        .header("Written by `leadrouter drill`: the router under test.")
        .data_dir(work.join("data"))
        .embedded_nats(nats, tmpl)
        .publish_timeout(Duration::from_secs(2))
        .intake_listen(loopback(intake))
        .admin_listen(loopback(admin))
        .admin_token_env("LEADROUTER_DRILL_ADMIN_TOKEN")
        // The storm's CRM outages recur for the whole run: twenty attempts with backoff capped
        // at 4 s outlast any one of them, so no good lead needs a replay. A killed handler's
        // lead comes back after ack_wait.
        .handlers(HandlersSection {
            pool_size: Some(32),
            max_deliver: Some(20),
            ack_wait: Some(Duration::from_secs(10)),
            backoff_base: Some(Duration::from_millis(250)),
            backoff_cap: Some(Duration::from_secs(4)),
            schemas_dir: Some(schemas.to_path_buf()),
            group_key_env: Some("LEADROUTER_DRILL_GROUP_KEY".into()),
            ..HandlersSection::default()
        })
        // A key of this run's own: on a shared NATS, earlier runs' key-check records keep
        // their ids.
        .dlq_key(run_id, "LEADROUTER_DRILL_DLQ_KEY")
        .sink(http_sink(
            "crm",
            format!("{crm_url}/leads"),
            Some(Duration::from_secs(2)),
        ))
        .sender(
            SenderSpec::standard_webhooks(SENDER, "LEADROUTER_DRILL_SECRET")
                .rate(100_000, 100_000)
                .fields(&[
                    "email",
                    "first_name",
                    "last_name",
                    "phone",
                    "company",
                    "utm_source",
                    "utm_campaign",
                ]),
        );
    if let Some(url) = nats_url {
        cfg = cfg.nats_url(url);
    }
    cfg
}

/// The group key of drill routers when the operator sets none: a drill is a test, its leads
/// are synthetic.
const DRILL_GROUP_KEY: &str = "leadrouter-drill-group-key-not-a-secret";

/// One router's files: the work dir itself for a single router (as before), `router-{i}/` in
/// it for several.
fn router_dir(work: &Path, single: bool, i: usize) -> PathBuf {
    if single {
        work.to_path_buf()
    } else {
        work.join(format!("router-{i}"))
    }
}

async fn run_leadrouter(
    opts: &DrillOptions,
    leads: Arc<Vec<LeadSpec>>,
    work: &Path,
    run_id: &str,
    ui: &Ui,
) -> Result<RunReport, DrillError> {
    let (tmpl, schemas) = checkout_dirs()?;
    let crm = SandboxCrm::start(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| DrillError::Setup(e.to_string()))?;
    crm.set_idempotency(IdempotencyMode::Honor);
    let crm = Arc::new(crm);
    let single = opts.single_router();
    let n = opts.topology.routers.max(1);
    // Picked in one go: ports of separate calls could repeat (each call releases its own).
    let picked = free_ports(3 * n)?;
    let secret = format!("whsec_{}", base64_of(&random_hex(24)));
    let token = random_hex(24);
    // One set for every router of the run: routers on one NATS account share the DLQ key and
    // the group key, and the drill reads any router's admin API with the one token.
    let env: HashMap<String, String> = HashMap::from([
        ("LEADROUTER_DRILL_SECRET".to_string(), secret.clone()),
        ("LEADROUTER_DRILL_ADMIN_TOKEN".to_string(), token),
        ("LEADROUTER_DRILL_DLQ_KEY".to_string(), random_hex(32)),
        // Every drill against one NATS must hash leads alike (the account keeps one group key
        // on record): the operator's LEADROUTER_GROUP_KEY when set, else the drills' own.
        (
            "LEADROUTER_DRILL_GROUP_KEY".to_string(),
            std::env::var("LEADROUTER_GROUP_KEY").unwrap_or_else(|_| DRILL_GROUP_KEY.into()),
        ),
    ]);
    let nats = fleet::start_nats(opts, work, ui).await?;
    let nats_url = nats.url();
    let exe = std::env::current_exe().map_err(|e| DrillError::Setup(e.to_string()))?;
    let mut routers = Vec::with_capacity(n);
    let mut cfgs = Vec::with_capacity(n);
    for (i, ports) in picked.chunks_exact(3).enumerate() {
        let dir = router_dir(work, single, i);
        std::fs::create_dir_all(&dir).map_err(|e| DrillError::io(&dir, e))?;
        let mut rc = router_config(
            &dir,
            (ports[0], ports[1], ports[2]),
            &crm.url(),
            &tmpl,
            &schemas,
            nats_url.as_deref(),
            run_id,
        );
        if !single {
            fleet::configure(&mut rc, &nats);
        }
        let config_path = dir.join("leadrouter.toml");
        let text = rc.write(&config_path)?;
        let cfg = Config::from_toml(&text, &config_path, &env)
            .map_err(|e| DrillError::Setup(format!("the drill's router config: {e}")))?;
        routers.push(
            router::RouterProcess::new(exe.clone(), config_path, cfg.intake.listen)
                .envs(env.clone())
                .log(dir.join("router.log"))
                .data_dir(dir.join("data")),
        );
        cfgs.push(cfg);
    }
    let Some(cfg) = cfgs.first() else {
        return Err(DrillError::Setup("no router to run".into()));
    };
    let sender = cfg
        .sender(SENDER)
        .ok_or_else(|| DrillError::Setup("the drill's sender is missing".into()))?;
    let verifier = Verifier::new(
        sender.scheme,
        &sender.signature,
        vec![secret],
        sender.tolerance,
    )
    .map_err(|e| DrillError::Setup(format!("signing: {e}")))?;
    // On a shared NATS the DLQ holds earlier runs too: this run's leads were received after
    // this instant. The admin API's `since` (the server's clock, a minute early for skew) only
    // narrows the listing; `drain` filters by `received_at`.
    let since = SystemTime::now();
    // One after the other: the first creates the streams and buckets the others find.
    for (i, proc) in routers.iter_mut().enumerate() {
        proc.spawn()?;
        let waited = proc.wait_ready(Duration::from_secs(120)).await?;
        let name = if single {
            "leadrouter".to_string()
        } else {
            format!("router {i}")
        };
        ui.event(&format!(
            "{name} up in {} ms (pid {}, log {})",
            waited.as_millis(),
            proc.pid().unwrap_or(0),
            proc.log_path().display()
        ));
    }
    let urls = cfgs
        .iter()
        .map(|c| format!("http://{}/v1/intake/{SENDER}", c.intake.listen))
        .collect();
    let vendor = Arc::new(
        Vendor::new(urls, verifier, opts.vendor.clone())
            .map_err(|e| DrillError::Setup(format!("vendor HTTP client: {e}")))?,
    );
    let counters = vendor.counters.clone();
    let js = match single {
        true => None,
        false => nats.drill_client().await,
    };
    let mut target = Leadrouter {
        routers,
        js,
        nats,
        single,
        balancer: vendor.balancer(),
        counters: counters.clone(),
        partitions: cfg.handlers.partitions,
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| DrillError::Setup(format!("HTTP client: {e}")))?,
    };
    if !single {
        // The storm starts on a settled fleet, so the first kill's take-over is its own.
        let t0 = Instant::now();
        let settled = target.wait_settled(t0).await.ok_or_else(|| {
            DrillError::Setup(format!(
                "the {n} routers did not share out the {} partitions within {RECOVERY_LIMIT:?}; their logs: {}",
                target.partitions,
                work.display()
            ))
        })?;
        let who = match n {
            1 => "the router owns".to_string(),
            _ => format!("{n} routers own"),
        };
        ui.event(&format!(
            "{who} the {} partitions, each some, after {settled} ms",
            target.partitions
        ));
    }
    let (outcomes, faults, send_seconds, crm) =
        storm_run(opts, &leads, vendor, crm, &mut target, ui, "leadrouter").await;

    let admins = cfgs
        .iter()
        .map(|c| AdminClient::from_config(c, &env))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DrillError::Dlq(e.to_string()))?;
    let drain_started = Instant::now();
    let dlq = drain(
        &admins,
        &leads,
        &outcomes,
        &crm,
        since,
        opts.drain_timeout,
        ui,
    )
    .await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    futures::future::join_all(target.routers.iter_mut().map(|r| r.stop(STOP_GRACE))).await;
    let topology = (!single).then(|| target.topology(cfg.streams.replicas));
    target.nats.keep_logs(work);
    let dlq = dlq?;
    Ok(report::reconcile(Evidence {
        design: "leadrouter",
        leads: &leads,
        outcomes: &outcomes,
        vendor: counters.snapshot(),
        crm: crm.keys().into_iter().map(|k| (k.key.clone(), k)).collect(),
        dlq: Some(dlq),
        faults,
        send_seconds,
        drain_seconds,
        topology,
    }))
}

fn base64_of(hex_text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_text).unwrap_or_default())
}

#[derive(serde::Deserialize)]
struct Listing {
    entries: Vec<DlqEntry>,
}

/// Waits until every accepted lead is at the CRM or in the DLQ and the router's queue is empty
/// (nothing pending, nothing unacknowledged, so no late write can follow), or `limit` passes.
/// Returns the DLQ by lead key. With several routers any one's admin API answers for all (the
/// DLQ and the consumers live in NATS): the first that answers is asked.
async fn drain(
    admins: &[AdminClient],
    leads: &[LeadSpec],
    outcomes: &[vendor::LeadOutcome],
    crm: &SandboxCrm,
    since: SystemTime,
    limit: Duration,
    ui: &Ui,
) -> Result<HashMap<String, String>, DrillError> {
    let start = Instant::now();
    let accepted: Vec<&LeadSpec> = leads
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.answer == vendor::Answer::Accepted)
        .map(|(l, _)| l)
        .collect();
    ui.stage("draining", accepted.len() as u64);
    let mut dlq = HashMap::new();
    let since_t = chrono::DateTime::<chrono::Utc>::from(since);
    let coarse_since = crate::sinks::rfc3339(since - Duration::from_secs(60));
    loop {
        let at_crm: std::collections::HashSet<String> = crm
            .keys()
            .into_iter()
            .filter(|k| k.created > 0)
            .map(|k| k.key)
            .collect();
        let listing: Option<Listing> =
            admin_get(admins, "/api/dlq", &[("since", coarse_since.clone())]).await;
        if let Some(l) = listing {
            // Entries of earlier runs on a shared NATS were received before this run began
            // (received_at is stamped by our router, on this machine's clock).
            dlq = l
                .entries
                .into_iter()
                .filter(|e| {
                    let received = e
                        .received_at
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                    received.is_none_or(|t| t >= since_t)
                })
                .map(|e| (e.key, e.reason))
                .collect();
        }
        let placed = accepted
            .iter()
            .filter(|l| at_crm.contains(&l.key) || dlq.contains_key(&l.key))
            .count();
        if let Some(b) = &ui.bar {
            b.set_position(placed as u64);
            b.set_message(format!(
                "| at the CRM {} | in the DLQ {}",
                at_crm.len(),
                dlq.len()
            ));
        }
        if placed == accepted.len() && queue_empty(admins).await {
            return Ok(dlq);
        }
        if start.elapsed() > limit {
            ui.event(&format!(
                "drain timeout after {limit:?}: {} accepted leads are neither at the CRM nor in the DLQ",
                accepted.len() - placed
            ));
            return Ok(dlq);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first answer of `admins`, tried in order.
async fn admin_get<T: serde::de::DeserializeOwned>(
    admins: &[AdminClient],
    path: &str,
    query: &[(&str, String)],
) -> Option<T> {
    for a in admins {
        match a.get(path, query).await {
            Ok(v) => return Some(v),
            Err(e) => tracing::debug!(path, error = %e, "admin API did not answer"),
        }
    }
    None
}

async fn queue_empty(admins: &[AdminClient]) -> bool {
    let stats: Option<Value> = admin_get(admins, "/api/stats", &[("window", "1m".into())]).await;
    match stats {
        Some(v) => {
            v["queue"]["pending"].as_u64() == Some(0)
                && v["queue"]["ack_pending"].as_u64() == Some(0)
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The seed's direct pass-through.

struct Direct {
    server: baseline::DirectPassThrough,
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

async fn run_direct(
    opts: &DrillOptions,
    leads: Arc<Vec<LeadSpec>>,
    ui: &Ui,
) -> Result<RunReport, DrillError> {
    let crm = SandboxCrm::start(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| DrillError::Setup(e.to_string()))?;
    // The seed sent no idempotency key: every POST is a new record.
    crm.set_idempotency(IdempotencyMode::Ignore);
    let crm = Arc::new(crm);
    let server = baseline::DirectPassThrough::start(&crm.url()).await?;
    // The pass-through does not check signatures; the vendor signs anyway, as it always does.
    let verifier = Verifier::new(
        crate::intake::schemes::SchemeName::StandardWebhooks,
        &Default::default(),
        vec![format!("whsec_{}", base64_of(&random_hex(24)))],
        Duration::from_secs(300),
    )
    .map_err(|e| DrillError::Setup(format!("signing: {e}")))?;
    let vendor = Arc::new(
        Vendor::new(vec![server.url()], verifier, opts.vendor.clone())
            .map_err(|e| DrillError::Setup(format!("vendor HTTP client: {e}")))?,
    );
    let counters = vendor.counters.clone();
    let mut target = Direct { server };
    let (outcomes, faults, send_seconds, crm) =
        storm_run(opts, &leads, vendor, crm, &mut target, ui, "direct").await;
    // Synchronous: when the vendor is done, so is the design (nothing is queued).
    target.server.kill();
    Ok(report::reconcile(Evidence {
        design: "direct",
        leads: &leads,
        outcomes: &outcomes,
        vendor: counters.snapshot(),
        crm: crm.keys().into_iter().map(|k| (k.key.clone(), k)).collect(),
        dlq: None,
        faults,
        send_seconds,
        drain_seconds: 0.0,
        topology: None,
    }))
}

/// The human report: the table, the faults, and the verdict.
pub fn render_summary(r: &DrillReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nleadrouter drill: {} leads at {}/s, {:.0}% submitted more than once, {:.1}% malformed, seed {}{}\n",
        r.leads,
        r.rate,
        r.duplicate_share * 100.0,
        r.malformed_share * 100.0,
        r.seed,
        if r.process_faults { "" } else { ", no process faults" }
    );
    out.push_str(&r.table);
    for run in &r.runs {
        let _ = writeln!(out, "\n{}:", run.design);
        let _ = writeln!(
            out,
            "  leads: {} good, {} schema-invalid, {} not JSON; vendor answers: {} accepted, {} refused, {} gave up",
            run.valid, run.schema_invalid, run.unparseable, run.accepted, run.refused, run.vendor_gave_up
        );
        let _ = writeln!(
            out,
            "  CRM: {} records, {} duplicates, {} repeat writes absorbed by its idempotency key; intake -> CRM p50 {:.0} ms, p99 {:.0} ms",
            run.crm_records,
            run.duplicates,
            run.repeat_writes_absorbed,
            run.intake_to_crm_ms.p50,
            run.intake_to_crm_ms.p99
        );
        let _ = writeln!(
            out,
            "  vendor sent for {:.1} s; queue drained {:.1} s after",
            run.send_seconds, run.drain_seconds
        );
        if let Some(t) = &run.topology {
            let _ = writeln!(
                out,
                "  design: {}; vendor requests per router: {:?}",
                t.label(),
                t.vendor_requests_per_router
            );
        }
        for f in &run.faults {
            let what = match (f.kind, f.router) {
                (FaultKind::KillRouter, None) => "kill -9".to_string(),
                (FaultKind::RestartNats, _) => "nats-server restart".to_string(),
                _ => f.what(),
            };
            let more = fleet::details(f);
            match &f.skipped {
                Some(why) => {
                    let _ = writeln!(out, "  {what} at {:.1} s: skipped ({why})", f.at_s);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {what} at {:.1} s: {} after {} ms{}{more}",
                        f.at_s,
                        if f.recovered { "back" } else { "NOT back" },
                        f.unavailable_ms,
                        match f.nats_orphan_left {
                            Some(true) => ", its nats-server was left behind",
                            Some(false) => ", no nats-server left behind",
                            None => "",
                        }
                    );
                }
            }
        }
        if !run.unexpected_examples.is_empty() {
            let _ = writeln!(
                out,
                "  belong to no lead of this run, e.g.: {}",
                run.unexpected_examples.join(", ")
            );
        }
        if !run.lost_examples.is_empty() {
            let _ = writeln!(out, "  lost, e.g.: {}", run.lost_examples.join(", "));
        }
        if run.design == "leadrouter" && run.lost_shared_inbox > 0 {
            let _ = writeln!(
                out,
                "  of the lost, {} share their email with a later lead that is at the CRM (a shared inbox): the ordering fence took them for older events of that lead and skipped them at the CRM, which is configured as an upsert sink (`ordering = \"latest-wins\"`)",
                run.lost_shared_inbox
            );
        }
        for n in &run.intervention_notes {
            let _ = writeln!(out, "  operator would have to: {n}");
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        if r.passed {
            "PASS: every accepted lead is at the CRM exactly once or in the DLQ with a reason; nothing lost, nothing duplicated, no manual step."
        } else {
            "FAIL: see above; the router's log and data are kept in the work dir."
        }
    );
    if !r.passed {
        let _ = writeln!(out, "work dir: {}", r.work_dir);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(topology: TopologyArgs, nats_url: Option<&str>) -> DrillOptions {
        DrillOptions {
            leads: 10,
            rate: 10.0,
            duplicate_share: 0.3,
            malformed_share: 0.0,
            shared_inbox_share: 0.0,
            seed: 1,
            baseline: None,
            no_process_faults: false,
            drain_timeout: Duration::from_secs(1),
            work_dir: None,
            keep: false,
            json: true,
            vendor: RetryPolicy::default(),
            nats_url: nats_url.map(str::to_string),
            topology,
        }
    }

    fn refusal(routers: usize, nats_cluster: Option<usize>, url: Option<&str>) -> String {
        let t = TopologyArgs {
            routers,
            nats_cluster,
        };
        match opts(t, url).validate() {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        }
    }

    #[test]
    fn topologies_are_checked_with_the_reason() {
        assert!(refusal(0, None, None).contains("--routers must be at least 1"));
        assert!(refusal(17, None, None).contains("--routers must be at most 16"));
        for n in [1, 2, 4, 9] {
            let why = refusal(2, Some(n), None);
            assert!(
                why.contains("--nats-cluster must be an odd number"),
                "{n}: {why}"
            );
        }
        let why = refusal(3, Some(3), Some("nats://127.0.0.1:4222"));
        assert!(why.contains("cannot be combined with --nats-url"), "{why}");
        assert_eq!(refusal(3, Some(3), None), "");
        assert_eq!(refusal(1, Some(5), None), "");
        assert_eq!(refusal(4, None, Some("nats://127.0.0.1:4222")), "");
    }

    #[test]
    fn only_one_router_without_a_cluster_is_the_single_router_drill() {
        let single = |routers, nats_cluster| {
            opts(
                TopologyArgs {
                    routers,
                    nats_cluster,
                },
                None,
            )
            .single_router()
        };
        assert!(single(1, None));
        assert!(!single(2, None));
        assert!(!single(1, Some(3)));
        assert_eq!(
            TopologyArgs::default(),
            TopologyArgs {
                routers: 1,
                nats_cluster: None
            }
        );
    }
}
