//! One storm against one design: the vendor sends while the CRM flaps ([`storm::flap`]) and
//! the process faults of [`storm::fault_plan`] strike the design's [`Target`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::fleet;
use super::options::DrillOptions;
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
pub(super) async fn storm_run(
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
