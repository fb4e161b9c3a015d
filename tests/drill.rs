//! The chaos drill, small enough for CI: the real binary runs `leadrouter drill` with every
//! fault (a flapping CRM, three kill -9s of the router, a nats-server restart) and the seed's
//! direct design as the baseline. leadrouter must lose and duplicate nothing; the baseline must
//! show the duplicates and losses the drill exists to catch (so a zero is not a blind spot).
//! A second storm runs two routers on a 3-node NATS cluster: the kills go round the routers and
//! the NATS fault kills the `LEADS` leader's node. Two short storms run against the sandbox's
//! HubSpot and Salesforce personalities at Starter-tier limits (`--crm`), through the batching
//! sinks, with the books balanced against the personality's own records. One storm runs at an
//! edge site (`--edge`): link cuts, kill -9 of the edge and of the hub, and each lead's edge ->
//! hub delay.

mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// The two long storms take turns: on a small CI machine, two at once share its cores with each
/// other's routers and nats-servers, and the timings and the leads' latencies are then the
/// machine's, not the design's.
static LONG_STORM: Mutex<()> = Mutex::new(());

fn long_storm() -> MutexGuard<'static, ()> {
    // A storm that failed (panicked) still leaves the machine to the next one.
    LONG_STORM.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_small_drill_loses_and_duplicates_nothing_while_the_baseline_does() {
    let _turn = long_storm();
    // The binary installs nats-server here on first use, like the other tests.
    common::nats_server_bin();
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .current_dir(common::manifest_dir())
        .env(
            "LEADROUTER_TOOLS_DIR",
            common::manifest_dir().join(".tools"),
        )
        .args([
            "drill",
            "--leads",
            "2500",
            "--rate",
            "150",
            "--baseline",
            "direct",
        ])
        .args(["--malformed", "0.02", "--json", "--work-dir"])
        .arg(work.path())
        .output()
        .expect("drill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(work.path().join("router.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        panic!("no JSON report ({e}); stderr: {stderr}\nrouter log (last lines, newest first):\n{tail}")
    });
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "baseline and leadrouter: {report:#}");
    let (direct, lr) = (&runs[0], &runs[1]);
    assert_eq!(direct["design"], "direct");
    assert_eq!(lr["design"], "leadrouter");

    // leadrouter: every accepted lead placed exactly once; malformed ones all in the DLQ.
    let table = report["table"].as_str().unwrap_or_default();
    assert_eq!(
        lr["lost"], 0,
        "lost: {:#} (sharing an email with a later lead at the CRM: {})\n{table}",
        lr["lost_examples"], lr["lost_shared_inbox"]
    );
    assert_eq!(lr["duplicates"], 0, "{table}");
    assert_eq!(lr["unexpected"], 0, "{table}");
    assert_eq!(lr["malformed_misplaced"], 0, "{table}");
    assert_eq!(lr["valid_in_dlq"], 0, "{table}");
    assert_eq!(lr["interventions"], 0, "{:#}", lr["intervention_notes"]);
    assert_eq!(lr["vendor_gave_up"], 0);
    let valid = lr["valid"].as_u64().expect("valid");
    assert_eq!(lr["crm_records"], valid, "one CRM record per good lead");
    assert_eq!(
        lr["dlq_entries"], lr["schema_invalid"],
        "exactly the schema-invalid leads are in the DLQ"
    );
    assert!(lr["schema_invalid"].as_u64() > Some(10));
    assert_eq!(
        lr["refused"], lr["unparseable"],
        "only non-JSON is refused at the edge"
    );
    assert!(lr["duplicate_submitted"].as_u64() > Some(500));

    // The faults really happened, and everything came back on its own.
    let faults = lr["faults"].as_array().expect("faults");
    let kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["kill_router", "kill_router", "restart_nats", "kill_router"]
    );
    for f in faults {
        assert_eq!(f["recovered"], true, "{f}");
        assert!(f["unavailable_ms"].as_u64() > Some(0), "{f}");
        if f["kind"] == "kill_router" {
            assert_eq!(f["nats_orphan_left"], false, "{f}");
        }
    }
    assert!(lr["vendor"]["retries"].as_u64() > Some(0));

    // The baseline under the same storm: the drill sees what went wrong there.
    assert!(
        direct["duplicates"].as_u64() > Some(0),
        "the direct design duplicates under this storm: {table}"
    );
    assert!(
        direct["lost"].as_u64() > Some(0),
        "its email dedupe drops shared-inbox leads: {table}"
    );
    assert_eq!(direct["dlq_entries"], Value::Null);

    assert_eq!(report["passed"], true);
    assert!(out.status.success(), "exit status {:?}", out.status);
}

#[test]
fn bad_drill_options_are_refused_with_a_reason() {
    for (args, says) in [
        (
            vec!["--duplicates", "1.5"],
            "--duplicates must be a share between 0 and 1",
        ),
        (vec!["--leads", "0"], "--leads must be at least 1"),
        (vec!["--rate", "0"], "--rate must be a positive number"),
        (vec!["--routers", "0"], "--routers must be at least 1"),
        (
            vec!["--nats-cluster", "2"],
            "--nats-cluster must be an odd number of nodes from 3",
        ),
        (
            vec!["--nats-cluster", "3", "--nats-url", "nats://127.0.0.1:4222"],
            "cannot be combined with --nats-url",
        ),
        (
            vec!["--crm", "hubspot", "--baseline", "direct"],
            "--crm hubspot cannot be combined with --baseline direct",
        ),
        (
            vec!["--crm", "salesforce", "--baseline", "direct"],
            "--crm salesforce cannot be combined with --baseline direct",
        ),
        (
            vec!["--edge", "--baseline", "direct"],
            "--edge cannot be combined with --baseline direct",
        ),
        (
            vec!["--edge", "--routers", "2"],
            "--edge cannot be combined with --routers or --nats-cluster",
        ),
        (
            vec!["--edge", "--nats-url", "nats://127.0.0.1:4222"],
            "--edge cannot be combined with --nats-url",
        ),
        (
            vec!["--crm", "pipedrive"],
            "invalid value 'pipedrive' for '--crm",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
            .current_dir(common::manifest_dir())
            .arg("drill")
            .args(&args)
            .output()
            .expect("drill runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

fn drill_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .current_dir(common::manifest_dir())
        .env(
            "LEADROUTER_TOOLS_DIR",
            common::manifest_dir().join(".tools"),
        )
        .arg("drill")
        .args(args)
        .arg("--json")
        .output()
        .expect("drill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.success(),
        report["passed"] == true,
        "exit status follows the verdict"
    );
    report
}

#[test]
fn against_an_external_nats_a_second_drill_counts_only_its_own_leads() {
    let nats = common::NatsServer::start();
    let url = nats.url();
    // A first run leaves DLQ entries and CRM-less history on the shared NATS.
    let first = drill_json(&[
        "--nats-url",
        &url,
        "--leads",
        "400",
        "--rate",
        "100",
        "--malformed",
        "0.05",
        "--no-process-faults",
    ]);
    let lr = &first["runs"][0];
    assert_eq!(first["passed"], true, "{}", first["table"]);
    assert!(lr["dlq_entries"].as_u64() > Some(0));

    // The second, with router kills, must not count the first run's DLQ entries as strangers.
    let second = drill_json(&["--nats-url", &url, "--leads", "1200", "--rate", "100"]);
    let lr = &second["runs"][0];
    let table = second["table"].as_str().unwrap_or_default();
    assert_eq!(
        lr["unexpected"], 0,
        "{table}\n{:#}",
        lr["unexpected_examples"]
    );
    assert_eq!(lr["lost"], 0, "{table}");
    assert_eq!(lr["duplicates"], 0, "{table}");
    assert_eq!(lr["dlq_entries"], lr["schema_invalid"], "{table}");
    let faults = lr["faults"].as_array().expect("faults");
    assert!(
        faults
            .iter()
            .any(|f| f["kind"] == "kill_router" && f["recovered"] == true),
        "{faults:?}"
    );
    for f in faults.iter().filter(|f| f["kind"] == "restart_nats") {
        assert!(
            f["skipped"]
                .as_str()
                .is_some_and(|s| s.contains("external")),
            "{f}"
        );
    }
    assert_eq!(second["passed"], true, "{table}");
}

#[test]
fn two_routers_on_a_nats_cluster_lose_nothing_when_routers_and_the_leads_leader_die() {
    let _turn = long_storm();
    common::nats_server_bin();
    let work = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    // 40 s of sending: each fault waits until the partitions are shared out again before the
    // next one, so the three faults checked below all strike while the vendor sends. Shared
    // inboxes stay on (1%): the drill's CRM keeps one record per key, an `append` sink, so a
    // late lead of a shared email is written, never skipped as superseded.
    let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .current_dir(common::manifest_dir())
        .env(
            "LEADROUTER_TOOLS_DIR",
            common::manifest_dir().join(".tools"),
        )
        .args(["drill", "--routers", "2", "--nats-cluster", "3"])
        .args(["--leads", "1600", "--rate", "40", "--malformed", "0.02"])
        .args(["--json", "--work-dir"])
        .arg(work.path())
        .output()
        .expect("drill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr: {stderr}"));
    let lr = &report["runs"][0];
    let table = report["table"].as_str().unwrap_or_default();
    let context = format!(
        "{table}
{stderr}"
    );
    assert_eq!(lr["design"], "leadrouter");
    assert_eq!(
        lr["lost"], 0,
        "lost: {:#}
{context}",
        lr["lost_examples"]
    );
    assert_eq!(lr["duplicates"], 0, "{context}");
    assert_eq!(lr["unexpected"], 0, "{context}");
    assert_eq!(lr["malformed_misplaced"], 0, "{context}");
    assert_eq!(lr["valid_in_dlq"], 0, "{context}");
    assert_eq!(lr["interventions"], 0, "{:#}", lr["intervention_notes"]);
    assert_eq!(
        lr["crm_records"], lr["valid"],
        "one CRM record per good lead"
    );
    assert_eq!(lr["dlq_entries"], lr["schema_invalid"], "{context}");

    let t = &lr["topology"];
    assert_eq!(t["routers"], 2, "{t}");
    assert_eq!(t["nats"], "cluster", "{t}");
    assert_eq!(t["nats_nodes"], 3, "{t}");
    assert_eq!(t["replicas"], 3, "{t}");
    let spread = t["vendor_requests_per_router"]
        .as_array()
        .expect("per router");
    assert!(
        spread.iter().all(|n| n.as_u64() > Some(100)),
        "the vendor spreads over both routers: {t}"
    );
    assert!(
        table.contains("leadrouter, 2 routers, 3-node NATS R3 (drill)"),
        "{table}"
    );

    // Router 0, router 1, then the LEADS leader's node; a last kill if the vendor still sends.
    let faults = lr["faults"].as_array().expect("faults");
    let what: Vec<(String, Value)> = faults
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").to_string(),
                f["router"].clone(),
            )
        })
        .collect();
    assert!(faults.len() >= 3, "{context}");
    assert_eq!(
        what[0],
        ("kill_router".to_string(), Value::from(0)),
        "{context}"
    );
    assert_eq!(
        what[1],
        ("kill_router".to_string(), Value::from(1)),
        "{context}"
    );
    assert_eq!(what[2].0, "kill_nats_node", "{context}");
    for f in faults {
        assert_eq!(
            f["recovered"], true,
            "{f}
{context}"
        );
        assert!(f["partitions_settled_ms"].as_u64().is_some(), "{f}");
        if f["kind"] == "kill_router" {
            assert!(f["unavailable_ms"].as_u64() > Some(0), "{f}");
        }
    }
    let node = &faults[2];
    assert!(
        node["node"].as_str().is_some_and(|n| n.starts_with('n')),
        "{node}"
    );
    assert_ne!(
        node["new_leader"], node["node"],
        "another node leads LEADS: {node}"
    );
    assert!(node["leader_elected_ms"].as_u64().is_some(), "{node}");
    assert!(
        node["rejoined_ms"].as_u64().is_some(),
        "the node rejoined: {node}"
    );
    assert!(
        node["vendor_gap_ms"].as_u64().is_some(),
        "intake answered again: {node}"
    );

    assert_eq!(report["passed"], true, "{context}");
    assert!(out.status.success(), "exit status {:?}", out.status);
    eprintln!(
        "two routers on a NATS cluster: {:.0} s\n{table}",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `leadrouter drill ARGS` from the checkout with 2% malformed leads and 2% shared inboxes,
/// `--json`, in `work`. Returns the process's output and its JSON report; without a report it
/// panics with stderr and the newest lines of each router log in `logs` (paths under `work`).
fn run_drill(
    work: &std::path::Path,
    args: &[&str],
    logs: &[&str],
) -> (std::process::Output, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_leadrouter"))
        .current_dir(common::manifest_dir())
        .env(
            "LEADROUTER_TOOLS_DIR",
            common::manifest_dir().join(".tools"),
        )
        .arg("drill")
        .args(args)
        .args(["--malformed", "0.02", "--shared-inbox", "0.02"])
        .args(["--json", "--work-dir"])
        .arg(work)
        .output()
        .expect("drill runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        let tails: Vec<String> = logs
            .iter()
            .map(|l| {
                let text = std::fs::read_to_string(work.join(l)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!("{l} (newest first):\n{}", tail.join("\n"))
            })
            .collect();
        panic!(
            "no JSON report ({e}); stderr: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tails.join("\n")
        )
    });
    (out, report)
}

/// A short storm with every fault against one of the sandbox's batching CRM personalities:
/// 500 leads at 25/s (a 20 s send window, the CRM's whole 18 s cycle), 2% shared inboxes so
/// that some contacts get two leads. Asserts what holds for every CRM and returns the
/// leadrouter run and the table.
fn batching_crm_drill(crm: &str) -> (Value, String) {
    let _turn = long_storm();
    common::nats_server_bin();
    let work = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    let (out, report) = run_drill(
        work.path(),
        &["--crm", crm, "--leads", "500", "--rate", "25"],
        &["router.log"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(report["crm"], crm);
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "no baseline with --crm {crm}");
    let lr = runs[0].clone();
    let table = report["table"].as_str().unwrap_or_default().to_string();
    let context = format!("{table}\n{:#}\n{stderr}", lr["crm_api"]);
    assert_eq!(lr["design"], "leadrouter");
    assert_eq!(lr["crm"], crm);

    // The books: every good lead written exactly once, the malformed ones in the DLQ.
    assert_eq!(
        lr["lost"], 0,
        "lost: {:#} (sharing an email with a later lead at the CRM: {})\n{context}",
        lr["lost_examples"], lr["lost_shared_inbox"]
    );
    assert_eq!(lr["duplicates"], 0, "{context}");
    assert_eq!(
        lr["unexpected"], 0,
        "{:#}\n{context}",
        lr["unexpected_examples"]
    );
    assert_eq!(lr["malformed_misplaced"], 0, "{context}");
    assert_eq!(lr["valid_in_dlq"], 0, "{context}");
    assert_eq!(lr["interventions"], 0, "{:#}", lr["intervention_notes"]);
    assert_eq!(
        lr["crm_records"], lr["valid"],
        "one write per good lead: {context}"
    );
    assert_eq!(lr["dlq_entries"], lr["schema_invalid"], "{context}");

    // The vendor's side: batched, within its limits, no throttled lead in the DLQ.
    let api = &lr["crm_api"];
    assert_eq!(api["throttle_dlq"], 0, "{context}");
    assert!(
        api["max_leads_per_call"].as_u64() > Some(1),
        "leads shared calls: {context}"
    );
    let calls = api["calls"].as_u64().unwrap_or(0);
    assert!(calls > 0, "{context}");
    assert!(
        api["leads_in_calls"].as_u64() >= lr["valid"].as_u64(),
        "{context}"
    );
    assert!(
        calls < lr["valid"].as_u64().unwrap_or(0),
        "fewer calls than leads: {context}"
    );
    assert_eq!(
        api["throttled"], 0,
        "the sink paced itself under the vendor's limits: {context}"
    );
    assert_eq!(api["daily_used"].as_u64(), Some(calls), "{context}");

    // Every fault struck and came back.
    let faults = lr["faults"].as_array().expect("faults");
    let kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["kill_router", "kill_router", "restart_nats", "kill_router"],
        "{context}"
    );
    assert!(faults.iter().all(|f| f["recovered"] == true), "{context}");

    assert_eq!(report["passed"], true, "{context}");
    assert!(out.status.success(), "exit status {:?}", out.status);
    eprintln!(
        "drill --crm {crm}: {:.0} s\n{table}",
        started.elapsed().as_secs_f64()
    );
    (lr, table)
}

#[test]
fn a_short_drill_against_hubspot_writes_each_lead_once_onto_one_contact_per_email() {
    let (lr, table) = batching_crm_drill("hubspot");
    let api = &lr["crm_api"];
    assert!(
        table.contains("| leadrouter -> HubSpot (drill) |"),
        "{table}"
    );
    assert_eq!(api["daily_limit"], 250_000, "{api}");
    assert!(
        api["limits"]
            .as_str()
            .is_some_and(|l| l.starts_with("100 requests per rolling 10s")),
        "Starter: {api}"
    );
    assert_eq!(api["throttle_answer"], "429");
    assert!(api["max_leads_per_call"].as_u64() <= Some(100), "{api}");
    // HubSpot keeps one contact per email: the shared-inbox leads share one, each with a write
    // of its own, and no lead made a contact of its own beside it.
    assert_eq!(api["contacts"], api["distinct_emails"], "{api}");
    assert!(
        api["shared_contacts"].as_u64() > Some(0),
        "some contacts got two leads: {api}"
    );
    assert!(
        api["contacts"].as_u64() < lr["valid"].as_u64(),
        "fewer contacts than leads: {api}"
    );
    assert_eq!(
        api["unauthorized"], 0,
        "the drill's token was accepted: {api}"
    );
}

#[test]
fn a_short_drill_against_salesforce_refreshes_an_expired_token_and_loses_nothing() {
    let (lr, table) = batching_crm_drill("salesforce");
    let api = &lr["crm_api"];
    assert!(
        table.contains("| leadrouter -> Salesforce (drill) |"),
        "{table}"
    );
    assert_eq!(api["daily_limit"], 15_000, "a developer org: {api}");
    assert_eq!(api["throttle_answer"], "403 REQUEST_LIMIT_EXCEEDED");
    assert!(api["max_leads_per_call"].as_u64() <= Some(200), "{api}");
    // The storm expired every token once, while a router held and used one: the next call met
    // the 401 and went again with a new token, and the books above balance.
    let expiry = &api["token_expiry"];
    assert!(expiry["at_s"].as_f64() > Some(0.0), "{api}");
    assert!(
        expiry["unauthorized_after"].as_u64() >= Some(1),
        "a call met the expiry: {api}"
    );
    assert!(
        expiry["tokens_issued_after"].as_u64() >= Some(1),
        "a new token was fetched: {api}"
    );
    assert_eq!(
        api["unauthorized"], expiry["unauthorized_after"],
        "no 401 but the expiry's: {api}"
    );
}

/// `--edge`: the vendor posts to an edge router whose leaf link to the hub goes through the
/// drill's proxy. 750 leads at 25/s (a 30 s send window: two 8 s link cuts, kill -9 of the
/// edge and of the hub, each recovered before the next is due). Nothing may be lost between
/// the edge and the hub, and every lead's edge -> hub delay is measured.
#[test]
fn a_drill_at_an_edge_site_loses_nothing_through_link_cuts_and_both_kills() {
    let _turn = long_storm();
    common::nats_server_bin();
    let work = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    let (out, report) = run_drill(
        work.path(),
        &["--edge", "--leads", "750", "--rate", "25"],
        &["hub/router.log", "edge/router.log"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lr = &report["runs"][0];
    let table = report["table"].as_str().unwrap_or_default();
    let context = format!("{table}\n{:#}\n{stderr}", lr["edge"]);
    assert_eq!(lr["design"], "leadrouter");

    // The books, as at one router: every accepted lead at the CRM once or in the DLQ.
    assert_eq!(lr["lost"], 0, "lost: {:#}\n{context}", lr["lost_examples"]);
    assert_eq!(lr["duplicates"], 0, "{context}");
    assert_eq!(lr["unexpected"], 0, "{context}");
    assert_eq!(lr["malformed_misplaced"], 0, "{context}");
    assert_eq!(lr["valid_in_dlq"], 0, "{context}");
    assert_eq!(lr["interventions"], 0, "{:#}", lr["intervention_notes"]);
    assert_eq!(lr["crm_records"], lr["valid"], "{context}");
    assert_eq!(lr["dlq_entries"], lr["schema_invalid"], "{context}");

    // Cut, kill the edge, cut again, kill the hub: each struck while the vendor sent, and
    // each came back on its own.
    let faults = lr["faults"].as_array().expect("faults");
    let what: Vec<(&str, &str)> = faults
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or(""),
                f["site"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        what,
        [
            ("cut_link", ""),
            ("kill_router", "edge"),
            ("cut_link", ""),
            ("kill_router", "hub")
        ],
        "{context}"
    );
    for f in faults {
        assert_eq!(f["recovered"], true, "{f}\n{context}");
        assert!(f["link_back_ms"].as_u64().is_some(), "{f}");
        assert!(f["backlog_cleared_ms"].as_u64().is_some(), "{f}");
        match f["kind"].as_str() {
            Some("cut_link") => {
                assert!(f["cut_ms"].as_u64() >= Some(8000), "{f}");
                assert!(
                    f["waiting_at_reopen"].as_u64() > Some(0),
                    "leads waited at the edge during the cut: {f}"
                );
            }
            _ => assert_eq!(f["nats_orphan_left"], false, "{f}"),
        }
    }

    // The edge's figures: every accepted lead stored at the hub once, with its delay.
    let e = &lr["edge"];
    assert_eq!(e["accepted_not_at_hub"], 0, "{context}");
    assert_eq!(e["extra_copies"], 0, "{context}");
    assert!(
        e["leads_at_hub"].as_u64() >= lr["accepted"].as_u64(),
        "{context}"
    );
    let (p50, p95) = (
        e["delay_ms"]["p50"].as_f64().unwrap_or(0.0),
        e["delay_ms"]["p95"].as_f64().unwrap_or(0.0),
    );
    assert!(p50 > 0.0 && p95 >= p50, "{context}");
    assert!(
        e["delay_ms"]["max"].as_f64() >= Some(5000.0),
        "a lead that waited out a cut shows it: {context}"
    );
    assert!(e["max_waiting"].as_u64() > Some(0), "{context}");
    assert_eq!(e["link_cuts"], 2, "{context}");
    assert!(e["link_refused"].as_u64() > Some(0), "{context}");
    assert!(
        table.contains("| leadrouter, edge -> hub (drill) |"),
        "{table}"
    );
    assert!(table.contains("| edge -> hub delay p50 / p95 |"), "{table}");
    assert!(
        table.contains("| leads lost between edge and hub |  | 0 |"),
        "{table}"
    );

    assert_eq!(report["passed"], true, "{context}");
    assert!(out.status.success(), "exit status {:?}", out.status);
    eprintln!(
        "drill --edge: {:.0} s\n{table}",
        started.elapsed().as_secs_f64()
    );
}
