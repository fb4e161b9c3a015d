//! The report `leadrouter drill` prints without `--json`.

use super::fleet;
use super::report::DrillReport;
use super::storm::FaultKind;

/// The human report: the table, the faults, and the verdict.
pub fn render_summary(r: &DrillReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nleadrouter drill: {} leads at {}/s, {:.0}% submitted more than once, {:.1}% malformed, seed {}{}\n",
        r.leads,
        r.rate,
        r.duplicate_share * 100.0,
        r.malformed_share * 100.0,
        r.seed,
        if r.process_faults { "" } else { ", no process faults" }
    );
    out.push_str(&r.table);
    for run in &r.runs {
        let _ = writeln!(out, "\n{}:", run.design);
        let _ = writeln!(
            out,
            "  leads: {} good, {} schema-invalid, {} not JSON; vendor answers: {} accepted, {} refused, {} gave up",
            run.valid, run.schema_invalid, run.unparseable, run.accepted, run.refused, run.vendor_gave_up
        );
        let _ = writeln!(
            out,
            "  CRM: {} records, {} duplicates, {} repeat writes absorbed by its idempotency key; intake -> CRM p50 {:.0} ms, p99 {:.0} ms",
            run.crm_records,
            run.duplicates,
            run.repeat_writes_absorbed,
            run.intake_to_crm_ms.p50,
            run.intake_to_crm_ms.p99
        );
        let _ = writeln!(
            out,
            "  vendor sent for {:.1} s; queue drained {:.1} s after",
            run.send_seconds, run.drain_seconds
        );
        if let Some(t) = &run.topology {
            let _ = writeln!(
                out,
                "  design: {}; vendor requests per router: {:?}",
                t.label(),
                t.vendor_requests_per_router
            );
        }
        for f in &run.faults {
            let what = match (f.kind, f.router) {
                (FaultKind::KillRouter, None) => "kill -9".to_string(),
                (FaultKind::RestartNats, _) => "nats-server restart".to_string(),
                _ => f.what(),
            };
            let more = fleet::details(f);
            match &f.skipped {
                Some(why) => {
                    let _ = writeln!(out, "  {what} at {:.1} s: skipped ({why})", f.at_s);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  {what} at {:.1} s: {} after {} ms{}{more}",
                        f.at_s,
                        if f.recovered { "back" } else { "NOT back" },
                        f.unavailable_ms,
                        match f.nats_orphan_left {
                            Some(true) => ", its nats-server was left behind",
                            Some(false) => ", no nats-server left behind",
                            None => "",
                        }
                    );
                }
            }
        }
        if !run.unexpected_examples.is_empty() {
            let _ = writeln!(
                out,
                "  belong to no lead of this run, e.g.: {}",
                run.unexpected_examples.join(", ")
            );
        }
        if !run.lost_examples.is_empty() {
            let _ = writeln!(out, "  lost, e.g.: {}", run.lost_examples.join(", "));
        }
        if run.design == "leadrouter" && run.lost_shared_inbox > 0 {
            let _ = writeln!(
                out,
                "  of the lost, {} share their email with a later lead that is at the CRM (a shared inbox): the ordering fence took them for older events of that lead and skipped them at the CRM, which is configured as an upsert sink (`ordering = \"latest-wins\"`)",
                run.lost_shared_inbox
            );
        }
        for n in &run.intervention_notes {
            let _ = writeln!(out, "  operator would have to: {n}");
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        if r.passed {
            "PASS: every accepted lead is at the CRM exactly once or in the DLQ with a reason; nothing lost, nothing duplicated, no manual step."
        } else {
            "FAIL: see above; the router's log and data are kept in the work dir."
        }
    );
    if !r.passed {
        let _ = writeln!(out, "work dir: {}", r.work_dir);
    }
    out
}
