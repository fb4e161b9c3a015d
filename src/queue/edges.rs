//! Edge sites as operators see them: is the leaf link up, how many leads wait at the edge, and
//! how old the oldest of them is.
//!
//! Both sides report, because during an outage only one side can:
//! - the **hub** asks each listed edge's JetStream across its domain (`$JS.edge-{name}.API`)
//!   for `LEADS_EDGE`'s state every [`POLL`]. An answer means the link is up; the stream's
//!   message count is exactly the leads not yet at the hub (work-queue retention removes a lead
//!   once the hub stored it), and its first timestamp is the oldest one's arrival. While the
//!   link is down the hub keeps the last counts it saw and counts the time since.
//! - the **edge** reads its own stream the same way, and its nats-server's `/varz` for whether
//!   it holds a leaf connection.
//!
//! The hub's board feeds `leadrouter stats` and the console; both watchers export the
//! metrics (`leadrouter_edge_*`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use serde::Serialize;
use tokio::sync::watch;

use super::STREAM_EDGE;
use crate::config::edge_domain;
use crate::error_chain::chain;
use crate::telemetry::metrics::metrics;

/// How often each edge is asked.
pub const POLL: Duration = Duration::from_secs(5);
/// How long one edge may take to answer before its link counts as down.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// One edge as last seen.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EdgeStatus {
    pub name: String,
    /// `None` at an edge without a monitoring endpoint to ask.
    pub link_up: Option<bool>,
    /// Leads stored at the edge, not yet at the hub; `None` until the edge was reached once.
    pub waiting: Option<u64>,
    /// Age of the oldest of them in seconds (0 when none).
    pub oldest_waiting_seconds: Option<f64>,
    /// When the edge last answered (RFC 3339).
    pub last_seen: Option<String>,
    /// Seconds the link has been down (0 while up).
    pub link_down_seconds: f64,
    /// Why the last poll failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The edges' latest status, shared by the watcher (the only writer) and its readers.
#[derive(Debug, Clone, Default)]
pub struct EdgeBoard {
    inner: Arc<RwLock<BTreeMap<String, EdgeStatus>>>,
}

impl EdgeBoard {
    pub fn snapshot(&self) -> Vec<EdgeStatus> {
        self.inner
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn put(&self, s: EdgeStatus) {
        if let Ok(mut m) = self.inner.write() {
            m.insert(s.name.clone(), s);
        }
    }
}

/// The state of an edge stream that matters here.
struct Waiting {
    count: u64,
    oldest_seconds: f64,
}

async fn read_waiting(js: &jetstream::Context) -> Result<Waiting, async_nats::Error> {
    let mut stream = js.get_stream(STREAM_EDGE).await?;
    let info = stream.info().await?;
    let count = info.state.messages;
    let oldest_seconds = if count == 0 {
        0.0
    } else {
        let first = SystemTime::from(info.state.first_timestamp);
        SystemTime::now()
            .duration_since(first)
            .unwrap_or_default()
            .as_secs_f64()
    };
    Ok(Waiting {
        count,
        oldest_seconds,
    })
}

fn export(s: &EdgeStatus) {
    let m = metrics();
    let e = s.name.as_str();
    if let Some(up) = s.link_up {
        m.edge_link_up.with_label_values(&[e]).set(i64::from(up));
    }
    if let Some(w) = s.waiting {
        m.edge_waiting
            .with_label_values(&[e])
            .set(w.min(i64::MAX as u64) as i64);
    }
    if let Some(o) = s.oldest_waiting_seconds {
        m.edge_oldest_waiting.with_label_values(&[e]).set(o);
    }
    m.edge_link_down
        .with_label_values(&[e])
        .set(s.link_down_seconds);
}

/// The hub's watcher: asks every edge in `edges` every [`POLL`] until `stop`.
pub async fn watch_from_hub(
    client: async_nats::Client,
    edges: Vec<String>,
    alert_after: Duration,
    board: EdgeBoard,
    mut stop: watch::Receiver<bool>,
) {
    metrics()
        .edge_link_alert_after
        .set(alert_after.as_secs_f64());
    let started = SystemTime::now();
    let contexts: Vec<(String, jetstream::Context)> = edges
        .iter()
        .map(|e| {
            (
                e.clone(),
                jetstream::with_domain(client.clone(), edge_domain(e)),
            )
        })
        .collect();
    let mut last: BTreeMap<String, EdgeStatus> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for (name, js) in &contexts {
            let answer = tokio::time::timeout(ANSWER_WITHIN, read_waiting(js)).await;
            let prev = last.get(name);
            let now = SystemTime::now();
            let status = match answer {
                Ok(Ok(w)) => EdgeStatus {
                    name: name.clone(),
                    link_up: Some(true),
                    waiting: Some(w.count),
                    oldest_waiting_seconds: Some(w.oldest_seconds),
                    last_seen: Some(crate::timestamp::format_system(now)),
                    link_down_seconds: 0.0,
                    error: None,
                },
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => chain(&*e),
                        _ => format!("no answer within {ANSWER_WITHIN:?}"),
                    };
                    let since = prev
                        .and_then(|p| p.last_seen.as_deref())
                        .and_then(crate::timestamp::parse)
                        .map(SystemTime::from)
                        .unwrap_or(started);
                    if prev.and_then(|p| p.link_up) != Some(false) {
                        tracing::warn!(target: "leadrouter::edge", edge = %name, error = %error, "edge unreachable across its leaf link; its leads wait there until it is back");
                    }
                    EdgeStatus {
                        name: name.clone(),
                        link_up: Some(false),
                        // The last counts seen: the edge keeps taking leads meanwhile, so
                        // these are a floor, and the down time says how stale.
                        waiting: prev.and_then(|p| p.waiting),
                        oldest_waiting_seconds: prev.and_then(|p| p.oldest_waiting_seconds),
                        last_seen: prev.and_then(|p| p.last_seen.clone()),
                        link_down_seconds: now
                            .duration_since(since)
                            .unwrap_or_default()
                            .as_secs_f64(),
                        error: Some(error),
                    }
                }
            };
            if status.link_up == Some(true) && prev.and_then(|p| p.link_up) == Some(false) {
                tracing::info!(target: "leadrouter::edge", edge = %name, waiting = status.waiting.unwrap_or(0), "edge reachable again; its waiting leads are on their way");
            }
            export(&status);
            board.put(status.clone());
            last.insert(name.clone(), status);
        }
    }
}

/// The edge's own watcher, for its metrics: its stream, and its server's leaf connection when
/// `monitor` (the server's monitoring URL, read at every poll because a restarted server picks
/// a new port) gives one.
pub async fn watch_local(
    js: jetstream::Context,
    name: String,
    monitor: impl Fn() -> Option<String> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .ok();
    let mut down_since: Option<SystemTime> = None;
    let mut last_seen: Option<String> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let waiting = tokio::time::timeout(ANSWER_WITHIN, read_waiting(&js))
            .await
            .ok()
            .and_then(Result::ok);
        let link_up = match (monitor(), &http) {
            (Some(url), Some(http)) => Some(leaf_connected(http, &url).await),
            _ => None,
        };
        let now = SystemTime::now();
        match link_up {
            Some(true) => {
                down_since = None;
                last_seen = Some(crate::timestamp::format_system(now));
            }
            Some(false) => {
                down_since.get_or_insert(now);
            }
            None => {}
        }
        let status = EdgeStatus {
            name: name.clone(),
            link_up,
            waiting: waiting.as_ref().map(|w| w.count),
            oldest_waiting_seconds: waiting.as_ref().map(|w| w.oldest_seconds),
            last_seen: last_seen.clone(),
            link_down_seconds: down_since
                .and_then(|d| now.duration_since(d).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
            error: None,
        };
        export(&status);
    }
}

/// Whether the server at `monitor` holds at least one leaf connection (`/varz` `leafnodes`).
async fn leaf_connected(http: &reqwest::Client, monitor: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Varz {
        #[serde(default)]
        leafnodes: u64,
    }
    let url = format!("{}/varz", monitor.trim_end_matches('/'));
    match http.get(url).send().await {
        Ok(r) => r.json::<Varz>().await.is_ok_and(|v| v.leafnodes > 0),
        Err(_) => false,
    }
}
