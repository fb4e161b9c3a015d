//! The durability benchmark: what fsync before the 202 costs, and what group commit gives back.
//!
//! Three edge-only routers (`handlers.enabled = false`), each the real `leadrouter serve`
//! process with its own embedded nats-server, run side by side in one run:
//! - **lazy**: `streams.durability = "lazy"` (nats-server fsyncs every 2 minutes);
//! - **fsync, single**: `durability = "fsync"` (`sync_interval: always`) and
//!   `group_commit.enabled = false`: one publish, one fsync per lead;
//! - **fsync, group commit**: `durability = "fsync"` with the default group commit.
//!
//! Phases, each setup in turn at each step so all three see the same machine state:
//! 1. closed loop at concurrency 1, 16, 64 and 256 (`BENCH_REQUESTS` signed requests each);
//! 2. open loop at 2,000 req/s for `BENCH_SECONDS`, latency from each request's scheduled send
//!    time;
//! 3. fsyncs per 100 accepted leads: `strace -f -c` attached to each nats-server for 1,000
//!    requests at concurrency 64 (a separate, untimed pass, because strace slows what it
//!    traces);
//! 4. end to end, in `lazy` and in `fsync` with group commit: a router with a handler pool of
//!    32 and an `http` sink at the sandbox CRM answering at once; `BENCH_E2E_LEADS` leads posted
//!    at concurrency 64, timed until the last is at the CRM; then a traced pass counting the
//!    fsyncs per lead of the whole path (intake, KV claim, completion records, lead index, ack).
//!
//! Targets (issue 14): group commit >= 3x single-publish fsync throughput at concurrency 64,
//! group commit >= 60% of lazy throughput at concurrency 64, open-loop p99 <= 10 ms at 2,000
//! req/s under group commit.
//!
//! Run: `cargo bench --bench durability`. Knobs: `BENCH_REQUESTS` (default 4000),
//! `BENCH_SECONDS` (default 5), `BENCH_E2E_LEADS` (default 5000), `BENCH_QUICK=1` (a smoke run
//! that only prints). A full run writes `benches/results/durability.md` and the block between
//! the durability-bench markers of docs/performance.md.

use std::time::{Duration, Instant};

use leadrouter::devtools::harness::probe::{load_average, machine};
use leadrouter::devtools::harness::report::{
    cores_cells, f0, f2, knob_count, knob_number, met, quick, reproduce,
};
use leadrouter::devtools::harness::{GroupCommitSection, RouterConfig};
use leadrouter::devtools::sandbox_crm::{Faults, SandboxCrm};

mod support;
use support::*;

const BEGIN: &str = "<!-- durability-bench:begin (written by `cargo bench --bench durability`) -->";
const END: &str = "<!-- durability-bench:end -->";
const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
const OPEN_RATE: f64 = 2_000.0;
const TRACED_REQUESTS: usize = 1_000;
const TRACED_E2E_LEADS: usize = 500;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Lazy,
    FsyncSingle,
    FsyncGroup,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Lazy => "lazy",
            Setup::FsyncSingle => "fsync, single publishes",
            Setup::FsyncGroup => "fsync, group commit",
        }
    }

    fn tune(self, rc: RouterConfig) -> RouterConfig {
        match self {
            Setup::Lazy => rc.durability("lazy"),
            Setup::FsyncSingle => rc.durability("fsync").group_commit(GroupCommitSection {
                enabled: Some(false),
                ..Default::default()
            }),
            Setup::FsyncGroup => rc.durability("fsync").group_commit(group_commit_knob()),
        }
    }
}

/// `BENCH_GROUP_COMMIT=max_in_flight=1,min_batch=16,max_batch=500,linger_us=2000`: group commit
/// settings other than the defaults, for tuning runs (unset: the defaults, as shipped).
fn group_commit_knob() -> GroupCommitSection {
    let mut g = GroupCommitSection::default();
    let Ok(text) = std::env::var("BENCH_GROUP_COMMIT") else {
        return g;
    };
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .expect("BENCH_GROUP_COMMIT: key=value pairs");
        let n: usize = v.trim().parse().expect("BENCH_GROUP_COMMIT: numbers");
        match k.trim() {
            "max_in_flight" => g.max_in_flight = Some(n),
            "min_batch" => g.min_batch = Some(n),
            "max_batch" => g.max_batch = Some(n),
            "linger_us" => g.linger = Some(Duration::from_micros(n as u64)),
            other => panic!("BENCH_GROUP_COMMIT: unknown key {other}"),
        }
    }
    g
}

/// `BENCH_SETUPS=lazy,single,group` (default: all three).
fn setups() -> Vec<Setup> {
    let text = std::env::var("BENCH_SETUPS").unwrap_or_else(|_| "lazy,single,group".into());
    text.split(',')
        .map(|s| match s.trim() {
            "lazy" => Setup::Lazy,
            "single" => Setup::FsyncSingle,
            "group" => Setup::FsyncGroup,
            other => panic!("BENCH_SETUPS: unknown setup {other}"),
        })
        .collect()
}

struct Knobs {
    quick: bool,
    requests: usize,
    seconds: f64,
    e2e_leads: usize,
}

/// One setup's figures.
struct Row {
    setup: Setup,
    closed: Vec<(usize, Run)>,
    open: Option<Run>,
    fsyncs_per_100: Option<f64>,
    /// Leads per atomic batch in the traced pass (group commit only), from /metrics.
    batch_mean: Option<f64>,
}

struct E2eRow {
    setup: Setup,
    accepted: usize,
    delivered: usize,
    secs: f64,
    fsyncs_per_lead: Option<f64>,
}

/// `leadrouter_publish_batch_leads` sum and count from the router's /metrics.
async fn batch_stats(router: &Router, http: &reqwest::Client) -> (f64, f64) {
    let text = http
        .get(format!("{}/metrics", router.proc.intake_url()))
        .send()
        .await
        .ok()
        .and_then(|r| r.error_for_status().ok());
    let Some(r) = text else { return (0.0, 0.0) };
    let body = r.text().await.unwrap_or_default();
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("leadrouter_publish_batch_leads_sum"),
        value("leadrouter_publish_batch_leads_count"),
    )
}

async fn edge_rows(knobs: &Knobs) -> Vec<Row> {
    let http = load_client();
    let mut routers = Vec::new();
    for setup in setups() {
        let r = Router::start(&Role::Edge, |rc| setup.tune(rc)).await;
        // Warm-up: connections at the highest concurrency, the stream's first blocks.
        let warm = closed_loop(
            &r,
            &http,
            prepare(&r, "warm", if knobs.quick { 200 } else { 1_000 }),
            64,
        )
        .await;
        assert!(warm.ok > 0, "{}: the warm-up got no 202", setup.name());
        routers.push((setup, r));
    }
    let mut rows: Vec<Row> = routers
        .iter()
        .map(|&(setup, _)| Row {
            setup,
            closed: Vec::new(),
            open: None,
            fsyncs_per_100: None,
            batch_mean: None,
        })
        .collect();
    for c in CONCURRENCY {
        for (i, (setup, r)) in routers.iter().enumerate() {
            let run = closed_loop(r, &http, prepare(r, &format!("c{c}"), knobs.requests), c).await;
            eprintln!(
                "{} c={c}: {} req/s, p99 {} ms, cores router | nats | bench | other: {}",
                setup.name(),
                f0(run.ok_per_sec()),
                f2(run.p(0.99)),
                cores_cells(&run.cores)
            );
            rows[i].closed.push((c, run));
        }
    }
    let n_open = (OPEN_RATE * knobs.seconds).round() as usize;
    for (i, (setup, r)) in routers.iter().enumerate() {
        let probe = r.cpu_probe();
        let (samples, secs) = open_loop(r, &http, prepare(r, "open", n_open), OPEN_RATE).await;
        let cores = probe.stop();
        let lat_us = sorted_us(samples.iter().filter_map(|s| s.latency));
        let run = Run {
            requests: samples.len(),
            ok: lat_us.len(),
            secs,
            lat_us,
            cores,
        };
        eprintln!(
            "{} open loop {OPEN_RATE} req/s: p99 {} ms",
            setup.name(),
            f2(run.p(0.99))
        );
        rows[i].open = Some(run);
    }
    for (i, (setup, r)) in routers.iter().enumerate() {
        let reqs = prepare(r, "traced", TRACED_REQUESTS);
        let before = batch_stats(r, &http).await;
        let Some(count) = SyscallCount::attach(r.nats_pid) else {
            eprintln!(
                "strace cannot attach to nats-server {}: no fsync counts",
                r.nats_pid
            );
            break;
        };
        let run = closed_loop(r, &http, reqs, 64).await;
        let fsyncs = count.stop();
        let after = batch_stats(r, &http).await;
        rows[i].fsyncs_per_100 = fsyncs.map(|f| f as f64 * 100.0 / run.ok.max(1) as f64);
        if after.1 > before.1 {
            rows[i].batch_mean = Some((after.0 - before.0) / (after.1 - before.1));
        }
        eprintln!(
            "{}: {:?} fsyncs for {} accepted",
            setup.name(),
            fsyncs,
            run.ok
        );
    }
    for (setup, r) in routers {
        eprintln!("{} router stopped: {}", setup.name(), r.stop().await);
    }
    rows
}

/// Posts `leads` at concurrency 64 and waits until each accepted one is a record at the CRM;
/// returns (accepted, delivered, seconds from the first post to the last record).
async fn e2e_pass(
    router: &Router,
    crm: &SandboxCrm,
    http: &reqwest::Client,
    tag: &str,
    leads: usize,
) -> (usize, usize, f64) {
    let base = crm.stats().records as usize;
    let reqs = prepare(router, tag, leads);
    let start = Instant::now();
    let run = closed_loop(router, http, reqs, 64).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let delivered = || (crm.stats().records as usize).saturating_sub(base);
    while delivered() < run.ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (run.ok, delivered(), start.elapsed().as_secs_f64())
}

async fn e2e_rows(knobs: &Knobs) -> Vec<E2eRow> {
    let http = load_client();
    let mut out = Vec::new();
    for setup in [Setup::Lazy, Setup::FsyncGroup] {
        let crm = SandboxCrm::start("127.0.0.1:0".parse().expect("loopback address"))
            .await
            .expect("sandbox CRM starts");
        crm.set_faults(Faults::healthy());
        let router =
            Router::start(&Role::Pipeline { crm_url: crm.url() }, |rc| setup.tune(rc)).await;
        let _ = e2e_pass(
            &router,
            &crm,
            &http,
            "e2ewarm",
            if knobs.quick { 100 } else { 500 },
        )
        .await;
        let (accepted, delivered, secs) =
            e2e_pass(&router, &crm, &http, "e2e", knobs.e2e_leads).await;
        eprintln!(
            "e2e {}: {delivered}/{accepted} in {secs:.2} s",
            setup.name()
        );
        let fsyncs_per_lead = match SyscallCount::attach(router.nats_pid) {
            Some(count) => {
                let (ok, _, _) =
                    e2e_pass(&router, &crm, &http, "e2etraced", TRACED_E2E_LEADS).await;
                count.stop().map(|f| f as f64 / ok.max(1) as f64)
            }
            None => None,
        };
        eprintln!(
            "e2e {} router stopped: {}",
            setup.name(),
            router.stop().await
        );
        crm.stop().await;
        out.push(E2eRow {
            setup,
            accepted,
            delivered,
            secs,
            fsyncs_per_lead,
        });
    }
    out
}

fn report(knobs: &Knobs, load_before: &str, rows: &[Row], e2e: &[E2eRow]) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "Durability benchmark, {} ({}; load average before: {load_before}). Edge-only routers, each with its own embedded nats-server 2.15.1, side by side; {} signed requests per closed-loop cell.\n\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine(),
        knobs.requests
    ));
    md.push_str("| setup | c=1 req/s (p99 ms) | c=16 | c=64 | c=256 | open loop 2,000 req/s: p50 / p99 ms | fsyncs per 100 leads (c=64) |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        let cells: Vec<String> = r
            .closed
            .iter()
            .map(|(_, run)| format!("{} ({})", f0(run.ok_per_sec()), f2(run.p(0.99))))
            .collect();
        let open = r
            .open
            .as_ref()
            .map(|o| format!("{} / {}", f2(o.p(0.50)), f2(o.p(0.99))))
            .unwrap_or_else(|| "n/a".into());
        let fs = match (r.fsyncs_per_100, r.batch_mean) {
            (Some(f), Some(b)) => format!("{} ({} leads per batch)", f0(f), f0(b)),
            (Some(f), None) => f0(f),
            _ => "n/a".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {open} | {fs} |\n",
            r.setup.name(),
            cells.join(" | ")
        ));
    }
    let at = |setup: Setup, c: usize| {
        rows.iter()
            .find(|r| r.setup == setup)
            .and_then(|r| r.closed.iter().find(|(cc, _)| *cc == c))
            .map(|(_, run)| run.ok_per_sec())
            .unwrap_or(f64::NAN)
    };
    let vs_single = at(Setup::FsyncGroup, 64) / at(Setup::FsyncSingle, 64);
    let vs_lazy = at(Setup::FsyncGroup, 64) / at(Setup::Lazy, 64);
    let p99 = rows
        .iter()
        .find(|r| r.setup == Setup::FsyncGroup)
        .and_then(|r| r.open.as_ref())
        .map(|o| o.p(0.99))
        .unwrap_or(f64::NAN);
    md.push_str(&format!(
        "\nTargets at concurrency 64: group commit / single-publish fsync = **{}x** (target >= 3x: {}); group commit / lazy = **{:.0}%** (target >= 60%: {}); open-loop p99 under group commit {} ms (target <= 10 ms: {}).\n",
        f2(vs_single),
        met(vs_single >= 3.0),
        vs_lazy * 100.0,
        met(vs_lazy >= 0.60),
        f2(p99),
        met(p99 <= 10.0)
    ));
    md.push_str("\nEnd to end (handler pool of 32, an `http` sink answering at once, leads posted at concurrency 64 and timed until the last is at the CRM):\n\n| setup | leads | delivered | leads/s | fsyncs per lead, whole path |\n|---|---|---|---|---|\n");
    for e in e2e {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            e.setup.name(),
            e.accepted,
            e.delivered,
            f0(e.delivered as f64 / e.secs),
            e.fsyncs_per_lead.map(f2).unwrap_or_else(|| "n/a".into())
        ));
    }
    if let [lazy, fsync] = e2e {
        md.push_str(&format!(
            "\nfsync end to end runs at {:.0}% of lazy.\n",
            100.0 * (fsync.delivered as f64 / fsync.secs) / (lazy.delivered as f64 / lazy.secs)
        ));
    }
    md.push_str(&format!(
        "\n{}\n",
        reproduce(
            "durability",
            &[
                ("BENCH_REQUESTS", knobs.requests.to_string()),
                ("BENCH_SECONDS", knobs.seconds.to_string()),
                ("BENCH_E2E_LEADS", knobs.e2e_leads.to_string()),
            ]
        )
    ));
    md
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let knobs = Knobs {
        quick: quick(),
        requests: knob_count("BENCH_REQUESTS", 300, 4_000),
        seconds: knob_number("BENCH_SECONDS", 1.0, 5.0),
        e2e_leads: knob_count("BENCH_E2E_LEADS", 300, 5_000),
    };
    let load_before = load_average();
    let rows = edge_rows(&knobs).await;
    let e2e = if std::env::var_os("BENCH_NO_E2E").is_some() {
        Vec::new()
    } else {
        e2e_rows(&knobs).await
    };
    let md = report(&knobs, &load_before, &rows, &e2e);
    println!("{md}");
    if !knobs.quick {
        std::fs::create_dir_all(root().join("benches/results")).expect("benches/results");
        std::fs::write(root().join("benches/results/durability.md"), &md).expect("write results");
        write_doc_block(BEGIN, END, &md);
    }
}
