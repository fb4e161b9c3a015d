//! The chaos drill, small enough for CI: the real binary runs `leadrouter drill` with every
//! fault (a flapping CRM, three kill -9s of the router, a nats-server restart) and the seed's
//! direct design as the baseline. leadrouter must lose and duplicate nothing; the baseline must
//! show the duplicates and losses the drill exists to catch (so a zero is not a blind spot).

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_drill_loses_and_duplicates_nothing_while_the_baseline_does() {
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
    assert_eq!(lr["lost"], 0, "lost: {:#}\n{table}", lr["lost_examples"]);
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
