//! The design under test: `leadrouter serve` as child processes on a config the drill writes,
//! stormed, then drained until every accepted lead is at the CRM (the one `--crm` picked) or in
//! the DLQ.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::crm::{self, Dead};
use super::error::DrillError;
use super::fleet::{self, Leadrouter, Nats};
use super::options::{CrmKind, DrillOptions};
use super::report::{self, Evidence, RunReport};
use super::router;
use super::secrets::{base64_of, random_hex};
use super::storm::{FaultKind, FaultRecord, RECOVERY_LIMIT, RESTART_DELAY};
use super::storm_run::{storm_run, Target};
use super::ui::Ui;
use super::vendor::{self, LeadSpec, Vendor, SENDER};
use crate::cli::admin_client::AdminClient;
use crate::config::Config;
use crate::devtools::harness::{free_ports, HandlersSection, RouterConfig, SenderSpec};
use crate::devtools::sandbox_crm::SandboxCrm;
use crate::dlq::store::DlqEntry;
use crate::intake::schemes::Verifier;
use crate::sinks::SinkConfig;

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
pub(super) const STOP_GRACE: Duration = Duration::from_secs(20);

pub(super) fn router_config(
    work: &Path,
    ports: (u16, u16, u16),
    crm_sink: SinkConfig,
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
        .sink(crm_sink)
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

/// The assets the router's config points at, from the checkout the drill runs in.
pub(super) fn checkout_dirs() -> Result<(PathBuf, PathBuf), DrillError> {
    let cwd = std::env::current_dir().map_err(|e| DrillError::start("the working directory", e))?;
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

/// The vendor's signing secret, and the routers' environment: one set for every router of the
/// run (routers on one NATS account share the DLQ key and the group key, and the drill reads
/// any router's admin API with the one token).
pub(super) fn drill_env() -> (String, HashMap<String, String>) {
    let secret = format!("whsec_{}", base64_of(&random_hex(24)));
    let env = HashMap::from([
        ("LEADROUTER_DRILL_SECRET".to_string(), secret.clone()),
        ("LEADROUTER_DRILL_ADMIN_TOKEN".to_string(), random_hex(24)),
        ("LEADROUTER_DRILL_DLQ_KEY".to_string(), random_hex(32)),
        // Every drill against one NATS must hash leads alike (the account keeps one group key
        // on record): the operator's LEADROUTER_GROUP_KEY when set, else the drills' own.
        (
            "LEADROUTER_DRILL_GROUP_KEY".to_string(),
            std::env::var("LEADROUTER_GROUP_KEY").unwrap_or_else(|_| DRILL_GROUP_KEY.into()),
        ),
    ]);
    (secret, env)
}

/// The vendor's signer for the drill's sender as `cfg` configures it.
pub(super) fn vendor_signer(cfg: &Config, secret: String) -> Result<Verifier, DrillError> {
    let sender = cfg
        .sender(SENDER)
        .ok_or_else(|| DrillError::Setup("the drill's sender is missing".into()))?;
    Verifier::new(
        sender.scheme,
        &sender.signature,
        vec![secret],
        sender.tolerance,
    )
    .map_err(|e| DrillError::Setup(format!("signing: {e}")))
}

pub(super) async fn run_leadrouter(
    opts: &DrillOptions,
    leads: Arc<Vec<LeadSpec>>,
    work: &Path,
    run_id: &str,
    ui: &Ui,
) -> Result<RunReport, DrillError> {
    let (tmpl, schemas) = checkout_dirs()?;
    let crm = SandboxCrm::start(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| DrillError::start("sandbox CRM", e))?;
    let single = opts.single_router();
    let n = opts.topology.routers.max(1);
    // Picked in one go: ports of separate calls could repeat (each call releases its own).
    let picked = free_ports(3 * n)?;
    let (secret, mut env) = drill_env();
    crm::prepare(opts.crm, &crm, &mut env);
    let crm = Arc::new(crm);
    let nats = fleet::start_nats(opts, work, ui).await?;
    let nats_url = nats.url();
    let exe = std::env::current_exe().map_err(|e| DrillError::start("the leadrouter binary", e))?;
    let mut routers = Vec::with_capacity(n);
    let mut cfgs = Vec::with_capacity(n);
    for (i, ports) in picked.chunks_exact(3).enumerate() {
        let dir = router_dir(work, single, i);
        std::fs::create_dir_all(&dir).map_err(|e| DrillError::io(&dir, e))?;
        let mut rc = router_config(
            &dir,
            (ports[0], ports[1], ports[2]),
            crm::sink(opts.crm, &crm.url()),
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
    let verifier = vendor_signer(cfg, secret)?;
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
    let stormed = storm_run(opts, &leads, vendor, crm, &mut target, ui, "leadrouter").await;
    let crm = stormed.crm;

    let admins = cfgs
        .iter()
        .map(|c| AdminClient::from_config(c, &env))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DrillError::Dlq)?;
    let drain_started = Instant::now();
    let dlq = drain(
        &admins,
        &leads,
        &stormed.outcomes,
        opts.crm,
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
    let Drained { dlq, superseded } = dlq?;
    let books = crm::books(opts.crm, &crm);
    let crm_api = crm::api_report(opts.crm, &crm, &leads, &books, &dlq, stormed.token_expiry);
    Ok(report::reconcile(Evidence {
        design: "leadrouter",
        crm_kind: opts.crm,
        leads: &leads,
        outcomes: &stormed.outcomes,
        vendor: counters.snapshot(),
        crm: books,
        dlq: Some(dlq.into_iter().map(|(k, d)| (k, d.reason)).collect()),
        superseded,
        faults: stormed.faults,
        send_seconds: stormed.send_seconds,
        drain_seconds,
        topology,
        crm_api,
        edge: None,
    }))
}

#[derive(serde::Deserialize)]
struct Listing {
    entries: Vec<DlqEntry>,
}

/// Where the drain found the accepted leads that are not at the CRM.
pub(super) struct Drained {
    /// The DLQ, by lead key.
    pub(super) dlq: HashMap<String, Dead>,
    /// Leads the router's lookup reports `superseded` (see [`Evidence::superseded`]).
    pub(super) superseded: HashSet<String>,
}

/// Waits until every accepted lead is placed and the router's queue is empty (nothing
/// pending, nothing unacknowledged, so no late write can follow), or `limit` passes. A lead is
/// placed at the CRM (as [`crm::books`] reads it), in the DLQ, or, at a latest-wins CRM, as
/// superseded: another lead of its email is at the CRM and the router's lead lookup says the
/// fence skipped this one. With several routers any one's admin API answers for all (the DLQ,
/// the consumers and the lead records live in NATS): the first that answers is asked.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drain(
    admins: &[AdminClient],
    leads: &[LeadSpec],
    outcomes: &[vendor::LeadOutcome],
    kind: CrmKind,
    crm: &SandboxCrm,
    since: SystemTime,
    limit: Duration,
    ui: &Ui,
) -> Result<Drained, DrillError> {
    let start = Instant::now();
    let accepted: Vec<&LeadSpec> = leads
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.answer == vendor::Answer::Accepted)
        .map(|(l, _)| l)
        .collect();
    ui.stage("draining", accepted.len() as u64);
    let mut dlq = HashMap::new();
    let mut superseded = HashSet::new();
    let since_t = chrono::DateTime::<chrono::Utc>::from(since);
    let coarse_since = crate::timestamp::format_system(since - Duration::from_secs(60));
    loop {
        let at_crm: std::collections::HashSet<String> = crm::books(kind, crm)
            .into_iter()
            .filter(|(_, k)| k.written > 0)
            .map(|(key, _)| key)
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
                .map(|e| {
                    let dead = Dead {
                        reason: e.reason,
                        last_error: e.last_error,
                    };
                    (e.key, dead)
                })
                .collect();
        }
        // A CRM with one record per email (latest-wins) skips the older lead of a shared
        // inbox (older in LEADS) once a newer one is written: the router records that, so ask
        // it about each missing lead whose email is at the CRM through another lead.
        if kind.latest_wins() {
            let emails_at_crm: HashSet<&str> = accepted
                .iter()
                .filter(|l| at_crm.contains(&l.key) && !l.email.is_empty())
                .map(|l| l.email.as_str())
                .collect();
            for l in &accepted {
                let ask = !at_crm.contains(&l.key)
                    && !dlq.contains_key(&l.key)
                    && !superseded.contains(&l.key)
                    && emails_at_crm.contains(l.email.as_str());
                if ask && lookup_status(admins, &l.key).await.as_deref() == Some("superseded") {
                    superseded.insert(l.key.clone());
                }
            }
        }
        let placed = accepted
            .iter()
            .filter(|l| {
                at_crm.contains(&l.key) || dlq.contains_key(&l.key) || superseded.contains(&l.key)
            })
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
            return Ok(Drained { dlq, superseded });
        }
        if start.elapsed() > limit {
            ui.event(&format!(
                "drain timeout after {limit:?}: {} accepted leads are neither at the CRM nor in the DLQ",
                accepted.len() - placed
            ));
            return Ok(Drained { dlq, superseded });
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

/// The status the router's lead lookup gives the lead with this key, if any router answers.
async fn lookup_status(admins: &[AdminClient], key: &str) -> Option<String> {
    let found: Option<Value> = admin_get(admins, &format!("/api/leads/{key}"), &[]).await;
    found?["leads"][0]["status"].as_str().map(str::to_string)
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
