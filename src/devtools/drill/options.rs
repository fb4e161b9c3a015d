//! `leadrouter drill`'s flags and the options a drill runs with, refused with a reason before
//! anything starts.

use std::path::PathBuf;
use std::time::Duration;

use super::error::DrillError;
use super::vendor::RetryPolicy;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Leads the vendor sends.
    #[arg(long, default_value_t = 100_000)]
    pub leads: usize,
    /// Leads per second the vendor offers (retries and duplicate submits come on top).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Share of leads submitted twice or three times at once (double clicks, retry storms).
    #[arg(long, default_value_t = 0.30)]
    pub duplicates: f64,
    /// Share of payloads that are malformed: most fail the schema (-> DLQ), a fifth is not JSON
    /// (-> refused with 400 at the edge).
    #[arg(long, default_value_t = 0.005)]
    pub malformed: f64,
    /// Share of good leads that reuse an earlier lead's email (shared inboxes).
    #[arg(long, default_value_t = 0.01)]
    pub shared_inbox: f64,
    /// Seed of the lead generator (same seed, same leads).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the same storm first against another design and show both (`--crm http` only).
    #[arg(long, value_enum)]
    pub baseline: Option<crate::devtools::drill::Baseline>,
    /// The CRM the router writes to: the sandbox's plain CRM through an `http` sink, or its
    /// HubSpot or Salesforce personality at Starter-tier limits through the batching sink of
    /// that kind. The storm flaps every one of them alike.
    #[arg(long, value_enum, default_value_t = crate::devtools::drill::CrmKind::Http)]
    pub crm: crate::devtools::drill::CrmKind,
    /// Leave out the kill -9s and the nats-server restart (the CRM still flaps).
    #[arg(long)]
    pub no_process_faults: bool,
    /// How long to wait after the storm for every lead to be placed.
    #[arg(long, default_value = "3m")]
    pub drain_timeout: humantime::Duration,
    /// The vendor's patience per request.
    #[arg(long, default_value = "5s")]
    pub vendor_timeout: humantime::Duration,
    /// Where the router's config, data and log go (default: a temp dir, removed when the
    /// drill passes).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the temp work dir even when the drill passes.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Run the router against this NATS (a cluster, a leaf node) instead of the embedded
    /// default; the nats-server restart is then skipped. Use a NATS account of its own: the
    /// drill's router creates and uses the standard streams and buckets there.
    #[arg(long)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub topology: crate::devtools::drill::TopologyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// The seed's synchronous pass-through with a naive 1-hour email dedupe.
    Direct,
}

/// `--crm`: which of the sandbox's CRMs the router writes to (see the `crm` module).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmKind {
    /// The sandbox's `/leads` CRM through an `http` sink: one POST per lead with an
    /// `Idempotency-Key` the CRM honours.
    #[default]
    Http,
    /// The HubSpot personality (100 requests per rolling 10 s, 250,000 a day) through a
    /// `hubspot` sink: contacts upserted by email, in batches.
    Hubspot,
    /// The Salesforce personality (a developer org's 15,000 API calls per 24 h) through a
    /// `salesforce` sink with OAuth client credentials: Leads upserted by the lead's key.
    Salesforce,
}

impl CrmKind {
    /// The CRM keeps one record per email and its sink is `latest-wins`: an older lead of an
    /// email that arrives after a newer one was written is skipped on purpose.
    pub fn latest_wins(self) -> bool {
        matches!(self, CrmKind::Hubspot)
    }

    /// The CRM in the report's words.
    pub fn label(self) -> &'static str {
        match self {
            CrmKind::Http => "http CRM",
            CrmKind::Hubspot => "HubSpot",
            CrmKind::Salesforce => "Salesforce",
        }
    }

    /// As on the command line.
    pub fn flag(self) -> &'static str {
        match self {
            CrmKind::Http => "http",
            CrmKind::Hubspot => "hubspot",
            CrmKind::Salesforce => "salesforce",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub leads: usize,
    pub rate: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
    pub shared_inbox_share: f64,
    pub seed: u64,
    pub baseline: Option<Baseline>,
    pub crm: CrmKind,
    /// No kills or nats-server restart (the CRM still flaps).
    pub no_process_faults: bool,
    pub drain_timeout: Duration,
    pub work_dir: Option<PathBuf>,
    pub keep: bool,
    pub json: bool,
    pub vendor: RetryPolicy,
    /// Run the router against this NATS instead of the embedded default (its nats-server is
    /// not the drill's to restart).
    pub nats_url: Option<String>,
    pub topology: TopologyArgs,
}

/// `--routers` and `--nats-cluster`: the design under test beyond one router on its embedded
/// nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct TopologyArgs {
    /// Routers to run: `leadrouter serve` processes sharing one NATS account (same DLQ and group
    /// keys), behind the vendor's load balancer; the kills go round them. With more than one and
    /// no --nats-url or --nats-cluster they share a nats-server the drill starts.
    #[arg(long, default_value_t = 1)]
    pub routers: usize,
    /// Run the routers on a JetStream cluster of this many nats-server nodes the drill starts
    /// (odd, 3 or more; streams R3). The storm's NATS fault is then kill -9 of the node leading
    /// LEADS, restarted once a new leader is elected.
    #[arg(long, value_name = "NODES")]
    pub nats_cluster: Option<usize>,
    /// Run an edge site: the vendor posts to an edge router (intake only, its embedded
    /// nats-server a leaf node of the hub's) and a hub router writes to the CRM. The edge's leaf
    /// link goes through a proxy of the drill's, which cuts it twice; the faults are the cuts
    /// and kill -9 of the edge and of the hub. The table adds the edge -> hub delay.
    #[arg(long)]
    pub edge: bool,
}

impl Default for TopologyArgs {
    fn default() -> Self {
        TopologyArgs {
            routers: 1,
            nats_cluster: None,
            edge: false,
        }
    }
}

/// More routers than partitions would leave some with nothing to pull.
const MAX_ROUTERS: usize = 16;
/// A bigger cluster is no different a test, only slower to start on one machine.
const MAX_NATS_NODES: usize = 7;

impl DrillOptions {
    pub fn validate(&self) -> Result<(), DrillError> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(DrillError::Setup(format!(
                    "{name} must be a share between 0 and 1, got {v}"
                )))
            }
        };
        share("--duplicates", self.duplicate_share)?;
        share("--malformed", self.malformed_share)?;
        share("--shared-inbox", self.shared_inbox_share)?;
        if self.leads == 0 {
            return Err(DrillError::Setup("--leads must be at least 1".into()));
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(DrillError::Setup(format!(
                "--rate must be a positive number of leads per second, got {}",
                self.rate
            )));
        }
        if self.crm != CrmKind::Http && self.baseline.is_some() {
            return Err(DrillError::Setup(format!(
                "--crm {} cannot be combined with --baseline direct: the seed's direct design posts to a plain http CRM only (run the baseline with --crm http)",
                self.crm.flag()
            )));
        }
        let t = &self.topology;
        if t.routers == 0 {
            return Err(DrillError::Setup("--routers must be at least 1".into()));
        }
        if t.routers > MAX_ROUTERS {
            return Err(DrillError::Setup(format!(
                "--routers must be at most {MAX_ROUTERS} (one of the 16 partitions each at least), got {}",
                t.routers
            )));
        }
        if let Some(n) = t.nats_cluster {
            if n < 3 || n % 2 == 0 || n > MAX_NATS_NODES {
                return Err(DrillError::Setup(format!(
                    "--nats-cluster must be an odd number of nodes from 3 to {MAX_NATS_NODES} (a majority must survive the node kill to elect a leader; R3 streams need 3), got {n}"
                )));
            }
            if self.nats_url.is_some() {
                return Err(DrillError::Setup(
                    "--nats-cluster starts the drill's own NATS cluster; it cannot be combined with --nats-url (to use your cluster, give its URLs to --nats-url alone)".into(),
                ));
            }
        }
        if t.edge {
            self.validate_edge()?;
        }
        Ok(())
    }

    /// `--edge` runs a topology of its own: one edge, one hub, each on its embedded
    /// nats-server (the hub's with the leaf listener the edge connects to through the drill's
    /// proxy).
    fn validate_edge(&self) -> Result<(), DrillError> {
        let refuse = |why: &str| Err(DrillError::Setup(format!("--edge {why}")));
        if self.baseline.is_some() {
            return refuse("cannot be combined with --baseline direct: the seed's direct design has no edge site to compare (run the baseline without --edge)");
        }
        if self.nats_url.is_some() {
            return refuse("cannot be combined with --nats-url: the edge and the hub each run their embedded nats-server, the edge's a leaf node of the hub's, so that the drill can cut the link between them");
        }
        if self.topology.routers != 1 || self.topology.nats_cluster.is_some() {
            return refuse("cannot be combined with --routers or --nats-cluster: it runs one edge router and one hub router, each on its embedded nats-server");
        }
        Ok(())
    }

    /// One router on its embedded nats-server or on `--nats-url`: the drill as it was before
    /// `--routers` and `--nats-cluster`, same faults, same report.
    pub fn single_router(&self) -> bool {
        self.topology.routers == 1 && self.topology.nats_cluster.is_none() && !self.topology.edge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(topology: TopologyArgs, nats_url: Option<&str>) -> DrillOptions {
        DrillOptions {
            leads: 10,
            rate: 10.0,
            duplicate_share: 0.3,
            malformed_share: 0.0,
            shared_inbox_share: 0.0,
            seed: 1,
            baseline: None,
            crm: CrmKind::Http,
            no_process_faults: false,
            drain_timeout: Duration::from_secs(1),
            work_dir: None,
            keep: false,
            json: true,
            vendor: RetryPolicy::default(),
            nats_url: nats_url.map(str::to_string),
            topology,
        }
    }

    fn refusal(routers: usize, nats_cluster: Option<usize>, url: Option<&str>) -> String {
        let t = TopologyArgs {
            routers,
            nats_cluster,
            edge: false,
        };
        match opts(t, url).validate() {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        }
    }

    #[test]
    fn topologies_are_checked_with_the_reason() {
        assert!(refusal(0, None, None).contains("--routers must be at least 1"));
        assert!(refusal(17, None, None).contains("--routers must be at most 16"));
        for n in [1, 2, 4, 9] {
            let why = refusal(2, Some(n), None);
            assert!(
                why.contains("--nats-cluster must be an odd number"),
                "{n}: {why}"
            );
        }
        let why = refusal(3, Some(3), Some("nats://127.0.0.1:4222"));
        assert!(why.contains("cannot be combined with --nats-url"), "{why}");
        assert_eq!(refusal(3, Some(3), None), "");
        assert_eq!(refusal(1, Some(5), None), "");
        assert_eq!(refusal(4, None, Some("nats://127.0.0.1:4222")), "");
    }

    #[test]
    fn a_batching_crm_has_no_baseline() {
        let mut o = opts(TopologyArgs::default(), None);
        o.baseline = Some(Baseline::Direct);
        assert_eq!(o.validate().map_err(|e| e.to_string()), Ok(()));
        for crm in [CrmKind::Hubspot, CrmKind::Salesforce] {
            o.crm = crm;
            let why = o
                .validate()
                .map(|()| String::new())
                .unwrap_or_else(|e| e.to_string());
            assert!(
                why.contains(&format!(
                    "--crm {} cannot be combined with --baseline direct",
                    crm.flag()
                )),
                "{why}"
            );
        }
        o.baseline = None;
        assert!(o.validate().is_ok());
    }

    #[test]
    fn only_one_router_without_a_cluster_is_the_single_router_drill() {
        let single = |routers, nats_cluster| {
            opts(
                TopologyArgs {
                    routers,
                    nats_cluster,
                    edge: false,
                },
                None,
            )
            .single_router()
        };
        assert!(single(1, None));
        assert!(!single(2, None));
        assert!(!single(1, Some(3)));
        assert_eq!(
            TopologyArgs::default(),
            TopologyArgs {
                routers: 1,
                nats_cluster: None,
                edge: false,
            }
        );
    }

    #[test]
    fn an_edge_site_refuses_what_it_cannot_run_with_the_reason() {
        let edge = TopologyArgs {
            edge: true,
            ..TopologyArgs::default()
        };
        let why = |o: DrillOptions| {
            o.validate()
                .map(|()| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        let ok = opts(edge, None);
        assert_eq!(why(ok.clone()), "");
        assert!(!ok.single_router());
        let mut o = ok.clone();
        o.baseline = Some(Baseline::Direct);
        assert!(why(o).contains("--edge cannot be combined with --baseline direct"));
        let o = opts(edge, Some("nats://127.0.0.1:4222"));
        assert!(why(o).contains("--edge cannot be combined with --nats-url"));
        for (routers, nats_cluster) in [(2, None), (1, Some(3))] {
            let o = opts(
                TopologyArgs {
                    routers,
                    nats_cluster,
                    edge: true,
                },
                None,
            );
            assert!(
                why(o).contains("--edge cannot be combined with --routers or --nats-cluster"),
                "{routers} {nats_cluster:?}"
            );
        }
        // A batching CRM at the hub is fine: the sink is the hub's.
        let mut o = ok;
        o.crm = CrmKind::Hubspot;
        assert_eq!(why(o), "");
    }
}
