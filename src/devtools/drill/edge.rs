//! `--edge`: the storm against an edge site. The vendor posts to an edge router (`serve` with
//! `[edge]`: intake only, its embedded nats-server a leaf node of the hub's with the JetStream
//! domain `edge-drill`); a hub router (`[hub] edges = ["drill"]`, its embedded nats-server with
//! the leaf listener) sources the edge's `LEADS_EDGE` into `LEADS` and writes to the CRM.
//!
//! The edge's leaf remote points at a [`TcpProxy`] of the drill's in front of the hub's leaf
//! port, so the drill can cut the link: every connection dropped and reconnects refused for
//! [`LINK_CUT`]. The faults ([`storm::edge_fault_plan`]) are a cut, kill -9 of the edge, a
//! second cut and kill -9 of the hub. Each is timed until the hub reaches the edge's JetStream
//! across the link again and until every lead that waited at the edge then is stored at the hub.
//!
//! After the drain the drill reads the hub's sourced copies (on the legacy `leads.in.*`
//! subjects, stamped when the hub stored them) and gives each lead's edge -> hub delay: that
//! store time minus `Leadrouter-Received-At`, the edge's 202.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use super::crm;
use super::error::DrillError;
use super::leadrouter::{
    checkout_dirs, drain, drill_env, router_config, vendor_signer, Drained, STOP_GRACE,
};
use super::options::DrillOptions;
use super::report::{self, EdgeReport, Evidence, Percentiles, RunReport};
use super::router::{self, RouterProcess};
use super::storm::{self, FaultKind, FaultRecord, Site, LINK_CUT, RECOVERY_LIMIT, RESTART_DELAY};
use super::storm_run::{storm_run, Target};
use super::ui::Ui;
use super::vendor::{self, LeadSpec, Vendor, SENDER};
use crate::cli::admin_client::AdminClient;
use crate::config::{edge_domain, Config};
use crate::devtools::harness::{free_ports, EdgeSection, ProxyStats, RouterConfig, TcpProxy};
use crate::devtools::sandbox_crm::SandboxCrm;
use crate::queue::message::header;
use crate::queue::{STREAM_EDGE, STREAM_LEADS, SUBJECT_IN_PREFIX};

/// The edge's `[edge] name`.
pub(super) const EDGE_NAME: &str = "drill";
/// One JetStream look-up of the drill's: short, so a look-up across a link that is down fails
/// fast and is asked again (its timeout bounds how late the link is seen back).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Between looks at the link and at the edge's stream.
const POLL: Duration = Duration::from_millis(100);
/// How long the leads that waited at the edge may take to reach the hub once the link is back.
/// The hub's sourcing resumes on its own, not at once: 40-57 s after a cut in the drill's own
/// runs. Measured beside the storm, so a long wait delays no fault.
const BACKLOG_LIMIT: Duration = Duration::from_secs(120);
/// Between samples of the leads waiting at the edge.
const WAITING_POLL: Duration = Duration::from_millis(200);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A NATS client of the drill's on one of the site's embedded servers: it reconnects quickly
/// after a kill, so the link's return is seen when it happens, not at the next backoff step.
async fn nats_client(port: u16, what: &str) -> Result<async_nats::Client, DrillError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(PROBE_TIMEOUT)
        .reconnect_delay_callback(|_| POLL)
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .map_err(|e| DrillError::start(format!("the drill's NATS client on the {what}"), e))
}

/// `LEADS_EDGE`'s state, or `None` when it cannot be read within [`PROBE_TIMEOUT`] (across the
/// link: the link is down).
async fn edge_state(js: &jetstream::Context) -> Option<stream::State> {
    let s = tokio::time::timeout(PROBE_TIMEOUT, js.get_stream(STREAM_EDGE))
        .await
        .ok()?
        .ok()?;
    Some(s.cached_info().state.clone())
}

/// Until every lead stored at the edge up to sequence `last` has left it (work-queue
/// retention: the hub stored it); the milliseconds since `since`, `None` past
/// [`BACKLOG_LIMIT`].
async fn wait_backlog(local: jetstream::Context, last: u64, since: Instant) -> Option<u64> {
    loop {
        if let Some(s) = edge_state(&local).await {
            if s.messages == 0 || s.first_sequence > last {
                return Some(ms(since.elapsed()));
            }
        }
        if since.elapsed() > BACKLOG_LIMIT {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The site under test: the two routers, the proxy between them, and the drill's two views of
/// the edge's stream.
pub(super) struct EdgeSite {
    edge: RouterProcess,
    hub: RouterProcess,
    proxy: TcpProxy,
    /// The edge's stream as the hub sees it, across the leaf link (`$JS.edge-drill.API` from
    /// the hub's server): it answers exactly when the link is up.
    across: jetstream::Context,
    /// The edge's stream on the edge's own server: readable while the link is cut.
    local: jetstream::Context,
    /// The most leads seen waiting at the edge, by [`watch_waiting`].
    max_waiting: Arc<AtomicU64>,
    /// Faults struck so far (the index of the next one's record).
    struck: usize,
    /// Each fault's backlog measurement, by the index of its record: measured beside the
    /// storm, since the hub's sourcing can take tens of seconds to resume after the link is
    /// back, and the next fault must not wait for it.
    backlogs: Vec<(usize, tokio::task::JoinHandle<Option<u64>>)>,
}

impl Target for EdgeSite {
    /// The first kill is the edge's, the second the hub's (see [`storm::edge_fault_plan`]).
    async fn kill_and_restart(&mut self, nth: usize) -> FaultRecord {
        let site = if nth % 2 == 0 { Site::Edge } else { Site::Hub };
        let rec = self.kill(site).await;
        self.struck += 1;
        rec
    }

    async fn restart_nats(&mut self) -> FaultRecord {
        self.struck += 1;
        FaultRecord {
            recovered: true,
            skipped: Some(
                "an edge site's kills take each router's embedded nats-server with it".into(),
            ),
            ..FaultRecord::new(FaultKind::RestartNats)
        }
    }

    fn fault_plan(&self, window: Duration) -> Vec<(Duration, FaultKind)> {
        storm::edge_fault_plan(window)
    }

    async fn cut_link(&mut self) -> FaultRecord {
        let rec = self.cut().await;
        self.struck += 1;
        rec
    }

    /// The backlog measurements: a fault recovered when, besides its own return, every lead
    /// that waited at the edge as the link came back reached the hub.
    async fn settle(&mut self, faults: &mut [FaultRecord]) {
        for (i, task) in self.backlogs.drain(..) {
            let cleared = task.await.ok().flatten();
            if let Some(rec) = faults.get_mut(i) {
                rec.backlog_cleared_ms = cleared;
                rec.recovered &= cleared.is_some();
            }
        }
    }

    fn fault_line(&self, rec: &FaultRecord) -> Option<String> {
        fault_line(rec)
    }
}

impl EdgeSite {
    /// Until the hub reaches the edge's JetStream across the link; the milliseconds since
    /// `since`, `None` past the recovery limit.
    async fn wait_link(&self, since: Instant) -> Option<u64> {
        let start = Instant::now();
        loop {
            if edge_state(&self.across).await.is_some() {
                return Some(ms(since.elapsed()));
            }
            if start.elapsed() > RECOVERY_LIMIT {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The edge's stream on its own server, asked until it answers (a restarted edge takes a
    /// moment).
    async fn local_state(&self) -> Option<stream::State> {
        let start = Instant::now();
        loop {
            if let Some(s) = edge_state(&self.local).await {
                return Some(s);
            }
            if start.elapsed() > RECOVERY_LIMIT {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The link's return after an outage that ended at `reopened`, into `rec`, and the
    /// backlog's in the background (see [`EdgeSite::backlogs`]); with no edge stream to read,
    /// no backlog figure, and the fault does not count as recovered.
    async fn measure_return(
        &mut self,
        rec: &mut FaultRecord,
        reopened: Instant,
        last: Option<u64>,
    ) {
        if let Some(last) = last {
            let task = tokio::spawn(wait_backlog(self.local.clone(), last, reopened));
            self.backlogs.push((self.struck, task));
        }
        rec.link_back_ms = self.wait_link(reopened).await;
    }

    /// Cuts the link for [`LINK_CUT`], then lets it through and times its return.
    async fn cut(&mut self) -> FaultRecord {
        let mut rec = FaultRecord::new(FaultKind::CutLink);
        let t0 = Instant::now();
        self.proxy.cut();
        // The cut's length is the fault itself, not a wait for something to happen.
        tokio::time::sleep(LINK_CUT).await;
        // What waits at the edge as the link comes back is what the hub must take.
        let state = edge_state(&self.local).await;
        rec.waiting_at_reopen = state.as_ref().map(|s| s.messages);
        self.proxy.restore();
        let reopened = Instant::now();
        rec.cut_ms = Some(ms(reopened - t0));
        self.measure_return(&mut rec, reopened, state.map(|s| s.last_sequence))
            .await;
        // The link's downtime: the cut, then until the hub reached the edge again.
        rec.unavailable_ms = rec.cut_ms.unwrap_or_default()
            + rec.link_back_ms.unwrap_or_else(|| ms(reopened.elapsed()));
        // The backlog's return is added by `settle`.
        rec.recovered = rec.link_back_ms.is_some();
        rec
    }

    /// kill -9 of one router, restarted 100 ms later as a supervisor would; timed until its
    /// `/readyz`, then until the link and the edge's backlog are back.
    async fn kill(&mut self, site: Site) -> FaultRecord {
        let mut rec = FaultRecord {
            site: Some(site),
            ..FaultRecord::new(FaultKind::KillRouter)
        };
        let proc = match site {
            Site::Edge => &mut self.edge,
            Site::Hub => &mut self.hub,
        };
        let old_nats = proc.nats_pid();
        let t0 = Instant::now();
        proc.kill9();
        tokio::time::sleep(RESTART_DELAY).await;
        let ready = match proc.spawn() {
            Ok(()) => match proc.wait_ready(RECOVERY_LIMIT).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(site = site.label(), error = %e, "killed router did not come back");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(site = site.label(), error = %e, "killed router could not be restarted");
                false
            }
        };
        rec.unavailable_ms = ms(t0.elapsed());
        // Its nats-server went down with it (PR_SET_PDEATHSIG) or was stopped as stale by the
        // new router: either way the old one must be gone.
        let orphan = match (old_nats, proc.nats_pid()) {
            (Some(old), new) if new != Some(old) => !router::wait_gone(old, RECOVERY_LIMIT).await,
            (Some(old), Some(_)) => !crate::queue::embedded::process_alive(old),
            _ => false,
        };
        rec.nats_orphan_left = Some(orphan);
        if ready {
            let reopened = Instant::now();
            let last = self.local_state().await.map(|s| s.last_sequence);
            self.measure_return(&mut rec, reopened, last).await;
        }
        // The backlog's return is added by `settle`.
        rec.recovered = ready && !orphan && rec.link_back_ms.is_some();
        rec
    }
}

/// The progress line of one of `--edge`'s faults; `None` for other records.
fn fault_line(f: &FaultRecord) -> Option<String> {
    if f.kind != FaultKind::CutLink && f.site.is_none() {
        return None;
    }
    Some(format!(
        "{} at {:.1} s: {}{}",
        f.what(),
        f.at_s,
        // Back, as far as known now: the backlog's return is measured beside the storm.
        if f.recovered { "back" } else { "NOT recovered" },
        details(f)
    ))
}

/// The measurements of an edge fault, as "; ready after 900 ms; link back after ...".
pub(super) fn details(f: &FaultRecord) -> String {
    let mut parts = Vec::new();
    if f.site.is_some() {
        parts.push(format!("/readyz after {} ms", f.unavailable_ms));
    }
    if let Some(n) = f.waiting_at_reopen {
        parts.push(format!(
            "{n} leads waiting at the edge as the link reopened"
        ));
    }
    match f.link_back_ms {
        Some(t) => parts.push(format!("link back after {t} ms")),
        None if f.skipped.is_none() => parts.push("link NOT back".into()),
        None => {}
    }
    if let Some(t) = f.backlog_cleared_ms {
        parts.push(format!("the edge's backlog at the hub after {t} ms"));
    }
    if f.nats_orphan_left == Some(true) {
        parts.push("its nats-server was left behind".into());
    }
    parts.iter().map(|p| format!("; {p}")).collect()
}

/// Samples the leads waiting at the edge until aborted, keeping the most seen.
async fn watch_waiting(local: jetstream::Context, max: Arc<AtomicU64>) {
    loop {
        if let Some(s) = edge_state(&local).await {
            max.fetch_max(s.messages, Relaxed);
        }
        tokio::time::sleep(WAITING_POLL).await;
    }
}

/// Each lead's edge -> hub delays in milliseconds, by lead key (one per sourced copy), from the
/// hub's `LEADS`: the sourced copies are the messages on `leads.in.{sender}` (the hub files each
/// in its partition as a second message), stamped when the hub stored them.
async fn hub_delays(js: &jetstream::Context) -> Result<HashMap<String, Vec<f64>>, DrillError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        DrillError::Setup(format!("reading the hub's sourced leads: {what}: {e}"))
    };
    let stream = js
        .get_stream(STREAM_LEADS)
        .await
        .map_err(|e| fail("LEADS", &e))?;
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    if stream.cached_info().state.messages == 0 {
        return Ok(out);
    }
    let c = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{SUBJECT_IN_PREFIX}*"),
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| fail("a consumer", &e))?;
    let mut msgs = c.messages().await.map_err(|e| fail("messages", &e))?;
    loop {
        // None within the wait: nothing (more) on the subjects.
        let next = tokio::time::timeout(Duration::from_secs(2), msgs.next()).await;
        let Ok(Some(Ok(m))) = next else { break };
        let Ok(meta) = m.info() else { break };
        let stored = SystemTime::from(meta.published);
        let pending = meta.pending;
        let h = m.headers.as_ref();
        let key = h.and_then(|h| h.get(header::MSG_ID)).map(|v| v.to_string());
        let received = h
            .and_then(|h| h.get(header::RECEIVED_AT))
            .and_then(|v| crate::timestamp::parse(v.as_str()))
            .map(SystemTime::from);
        if let (Some(key), Some(received)) = (key, received) {
            // A clock step backwards would make it negative: counted as 0 rather than dropped,
            // so every sourced lead has its figure.
            let d = stored.duration_since(received).unwrap_or_default();
            out.entry(key).or_default().push(d.as_secs_f64() * 1000.0);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The edge's figures for the report.
fn edge_report(
    delays: &HashMap<String, Vec<f64>>,
    leads: &[LeadSpec],
    outcomes: &[vendor::LeadOutcome],
    max_waiting: u64,
    stats: ProxyStats,
) -> EdgeReport {
    let first = |v: &Vec<f64>| v.iter().copied().reduce(f64::min).unwrap_or_default();
    EdgeReport {
        name: EDGE_NAME.into(),
        leads_at_hub: delays.len(),
        extra_copies: delays.values().map(|v| v.len().saturating_sub(1)).sum(),
        accepted_not_at_hub: leads
            .iter()
            .zip(outcomes)
            .filter(|(l, o)| o.answer == vendor::Answer::Accepted && !delays.contains_key(&l.key))
            .count(),
        delay_ms: Percentiles::of(delays.values().map(first).collect()),
        max_waiting,
        link_connections: stats.proxied,
        link_refused: stats.refused,
        link_cuts: stats.cuts,
    }
}

/// One router of the site: its config written and parsed, its process prepared.
fn prepare(
    exe: &Path,
    dir: &Path,
    rc: &RouterConfig,
    env: &HashMap<String, String>,
) -> Result<(RouterProcess, Config), DrillError> {
    std::fs::create_dir_all(dir).map_err(|e| DrillError::io(dir, e))?;
    let config_path = dir.join("leadrouter.toml");
    let text = rc.write(&config_path)?;
    let cfg = Config::from_toml(&text, &config_path, env).map_err(|e| {
        DrillError::Setup(format!("the drill's config {}: {e}", config_path.display()))
    })?;
    let proc = RouterProcess::new(exe, config_path, cfg.intake.listen)
        .envs(env.clone())
        .log(dir.join("router.log"))
        .data_dir(dir.join("data"));
    Ok((proc, cfg))
}

pub(super) async fn run_edge(
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
    // Picked in one go: ports of separate calls could repeat. The hub: intake, admin, NATS,
    // leaf listener; the edge: intake, admin, NATS.
    let p = free_ports(7)?;
    let (secret, mut env) = drill_env();
    crm::prepare(opts.crm, &crm, &mut env);
    let crm = Arc::new(crm);
    let exe = std::env::current_exe().map_err(|e| DrillError::start("the leadrouter binary", e))?;
    let sink = || crm::sink(opts.crm, &crm.url());

    let hub_dir = work.join("hub");
    let hub_rc = router_config(
        &hub_dir,
        (p[0], p[1], p[2]),
        sink(),
        &tmpl,
        &schemas,
        None,
        run_id,
    )
    .header("Written by `leadrouter drill --edge`: the hub router under test.")
    .hub_edges(&[EDGE_NAME])
    .leafnode_port(p[3]);
    let (hub, hub_cfg) = prepare(&exe, &hub_dir, &hub_rc, &env)?;
    let proxy = TcpProxy::start(([127, 0, 0, 1], p[3]).into()).await?;
    let edge_dir = work.join("edge");
    let mut edge_rc = router_config(
        &edge_dir,
        (p[4], p[5], p[6]),
        sink(),
        &tmpl,
        &schemas,
        None,
        run_id,
    )
    .header("Written by `leadrouter drill --edge`: the edge router under test (intake only).")
    .edge(EdgeSection::new(
        EDGE_NAME,
        format!("nats-leaf://{}", proxy.addr()),
    ));
    // An edge runs intake only: its leads are written by the hub's sinks.
    edge_rc.sinks.clear();
    let (edge, edge_cfg) = prepare(&exe, &edge_dir, &edge_rc, &env)?;
    let verifier = vendor_signer(&edge_cfg, secret)?;

    let mut site = {
        let mut hub = hub;
        let mut edge = edge;
        // The hub first: it creates LEADS with the edge's source and listens for the leaf.
        for (name, proc) in [("hub", &mut hub), ("edge", &mut edge)] {
            proc.spawn()?;
            let waited = proc.wait_ready(Duration::from_secs(120)).await?;
            ui.event(&format!(
                "{name} router up in {} ms (pid {}, log {})",
                waited.as_millis(),
                proc.pid().unwrap_or(0),
                proc.log_path().display()
            ));
        }
        let hub_client = nats_client(p[2], "hub").await?;
        let mut across = jetstream::with_domain(hub_client, edge_domain(EDGE_NAME));
        across.set_timeout(PROBE_TIMEOUT);
        let mut local = jetstream::new(nats_client(p[6], "edge").await?);
        local.set_timeout(PROBE_TIMEOUT);
        EdgeSite {
            edge,
            hub,
            proxy,
            across,
            local,
            max_waiting: Arc::new(AtomicU64::new(0)),
            struck: 0,
            backlogs: Vec::new(),
        }
    };
    // The storm starts on a live link, so the first cut breaks one.
    let t0 = Instant::now();
    let linked = site.wait_link(t0).await.ok_or_else(|| {
        DrillError::Setup(format!(
            "the hub did not reach the edge's JetStream across the leaf link within {RECOVERY_LIMIT:?}; their logs: {}",
            work.display()
        ))
    })?;
    ui.event(&format!(
        "edge -> hub leaf link up through the drill's proxy ({} -> {}) after {linked} ms",
        site.proxy.addr(),
        site.proxy.upstream()
    ));
    let watcher = tokio::spawn(watch_waiting(site.local.clone(), site.max_waiting.clone()));

    let urls = vec![format!(
        "http://{}/v1/intake/{SENDER}",
        edge_cfg.intake.listen
    )];
    let vendor = Arc::new(
        Vendor::new(urls, verifier, opts.vendor.clone())
            .map_err(|e| DrillError::Setup(format!("vendor HTTP client: {e}")))?,
    );
    let counters = vendor.counters.clone();
    let since = SystemTime::now();
    let stormed = storm_run(opts, &leads, vendor, crm, &mut site, ui, "leadrouter").await;
    let crm = stormed.crm;

    let admins = vec![AdminClient::from_config(&hub_cfg, &env).map_err(DrillError::Dlq)?];
    let drain_started = Instant::now();
    let drained = drain(
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
    watcher.abort();
    // Read before the hub stops: its nats-server goes with it.
    let hub_js = jetstream::new(site.across.client());
    let delays = hub_delays(&hub_js).await;
    let Drained { dlq, superseded } = drained?;
    futures::future::join(site.edge.stop(STOP_GRACE), site.hub.stop(STOP_GRACE)).await;
    let delays = delays?;
    let edge = edge_report(
        &delays,
        &leads,
        &stormed.outcomes,
        site.max_waiting.load(Relaxed),
        site.proxy.stats(),
    );
    ui.event(&format!(
        "edge -> hub delay over {} leads: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; at most {} leads waited at the edge",
        edge.leads_at_hub, edge.delay_ms.p50, edge.delay_ms.p95, edge.delay_ms.max, edge.max_waiting
    ));
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
        topology: None,
        crm_api,
        edge: Some(edge),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_fault_lines_name_what_came_back() {
        let cut = FaultRecord {
            at_s: 1.5,
            recovered: true,
            cut_ms: Some(8000),
            waiting_at_reopen: Some(200),
            link_back_ms: Some(1200),
            backlog_cleared_ms: Some(1900),
            ..FaultRecord::new(FaultKind::CutLink)
        };
        let line = fault_line(&cut).unwrap_or_default();
        assert!(
            line.starts_with("edge -> hub link cut for 8 s at 1.5 s: back"),
            "{line}"
        );
        assert!(line.contains("backlog at the hub after 1900 ms"), "{line}");
        assert!(line.contains("200 leads waiting"), "{line}");
        assert!(line.contains("link back after 1200 ms"), "{line}");
        let hub = FaultRecord {
            site: Some(Site::Hub),
            unavailable_ms: 900,
            link_back_ms: Some(2000),
            ..FaultRecord::new(FaultKind::KillRouter)
        };
        let line = fault_line(&hub).unwrap_or_default();
        assert!(line.starts_with("kill -9 of the hub router"), "{line}");
        assert!(line.contains("NOT recovered"), "{line}");
        assert!(line.contains("link back after 2000 ms"), "{line}");
        // Not an edge record: the standard line.
        assert_eq!(fault_line(&FaultRecord::new(FaultKind::KillRouter)), None);
    }

    #[test]
    fn the_report_counts_accepted_leads_the_hub_never_stored() {
        let leads = vendor::generate(
            &vendor::Plan {
                leads: 20,
                duplicate_share: 0.0,
                malformed_share: 0.0,
                shared_inbox_share: 0.0,
                seed: 1,
                run_id: "r".into(),
            },
            SENDER,
        );
        let outcomes: Vec<vendor::LeadOutcome> = leads
            .iter()
            .map(|_| vendor::LeadOutcome {
                answer: vendor::Answer::Accepted,
                first_sent: SystemTime::now(),
                attempts: 1,
            })
            .collect();
        let mut delays: HashMap<String, Vec<f64>> = leads
            .iter()
            .enumerate()
            .map(|(i, l)| (l.key.clone(), vec![i as f64 + 1.0]))
            .collect();
        delays.remove(&leads[0].key);
        if let Some(v) = delays.get_mut(&leads[1].key) {
            v.push(0.5);
        }
        let r = edge_report(&delays, &leads, &outcomes, 7, ProxyStats::default());
        assert_eq!(r.leads_at_hub, 19);
        assert_eq!(r.accepted_not_at_hub, 1);
        assert_eq!(r.extra_copies, 1);
        assert_eq!(r.max_waiting, 7);
        // The first copy's delay counts.
        assert!(
            r.delay_ms.p50 > 0.0 && r.delay_ms.max == 20.0,
            "{:?}",
            r.delay_ms
        );
    }
}
