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
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use leadrouter::devtools::harness::probe::{load_average, machine, peak_rss_mib, Cores};
use leadrouter::devtools::harness::report::{
    cores_cells, f2, knob_count, knob_number, met, quick, reproduce,
};
use leadrouter::devtools::sandbox_crm::{Faults, SandboxCrm};

mod support;
use support::*;

const README_BEGIN: &str =
    "<!-- load-bench:begin: written by `cargo bench --bench load`; edit the bench, not this block -->";
const README_END: &str = "<!-- load-bench:end -->";

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const OPEN_RATE: f64 = 2_000.0;
const E2E_RATE: f64 = 1_000.0;
const CRM_LATENCY: Duration = Duration::from_millis(5);
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

// ---------------------------------------------------------------------------------------------
// The raw ceiling

/// A stream like `LEADS` (same config, other name and subjects), so the ceiling pays the same
/// storage and dedupe costs as the intake's publishes.
async fn create_ceiling_stream(router: &Router) -> async_nats::jetstream::Context {
    let client = async_nats::connect(&router.nats_url)
        .await
        .expect("connect to the router's nats-server");
    let js = async_nats::jetstream::new(client);
    let mut cfg = leadrouter::queue::topology::leads_stream(&router.cfg.streams, &[]);
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
    let router = Router::start(&Role::Pipeline { crm_url: crm.url() }, |rc| rc).await;
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
    let edge = Router::start(&Role::Edge, |rc| rc).await;
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
    write_doc_block(README_BEGIN, README_END, &md);
    eprintln!("wrote benches/results/load.md and docs/performance.md's load-bench block");
}
