//! Prometheus metrics for every stage, served as text on the public listener's `GET /metrics`.
//!
//! One process-wide [`Registry`] behind [`metrics()`], with typed handles; the handler
//! outcome counters are per pool ([`PoolCounters`]) and exported as their sum. Label values are
//! bounded: sender ids and sink names come from the configuration (an unknown sender is
//! [`UNKNOWN_SENDER`]), everything else is a fixed set of static strings (status codes, error
//! classes, DLQ reasons). Keys, emails, addresses and error texts never become labels.
//!
//! Names follow the Prometheus conventions: counters end in `_total`, durations are `_seconds`,
//! everything in base units. `docs/observability.md` lists every series;
//! `config/alerts.yml` holds the alerting rules and `docs/runbook.md` what to do about each.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `sender` label of requests for a sender that is not configured (404): the path segment
/// is caller-controlled and must not become a label value.
pub const UNKNOWN_SENDER: &str = "_unknown";

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Edge latencies: sub-millisecond 202s up to the 2 s publish timeout and beyond.
const INTAKE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Handler stages: microsecond validation up to sink calls that run into their timeout.
const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// End to end (received_at -> last sink confirmed): fine below 10 ms for the fast path, dense
/// around the 2 s SLO (a bucket bound exactly at 2 s makes "share over the SLO" exact), and
/// long tails for retries and replays (whose `received_at` is the original receipt).
const E2E_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Every `reason` label value of `leadrouter_retries_total`.
pub mod retry {
    /// A sink answered with a transient error (timeout, connect, 5xx, 429, ...).
    pub const SINK: &str = "sink";
    /// Another delivery of the same lead holds the claim.
    pub const CLAIM_BUSY: &str = "claim_busy";
    /// The idempotency KV bucket could not be read or written.
    pub const KV_UNAVAILABLE: &str = "kv_unavailable";
    /// The DLQ write failed, so the lead is retried instead of dropped.
    pub const DLQ_UNAVAILABLE: &str = "dlq_unavailable";
    /// A sink's vendor budget is spent (a daily cap): back to the queue, no attempt spent.
    pub const THROTTLED: &str = "throttled";
    pub const ALL: &[&str] = &[SINK, CLAIM_BUSY, KV_UNAVAILABLE, DLQ_UNAVAILABLE, THROTTLED];
}

/// Every `source` label value of `leadrouter_replays_total`.
pub mod replay_source {
    /// The admin HTTP API (and the console).
    pub const ADMIN: &str = "admin";
    /// The `leadrouter replay` command (it calls the admin API and names itself `cli:<user>`).
    pub const CLI: &str = "cli";
    /// The NATS operator service (`leadrouter.dlq.replay`).
    pub const NATS: &str = "nats";
    pub const ALL: &[&str] = &[ADMIN, CLI, NATS];
}

/// The DLQ reasons, so their series exist at zero from the start (an alert on `increase()`
/// then sees the very first placement).
const DLQ_REASONS: &[&str] = &[
    "malformed_envelope",
    "unknown_schema",
    "schema_mismatch",
    "sink_rejected",
    "retries_exhausted",
    "max_deliveries",
];

/// The `replay` label value.
pub fn replay_label(replay: bool) -> &'static str {
    if replay {
        "true"
    } else {
        "false"
    }
}

pub struct Metrics {
    registry: Registry,
    /// `leadrouter_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `leadrouter_intake_requests_total{sender,status}`.
    pub intake_requests: IntCounterVec,
    /// `leadrouter_intake_duration_seconds{sender}`: request received -> answer ready.
    pub intake_duration: HistogramVec,
    /// `leadrouter_intake_rate_limited_total{sender}`.
    pub intake_rate_limited: IntCounterVec,
    /// `leadrouter_intake_signature_failures_total{sender,reason}`.
    pub intake_signature_failures: IntCounterVec,
    /// `leadrouter_intake_duplicates_total{sender}`: the PubAck said duplicate.
    pub intake_duplicates: IntCounterVec,
    /// `leadrouter_queue_pending_messages`: the handler consumers' `num_pending`, summed.
    pub queue_pending: IntGauge,
    /// `leadrouter_queue_ack_pending_messages`: their `num_ack_pending`, summed.
    pub queue_ack_pending: IntGauge,
    /// `leadrouter_queue_max_ack_pending`: their configured limits, summed.
    pub queue_max_ack_pending: IntGauge,
    /// `leadrouter_queue_oldest_unacked_seconds`: age of the oldest lead not yet acknowledged.
    pub queue_oldest_unacked: prometheus::Gauge,
    /// `leadrouter_partitions_owned`: partitions this router pulls right now.
    pub partitions_owned: IntGauge,
    /// `leadrouter_dlq_messages`: entries in `LEADS_DLQ`.
    pub dlq_messages: IntGauge,
    /// `leadrouter_queue_info_up`: 1 if the last consumer-info poll succeeded.
    pub queue_info_up: IntGauge,
    /// `leadrouter_handler_stage_duration_seconds{stage,sink}`.
    pub stage_duration: HistogramVec,
    /// `leadrouter_replays_total{source}`: DLQ entries republished.
    pub replays: IntCounterVec,
    /// `leadrouter_e2e_latency_seconds{replay}`: received_at -> last sink persisted.
    pub e2e_latency: HistogramVec,
    /// `leadrouter_publish_commits_total{kind}`: how the edge stored leads (single, batch,
    /// fallback).
    pub publish_commits: IntCounterVec,
    /// `leadrouter_publish_batch_leads`: leads per atomic batch.
    pub publish_batch_leads: prometheus::Histogram,
    /// `leadrouter_durability_info{mode}`: always 1; what a 202 survives.
    pub durability_info: IntGaugeVec,
    /// `leadrouter_sink_batch_leads{sink}`: leads per call of a batching sink.
    pub sink_batch_leads: HistogramVec,
    /// `leadrouter_sink_batch_wait_seconds{sink}`: how long a batch's oldest lead waited in the
    /// sink's queue (linger, the vendor's pace, a conflicting lead in flight).
    pub sink_batch_wait: HistogramVec,
    /// `leadrouter_sink_pacing_delay_seconds{sink}`: how long a due call of a batching sink
    /// was held back by the vendor's rate budget (0 when it went at once).
    pub sink_pacing_delay: HistogramVec,
    /// `leadrouter_sink_throttled_total{sink,policy}`: calls held back or refused for the
    /// vendor's budget.
    pub sink_throttled: IntCounterVec,
    /// `leadrouter_sink_budget_remaining{sink,window}`: requests left in the vendor's budget.
    pub sink_budget_remaining: IntGaugeVec,
    /// `leadrouter_sink_budget_limit{sink,window}`: the vendor's limit for that window.
    pub sink_budget_limit: IntGaugeVec,
    /// `leadrouter_edge_link_up{edge}`: 1 while the edge's JetStream answers across the leaf
    /// link (at the hub), or while the edge's server has a leaf connection (at the edge).
    pub edge_link_up: IntGaugeVec,
    /// `leadrouter_edge_waiting_leads{edge}`: leads stored at the edge, not yet at the hub.
    pub edge_waiting: IntGaugeVec,
    /// `leadrouter_edge_oldest_waiting_seconds{edge}`: age of the oldest of them (0 when none).
    pub edge_oldest_waiting: prometheus::GaugeVec,
    /// `leadrouter_edge_link_down_seconds{edge}`: how long the link has been down (0 when up).
    pub edge_link_down: prometheus::GaugeVec,
    /// `leadrouter_edge_link_alert_after_seconds`: `[hub] link_alert_after`, for the alert rule.
    pub edge_link_alert_after: prometheus::Gauge,
    /// `leadrouter_edge_delay_seconds{edge}`: edge 202 -> stored at the hub, per lead.
    pub edge_delay: HistogramVec,
    /// The handler pools' outcome counters, exported as their sum.
    pools: Arc<PoolCounterSum>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = unregistered_vec(name, help, labels);
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn unregistered_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn unregistered_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(Opts::new(name, help)).expect("valid metric")
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let build_info = gauge_vec(
            &r,
            "leadrouter_build_info",
            "Always 1; the version label says which leadrouter runs.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Metrics {
            build_info,
            intake_requests: counter_vec(
                &r,
                "leadrouter_intake_requests_total",
                "Intake requests answered, by sender and HTTP status.",
                &["sender", "status"],
            ),
            intake_duration: histogram_vec(
                &r,
                "leadrouter_intake_duration_seconds",
                "Time from receiving an intake request to its answer (202 after the PubAck).",
                INTAKE_BUCKETS,
                &["sender"],
            ),
            intake_rate_limited: counter_vec(
                &r,
                "leadrouter_intake_rate_limited_total",
                "Intake requests refused with 429 by the sender's token bucket.",
                &["sender"],
            ),
            intake_signature_failures: counter_vec(
                &r,
                "leadrouter_intake_signature_failures_total",
                "Intake requests refused with 401, by sender and reason (signature_missing, signature_malformed, signature_invalid, signature_stale, signature_future).",
                &["sender", "reason"],
            ),
            intake_duplicates: counter_vec(
                &r,
                "leadrouter_intake_duplicates_total",
                "Accepted intake requests that JetStream's dedupe window recognised (PubAck duplicate).",
                &["sender"],
            ),
            queue_pending: gauge(
                &r,
                "leadrouter_queue_pending_messages",
                "Messages in LEADS not yet delivered to a handler consumer (num_pending, summed over partitions).",
            ),
            queue_ack_pending: gauge(
                &r,
                "leadrouter_queue_ack_pending_messages",
                "Messages delivered and not yet acknowledged (num_ack_pending, summed over partitions).",
            ),
            queue_max_ack_pending: gauge(
                &r,
                "leadrouter_queue_max_ack_pending",
                "The handler consumers' max_ack_pending, summed over partitions: the server stops delivering at this many unacknowledged messages.",
            ),
            queue_oldest_unacked: {
                let g = prometheus::Gauge::with_opts(Opts::new(
                    "leadrouter_queue_oldest_unacked_seconds",
                    "Age of the oldest lead in LEADS not yet acknowledged (waiting or in flight), 0 when none: a lead stuck behind anything shows here.",
                ))
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            partitions_owned: gauge(
                &r,
                "leadrouter_partitions_owned",
                "Partitions of LEADS this router consumes right now (each partition has one owner across all routers).",
            ),
            dlq_messages: gauge(
                &r,
                "leadrouter_dlq_messages",
                "Entries in the LEADS_DLQ stream (replayed ones included: a replay removes nothing).",
            ),
            queue_info_up: gauge(
                &r,
                "leadrouter_queue_info_up",
                "1 if the last poll of the router consumer's info succeeded (the queue gauges are fresh), else 0.",
            ),
            stage_duration: histogram_vec(
                &r,
                "leadrouter_handler_stage_duration_seconds",
                "Time a handler spends per stage: claim (dedupe + KV claim), validate, enrich, sink (one per sink, sink label set).",
                STAGE_BUCKETS,
                &["stage", "sink"],
            ),
            replays: counter_vec(
                &r,
                "leadrouter_replays_total",
                "DLQ entries republished to LEADS, by where the replay was asked for (admin, cli, nats).",
                &["source"],
            ),
            e2e_latency: histogram_vec(
                &r,
                "leadrouter_e2e_latency_seconds",
                "End-to-end latency: received_at at the edge to the last sink's confirmation, by whether the lead was a replay (the SLO is on replay=\"false\").",
                E2E_BUCKETS,
                &["replay"],
            ),
            publish_commits: counter_vec(
                &r,
                "leadrouter_publish_commits_total",
                "Commits the edge made to LEADS, by kind: single (one lead published on its own), batch (one atomic batch: one fsync under durability fsync), fallback (a batch refused for an id already stored, re-sent one by one).",
                &["kind"],
            ),
            publish_batch_leads: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "leadrouter_publish_batch_leads",
                        "Leads per atomic batch the edge committed (group commit).",
                    )
                    .buckets(vec![2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            durability_info: gauge_vec(
                &r,
                "leadrouter_durability_info",
                "Always 1; the mode label says what a 202 survives: lazy (a process crash) or fsync (also an OS crash or power loss).",
                &["mode"],
            ),
            sink_batch_leads: histogram_vec(
                &r,
                "leadrouter_sink_batch_leads",
                "Leads per call of a batching sink (hubspot, salesforce).",
                &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 150.0, 200.0],
                &["sink"],
            ),
            sink_batch_wait: histogram_vec(
                &r,
                "leadrouter_sink_batch_wait_seconds",
                "How long the oldest lead of a batching sink's call waited in the sink's queue: linger, the vendor's rate budget (pacing), or an earlier write of the same record still in flight.",
                STAGE_BUCKETS,
                &["sink"],
            ),
            sink_pacing_delay: histogram_vec(
                &r,
                "leadrouter_sink_pacing_delay_seconds",
                "How long a due call of a batching sink was held back by the vendor's rate budget so that the vendor does not throttle (0 when it went at once).",
                STAGE_BUCKETS,
                &["sink"],
            ),
            sink_throttled: counter_vec(
                &r,
                "leadrouter_sink_throttled_total",
                "Calls of a batching sink the vendor throttled or the sink held back for the vendor's budget, by policy (TEN_SECONDLY_ROLLING, DAILY, REQUEST_LIMIT_EXCEEDED, budget_spent).",
                &["sink", "policy"],
            ),
            sink_budget_remaining: gauge_vec(
                &r,
                "leadrouter_sink_budget_remaining",
                "Requests left in a vendor's rate budget as the sink last saw it (the vendor's headers, minus the sink's calls since), by window (interval, daily).",
                &["sink", "window"],
            ),
            sink_budget_limit: gauge_vec(
                &r,
                "leadrouter_sink_budget_limit",
                "A vendor's request limit per window (interval, daily), as configured or as the vendor's headers say.",
                &["sink", "window"],
            ),
            edge_link_up: gauge_vec(
                &r,
                "leadrouter_edge_link_up",
                "1 while the edge's leaf link to the hub is up: at the hub, the edge's JetStream answered across the link at the last poll; at the edge, its nats-server holds a leaf connection.",
                &["edge"],
            ),
            edge_waiting: gauge_vec(
                &r,
                "leadrouter_edge_waiting_leads",
                "Leads stored at the edge and not yet stored at the hub (the edge stream's messages; at the hub, as of the last poll that reached the edge).",
                &["edge"],
            ),
            edge_oldest_waiting: float_gauge_vec(
                &r,
                "leadrouter_edge_oldest_waiting_seconds",
                "Age of the oldest lead waiting at the edge, 0 when none.",
                &["edge"],
            ),
            edge_link_down: float_gauge_vec(
                &r,
                "leadrouter_edge_link_down_seconds",
                "How long the edge's link has been down, 0 while up (at the hub: since its last answer, or since this router started).",
                &["edge"],
            ),
            edge_link_alert_after: {
                let g = prometheus::Gauge::with_opts(Opts::new(
                    "leadrouter_edge_link_alert_after_seconds",
                    "[hub] link_alert_after: how long an edge link may be down before LeadrouterEdgeLinkDown fires (0 on a router that is no hub).",
                ))
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            edge_delay: histogram_vec(
                &r,
                "leadrouter_edge_delay_seconds",
                "Edge 202 -> stored at the hub, per lead (the two sites' clocks: skew shows here).",
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 86400.0],
                &["edge"],
            ),
            pools: PoolCounterSum::registered(&r),
            registry: r,
        };
        // Series that alerts and dashboards rate() over exist at zero from the start.
        for source in replay_source::ALL {
            m.replays.with_label_values(&[source]);
        }
        for replay in ["false", "true"] {
            m.e2e_latency.with_label_values(&[replay]);
        }
        for kind in ["single", "batch", "fallback"] {
            m.publish_commits.with_label_values(&[kind]);
        }
        m
    }

    /// `leads` leads published one by one by the edge (one publish, one fsync, each).
    pub fn published_singly(&self, leads: usize) {
        self.publish_commits
            .with_label_values(&["single"])
            .inc_by(leads as u64);
    }

    /// One atomic batch of `leads` leads stored by the edge.
    pub fn published_batch(&self, leads: usize) {
        self.publish_commits.with_label_values(&["batch"]).inc();
        self.publish_batch_leads.observe(leads as f64);
    }

    /// One atomic batch refused for an id already stored (its leads are then published singly).
    pub fn batch_fell_back(&self) {
        self.publish_commits.with_label_values(&["fallback"]).inc();
    }

    /// One call of a batching sink with `leads` leads, the oldest queued for `waited`, the call
    /// held back `paced` by the vendor's budget.
    pub fn sink_batch(&self, sink: &str, leads: usize, waited: Duration, paced: Duration) {
        self.sink_pacing_delay
            .with_label_values(&[sink])
            .observe(paced.as_secs_f64());
        self.sink_batch_leads
            .with_label_values(&[sink])
            .observe(leads as f64);
        self.sink_batch_wait
            .with_label_values(&[sink])
            .observe(waited.as_secs_f64());
    }

    /// A call of `sink` throttled (or held back) under the vendor's `policy`.
    pub fn sink_throttled(&self, sink: &str, policy: &'static str) {
        self.sink_throttled.with_label_values(&[sink, policy]).inc();
    }

    /// What `sink` knows of the vendor's budget for `window` (`interval` or `daily`).
    pub fn sink_budget(&self, sink: &str, window: &'static str, remaining: u64, limit: u64) {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        self.sink_budget_remaining
            .with_label_values(&[sink, window])
            .set(clamp(remaining));
        self.sink_budget_limit
            .with_label_values(&[sink, window])
            .set(clamp(limit));
    }

    /// The registry's current state in the text exposition format.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }

    /// The registry, for callers that want to add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates a configured sender's series at zero and returns its cached handles.
    pub fn sender(&self, id: &str) -> SenderMetrics {
        for status in ["202", "503"] {
            self.intake_requests.with_label_values(&[id, status]);
        }
        SenderMetrics {
            accepted: self.intake_requests.with_label_values(&[id, "202"]),
            duration: self.intake_duration.with_label_values(&[id]),
            duplicates: self.intake_duplicates.with_label_values(&[id]),
            rate_limited: self.intake_rate_limited.with_label_values(&[id]),
        }
    }

    /// A new handler pool's counters, counted in `/metrics` from now on. `sinks` are the
    /// pool's sink names, whose success series exist at zero from the start.
    ///
    /// The process holds on to every pool's set, even after the pool stops: dropping it would
    /// make the exported counters go down, which Prometheus reads as a reset. A process starts
    /// one pool (`serve`) or a few dozen (a test binary), so this is not a leak that grows.
    pub fn pool_counters(&self, sinks: &[&str]) -> Arc<PoolCounters> {
        self.pools.add(sinks)
    }

    /// One answered intake request. `sender` is `None` for a sender that is not configured;
    /// `error` is the answer's error code (`None` for a 202).
    pub fn intake(
        &self,
        sender: Option<(&str, &SenderMetrics)>,
        status: u16,
        error: Option<&'static str>,
        duplicate: bool,
        took: Duration,
    ) {
        let secs = took.as_secs_f64();
        let Some((id, sm)) = sender else {
            self.intake_requests
                .with_label_values(&[UNKNOWN_SENDER, status_str(status)])
                .inc();
            self.intake_duration
                .with_label_values(&[UNKNOWN_SENDER])
                .observe(secs);
            return;
        };
        sm.duration.observe(secs);
        if status == 202 {
            sm.accepted.inc();
            if duplicate {
                sm.duplicates.inc();
            }
            return;
        }
        self.intake_requests
            .with_label_values(&[id, status_str(status)])
            .inc();
        match (status, error) {
            (429, _) => sm.rate_limited.inc(),
            (401, Some(reason)) => self
                .intake_signature_failures
                .with_label_values(&[id, reason])
                .inc(),
            _ => {}
        }
    }

    /// One handler stage took `took` (`sink` is "" for non-sink stages).
    pub fn stage(&self, stage: &str, sink: &str, took: Duration) {
        self.stage_duration
            .with_label_values(&[stage, sink])
            .observe(took.as_secs_f64());
    }

    /// A lead's end-to-end latency (received_at -> last sink persisted).
    pub fn e2e(&self, replay: bool, took: Duration) {
        self.e2e_latency
            .with_label_values(&[replay_label(replay)])
            .observe(took.as_secs_f64());
    }

    pub fn replayed(&self, source: &'static str) {
        self.replays.with_label_values(&[source]).inc();
    }
}

/// One handler pool's outcome counters: the only place a handler outcome is counted.
///
/// Per pool rather than process-wide because the console, `leadrouter stats` and the tests
/// read one router's figures, while a test binary runs several routers in one process against
/// one registry. `/metrics` exports the sum over the process's pools, which for `serve` (one
/// pool) is that pool's set. The pipeline's events (`pipeline::events`) are what increment it.
pub struct PoolCounters {
    /// `leadrouter_delivered_total{replay}`: leads every sink confirmed.
    pub delivered: IntCounterVec,
    /// `leadrouter_handler_duplicates_total`: done keys short-circuited (moka cache or KV).
    pub handler_duplicates: IntCounter,
    /// `leadrouter_handler_restarts_total`: handler actors restarted after a panic.
    pub handler_restarts: IntCounter,
    /// `leadrouter_sink_requests_total{sink,outcome,class,replay}`.
    pub sink_requests: IntCounterVec,
    /// `leadrouter_retries_total{reason}`: deliveries NAKed with a delay.
    pub retries: IntCounterVec,
    /// `leadrouter_dlq_placements_total{reason}`: new DLQ entries.
    pub dlq_placements: IntCounterVec,
}

impl PoolCounters {
    /// A set outside any registry, with the series alerts and dashboards rate() over at zero.
    fn unregistered(sinks: &[&str]) -> PoolCounters {
        let c = PoolCounters {
            delivered: unregistered_vec(
                "leadrouter_delivered_total",
                "Leads every sink confirmed, by whether they were replays.",
                &["replay"],
            ),
            handler_duplicates: unregistered_counter(
                "leadrouter_handler_duplicates_total",
                "Deliveries of leads already done, acknowledged without touching a sink (idempotency cache or KV).",
            ),
            handler_restarts: unregistered_counter(
                "leadrouter_handler_restarts_total",
                "Handler actors restarted after a panic (their message is redelivered).",
            ),
            sink_requests: unregistered_vec(
                "leadrouter_sink_requests_total",
                "Sink writes by sink, outcome (ok, failed = transient, rejected = permanent), error class (none when ok) and whether the lead is a replay.",
                &["sink", "outcome", "class", "replay"],
            ),
            retries: unregistered_vec(
                "leadrouter_retries_total",
                "Deliveries handed back for a later retry (NAK with delay), by reason.",
                &["reason"],
            ),
            dlq_placements: unregistered_vec(
                "leadrouter_dlq_placements_total",
                "Leads written to the DLQ, by reason.",
                &["reason"],
            ),
        };
        for reason in DLQ_REASONS {
            c.dlq_placements.with_label_values(&[reason]);
        }
        for reason in retry::ALL {
            c.retries.with_label_values(&[reason]);
        }
        for replay in ["false", "true"] {
            c.delivered.with_label_values(&[replay]);
            for sink in sinks {
                c.sink_requests
                    .with_label_values(&[sink, "ok", "none", replay]);
            }
        }
        c
    }

    fn collectors(&self) -> [&dyn Collector; 6] {
        [
            &self.delivered,
            &self.handler_duplicates,
            &self.handler_restarts,
            &self.sink_requests,
            &self.retries,
            &self.dlq_placements,
        ]
    }

    fn add(&self, other: &PoolCounters) {
        add_vec(&self.delivered, &other.delivered);
        self.handler_duplicates
            .inc_by(other.handler_duplicates.get());
        self.handler_restarts.inc_by(other.handler_restarts.get());
        add_vec(&self.sink_requests, &other.sink_requests);
        add_vec(&self.retries, &other.retries);
        add_vec(&self.dlq_placements, &other.dlq_placements);
    }

    /// Every series of a labelled counter: its labels (name -> value) and its count.
    pub fn series(vec: &IntCounterVec) -> Vec<(BTreeMap<String, String>, u64)> {
        let mut out = Vec::new();
        for family in vec.collect() {
            for m in family.get_metric() {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                out.push((labels, m.get_counter().get_value() as u64));
            }
        }
        out
    }
}

fn add_vec(into: &IntCounterVec, from: &IntCounterVec) {
    for (labels, n) in PoolCounters::series(from) {
        let labels: HashMap<&str, &str> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Both sides come from `PoolCounters::unregistered`, so the label names always match.
        if let Ok(c) = into.get_metric_with(&labels) {
            c.inc_by(n);
        }
    }
}

/// What `/metrics` shows for the pool counters: the zero series plus every pool's counts,
/// added up at each scrape (a handful of series, every 15 s or so).
struct PoolCounterSum {
    /// Never incremented: the zero series, and the descriptions the registry checks.
    zero: PoolCounters,
    pools: Mutex<Vec<Arc<PoolCounters>>>,
}

impl PoolCounterSum {
    fn registered(r: &Registry) -> Arc<PoolCounterSum> {
        let sum = Arc::new(PoolCounterSum {
            zero: PoolCounters::unregistered(&[]),
            pools: Mutex::new(Vec::new()),
        });
        r.register(Box::new(SharedPoolSum(sum.clone())))
            .expect("unique metric");
        sum
    }

    fn add(&self, sinks: &[&str]) -> Arc<PoolCounters> {
        let c = Arc::new(PoolCounters::unregistered(sinks));
        lock(&self.pools).push(c.clone());
        c
    }
}

/// The registry wants to own its collectors; pools are added after registration.
struct SharedPoolSum(Arc<PoolCounterSum>);

impl Collector for SharedPoolSum {
    fn desc(&self) -> Vec<&Desc> {
        self.0
            .zero
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sum = PoolCounters::unregistered(&[]);
        sum.add(&self.0.zero);
        for pool in lock(&self.0.pools).iter() {
            sum.add(pool);
        }
        sum.collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A configured sender's handles for the common path (a 202), looked up once at start-up.
#[derive(Clone)]
pub struct SenderMetrics {
    accepted: IntCounter,
    duration: Histogram,
    duplicates: IntCounter,
    rate_limited: IntCounter,
}

/// Status codes as label values without allocating for the ones the edge answers.
fn status_str(status: u16) -> &'static str {
    match status {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        s if (500..600).contains(&s) => "5xx",
        s if (400..500).contains(&s) => "4xx",
        _ => "other",
    }
}

fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %crate::error_chain::chain(&e), "metrics encoding failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The replay source for a replay requested by `by` through a surface whose default source is
/// `surface`: the CLI names itself `cli:<user>` on the admin API.
pub fn replay_source_of(surface: &'static str, by: &str) -> &'static str {
    if by.starts_with("cli:") {
        replay_source::CLI
    } else {
        surface
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_build_info_and_the_slo_bucket() {
        let text = metrics().encode();
        assert!(
            text.contains(&format!(
                "leadrouter_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("# TYPE leadrouter_e2e_latency_seconds histogram"));
        assert!(
            text.contains("leadrouter_e2e_latency_seconds_bucket{replay=\"false\",le=\"2\"}"),
            "{text}"
        );
        assert!(text.contains("leadrouter_dlq_placements_total{reason=\"max_deliveries\"}"));
    }

    #[test]
    fn intake_labels_are_bounded() {
        let m = metrics();
        let sm = m.sender("unit-sender");
        m.intake(
            Some(("unit-sender", &sm)),
            202,
            None,
            true,
            Duration::from_millis(1),
        );
        m.intake(
            Some(("unit-sender", &sm)),
            401,
            Some("signature_invalid"),
            false,
            Duration::from_millis(1),
        );
        m.intake(
            Some(("unit-sender", &sm)),
            429,
            Some("rate_limited"),
            false,
            Duration::from_millis(1),
        );
        m.intake(None, 404, Some("unknown_sender"), false, Duration::ZERO);
        let text = m.encode();
        for line in [
            "leadrouter_intake_requests_total{sender=\"unit-sender\",status=\"202\"} 1",
            "leadrouter_intake_requests_total{sender=\"unit-sender\",status=\"401\"} 1",
            "leadrouter_intake_requests_total{sender=\"unit-sender\",status=\"429\"} 1",
            "leadrouter_intake_requests_total{sender=\"unit-sender\",status=\"503\"} 0",
            "leadrouter_intake_duplicates_total{sender=\"unit-sender\"} 1",
            "leadrouter_intake_rate_limited_total{sender=\"unit-sender\"} 1",
            "leadrouter_intake_signature_failures_total{reason=\"signature_invalid\",sender=\"unit-sender\"} 1",
            "leadrouter_intake_duration_seconds_count{sender=\"unit-sender\"} 3",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        assert!(
            text.contains("leadrouter_intake_requests_total{sender=\"_unknown\",status=\"404\"}")
        );
    }

    #[test]
    fn pools_are_exported_as_their_sum_and_never_go_down() {
        let r = Registry::new();
        let sum = PoolCounterSum::registered(&r);
        let text = encode(&r);
        for line in [
            "leadrouter_delivered_total{replay=\"false\"} 0",
            "leadrouter_retries_total{reason=\"kv_unavailable\"} 0",
            "leadrouter_dlq_placements_total{reason=\"sink_rejected\"} 0",
            "leadrouter_handler_duplicates_total 0",
        ] {
            assert!(
                text.contains(line),
                "no pool yet, still `{line}` in\n{text}"
            );
        }
        let a = sum.add(&["crm"]);
        let b = sum.add(&["crm", "archive"]);
        a.delivered.with_label_values(&["false"]).inc_by(2);
        b.delivered.with_label_values(&["false"]).inc();
        b.retries.with_label_values(&[retry::SINK]).inc();
        a.handler_duplicates.inc();
        b.sink_requests
            .with_label_values(&["crm", "failed", "timeout", "false"])
            .inc();
        drop(a);
        let text = encode(&r);
        for line in [
            "leadrouter_delivered_total{replay=\"false\"} 3",
            "leadrouter_retries_total{reason=\"sink\"} 1",
            "leadrouter_handler_duplicates_total 1",
            "leadrouter_sink_requests_total{class=\"none\",outcome=\"ok\",replay=\"true\",sink=\"archive\"} 0",
            "leadrouter_sink_requests_total{class=\"timeout\",outcome=\"failed\",replay=\"false\",sink=\"crm\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE leadrouter_delivered_total counter")
                .count(),
            1
        );
    }

    #[test]
    fn status_labels_never_allocate_unbounded_values() {
        assert_eq!(status_str(202), "202");
        assert_eq!(status_str(502), "5xx");
        assert_eq!(status_str(418), "4xx");
        assert_eq!(status_str(302), "other");
    }

    #[test]
    fn cli_replays_are_told_apart() {
        assert_eq!(replay_source_of(replay_source::ADMIN, "cli:ada"), "cli");
        assert_eq!(replay_source_of(replay_source::ADMIN, "api"), "admin");
        assert_eq!(replay_source_of(replay_source::NATS, "ops-bot"), "nats");
    }
}
