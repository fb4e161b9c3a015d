//! The storm's schedule: how the CRM flaps, when the process faults strike, and how long a
//! component may take to recover from one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::devtools::sandbox_crm::{FaultMode, Faults, SandboxCrm};

/// Restart delay of the drill's "process supervisor" after a kill.
pub(super) const RESTART_DELAY: Duration = Duration::from_millis(100);
/// How long a component may take to come back before the drill calls it a failure.
pub(super) const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// A CRM's ordinary answer time.
pub const CRM_LATENCY: Duration = Duration::from_millis(20);

/// One phase of the CRM's flapping.
pub struct Phase {
    pub name: &'static str,
    pub length: Duration,
    pub faults: Faults,
}

/// The CRM's cycle (18 s), repeated for as long as the vendor sends: healthy stretches between
/// a slow spell (6 s answers, past the vendor's 5 s patience), 500s, 429s with `Retry-After: 1`
/// and requests held 5 s then refused.
pub fn crm_cycle() -> Vec<Phase> {
    let healthy = || Faults {
        latency: CRM_LATENCY,
        ..Faults::healthy()
    };
    let with = |mode: FaultMode| Faults {
        mode,
        latency: CRM_LATENCY,
        retry_after_secs: 1,
        hold: Duration::from_secs(5),
        ..Faults::healthy()
    };
    let s = Duration::from_secs;
    vec![
        Phase {
            name: "healthy",
            length: s(4),
            faults: healthy(),
        },
        Phase {
            name: "slow",
            length: s(2),
            faults: Faults {
                latency: s(6),
                ..Faults::healthy()
            },
        },
        Phase {
            name: "healthy",
            length: s(2),
            faults: healthy(),
        },
        Phase {
            name: "500s",
            length: s(2),
            faults: with(FaultMode::Error500),
        },
        Phase {
            name: "healthy",
            length: s(2),
            faults: healthy(),
        },
        Phase {
            name: "429s",
            length: s(2),
            faults: with(FaultMode::Rate429),
        },
        Phase {
            name: "healthy",
            length: s(2),
            faults: healthy(),
        },
        Phase {
            name: "timeouts",
            length: s(2),
            faults: with(FaultMode::Timeout),
        },
    ]
}

/// Runs the cycle on `crm` until `stop` flips, then leaves it healthy. `now` shows the phase.
pub async fn flap(
    crm: Arc<SandboxCrm>,
    now: Arc<Mutex<&'static str>>,
    mut stop: watch::Receiver<bool>,
) {
    let cycle = crm_cycle();
    'outer: loop {
        for p in &cycle {
            crm.set_faults(p.faults.clone());
            if let Ok(mut n) = now.lock() {
                *n = p.name;
            }
            tokio::select! {
                _ = tokio::time::sleep(p.length) => {}
                _ = stop.changed() => break 'outer,
            }
        }
    }
    crm.set_faults(Faults {
        latency: CRM_LATENCY,
        ..Faults::healthy()
    });
    if let Ok(mut n) = now.lock() {
        *n = "healthy (storm over)";
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of the router, then a restart like a process supervisor's.
    KillRouter,
    /// SIGKILL of the embedded nats-server; the router's supervisor must restart it. With
    /// several routers on the drill's one shared nats-server: SIGKILL of that server, restarted
    /// by the drill like a process supervisor would.
    RestartNats,
    /// On a NATS cluster (`--nats-cluster`): SIGKILL of the node leading the `LEADS` stream.
    /// The cluster must elect a new leader on its own; the drill restarts the node afterwards
    /// and checks that it rejoins.
    KillNatsNode,
    /// `--edge`: the edge's leaf link to the hub cut at the drill's proxy for [`LINK_CUT`]
    /// (every connection dropped, reconnects refused), then let through again. The edge must
    /// keep answering 202 meanwhile, and the hub must take the leads that waited once the link
    /// is back.
    CutLink,
}

/// `--edge`: which router a kill struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// The edge router (intake, on its own leaf nats-server), the one the vendor posts to.
    Edge,
    /// The hub router (handlers and the CRM sink, on the nats-server the edge is a leaf of).
    Hub,
}

impl Site {
    pub fn label(self) -> &'static str {
        match self {
            Site::Edge => "edge",
            Site::Hub => "hub",
        }
    }
}

/// How long each of `--edge`'s link cuts lasts: long enough that leads pile up at the edge and
/// the leaf connection's 1 s reconnects fail several times over.
pub const LINK_CUT: Duration = Duration::from_secs(8);

impl FaultKind {
    /// What the storm's plan asks for, as this topology performs it: the one NATS fault of the
    /// plan is a node kill on a cluster.
    pub fn on_cluster(self, cluster: bool) -> FaultKind {
        match self {
            FaultKind::RestartNats if cluster => FaultKind::KillNatsNode,
            k => k,
        }
    }
}

/// When the faults strike, as shares of the vendor's send window: three kills and one
/// nats-server restart, spread so that each recovery finishes before the next fault.
pub fn fault_plan(window: Duration) -> Vec<(Duration, FaultKind)> {
    [
        (0.20, FaultKind::KillRouter),
        (0.40, FaultKind::KillRouter),
        (0.55, FaultKind::RestartNats),
        (0.70, FaultKind::KillRouter),
    ]
    .into_iter()
    .map(|(share, kind)| (window.mul_f64(share), kind))
    .collect()
}

/// `--edge`'s faults, as shares of the send window: a link cut, kill -9 of the edge, a second
/// cut, kill -9 of the hub. The kills are told apart by their order (the first is the edge's,
/// see `edge::EdgeSite`). Spread so that a cut's recovery (link back, the waiting leads taken by
/// the hub) usually finishes before the next fault; a late one strikes when the previous is done.
pub fn edge_fault_plan(window: Duration) -> Vec<(Duration, FaultKind)> {
    [
        (0.05, FaultKind::CutLink),
        (0.38, FaultKind::KillRouter),
        (0.48, FaultKind::CutLink),
        (0.82, FaultKind::KillRouter),
    ]
    .into_iter()
    .map(|(share, kind)| (window.mul_f64(share), kind))
    .collect()
}

/// When the storm expires the Salesforce personality's tokens (`--crm salesforce`), as a share
/// of the send window: between the first two router kills, so the token it kills is one a
/// restarted router fetched, and a call must meet the 401 and go again with a new one.
pub fn token_expiry_at(window: Duration) -> Duration {
    window.mul_f64(0.30)
}

/// What one fault did.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Seconds into the vendor's send window.
    pub at_s: f64,
    /// From the kill until intake answered `/readyz` 200 again.
    pub unavailable_ms: u64,
    pub recovered: bool,
    /// For a router kill in embedded mode: its nats-server went away with it (no orphan left
    /// holding the port and the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_orphan_left: Option<bool>,
    /// Skipped, and why (e.g. no nats-server in the baseline design).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    // The fields below are set only when the drill runs several routers or a NATS cluster
    // (`--routers`, `--nats-cluster`); the one-router report keeps its shape.
    /// Which router was killed (0-based, in start order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<usize>,
    /// The NATS node killed (its `server_name`), for [`FaultKind::KillNatsNode`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The `LEADS` leader elected after the node kill, and how long after the kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elected_ms: Option<u64>,
    /// From the killed node's restart until it was a current replica of `LEADS` again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoined_ms: Option<u64>,
    /// From the fault until the vendor got a 2xx for a request sent after it: how long the
    /// vendor, spreading over the routers, found no intake at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_gap_ms: Option<u64>,
    /// From the fault until the live routers owned every partition again, each one once and
    /// each router some (a killed router's share taken over and handed back on its restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions_settled_ms: Option<u64>,
    // The fields below are set only by `--edge`'s faults.
    /// Which router a kill struck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    /// How long the link was cut at the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_ms: Option<u64>,
    /// Leads waiting at the edge (in `LEADS_EDGE`) when the link came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_at_reopen: Option<u64>,
    /// From the end of the cut (or the restart) until the hub reached the edge's JetStream
    /// across the leaf link again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_back_ms: Option<u64>,
    /// From the end of the cut (or the restart) until every lead that waited at the edge then
    /// was stored at the hub (sourcing resumed and caught up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_cleared_ms: Option<u64>,
}

impl FaultRecord {
    /// A record with nothing measured yet.
    pub fn new(kind: FaultKind) -> FaultRecord {
        FaultRecord {
            kind,
            at_s: 0.0,
            unavailable_ms: 0,
            recovered: false,
            nats_orphan_left: None,
            skipped: None,
            router: None,
            node: None,
            new_leader: None,
            leader_elected_ms: None,
            rejoined_ms: None,
            vendor_gap_ms: None,
            partitions_settled_ms: None,
            site: None,
            cut_ms: None,
            waiting_at_reopen: None,
            link_back_ms: None,
            backlog_cleared_ms: None,
        }
    }

    /// The fault in words: "kill -9 of the router", "kill -9 of router 1", ...
    pub fn what(&self) -> String {
        if let (FaultKind::KillRouter, Some(site)) = (self.kind, self.site) {
            return format!("kill -9 of the {} router", site.label());
        }
        match (self.kind, self.router, &self.node) {
            (FaultKind::CutLink, _, _) => match self.cut_ms {
                Some(ms) => format!("edge -> hub link cut for {:.0} s", ms as f64 / 1000.0),
                None => "edge -> hub link cut".into(),
            },
            (FaultKind::KillRouter, Some(i), _) => format!("kill -9 of router {i}"),
            (FaultKind::KillRouter, None, _) => "kill -9 of the router".into(),
            (FaultKind::RestartNats, _, _) => "nats-server restart".into(),
            (FaultKind::KillNatsNode, _, Some(n)) => {
                format!("kill -9 of NATS node {n} (the LEADS leader)")
            }
            (FaultKind::KillNatsNode, _, None) => "kill -9 of a NATS node".into(),
        }
    }

    /// What intake's unavailability was for the vendor: the gap it saw where measured (several
    /// routers: one router down is not intake down), else the component's own downtime.
    pub fn intake_unavailable_ms(&self) -> u64 {
        // At an edge site the vendor posts to the edge: a cut link or a dead hub leaves its
        // intake up (that is what an edge is for); their downtime is the link's, not intake's.
        if self.kind == FaultKind::CutLink || self.site == Some(Site::Hub) {
            return 0;
        }
        self.vendor_gap_ms.unwrap_or(self.unavailable_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_visits_every_kind_of_trouble() {
        let names: Vec<&str> = crm_cycle().iter().map(|p| p.name).collect();
        for n in ["healthy", "slow", "500s", "429s", "timeouts"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let total: Duration = crm_cycle().iter().map(|p| p.length).sum();
        assert_eq!(total, Duration::from_secs(18));
    }

    #[test]
    fn faults_are_three_kills_and_one_nats_restart_in_order() {
        let plan = fault_plan(Duration::from_secs(100));
        let kills = plan
            .iter()
            .filter(|(_, k)| *k == FaultKind::KillRouter)
            .count();
        assert_eq!(kills, 3);
        assert_eq!(
            plan.iter()
                .filter(|(_, k)| *k == FaultKind::RestartNats)
                .count(),
            1
        );
        assert!(plan.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(plan.iter().all(|(at, _)| *at < Duration::from_secs(100)));
        // The token expiry falls between the first two kills.
        let expiry = token_expiry_at(Duration::from_secs(100));
        assert!(plan[0].0 < expiry && expiry < plan[1].0);
    }

    #[test]
    fn the_edge_plan_cuts_kills_the_edge_cuts_again_and_kills_the_hub() {
        let plan = edge_fault_plan(Duration::from_secs(30));
        let kinds: Vec<FaultKind> = plan.iter().map(|(_, k)| *k).collect();
        assert_eq!(
            kinds,
            [
                FaultKind::CutLink,
                FaultKind::KillRouter,
                FaultKind::CutLink,
                FaultKind::KillRouter
            ]
        );
        assert!(plan.windows(2).all(|w| w[0].0 < w[1].0));
        // Each cut ends before the next fault is due.
        assert!(plan[0].0 + LINK_CUT < plan[1].0, "{plan:?}");
        assert!(plan[2].0 + LINK_CUT < plan[3].0, "{plan:?}");
    }

    #[test]
    fn an_edge_sites_cut_and_hub_kill_leave_intake_up() {
        let rec = |kind, site| FaultRecord {
            unavailable_ms: 9000,
            recovered: true,
            site,
            cut_ms: (kind == FaultKind::CutLink).then_some(8000),
            ..FaultRecord::new(kind)
        };
        let cut = rec(FaultKind::CutLink, None);
        assert_eq!(cut.intake_unavailable_ms(), 0);
        assert_eq!(cut.what(), "edge -> hub link cut for 8 s");
        let hub = rec(FaultKind::KillRouter, Some(Site::Hub));
        assert_eq!(hub.intake_unavailable_ms(), 0);
        assert_eq!(hub.what(), "kill -9 of the hub router");
        let edge = rec(FaultKind::KillRouter, Some(Site::Edge));
        assert_eq!(edge.intake_unavailable_ms(), 9000);
        assert_eq!(edge.what(), "kill -9 of the edge router");
    }
}
