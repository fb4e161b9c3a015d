//! The CRM benchmark: a campaign backlog drained into HubSpot at a Starter account's pace.
//!
//! The sandbox CRM's `hubspot` personality enforces HubSpot's Free/Starter limits (100 requests
//! per rolling 10 s, 100 inputs per batch upsert). One nats-server outlives two routers:
//! 1. an edge-only router (`handlers.enabled = false`) stores the backlog: `BENCH_BACKLOG`
//!    signed leads (default 50,000), posted at concurrency 64, each with its own email;
//! 2. it stops, and a router with a handler pool and a `hubspot` sink at the personality
//!    starts: timed from ready until HubSpot holds every lead's contact;
//! 3. the same again with `max_records = 1` (what a per-lead integration gets under the same
//!    budget) for a backlog of `BENCH_PER_LEAD` leads (default 300), because 50,000 per-lead
//!    calls at 10 per second take well over an hour; its rate is projected to 50,000.
//!
//! Checked in the same run: 0 leads in the DLQ (a throttle never dead-letters), 0 duplicate
//! contacts (every contact written exactly once), and the 429s HubSpot answered (the sink paces
//! below the limit, so there should be none). Target (issue 15): the 50,000-lead backlog in
//! under 60 s.
//!
//! Run: `cargo bench --bench crm`. `BENCH_QUICK=1` is a smoke run (5,000 leads, 100 per-lead)
//! that only prints. A full run writes `benches/results/crm.md` and the block between the
//! crm-bench markers of docs/performance.md.

use std::time::{Duration, Instant};

use leadrouter::devtools::harness::probe::{load_average, machine};
use leadrouter::devtools::harness::report::{knob_count, quick, reproduce};
use leadrouter::devtools::harness::{hubspot_sink, NatsServer};
use leadrouter::devtools::sandbox_crm::{HubspotConfig, SandboxCrm};
use leadrouter::sinks::{HubspotSinkConfig, SinkConfig};

mod support;
use support::*;

const BEGIN: &str = "<!-- crm-bench:begin (written by `cargo bench --bench crm`) -->";
const END: &str = "<!-- crm-bench:end -->";
/// HubSpot Free/Starter.
const WINDOW_LIMIT: u32 = 100;
const WINDOW: Duration = Duration::from_secs(10);

struct Drain {
    leads: usize,
    secs: f64,
    calls: u64,
    max_per_call: usize,
    rate_limited: u64,
    dead: u64,
    duplicates: usize,
    missing: usize,
}

impl Drain {
    fn per_sec(&self) -> f64 {
        self.leads as f64 / self.secs.max(1e-9)
    }
}

/// Stores `n` leads tagged `tag` through an edge-only router on `nats`, then stops it.
async fn store_backlog(nats: &NatsServer, tag: &str, n: usize) -> usize {
    let pid = nats.pid().expect("nats-server runs");
    let url = nats.url();
    let router = Router::start_on(Nats::External { url: &url, pid }, &Role::Edge, |rc| rc).await;
    let reqs = prepare(&router, tag, n);
    let started = Instant::now();
    let run = closed_loop(&router, &load_client(), reqs, 64).await;
    eprintln!(
        "{tag}: stored {} of {n} leads in {:.1} s ({} errors)",
        run.ok,
        started.elapsed().as_secs_f64(),
        run.errors()
    );
    eprintln!("{tag}: edge router stopped: {}", router.stop().await);
    run.ok
}

async fn dlq_messages(nats_url: &str) -> u64 {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    match js.get_stream("LEADS_DLQ").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Starts a router with a hubspot sink of `max_records` per call and times it until HubSpot
/// holds `expected` contacts of `domain_tag`.
async fn drain(
    nats: &NatsServer,
    crm: &SandboxCrm,
    tag: &str,
    expected: usize,
    max_records: usize,
) -> Drain {
    let before = crm.hubspot_stats();
    let sink = SinkConfig::new(
        "hubspot",
        HubspotSinkConfig {
            max_records: Some(max_records),
            ..hubspot_sink(crm.url(), "HUBSPOT_TOKEN")
        },
    );
    let pid = nats.pid().expect("nats-server runs");
    let url = nats.url();
    let router = Router::start_on(
        Nats::External { url: &url, pid },
        &Role::Sinks(vec![sink]),
        |rc| rc,
    )
    .await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3600);
    let applied = |crm: &SandboxCrm| {
        let s = crm.hubspot_stats();
        (s.inputs - s.rejected_inputs).saturating_sub(before.inputs - before.rejected_inputs)
    };
    while (applied(crm) as usize) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = crm.hubspot_stats();
    let dead = dlq_messages(&url).await;
    eprintln!("{tag}: router stopped: {}", router.stop().await);
    let suffix = "@example.com";
    let ours: Vec<_> = crm
        .hubspot_contacts()
        .into_iter()
        .filter(|c| {
            c.email
                .as_deref()
                .is_some_and(|e| e.starts_with(tag) && e.ends_with(suffix))
        })
        .collect();
    let duplicates = ours.iter().filter(|c| c.writes > 1).count();
    Drain {
        leads: ours.len(),
        secs,
        calls: after.batch_calls - before.batch_calls,
        max_per_call: after.max_inputs_in_a_call,
        rate_limited: after.rate_limited - before.rate_limited,
        dead,
        duplicates,
        missing: expected.saturating_sub(ours.len()),
    }
}

fn row(name: &str, d: &Drain, projected: Option<f64>) -> String {
    let time = match projected {
        Some(p) => format!(
            "{:.1} s for {} leads; **{:.0} min** projected for 50,000",
            d.secs,
            d.leads,
            p / 60.0
        ),
        None => format!("**{:.1} s**", d.secs),
    };
    format!(
        "| {name} | {} | {time} | {} | {} | {} | {} | {} | {} |\n",
        d.leads,
        if d.per_sec() < 100.0 {
            format!("{:.1}", d.per_sec())
        } else {
            format!("{:.0}", d.per_sec())
        },
        d.calls,
        d.max_per_call,
        d.rate_limited,
        d.dead,
        d.duplicates
    )
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
    let backlog = knob_count("BENCH_BACKLOG", 5_000, 50_000);
    let per_lead = knob_count("BENCH_PER_LEAD", 100, 300);
    let load_before = load_average();
    let crm = SandboxCrm::start("127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("sandbox CRM starts");
    crm.set_hubspot(HubspotConfig {
        burst_limit: WINDOW_LIMIT,
        interval: WINDOW,
        ..HubspotConfig::default()
    });
    // The pinned nats-server, installed on first use like the tests' (`.tools/`).
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("nats-server: {e}"));

    // Batched: the whole backlog, 100 contacts per call.
    let stored = store_backlog(&nats, "batched", backlog).await;
    let batched = drain(&nats, &crm, "batched", stored, 100).await;
    eprintln!(
        "batched: {} leads in {:.1} s ({:.0}/s), {} calls, max {} per call, {} 429s, {} dead, {} duplicates, {} missing",
        batched.leads, batched.secs, batched.per_sec(), batched.calls, batched.max_per_call,
        batched.rate_limited, batched.dead, batched.duplicates, batched.missing
    );
    // The per-lead run starts from an empty account (contacts, counters, rolling window).
    crm.reset();
    crm.set_hubspot(HubspotConfig {
        burst_limit: WINDOW_LIMIT,
        interval: WINDOW,
        ..HubspotConfig::default()
    });
    let stored = store_backlog(&nats, "perlead", per_lead).await;
    let single = drain(&nats, &crm, "perlead", stored, 1).await;
    let projected = 50_000.0 / single.per_sec().max(1e-9);
    eprintln!(
        "per lead: {} leads in {:.1} s ({:.1}/s): 50,000 would take {:.0} min",
        single.leads,
        single.secs,
        single.per_sec(),
        projected / 60.0
    );
    crm.stop().await;

    let target_met = backlog >= 50_000
        && batched.secs < 60.0
        && batched.dead == 0
        && batched.duplicates == 0
        && batched.missing == 0;
    let mut md = String::new();
    md.push_str(&format!(
        "CRM benchmark, {} ({}; load average before: {load_before}). The sandbox's HubSpot personality at Starter limits ({WINDOW_LIMIT} requests per rolling 10 s, 100 inputs per batch upsert); one nats-server 2.15.1; the backlog stored by an edge-only router, then drained by a router with a `hubspot` sink at its defaults (headroom 5%: 95 calls per window).\n\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine(),
    ));
    md.push_str("| sink | leads | drain time | leads/s | calls | max leads per call | 429s | DLQ | duplicate contacts |\n|---|---|---|---|---|---|---|---|---|\n");
    md.push_str(&row(
        "hubspot, batched (`max_records = 100`)",
        &batched,
        None,
    ));
    md.push_str(&row(
        "hubspot, per lead (`max_records = 1`)",
        &single,
        Some(projected),
    ));
    md.push_str(&format!(
        "\nBatched drains {:.0}x as many leads per second as per-lead calls under the same budget. Target (issue 15): 50,000 leads in under 60 s with 0 rate-limit DLQ entries and 0 duplicate contacts: **{}**.\n\n",
        batched.per_sec() / single.per_sec().max(1e-9),
        if target_met { "met" } else { "not met" }
    ));
    md.push_str(&format!(
        "Reproduce: `{}`\n",
        reproduce(
            "crm",
            &[
                ("BENCH_BACKLOG", backlog.to_string()),
                ("BENCH_PER_LEAD", per_lead.to_string()),
            ]
        )
    ));
    println!("{md}");
    if quick {
        return;
    }
    let results = root().join("benches/results/crm.md");
    std::fs::write(&results, format!("# CRM benchmark\n\n{md}")).expect("write results");
    write_doc_block(BEGIN, END, &md);
    eprintln!("wrote {} and docs/performance.md", results.display());
}
