use super::*;
use crate::devtools::drill::vendor::{generate, Plan};
use std::collections::BTreeMap;

fn stats(key: &str, created: u64, writes: u64) -> CrmKey {
    CrmKey::from(&KeyStats {
        key: key.into(),
        requests: writes,
        writes,
        created,
        record_ids: Vec::new(),
        latest_body: None,
        first_write: Some(crate::timestamp::now()),
        last_write: None,
        last_headers: BTreeMap::new(),
    })
}

fn leads() -> Vec<LeadSpec> {
    generate(
        &Plan {
            leads: 400,
            duplicate_share: 0.3,
            malformed_share: 0.1,
            shared_inbox_share: 0.0,
            seed: 3,
            run_id: "r".into(),
        },
        "drill",
    )
}

fn accepted(leads: &[LeadSpec]) -> Vec<LeadOutcome> {
    leads
        .iter()
        .map(|l| LeadOutcome {
            answer: if l.kind == LeadKind::Unparseable {
                Answer::Refused(400)
            } else {
                Answer::Accepted
            },
            first_sent: SystemTime::now() - std::time::Duration::from_millis(50),
            attempts: 1,
        })
        .collect()
}

fn perfect(leads: &[LeadSpec]) -> (HashMap<String, CrmKey>, HashMap<String, String>) {
    let mut crm = HashMap::new();
    let mut dlq = HashMap::new();
    for l in leads {
        match l.kind {
            LeadKind::Valid => {
                crm.insert(l.key.clone(), stats(&l.key, 1, 2));
            }
            LeadKind::SchemaInvalid => {
                dlq.insert(l.key.clone(), "schema".into());
            }
            LeadKind::Unparseable => {}
        }
    }
    (crm, dlq)
}

fn evidence<'a>(
    leads: &'a [LeadSpec],
    outcomes: &'a [LeadOutcome],
    crm: HashMap<String, CrmKey>,
    dlq: HashMap<String, String>,
) -> Evidence<'a> {
    Evidence {
        design: "leadrouter",
        crm_kind: CrmKind::Http,
        leads,
        outcomes,
        vendor: CounterSnapshot::default(),
        crm,
        dlq: Some(dlq),
        superseded: HashSet::new(),
        faults: Vec::new(),
        send_seconds: 1.0,
        drain_seconds: 1.0,
        topology: None,
        crm_api: None,
        edge: None,
    }
}

#[test]
fn a_perfect_run_is_clean() {
    let leads = leads();
    let outcomes = accepted(&leads);
    let (crm, dlq) = perfect(&leads);
    let r = reconcile(evidence(&leads, &outcomes, crm, dlq));
    assert!(r.clean(), "{r:?}");
    assert_eq!(r.valid + r.schema_invalid + r.unparseable, 400);
    assert_eq!(r.repeat_writes_absorbed as usize, r.valid);
    assert!(r.intake_to_crm_ms.p95 >= 40.0);
    assert!(render_table(&[&r]).contains("| leads lost | unknown | 0 |"));
}

#[test]
fn loss_duplicates_misplacement_and_strangers_are_each_caught() {
    let leads = leads();
    let outcomes = accepted(&leads);
    let (mut crm, mut dlq) = perfect(&leads);
    let valid: Vec<&LeadSpec> = leads.iter().filter(|l| l.kind == LeadKind::Valid).collect();
    crm.remove(&valid[0].key);
    crm.insert(valid[1].key.clone(), stats(&valid[1].key, 2, 2));
    crm.remove(&valid[2].key);
    dlq.insert(valid[2].key.clone(), "sink_exhausted".into());
    let bad = leads
        .iter()
        .find(|l| l.kind == LeadKind::SchemaInvalid)
        .expect("a schema-invalid lead");
    dlq.remove(&bad.key);
    crm.insert("lr_stranger".into(), stats("lr_stranger", 1, 1));
    let r = reconcile(evidence(&leads, &outcomes, crm, dlq));
    assert_eq!(r.lost, 1);
    assert_eq!(r.lost_examples, vec![valid[0].event_id.clone()]);
    assert_eq!(r.duplicates, 1);
    assert_eq!(r.valid_in_dlq, 1);
    assert_eq!(r.malformed_misplaced, 1);
    assert_eq!(r.unexpected, 1);
    assert_eq!(r.unexpected_examples, vec!["crm:lr_stranger".to_string()]);
    assert_eq!(r.interventions, 3, "{:?}", r.intervention_notes);
    assert_eq!(r.lost_shared_inbox, 0);
    assert!(!r.clean());
}

#[test]
fn a_lead_lost_to_a_later_one_with_its_email_is_told_apart() {
    let mut leads = leads();
    let valid: Vec<usize> = (0..leads.len())
        .filter(|i| leads[*i].kind == LeadKind::Valid)
        .collect();
    let (older, later) = (valid[3], valid[9]);
    leads[later].email = leads[older].email.clone();
    let outcomes = accepted(&leads);
    let (mut crm, dlq) = perfect(&leads);
    crm.remove(&leads[older].key);
    crm.remove(&leads[valid[0]].key);
    let r = reconcile(evidence(&leads, &outcomes, crm.clone(), dlq.clone()));
    assert_eq!((r.lost, r.lost_shared_inbox), (2, 1));
    assert_eq!(
        r.superseded, 0,
        "an append CRM keeps every lead: the older one is lost"
    );

    // HubSpot keeps one contact per email (latest-wins), but a lead missing there is
    // superseded only when the router recorded that its fence skipped it.
    let mut ev = evidence(&leads, &outcomes, crm.clone(), dlq.clone());
    ev.crm_kind = CrmKind::Hubspot;
    let r = reconcile(ev);
    assert_eq!((r.lost, r.lost_shared_inbox, r.superseded), (2, 1, 0));

    // Recorded: the older lead was skipped on purpose once the other was written, so it
    // is superseded, not lost. The other missing lead is lost still, and a missing lead
    // with no lead of its email at the CRM is lost whatever the router recorded.
    let mut ev = evidence(&leads, &outcomes, crm.clone(), dlq.clone());
    ev.crm_kind = CrmKind::Hubspot;
    ev.superseded = [leads[older].key.clone(), leads[valid[0]].key.clone()].into();
    let r = reconcile(ev);
    assert_eq!((r.lost, r.lost_shared_inbox, r.superseded), (1, 0, 1));
    assert_eq!(r.lost_examples, vec![leads[valid[0]].event_id.clone()]);
    assert!(
        render_table(&[&r]).contains("| superseded by a newer lead of the email (latest-wins) |")
    );

    // The vendor's later lead can be the older one in the stream (its earlier sends were
    // refused during a kill while the other was stored): superseded all the same.
    let (mut crm, dlq) = perfect(&leads);
    crm.remove(&leads[later].key);
    let mut ev = evidence(&leads, &outcomes, crm, dlq);
    ev.crm_kind = CrmKind::Hubspot;
    ev.superseded = [leads[later].key.clone()].into();
    let r = reconcile(ev);
    assert_eq!((r.lost, r.superseded), (0, 1));
}

#[test]
fn a_fleet_run_is_its_own_column_with_its_fault_rows() {
    let leads = leads();
    let outcomes = accepted(&leads);
    let (crm, dlq) = perfect(&leads);
    let mut ev = evidence(&leads, &outcomes, crm, dlq);
    ev.topology = Some(Topology {
        routers: 3,
        nats: NatsKind::Cluster,
        nats_nodes: Some(3),
        replicas: 3,
        partitions: 16,
        vendor_requests_per_router: vec![10, 10, 10],
    });
    ev.faults = vec![
        FaultRecord {
            router: Some(1),
            unavailable_ms: 450,
            recovered: true,
            vendor_gap_ms: Some(3),
            partitions_settled_ms: Some(4100),
            ..FaultRecord::new(FaultKind::KillRouter)
        },
        FaultRecord {
            node: Some("n2".into()),
            new_leader: Some("n1".into()),
            leader_elected_ms: Some(1800),
            vendor_gap_ms: Some(1700),
            rejoined_ms: Some(600),
            unavailable_ms: 1700,
            recovered: true,
            ..FaultRecord::new(FaultKind::KillNatsNode)
        },
    ];
    let r = reconcile(ev);
    // The vendor's gaps, not one router's restart: the others kept answering.
    assert_eq!(r.intake_unavailable_ms, 1703);
    let table = render_table(&[&r]);
    assert!(
        table.contains("| leadrouter, 3 routers, 3-node NATS R3 (drill) |"),
        "{table}"
    );
    assert!(table.contains("| r1 450 ms |"), "{table}");
    assert!(table.contains("| 4100 ms |"), "{table}");
    assert!(
        table.contains("| n2: 1800 ms / 1700 ms / 600 ms |"),
        "{table}"
    );
}

#[test]
fn a_batching_crm_run_names_its_crm_and_shows_the_vendors_side() {
    let leads = leads();
    let outcomes = accepted(&leads);
    let (crm, dlq) = perfect(&leads);
    let mut ev = evidence(&leads, &outcomes, crm, dlq);
    ev.crm_kind = CrmKind::Hubspot;
    ev.crm_api = Some(CrmApiReport {
        calls: 12,
        max_leads_per_call: 100,
        mean_leads_per_call: 30.25,
        throttled: 2,
        throttle_answer: "429".into(),
        ..CrmApiReport::default()
    });
    let mut r = reconcile(ev);
    assert!(r.clean(), "{r:?}");
    let table = render_table(&[&r]);
    assert!(
        table.contains("| metric | seed before (production) | leadrouter -> HubSpot (drill) |"),
        "{table}"
    );
    assert!(
        table.contains("| CRM calls / max / mean leads per call |  | 12 / 100 / 30.2 |"),
        "{table}"
    );
    assert!(table.contains("|  | 2 (429) |"), "{table}");
    assert!(
        table.contains("| leads dead-lettered for throttling |  | 0 |"),
        "{table}"
    );
    // A throttled lead in the DLQ is the one thing a throttle must never cause.
    if let Some(a) = r.crm_api.as_mut() {
        a.throttle_dlq = 1;
    }
    assert!(!r.clean());
}

#[test]
fn an_http_crm_table_has_no_vendor_rows() {
    let leads = leads();
    let outcomes = accepted(&leads);
    let (crm, dlq) = perfect(&leads);
    let table = render_table(&[&reconcile(evidence(&leads, &outcomes, crm, dlq))]);
    assert!(!table.contains("CRM calls"), "{table}");
    assert!(!table.contains("throttl"), "{table}");
}

#[test]
fn an_edge_run_shows_the_delay_the_waiting_and_each_faults_recovery() {
    use crate::devtools::drill::storm::Site;
    let leads = leads();
    let outcomes = accepted(&leads);
    let (crm, dlq) = perfect(&leads);
    let mut ev = evidence(&leads, &outcomes, crm, dlq);
    ev.edge = Some(EdgeReport {
        name: "drill".into(),
        leads_at_hub: 390,
        delay_ms: Percentiles {
            p50: 4.2,
            p95: 6100.0,
            p99: 7900.0,
            max: 8400.0,
        },
        max_waiting: 210,
        ..EdgeReport::default()
    });
    ev.faults = vec![
        FaultRecord {
            unavailable_ms: 9000,
            recovered: true,
            cut_ms: Some(8000),
            link_back_ms: Some(1100),
            backlog_cleared_ms: Some(1500),
            ..FaultRecord::new(FaultKind::CutLink)
        },
        FaultRecord {
            unavailable_ms: 800,
            recovered: true,
            site: Some(Site::Hub),
            link_back_ms: Some(2000),
            backlog_cleared_ms: None,
            ..FaultRecord::new(FaultKind::KillRouter)
        },
    ];
    let mut r = reconcile(ev);
    assert!(r.clean(), "{r:?}");
    // Neither a cut nor the hub's kill took the edge's intake down.
    assert_eq!(r.intake_unavailable_ms, 0);
    let table = render_table(&[&r]);
    assert!(
        table.contains("| metric | seed before (production) | leadrouter, edge -> hub (drill) |"),
        "{table}"
    );
    assert!(
        table.contains("| edge -> hub delay p50 / p95 |  | 4.2 ms / 6100 ms |"),
        "{table}"
    );
    assert!(
        table.contains("| most leads waiting at the edge |  | 210 |"),
        "{table}"
    );
    assert!(
        table.contains("| cut: 1100 ms / 1500 ms, hub kill: 2000 ms / never |"),
        "{table}"
    );
    assert!(!table.contains("router kill"), "{table}");
    // A lead the edge accepted and the hub never stored fails the run.
    if let Some(e) = r.edge.as_mut() {
        e.accepted_not_at_hub = 1;
    }
    assert!(!r.clean());
}

#[test]
fn a_one_router_table_has_no_fleet_rows() {
    let leads = leads();
    let outcomes = accepted(&leads);
    let (crm, dlq) = perfect(&leads);
    let mut ev = evidence(&leads, &outcomes, crm, dlq);
    ev.faults = vec![FaultRecord {
        unavailable_ms: 700,
        recovered: true,
        ..FaultRecord::new(FaultKind::KillRouter)
    }];
    let table = render_table(&[&reconcile(ev)]);
    assert!(table.contains("| metric | seed before (production) | leadrouter (drill) |"));
    assert!(!table.contains("router kill"), "{table}");
    assert!(
        table.contains("| intake unavailable (faults) |  | 700 ms |"),
        "{table}"
    );
}
