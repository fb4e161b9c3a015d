//! The edge benchmark: what an edge site costs, and how fast its backlog reaches the hub.
//!
//! Three runs of `BENCH_EDGE_LEADS` signed leads (default 20,000) posted at concurrency 64,
//! each lead its own email, into the sandbox CRM through an `http` sink:
//! 1. **baseline**: one router on its embedded nats-server (intake, handlers and sink);
//! 2. **edge, link up**: the same leads posted to an edge (intake only, its embedded
//!    nats-server a leaf node of the hub's, domain `edge-bench`) while the hub takes them in;
//! 3. **edge, after an outage**: posted to an edge whose hub is not running yet; then the hub
//!    starts, and the catch-up is timed from its `/readyz` until the CRM holds every lead.
//!
//! The figures are ratios against the baseline of the same run (the machine is shared): the
//! edge's 202 rate (its store is local, so the link should cost nothing), the end-to-end rate
//! with the link up, and the catch-up rate of a backlog (the hub files each sourced lead into
//! its partition one at a time, `pipeline::repartition`, which is the step to watch).
//!
//! Run: `cargo bench --bench edge`. `BENCH_QUICK=1` is a smoke run (2,000 leads) that only
//! prints. A full run writes `benches/results/edge.md` and the block between the edge-bench
//! markers of docs/performance.md.

use std::time::{Duration, Instant};

use leadrouter::devtools::harness::probe::{load_average, machine};
use leadrouter::devtools::harness::report::{knob_count, quick, reproduce};
use leadrouter::devtools::harness::{free_port, EdgeSection};
use leadrouter::devtools::sandbox_crm::SandboxCrm;

mod support;
use support::*;

const BEGIN: &str = "<!-- edge-bench:begin (written by `cargo bench --bench edge`) -->";
const END: &str = "<!-- edge-bench:end -->";
const CONCURRENCY: usize = 64;

struct Figures {
    accepted: usize,
    accept_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    at_crm: AtCrm,
}

/// When the CRM got the run's leads, in seconds since the run's start mark.
struct AtCrm {
    first_s: f64,
    all_s: f64,
    missing: usize,
}

impl Figures {
    /// Leads per second from the first CRM write to the last: the flow once it runs.
    fn flow_per_s(&self) -> f64 {
        let span = (self.at_crm.all_s - self.at_crm.first_s).max(1e-3);
        self.accepted.saturating_sub(1) as f64 / span
    }
}

/// Waits until the CRM holds `n` records more than `before`.
async fn until_at_crm(crm: &SandboxCrm, before: usize, n: usize, from: Instant) -> AtCrm {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first_s = None;
    loop {
        let have = crm.keys().len().saturating_sub(before);
        if have > 0 && first_s.is_none() {
            first_s = Some(from.elapsed().as_secs_f64());
        }
        if have >= n || Instant::now() > deadline {
            let all_s = from.elapsed().as_secs_f64();
            return AtCrm {
                first_s: first_s.unwrap_or(all_s),
                all_s,
                missing: n.saturating_sub(have),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn post(router: &Router, tag: &str, n: usize) -> Run {
    let reqs = prepare(router, tag, n);
    closed_loop(router, &load_client(), reqs, CONCURRENCY).await
}

/// A router with handlers and the CRM sink whose embedded server takes the edge's leaf link.
async fn start_hub(crm: &SandboxCrm, leaf_port: u16) -> Router {
    let role = Role::Pipeline { crm_url: crm.url() };
    Router::start(&role, |rc| {
        rc.leafnode_port(leaf_port).hub_edges(&["bench"])
    })
    .await
}

async fn start_edge(leaf_port: u16) -> Router {
    Router::start(&Role::Edge, |rc| {
        rc.edge(EdgeSection::new(
            "bench",
            format!("nats-leaf://127.0.0.1:{leaf_port}"),
        ))
    })
    .await
}

fn figures(run: &Run, at_crm: AtCrm) -> Figures {
    Figures {
        accepted: run.ok,
        accept_per_s: run.ok_per_sec(),
        p50_ms: run.p(0.50),
        p99_ms: run.p(0.99),
        at_crm,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let quick = quick();
    let n = knob_count("BENCH_EDGE_LEADS", 2_000, 20_000);
    let load_before = load_average();
    let crm = SandboxCrm::start("127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("sandbox CRM starts");

    // 1. Baseline: one router.
    let router = Router::start(&Role::Pipeline { crm_url: crm.url() }, |rc| rc).await;
    let started = Instant::now();
    let run = post(&router, "base", n).await;
    let base = figures(&run, until_at_crm(&crm, 0, run.ok, started).await);
    eprintln!("baseline: router stopped: {}", router.stop().await);
    eprintln!(
        "baseline: {} accepted at {:.0}/s, all at the CRM after {:.1} s",
        base.accepted, base.accept_per_s, base.at_crm.all_s
    );

    // 2. Edge and hub, link up and flowing (a first lead through before the clock starts:
    //    a deployed edge's link and source are up long before its traffic).
    crm.reset();
    let leaf = free_port().expect("port");
    let hub_router = start_hub(&crm, leaf).await;
    let edge = start_edge(leaf).await;
    let warm = Instant::now();
    let run = post(&edge, "warm", 1).await;
    let warmed = until_at_crm(&crm, 0, run.ok, warm).await;
    eprintln!(
        "edge, link up: the source flowed {:.1} s after the edge started",
        warmed.all_s
    );
    let started = Instant::now();
    let run = post(&edge, "edge", n).await;
    let up = figures(&run, until_at_crm(&crm, 1, run.ok, started).await);
    eprintln!("edge: stopped: {}", edge.stop().await);
    eprintln!("hub: stopped: {}", hub_router.stop().await);
    eprintln!(
        "edge, link up: {} accepted at {:.0}/s, all at the CRM after {:.1} s",
        up.accepted, up.accept_per_s, up.at_crm.all_s
    );

    // 3. The backlog of an outage: the edge stores everything, then the hub appears.
    crm.reset();
    let leaf = free_port().expect("port");
    let edge = start_edge(leaf).await;
    let run = post(&edge, "outage", n).await;
    let hub_router = start_hub(&crm, leaf).await;
    let ready = Instant::now();
    let after = figures(&run, until_at_crm(&crm, 0, run.ok, ready).await);
    eprintln!("edge: stopped: {}", edge.stop().await);
    eprintln!("hub: stopped: {}", hub_router.stop().await);
    eprintln!(
        "edge, after an outage: {} stored at {:.0}/s; first at the CRM {:.1} s after the hub was ready, all after {:.1} s",
        after.accepted, after.accept_per_s, after.at_crm.first_s, after.at_crm.all_s
    );
    crm.stop().await;

    let mut md = String::new();
    md.push_str(&format!(
        "Edge benchmark, {} ({}; load average before: {load_before}). {n} signed leads per run at concurrency {CONCURRENCY}, each its own email, into the sandbox CRM through an `http` sink; every router on its embedded nats-server 2.15.1, the edge's a leaf node of the hub's on loopback.\n\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine(),
    ));
    md.push_str("| run | accepted | 202s per s | 202 p50 / p99 | first / all at the CRM | leads per s at the CRM (first to last) | missing |\n|---|---|---|---|---|---|---|\n");
    let row = |name: &str, f: &Figures, after: &str| {
        format!(
            "| {name} | {} | {:.0} | {:.2} / {:.2} ms | {:.1} / {:.1} s{after} | {:.0} | {} |\n",
            f.accepted,
            f.accept_per_s,
            f.p50_ms,
            f.p99_ms,
            f.at_crm.first_s,
            f.at_crm.all_s,
            f.flow_per_s(),
            f.at_crm.missing
        )
    };
    md.push_str(&row("one router (baseline)", &base, ""));
    md.push_str(&row("edge -> hub, link up", &up, ""));
    md.push_str(&row(
        "edge backlog, hub starts after",
        &after,
        " after the hub's ready",
    ));
    md.push_str(&format!(
        "\nAgainst the baseline of this run: the edge answers 202s at {:.2}x the rate of one router (it runs no handlers); with the link up, leads flow into the CRM at {:.2}x the baseline's rate, and an outage backlog at {:.2}x once its source runs. The first lead of the backlog reached the CRM {:.1} s after the hub was ready, and with the link up the hub's source flowed {:.1} s after the edge started: nats-server's source retry (a 10 s health check with backoff), not leadrouter.\n\n",
        up.accept_per_s / base.accept_per_s.max(1e-9),
        up.flow_per_s() / base.flow_per_s().max(1e-9),
        after.flow_per_s() / base.flow_per_s().max(1e-9),
        after.at_crm.first_s,
        warmed.all_s,
    ));
    md.push_str(&format!(
        "Reproduce: `{}`\n",
        reproduce("edge", &[("BENCH_EDGE_LEADS", n.to_string())])
    ));
    println!("{md}");
    if quick {
        return;
    }
    let results = root().join("benches/results/edge.md");
    std::fs::write(&results, format!("# Edge benchmark\n\n{md}")).expect("write results");
    write_doc_block(BEGIN, END, &md);
    eprintln!("wrote {} and docs/performance.md", results.display());
}
