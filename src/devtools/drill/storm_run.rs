//! One storm against one design: the vendor sends while the CRM flaps ([`storm::flap`]) and
//! the process faults of [`storm::fault_plan`] strike the design's [`Target`]. Against the
//! Salesforce personality the storm also expires every OAuth token once
//! ([`storm::token_expiry_at`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::crm::{self, ExpiryMark};
use super::fleet;
use super::options::{CrmKind, DrillOptions};
use super::storm::{self, FaultKind, FaultRecord};
use super::ui::Ui;
use super::vendor::{self, LeadSpec, Vendor};
use crate::devtools::sandbox_crm::SandboxCrm;

/// What the storm does to the design under test.
pub(super) trait Target {
    /// Kills the front door (SIGKILL or its equivalent), restarts it, and reports. `nth` counts
    /// the kills from 0, so several routers are killed in turn.
    async fn kill_and_restart(&mut self, nth: usize) -> FaultRecord;
    /// The storm's NATS fault: a nats-server restart, or a cluster node's kill.
    async fn restart_nats(&mut self) -> FaultRecord;
    /// The faults this design gets and when: the one-router and fleet plan unless the design
    /// has a plan of its own (an edge site's link cuts).
    fn fault_plan(&self, window: Duration) -> Vec<(Duration, FaultKind)> {
        storm::fault_plan(window)
    }
    /// Cuts the link between two sites and lets it through again; only an edge site has one.
    async fn cut_link(&mut self) -> FaultRecord {
        FaultRecord {
            recovered: true,
            skipped: Some("this design has no link between sites to cut".into()),
            ..FaultRecord::new(FaultKind::CutLink)
        }
    }
    /// Completes the records of faults whose recovery this design measures in the background
    /// (an edge's backlog reaching the hub), once the storm is over: `faults` in the order the
    /// faults struck.
    async fn settle(&mut self, _faults: &mut [FaultRecord]) {}
    /// The progress line of one of this design's own faults; `None` for the standard line.
    fn fault_line(&self, _rec: &FaultRecord) -> Option<String> {
        None
    }
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

/// What a storm left: the vendor's outcome per lead, the fault records, how long the vendor
/// sent, the CRM (healthy again), and the token expiry when there was one.
pub(super) struct Stormed {
    pub outcomes: Vec<vendor::LeadOutcome>,
    pub faults: Vec<FaultRecord>,
    pub send_seconds: f64,
    pub crm: Arc<SandboxCrm>,
    pub token_expiry: Option<ExpiryMark>,
}

/// Sends the leads through `vendor` while the CRM flaps and the faults strike.
pub(super) async fn storm_run(
    opts: &DrillOptions,
    leads: &Arc<Vec<LeadSpec>>,
    vendor: Arc<Vendor>,
    crm: Arc<SandboxCrm>,
    target: &mut impl Target,
    ui: &Ui,
    label: &str,
) -> Stormed {
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
    // Salesforce write calls that had passed auth when the last fault was over (`u64::MAX`
    // while one strikes): the token expiry waits for a call past that, so it kills a token a
    // live router holds and uses. (A router restarted just before fetches its token on its
    // first call, which may still be on its way through the storm's slow phase.)
    let calls_after_fault = AtomicU64::new(0);
    let sf_calls = |crm: &SandboxCrm| crm.salesforce_stats().collection_calls;
    let note_fault = |striking: bool| {
        if opts.crm == CrmKind::Salesforce {
            let n = if striking {
                u64::MAX
            } else {
                sf_calls(&storm.crm)
            };
            calls_after_fault.store(n, Relaxed);
        }
    };
    let faults = async {
        let mut faults = Vec::new();
        if opts.no_process_faults {
            return faults;
        }
        let mut kills = 0;
        let plan = target.fault_plan(window);
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
            note_fault(true);
            let mut rec = match kind {
                FaultKind::KillRouter => {
                    kills += 1;
                    target.kill_and_restart(kills - 1).await
                }
                FaultKind::RestartNats | FaultKind::KillNatsNode => target.restart_nats().await,
                FaultKind::CutLink => target.cut_link().await,
            };
            note_fault(false);
            // When it struck: the planned time, or later when the previous fault's recovery ran
            // past it (several routers take a while to share the partitions out again).
            let late = fault_started.saturating_sub(at) > Duration::from_secs(1);
            rec.at_s = if late { fault_started } else { at }.as_secs_f64();
            let what = rec.what();
            let line = fleet::fault_line(&rec).or_else(|| target.fault_line(&rec));
            match (&rec.skipped, rec.recovered, line) {
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
        faults
    };
    // Beside the faults, not between them: waiting for the router's call must not delay a kill.
    let token_expiry = async {
        if opts.crm != CrmKind::Salesforce {
            return None;
        }
        tokio::time::sleep_until((started + storm::token_expiry_at(window)).into()).await;
        let waited = Instant::now();
        while sf_calls(&storm.crm) <= calls_after_fault.load(Relaxed) {
            if sender.is_finished() || waited.elapsed() > storm::RECOVERY_LIMIT {
                ui.event("Salesforce tokens not expired: no write call got past auth to show a live token before the vendor was done");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at_s = started.elapsed().as_secs_f64();
        let mark = crm::expire_tokens(&storm.crm, at_s);
        ui.event(&format!(
            "Salesforce tokens expired at {at_s:.1} s: the next call meets a 401 and must go again with a new token"
        ));
        Some(mark)
    };
    let (mut faults, token_expiry) = tokio::join!(faults, token_expiry);
    target.settle(&mut faults).await;
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
    Stormed {
        outcomes,
        faults,
        send_seconds,
        crm,
        token_expiry,
    }
}
