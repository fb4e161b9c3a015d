//! Reconciliation: what the vendor was told against what the CRM and the DLQ hold, lead by
//! lead, and the seed's table rendered from it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use super::options::CrmKind;
use super::storm::{FaultKind, FaultRecord};
use super::vendor::{Answer, CounterSnapshot, LeadKind, LeadOutcome, LeadSpec};
use crate::devtools::harness::probe::percentile;
use crate::devtools::sandbox_crm::KeyStats;

/// Everything the drill measured; `--json` prints this.
#[derive(Debug, Serialize)]
pub struct DrillReport {
    /// The CRM the leadrouter run wrote to (`--crm`); the baseline always writes to `http`.
    pub crm: CrmKind,
    pub leads: usize,
    pub rate: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
    pub seed: u64,
    pub process_faults: bool,
    pub runs: Vec<RunReport>,
    /// The leadrouter run lost nothing, duplicated nothing and needed nobody.
    pub passed: bool,
    pub table: String,
    pub work_dir: String,
}

/// One run of the storm against one design.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `leadrouter` or `direct`.
    pub design: String,
    /// The CRM this run wrote to.
    pub crm: CrmKind,
    pub leads: usize,
    pub valid: usize,
    pub schema_invalid: usize,
    pub unparseable: usize,
    /// Leads the vendor submitted more than once at the same moment.
    pub duplicate_submitted: usize,
    /// Vendor answers: leads with a 2xx, refused with a 4xx, and given up after retries.
    pub accepted: usize,
    pub refused: usize,
    pub vendor_gave_up: usize,
    pub vendor: CounterSnapshot,
    /// CRM records for the drill's leads, and the extra ones (a lead's second, third ... record).
    /// At HubSpot, which keeps one contact per email, the contact writes that carry a lead's key
    /// (so two leads of one shared inbox are two); at Salesforce, the writes of each lead's
    /// record. Neither counts a repeat the vendor's upsert absorbed.
    pub crm_records: u64,
    pub duplicates: u64,
    pub duplicates_per_10k: f64,
    /// Repeat writes the CRM absorbed by idempotency key (not records; shown for honesty). At
    /// HubSpot and Salesforce: a lead's write sent again onto its record unchanged, absorbed by
    /// the upsert (by email, by the external id).
    pub repeat_writes_absorbed: u64,
    /// `None` for a design without a DLQ.
    pub dlq_entries: Option<usize>,
    pub dlq_placement_pct: Option<f64>,
    /// Good leads that ended in the DLQ: each needs an operator's replay.
    pub valid_in_dlq: usize,
    /// Schema-invalid leads accepted by the design but not in its DLQ (at the CRM or nowhere).
    pub malformed_misplaced: usize,
    /// Good leads neither at the CRM nor in the DLQ: told "accepted" and gone, refused, or never
    /// accepted before the vendor gave up.
    pub lost: usize,
    /// Up to five event ids of lost leads, to start the search.
    pub lost_examples: Vec<String>,
    /// Of the lost: good leads whose email another lead of the run shares (a shared inbox) and
    /// that other lead is at the CRM. A design that takes one email's leads for versions of one
    /// lead drops the older there: an email dedupe, or an ordering fence that skips an older
    /// event at upsert sinks once a newer one was written.
    #[serde(skip_serializing_if = "is_zero")]
    pub lost_shared_inbox: usize,
    /// HubSpot (one contact per email, `latest-wins`): good leads of a shared inbox skipped on
    /// purpose because a newer lead of the same email (newer in `LEADS`) was already written to
    /// the contact: a kill held the older one until its redelivery. The router's lead lookup
    /// says `superseded`, and the contact holds the other lead's data; not lost. Counted here
    /// instead of `lost`.
    #[serde(skip_serializing_if = "is_zero")]
    pub superseded: usize,
    /// Records or DLQ entries that belong to no lead of the run: must be 0.
    pub unexpected: usize,
    /// Up to five of them, as `crm:<key>` or `dlq:<key>`.
    pub unexpected_examples: Vec<String>,
    /// Vendor's first send -> first CRM write, over good leads at the CRM.
    pub intake_to_crm_ms: Percentiles,
    pub interventions: usize,
    pub intervention_notes: Vec<String>,
    pub faults: Vec<FaultRecord>,
    pub intake_unavailable_ms: u64,
    pub send_seconds: f64,
    pub drain_seconds: f64,
    /// Set when the drill ran several routers or a NATS cluster; absent for one router on its
    /// embedded nats-server (or `--nats-url`), whose report keeps its shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// What the vendor's API saw, for the batching CRMs (`--crm hubspot`, `--crm salesforce`);
    /// absent for the http CRM, whose report keeps its shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_api: Option<CrmApiReport>,
    /// `--edge`: the edge site's figures; absent otherwise, whose report keeps its shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeReport>,
}

/// `--edge`: what the link between the edge and the hub did to the leads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeReport {
    /// The edge's name (`[edge] name`, its JetStream domain `edge-{name}`).
    pub name: String,
    /// Leads the hub's `LEADS` holds as sourced from the edge (on the legacy `leads.in.*`
    /// subjects), one per lead key, and the sourced copies beyond one per key (must be 0: the
    /// hub's duplicate window absorbs a lead the edge stored twice).
    pub leads_at_hub: usize,
    pub extra_copies: usize,
    /// Leads the vendor was told were accepted that the hub never stored: lost between the edge
    /// and the hub.
    pub accepted_not_at_hub: usize,
    /// Per lead: the hub's store time of its sourced copy minus the edge's 202
    /// (`Leadrouter-Received-At`), in milliseconds.
    pub delay_ms: Percentiles,
    /// The most leads seen waiting at the edge (`LEADS_EDGE`), polled through the run.
    pub max_waiting: u64,
    /// What the drill's proxy between the edge's leaf remote and the hub's leaf port did.
    pub link_connections: u64,
    pub link_refused: u64,
    pub link_cuts: u64,
}

/// What the CRM holds for one lead key, whatever the CRM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CrmKey {
    /// Writes that count as the lead being written: the records created for it (http), the
    /// contact writes that carry its key (HubSpot), the writes of its record (Salesforce).
    /// One is right; each more is a duplicate.
    pub written: u64,
    /// Further writes the CRM absorbed, making no record and changing none: a repeated POST
    /// with the lead's `Idempotency-Key` (http), the lead's write sent again onto its record
    /// unchanged (HubSpot, Salesforce).
    pub absorbed: u64,
    /// When the lead's first write landed, where the CRM keeps that (RFC 3339).
    pub first_write: Option<String>,
}

impl From<&KeyStats> for CrmKey {
    fn from(k: &KeyStats) -> CrmKey {
        CrmKey {
            written: k.created,
            absorbed: k.writes.saturating_sub(k.created),
            first_write: k.first_write.clone(),
        }
    }
}

/// The vendor's side of a run against a batching CRM: how the sink used its API under the
/// vendor's limits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CrmApiReport {
    /// The limits the personality enforced, in words.
    pub limits: String,
    /// Every request the routers sent to the vendor's routes: the ones the storm faulted, 401s
    /// and (Salesforce) token requests included.
    pub requests: u64,
    /// Write calls that got past auth and the vendor's limits.
    pub calls: u64,
    /// Leads in those calls (a lead sent again after a failed call counts again).
    pub leads_in_calls: u64,
    pub max_leads_per_call: usize,
    pub mean_leads_per_call: f64,
    /// The vendor's own throttle answers: HubSpot's 429s (rolling window and daily), Salesforce's
    /// 403 `REQUEST_LIMIT_EXCEEDED`. The storm's injected 429s are faults, not counted here.
    pub throttled: u64,
    /// `429` or `403 REQUEST_LIMIT_EXCEEDED`.
    pub throttle_answer: String,
    /// The vendor's daily budget (HubSpot's day, Salesforce's rolling 24 h) used at the end, of
    /// its limit.
    pub daily_used: u64,
    pub daily_limit: u64,
    /// 401s: a wrong token (HubSpot), an expired one (Salesforce).
    pub unauthorized: u64,
    /// Leads in the DLQ whose last error is a throttle: must be 0, a throttled lead goes back
    /// to the queue without spending an attempt.
    pub throttle_dlq: usize,
    /// HubSpot: its contacts, the distinct emails of the run's leads written, and the contacts
    /// more than one lead was written to (shared inboxes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_emails: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_contacts: Option<usize>,
    /// Salesforce: OAuth tokens the sandbox issued over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_issued: Option<u64>,
    /// Salesforce: the storm's expiry of every issued token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expiry: Option<TokenExpiry>,
}

/// The storm expired every Salesforce token the sandbox had issued.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenExpiry {
    /// Seconds into the vendor's send window.
    pub at_s: f64,
    /// 401 `INVALID_SESSION_ID` answers after it (each one a call that then went again with a
    /// new token).
    pub unauthorized_after: u64,
    /// Tokens issued after it: the sinks' refreshes, and one per router (re)start.
    pub tokens_issued_after: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Where the routers' NATS came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsKind {
    /// Each router's own embedded nats-server.
    Embedded,
    /// One nats-server the drill started for its routers to share.
    Shared,
    /// A JetStream cluster the drill started (`--nats-cluster`).
    Cluster,
    /// `--nats-url`: not the drill's.
    External,
}

/// The design under test when it is more than one router on its embedded nats-server.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub routers: usize,
    pub nats: NatsKind,
    /// Nodes of the cluster, for [`NatsKind::Cluster`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_nodes: Option<usize>,
    /// `streams.replicas` of the routers.
    pub replicas: usize,
    /// `handlers.partitions` of the routers.
    pub partitions: u16,
    /// The vendor's requests per router, in router order (how its balancer spread them).
    pub vendor_requests_per_router: Vec<u64>,
}

impl Topology {
    /// The table's column name.
    pub fn label(&self) -> String {
        let routers = match self.routers {
            1 => "1 router".to_string(),
            n => format!("{n} routers"),
        };
        let nats = match (self.nats, self.nats_nodes) {
            (NatsKind::Cluster, Some(n)) => format!("{n}-node NATS R{}", self.replicas),
            (NatsKind::Cluster, None) => "a NATS cluster".into(),
            (NatsKind::Shared, _) => "one nats-server".into(),
            (NatsKind::External, _) => "external NATS".into(),
            (NatsKind::Embedded, _) => "embedded nats-server".into(),
        };
        format!("leadrouter, {routers}, {nats} (drill)")
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Zeros when there are no samples.
    pub fn of(mut v: Vec<f64>) -> Percentiles {
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| percentile(&v, p).unwrap_or_default();
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl RunReport {
    /// Nothing lost, nothing duplicated, nothing misplaced, nobody had to step in. (A lead
    /// dead-lettered for a throttle is a good lead in the DLQ, an intervention already; it is
    /// named here too, since it is the one thing a throttle must never cause.)
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.malformed_misplaced == 0
            && self.unexpected == 0
            && self.interventions == 0
            && self.crm_api.as_ref().is_none_or(|a| a.throttle_dlq == 0)
            && self
                .edge
                .as_ref()
                .is_none_or(|e| e.accepted_not_at_hub == 0 && e.extra_copies == 0)
    }

    /// The table's column name: the design, and the CRM when it is not the http one.
    pub fn column(&self) -> String {
        let base = match (&self.topology, self.design.as_str()) {
            (_, "direct") => "direct pass-through (drill)".to_string(),
            _ if self.edge.is_some() => "leadrouter, edge -> hub (drill)".to_string(),
            (Some(t), _) => t.label(),
            (None, _) => "leadrouter (drill)".to_string(),
        };
        match self.crm {
            CrmKind::Http => base,
            crm => match base.strip_suffix(" (drill)") {
                Some(b) => format!("{b} -> {} (drill)", crm.label()),
                None => format!("{base} -> {}", crm.label()),
            },
        }
    }
}

/// What the run left behind, gathered after the drain.
pub struct Evidence<'a> {
    pub design: &'a str,
    pub crm_kind: CrmKind,
    pub leads: &'a [LeadSpec],
    pub outcomes: &'a [LeadOutcome],
    pub vendor: CounterSnapshot,
    /// CRM bookkeeping by lead key (see `crm::books`). A key of no lead (a write
    /// that names no lead) is a stranger.
    pub crm: HashMap<String, CrmKey>,
    /// Lead key -> DLQ reason; `None` for a design without a DLQ.
    pub dlq: Option<HashMap<String, String>>,
    /// Leads the router itself recorded as superseded (its lead lookup says so): upsert sinks
    /// skipped them because a newer event of their group had been written. Empty for a design
    /// that keeps no such record.
    pub superseded: HashSet<String>,
    pub faults: Vec<FaultRecord>,
    pub send_seconds: f64,
    pub drain_seconds: f64,
    pub topology: Option<Topology>,
    pub crm_api: Option<CrmApiReport>,
    pub edge: Option<EdgeReport>,
}

pub fn reconcile(ev: Evidence<'_>) -> RunReport {
    let mut r = RunReport {
        design: ev.design.to_string(),
        crm: ev.crm_kind,
        leads: ev.leads.len(),
        valid: 0,
        schema_invalid: 0,
        unparseable: 0,
        duplicate_submitted: 0,
        accepted: 0,
        refused: 0,
        vendor_gave_up: 0,
        vendor: ev.vendor,
        crm_records: 0,
        duplicates: 0,
        duplicates_per_10k: 0.0,
        repeat_writes_absorbed: 0,
        dlq_entries: ev.dlq.as_ref().map(HashMap::len),
        dlq_placement_pct: None,
        valid_in_dlq: 0,
        malformed_misplaced: 0,
        lost: 0,
        lost_examples: Vec::new(),
        lost_shared_inbox: 0,
        superseded: 0,
        unexpected: 0,
        unexpected_examples: Vec::new(),
        intake_to_crm_ms: Percentiles::default(),
        interventions: 0,
        intervention_notes: Vec::new(),
        intake_unavailable_ms: ev
            .faults
            .iter()
            .map(FaultRecord::intake_unavailable_ms)
            .sum(),
        faults: ev.faults,
        send_seconds: ev.send_seconds,
        drain_seconds: ev.drain_seconds,
        topology: ev.topology,
        crm_api: ev.crm_api,
        edge: ev.edge,
    };
    // Emails of the good leads that reached the CRM.
    let at_crm_emails: HashSet<&str> = ev
        .leads
        .iter()
        .filter(|l| l.kind == LeadKind::Valid && !l.email.is_empty())
        .filter(|l| ev.crm.get(&l.key).is_some_and(|k| k.written > 0))
        .map(|l| l.email.as_str())
        .collect();
    let mut latencies = Vec::new();
    let mut matched_dlq = 0;
    let mut matched_keys = 0;
    for (lead, out) in ev.leads.iter().zip(ev.outcomes) {
        if lead.copies > 1 {
            r.duplicate_submitted += 1;
        }
        match out.answer {
            Answer::Accepted => r.accepted += 1,
            Answer::Refused(_) => r.refused += 1,
            Answer::GaveUp => r.vendor_gave_up += 1,
        }
        let at_crm = ev.crm.get(&lead.key).filter(|k| k.written > 0);
        if let Some(k) = ev.crm.get(&lead.key) {
            matched_keys += 1;
            r.crm_records += k.written;
            r.duplicates += k.written.saturating_sub(1);
            r.repeat_writes_absorbed += k.absorbed;
        }
        let in_dlq = ev.dlq.as_ref().and_then(|d| d.get(&lead.key));
        if in_dlq.is_some() {
            matched_dlq += 1;
        }
        match lead.kind {
            LeadKind::Valid => {
                r.valid += 1;
                if let Some(k) = at_crm {
                    if let Some(ms) = k
                        .first_write
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(SystemTime::from)
                        .and_then(|w| w.duration_since(out.first_sent).ok())
                    {
                        latencies.push(ms.as_secs_f64() * 1000.0);
                    }
                } else if in_dlq.is_some() {
                    r.valid_in_dlq += 1;
                } else {
                    // Its email is at the CRM through another lead (it is absent itself).
                    let shared_at_crm = at_crm_emails.contains(lead.email.as_str());
                    if shared_at_crm
                        && ev.crm_kind.latest_wins()
                        && ev.superseded.contains(&lead.key)
                    {
                        // The contact holds the lead of the email that the stream holds as
                        // newer, and the router recorded that its fence skipped this one by
                        // design rather than write old data over new. "Newer" is the stream's
                        // order, not the vendor's: a lead whose first sends were refused
                        // during a kill is stored after a later lead of its inbox.
                        r.superseded += 1;
                    } else {
                        r.lost += 1;
                        if r.lost_examples.len() < 5 {
                            r.lost_examples.push(lead.event_id.clone());
                        }
                        if shared_at_crm {
                            r.lost_shared_inbox += 1;
                        }
                    }
                }
            }
            LeadKind::SchemaInvalid => {
                r.schema_invalid += 1;
                // Refused at the edge is a fine answer too: the vendor was told.
                let placed = match (out.answer, &ev.dlq) {
                    (Answer::Accepted, Some(_)) => in_dlq.is_some() && at_crm.is_none(),
                    (Answer::Accepted, None) => at_crm.is_none(),
                    (Answer::Refused(_), _) => at_crm.is_none() && in_dlq.is_none(),
                    (Answer::GaveUp, _) => false,
                };
                if !placed {
                    r.malformed_misplaced += 1;
                }
            }
            LeadKind::Unparseable => {
                r.unparseable += 1;
                if !matches!(out.answer, Answer::Refused(400)) || at_crm.is_some() {
                    r.malformed_misplaced += 1;
                }
            }
        }
    }
    r.unexpected = ev.crm.len().saturating_sub(matched_keys)
        + ev.dlq
            .as_ref()
            .map_or(0, |d| d.len().saturating_sub(matched_dlq));
    if r.unexpected > 0 {
        let known: std::collections::HashSet<&str> =
            ev.leads.iter().map(|l| l.key.as_str()).collect();
        let crm = ev.crm.keys().map(|k| ("crm", k));
        let dlq = ev.dlq.iter().flat_map(|d| d.keys()).map(|k| ("dlq", k));
        r.unexpected_examples = crm
            .chain(dlq)
            .filter(|(_, k)| !known.contains(k.as_str()))
            .take(5)
            .map(|(w, k)| format!("{w}:{k}"))
            .collect();
    }
    r.duplicates_per_10k = r.duplicates as f64 * 10_000.0 / r.valid.max(1) as f64;
    r.dlq_placement_pct = r
        .dlq_entries
        .map(|n| n as f64 * 100.0 / r.accepted.max(1) as f64);
    r.intake_to_crm_ms = Percentiles::of(latencies);
    let mut step = |cond: bool, note: String| {
        if cond {
            r.interventions += 1;
            r.intervention_notes.push(note);
        }
    };
    step(
        r.valid_in_dlq > 0,
        format!("replay {} good leads from the DLQ", r.valid_in_dlq),
    );
    step(
        r.duplicates > 0,
        format!("find and delete {} duplicate CRM records", r.duplicates),
    );
    step(
        r.lost > 0,
        format!("recover {} lost leads from the vendor's export", r.lost),
    );
    let unrecovered = r.faults.iter().filter(|f| !f.recovered).count();
    step(
        unrecovered > 0,
        format!("bring back {unrecovered} component(s) that did not recover on their own"),
    );
    r
}

fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// The seed's table, one column per run; the seed's own "before" figures alongside.
pub fn render_table(runs: &[&RunReport]) -> String {
    let mut out = String::new();
    let mut header = "| metric | seed before (production) |".to_string();
    let mut rule = "|---|---:|".to_string();
    for r in runs {
        let _ = write!(header, " {} |", r.column());
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let mut row = |metric: &str, seed: &str, f: &dyn Fn(&RunReport) -> String| {
        let mut line = format!("| {metric} | {seed} |");
        for r in runs {
            let _ = write!(line, " {} |", f(r));
        }
        let _ = writeln!(out, "{line}");
    };
    row("p95 intake -> CRM", "7.2 s", &|r| {
        ms(r.intake_to_crm_ms.p95)
    });
    row("duplicates per 10k leads", "83", &|r| {
        format!("{:.1} ({})", r.duplicates_per_10k, r.duplicates)
    });
    row(
        "DLQ placement rate",
        "n.a.",
        &|r| match r.dlq_placement_pct {
            Some(p) => format!("{p:.2}% ({})", r.dlq_entries.unwrap_or(0)),
            None => "n.a. (no DLQ)".into(),
        },
    );
    row("leads lost", "unknown", &|r| r.lost.to_string());
    if runs.iter().any(|r| r.superseded > 0) {
        row(
            "superseded by a newer lead of the email (latest-wins)",
            "",
            &|r| r.superseded.to_string(),
        );
    }
    row("operator interventions", "3 per week", &|r| {
        r.interventions.to_string()
    });
    row("malformed leads not in the DLQ / refused", "", &|r| {
        r.malformed_misplaced.to_string()
    });
    row("intake unavailable (faults)", "", &|r| {
        ms(r.intake_unavailable_ms as f64)
    });
    row("vendor requests / retries / gave up", "", &|r| {
        format!(
            "{} / {} / {}",
            r.vendor.requests, r.vendor.retries, r.vendor_gave_up
        )
    });
    // Rows of the batching CRMs, only when a run wrote to one: the http CRM's table stays as
    // it was.
    if runs.iter().any(|r| r.crm_api.is_some()) {
        let api = |r: &RunReport, f: &dyn Fn(&CrmApiReport) -> String| {
            r.crm_api.as_ref().map(f).unwrap_or_default()
        };
        row("CRM calls / max / mean leads per call", "", &|r| {
            api(r, &|a| {
                format!(
                    "{} / {} / {:.1}",
                    a.calls, a.max_leads_per_call, a.mean_leads_per_call
                )
            })
        });
        row(
            "vendor throttle answers (429 / 403 REQUEST_LIMIT_EXCEEDED)",
            "",
            &|r| api(r, &|a| format!("{} ({})", a.throttled, a.throttle_answer)),
        );
        row("leads dead-lettered for throttling", "", &|r| {
            api(r, &|a| a.throttle_dlq.to_string())
        });
    }
    // Rows of the multi-router and cluster faults, only when a run had them: the one-router
    // table stays as it was.
    let listed = |r: &RunReport, keep: &dyn Fn(&FaultRecord) -> Option<String>| {
        r.faults
            .iter()
            .filter(|f| f.skipped.is_none())
            .filter_map(keep)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fleet_kills = |f: &FaultRecord| f.kind == FaultKind::KillRouter && f.router.is_some();
    if runs.iter().any(|r| r.faults.iter().any(fleet_kills)) {
        row("router kill -9 -> its /readyz again", "", &|r| {
            listed(r, &|f| {
                fleet_kills(f).then(|| {
                    let back = if f.recovered { "" } else { " NOT recovered" };
                    format!(
                        "r{} {}{back}",
                        f.router.unwrap_or(0),
                        ms(f.unavailable_ms as f64)
                    )
                })
            })
        });
        row("partitions owned again after a router kill", "", &|r| {
            listed(r, &|f| {
                fleet_kills(f).then(|| {
                    f.partitions_settled_ms
                        .map_or("never".into(), |v| ms(v as f64))
                })
            })
        });
    }
    // Rows of the edge site, only when a run had one.
    if runs.iter().any(|r| r.edge.is_some()) {
        let edge = |r: &RunReport, f: &dyn Fn(&EdgeReport) -> String| {
            r.edge.as_ref().map(f).unwrap_or_default()
        };
        row("edge -> hub delay p50 / p95", "", &|r| {
            edge(r, &|e| {
                format!("{} / {}", ms(e.delay_ms.p50), ms(e.delay_ms.p95))
            })
        });
        row("edge -> hub delay max", "", &|r| {
            edge(r, &|e| ms(e.delay_ms.max))
        });
        row("leads lost between edge and hub", "", &|r| {
            edge(r, &|e| e.accepted_not_at_hub.to_string())
        });
        row("most leads waiting at the edge", "", &|r| {
            edge(r, &|e| e.max_waiting.to_string())
        });
        row(
            "edge faults: link back / edge backlog at the hub",
            "",
            &|r| {
                let opt = |v: Option<u64>| v.map_or("never".into(), |v| ms(v as f64));
                listed(r, &|f| {
                    let what = match (f.kind, f.site) {
                        (FaultKind::CutLink, _) => "cut".to_string(),
                        (FaultKind::KillRouter, Some(s)) => format!("{} kill", s.label()),
                        _ => return None,
                    };
                    Some(format!(
                        "{what}: {} / {}",
                        opt(f.link_back_ms),
                        opt(f.backlog_cleared_ms)
                    ))
                })
            },
        );
    }
    if runs
        .iter()
        .any(|r| r.faults.iter().any(|f| f.kind == FaultKind::KillNatsNode))
    {
        row(
            "NATS node kill -9: new leader / intake 2xx / node rejoined",
            "",
            &|r| {
                let opt = |v: Option<u64>| v.map_or("never".into(), |v| ms(v as f64));
                listed(r, &|f| {
                    (f.kind == FaultKind::KillNatsNode).then(|| {
                        format!(
                            "{}: {} / {} / {}",
                            f.node.as_deref().unwrap_or("?"),
                            opt(f.leader_elected_ms),
                            opt(f.vendor_gap_ms),
                            opt(f.rejoined_ms)
                        )
                    })
                })
            },
        );
    }
    out
}

#[cfg(test)]
mod tests;
