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
//! `--crm hubspot` and `--crm salesforce` point the router at the sandbox's HubSpot or
//! Salesforce personality, at Starter-tier limits, through the batching sinks, and balance the
//! books against the personality's own records ([`crm`]).
//!
//! `--edge` runs an edge site ([`edge`]): the vendor posts to an edge router whose nats-server
//! is a leaf node of the hub's, through a proxy of the drill's that cuts the link twice; the
//! edge and the hub are each killed once, and the report adds each lead's edge -> hub delay.
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

mod crm;
mod edge;
mod error;
mod leadrouter;
mod options;
mod secrets;
mod storm_run;
mod summary;
mod ui;

pub use error::DrillError;
pub use options::{Baseline, CrmKind, DrillArgs, DrillOptions, TopologyArgs};
pub use report::DrillReport;
pub use summary::render_summary;
pub use vendor::{lead_key, SENDER};

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use report::RunReport;
use ui::Ui;

fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("d{ms:x}")
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
        runs.push(baseline::run_direct(opts, leads.clone(), &ui).await?);
        ui.event("storm 2 of 2: leadrouter (after)");
    }
    let result = if opts.topology.edge {
        edge::run_edge(opts, leads, &work, &id, &ui).await
    } else {
        leadrouter::run_leadrouter(opts, leads, &work, &id, &ui).await
    };
    ui.finish();
    runs.push(result?);
    let passed = runs.last().is_some_and(RunReport::clean);
    let table = report::render_table(&runs.iter().collect::<Vec<_>>());
    if passed && opts.work_dir.is_none() && !opts.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(DrillReport {
        crm: opts.crm,
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
