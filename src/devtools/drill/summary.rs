//! The report `leadrouter drill` prints without `--json`.

use std::fmt::Write as _;

use super::fleet;
use super::options::CrmKind;
use super::report::{DrillReport, RunReport};
use super::storm::{FaultKind, FaultRecord};

/// An edge fault's measurements beyond its downtime (the link's and the backlog's return);
/// empty for other faults.
fn edge_details(f: &FaultRecord) -> String {
    if f.kind != FaultKind::CutLink && f.site.is_none() {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Some(n) = f.waiting_at_reopen {
        parts.push(format!("{n} leads waited at the edge"));
    }
    let opt = |v: Option<u64>| v.map_or("never".to_string(), |v| format!("{v} ms"));
    parts.push(format!("link back after {}", opt(f.link_back_ms)));
    parts.push(format!(
        "the edge's backlog at the hub after {}",
        opt(f.backlog_cleared_ms)
    ));
    parts.iter().map(|p| format!("; {p}")).collect()
}

/// The human report: the table, the faults, and the verdict.
pub fn render_summary(r: &DrillReport) -> String {
    let mut out = String::new();
    let limits = r
        .runs
        .last()
        .and_then(|run| run.crm_api.as_ref())
        .map(|a| format!(" ({})", a.limits))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nleadrouter drill: {} leads at {}/s, {:.0}% submitted more than once, {:.1}% malformed, seed {}{}; CRM: the sandbox's {}{limits}\n",
        r.leads,
        r.rate,
        r.duplicate_share * 100.0,
        r.malformed_share * 100.0,
        r.seed,
        if r.process_faults { "" } else { ", no process faults" },
        r.crm.label()
    );
    out.push_str(&r.table);
    for run in &r.runs {
        let _ = writeln!(out, "\n{}:", run.design);
        let _ = writeln!(
            out,
            "  leads: {} good, {} schema-invalid, {} not JSON; vendor answers: {} accepted, {} refused, {} gave up",
            run.valid, run.schema_invalid, run.unparseable, run.accepted, run.refused, run.vendor_gave_up
        );
        crm_lines(&mut out, run);
        let _ = writeln!(
            out,
            "  vendor sent for {:.1} s; queue drained {:.1} s after",
            run.send_seconds, run.drain_seconds
        );
        if let Some(e) = &run.edge {
            let _ = writeln!(
                out,
                "  edge site `{}`: {} leads stored at the hub, {} accepted at the edge and never stored there; edge -> hub delay p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; at most {} leads waited at the edge; leaf link: {} connections through the proxy, {} refused during {} cuts",
                e.name,
                e.leads_at_hub,
                e.accepted_not_at_hub,
                e.delay_ms.p50,
                e.delay_ms.p95,
                e.delay_ms.max,
                e.max_waiting,
                e.link_connections,
                e.link_refused,
                e.link_cuts
            );
        }
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
                (FaultKind::KillRouter, None) if f.site.is_none() => "kill -9".to_string(),
                (FaultKind::RestartNats, _) => "nats-server restart".to_string(),
                _ => f.what(),
            };
            let more = fleet::details(f) + &edge_details(f);
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
        if run.superseded > 0 {
            let _ = writeln!(
                out,
                "  superseded, not lost: {} leads of a shared inbox arrived (after a kill, on their redelivery) once a newer lead of the same email was written; the HubSpot sink keeps one contact per email (`latest-wins`), so the fence skipped them and recorded why rather than write older data over newer",
                run.superseded
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

/// What the CRM holds, and for a batching CRM what its API saw.
fn crm_lines(out: &mut String, run: &RunReport) {
    let latency = format!(
        "intake -> CRM p50 {:.0} ms, p99 {:.0} ms",
        run.intake_to_crm_ms.p50, run.intake_to_crm_ms.p99
    );
    // Leads written at least once: each one's writes, less the repeats.
    let written = run.crm_records.saturating_sub(run.duplicates);
    match run.crm {
        CrmKind::Http => {
            let _ = writeln!(
                out,
                "  CRM: {} records, {} duplicates, {} repeat writes absorbed by its idempotency key; {latency}",
                run.crm_records, run.duplicates, run.repeat_writes_absorbed
            );
        }
        CrmKind::Hubspot => {
            let api = run.crm_api.as_ref();
            let n = |f: fn(&super::report::CrmApiReport) -> Option<usize>| {
                api.and_then(f).unwrap_or_default()
            };
            let _ = writeln!(
                out,
                "  HubSpot: {written} leads written, {} duplicates (a lead's key on a second contact, or written again after another lead's write to its contact), {} repeat writes absorbed by the upsert (a lead's write sent again unchanged); {} contacts for {} distinct emails, {} of them written by two or more leads (shared inboxes); {latency} (over the leads whose write time the contact keeps: its first or last)",
                run.duplicates,
                run.repeat_writes_absorbed,
                n(|a| a.contacts),
                n(|a| a.distinct_emails),
                n(|a| a.shared_contacts),
            );
        }
        CrmKind::Salesforce => {
            let _ = writeln!(
                out,
                "  Salesforce: {written} Lead records, one per lead key, {} duplicates (a lead written again with other fields), {} repeat writes absorbed by the upsert by external id (a lead's write sent again unchanged); {latency}",
                run.duplicates, run.repeat_writes_absorbed
            );
        }
    }
    let Some(a) = &run.crm_api else {
        return;
    };
    let name = run.crm.label();
    let _ = writeln!(
        out,
        "  {name} API ({}): {} requests in all (those the storm faulted included), {} write calls past auth and the limits carrying {} leads, max {} / mean {:.1} leads per call",
        a.limits,
        a.requests,
        a.calls,
        a.leads_in_calls,
        a.max_leads_per_call,
        a.mean_leads_per_call
    );
    let tokens = a
        .tokens_issued
        .map(|t| format!(", {t} tokens issued"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  {name}'s own throttle answers ({}): {}; daily budget used {} of {}; 401s: {}{tokens}; leads dead-lettered for throttling: {}",
        a.throttle_answer, a.throttled, a.daily_used, a.daily_limit, a.unauthorized, a.throttle_dlq
    );
    if let Some(e) = &a.token_expiry {
        let cost = if run.lost == 0 && run.valid_in_dlq == 0 {
            "; no lead was lost or dead-lettered"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  every token expired at {:.1} s: {} answered 401 after it and went again with a new token; {} issued after it (the refreshes, and one per router restart){cost}",
            e.at_s,
            plural(e.unauthorized_after, "call"),
            plural(e.tokens_issued_after, "token")
        );
    }
}

fn plural(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}
