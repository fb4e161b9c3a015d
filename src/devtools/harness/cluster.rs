//! N nats-servers on loopback forming one JetStream cluster, for R3 streams and failover.
//!
//! Each node has a unique `server_name` (`n1`, `n2`, ...; JetStream clustering requires one),
//! the same cluster `name`, and its own client, route and monitoring ports, all picked up front
//! so a restarted node comes back at the same addresses and rejoins with its store.

use std::cell::RefCell;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::stream::ClusterInfo;

use super::nats::{NatsOptions, NatsServer};
use super::ports::free_ports;
use super::process::TempDir;
use super::HarnessError;

/// Runs `attempt` every 50 ms until it answers `Ok`, or `timeout` passes: then a timeout
/// naming `what` and the last thing `attempt` said was missing.
async fn poll<T, Fut>(
    what: impl FnOnce() -> String,
    timeout: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, HarnessError>
where
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match attempt().await {
            Ok(v) => return Ok(v),
            Err(why) => why,
        };
        if start.elapsed() > timeout {
            return Err(HarnessError::Timeout {
                what: what(),
                waited: timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster `name` every node shares.
const CLUSTER_NAME: &str = "leadrouter-harness";

/// A JetStream RAFT group whose leader a test asks about.
#[derive(Debug, Clone, Copy)]
pub enum RaftGroup<'a> {
    Stream(&'a str),
    Consumer {
        stream: &'a str,
        consumer: &'a str,
    },
    /// A KV bucket; its stream is `KV_<bucket>`.
    Kv(&'a str),
}

impl RaftGroup<'_> {
    /// "stream LEADS", "consumer LEADS/handlers", "KV bucket leads_idempotency": for messages.
    pub fn describe(&self) -> String {
        match self {
            RaftGroup::Stream(s) => format!("stream {s}"),
            RaftGroup::Consumer { stream, consumer } => format!("consumer {stream}/{consumer}"),
            RaftGroup::Kv(b) => format!("KV bucket {b}"),
        }
    }

    async fn cluster_info(&self, js: &jetstream::Context) -> Option<ClusterInfo> {
        let stream_info = |name: String| async move {
            js.get_stream(name)
                .await
                .ok()?
                .get_info()
                .await
                .ok()?
                .cluster
        };
        match self {
            RaftGroup::Stream(name) => stream_info(name.to_string()).await,
            RaftGroup::Kv(bucket) => stream_info(format!("KV_{bucket}")).await,
            RaftGroup::Consumer { stream, consumer } => {
                js.get_stream(stream)
                    .await
                    .ok()?
                    .consumer_info(consumer)
                    .await
                    .ok()?
                    .cluster
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct NodePorts {
    client: u16,
    route: u16,
    http: u16,
}

/// A JetStream cluster of real nats-servers. Dropping it kills every node.
#[derive(Debug)]
pub struct NatsCluster {
    // Declared before `dir`: nodes are killed (dropped) before their directory is removed.
    nodes: Vec<Option<NatsServer>>,
    ports: Vec<NodePorts>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes (3 for R3) and waits until each one is up; call
    /// [`wait_ready`](Self::wait_ready) before using JetStream (a meta leader must exist).
    pub fn start(n: usize) -> Result<NatsCluster, HarnessError> {
        let dir = TempDir::new("nats-cluster")?;
        let picked = free_ports(3 * n)?;
        let ports: Vec<NodePorts> = picked
            .chunks_exact(3)
            .map(|p| NodePorts {
                client: p[0],
                route: p[1],
                http: p[2],
            })
            .collect();
        let mut cluster = NatsCluster {
            nodes: Vec::with_capacity(n),
            ports,
            dir,
        };
        for i in 0..n {
            let node = cluster.start_node(i)?;
            cluster.nodes.push(Some(node));
        }
        tracing::debug!(nodes = n, urls = %cluster.urls(), "nats cluster started");
        Ok(cluster)
    }

    /// Three nodes, ready for R3 streams.
    pub async fn start_ready(timeout: Duration) -> Result<NatsCluster, HarnessError> {
        let cluster = NatsCluster::start(3)?;
        cluster.wait_ready(timeout).await?;
        Ok(cluster)
    }

    fn options(&self, i: usize) -> NatsOptions {
        let p = self.ports[i];
        let routes = self
            .ports
            .iter()
            .map(|o| format!("nats-route://127.0.0.1:{}", o.route))
            .collect::<Vec<_>>()
            .join(", ");
        NatsOptions::new()
            .port(p.client)
            .http_port(p.http)
            .server_name(Self::name(i))
            .dir(self.dir.path().join(Self::name(i)))
            // Every node lists all routes, itself included (nats-server skips its own): one
            // config shape for all, and any node can be the one that comes back first.
            .extra(format!(
                "cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"127.0.0.1:{}\"\n  routes: [ {routes} ]\n}}\n",
                p.route
            ))
    }

    fn start_node(&self, i: usize) -> Result<NatsServer, HarnessError> {
        NatsServer::with_options(self.options(i))
    }

    fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn check(&self, i: usize) -> Result<(), HarnessError> {
        if i < self.ports.len() {
            Ok(())
        } else {
            Err(HarnessError::NoSuchNode {
                index: i,
                size: self.ports.len(),
            })
        }
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Where the nodes' directories live (`n1/`, `n2/`, ... with config, store and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node's client URL, comma-separated: the form the router's `nats.url` accepts.
    /// (`async_nats::connect` takes no comma list: use [`server_addrs`](Self::server_addrs)
    /// or [`client`](Self::client).)
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's address, for `async_nats::connect` / `ConnectOptions::connect`.
    pub fn server_addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.client).parse())
            .collect::<Result<_, _>>()
            // A loopback URL with a u16 port always parses; an empty list would only make the
            // connect fail with its own error.
            .unwrap_or_default()
    }

    /// A client that knows every node, so it fails over when the one it is on dies.
    pub async fn client(&self) -> Result<async_nats::Client, HarnessError> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(self.server_addrs())
            .await
            .map_err(|e| HarnessError::Nats {
                what: format!("connecting to {}", self.urls()),
                source: e.into(),
            })
    }

    /// Node `i`'s client URL (valid while it is down too: the port is kept).
    pub fn node_url(&self, i: usize) -> String {
        self.ports
            .get(i)
            .map(|p| format!("nats://127.0.0.1:{}", p.client))
            .unwrap_or_default()
    }

    /// Node `i`'s monitoring base URL.
    pub fn monitor_url(&self, i: usize) -> String {
        self.ports
            .get(i)
            .map(|p| format!("http://127.0.0.1:{}", p.http))
            .unwrap_or_default()
    }

    /// The `server_name` of node `i` (`n1` for 0).
    pub fn server_name(&self, i: usize) -> String {
        Self::name(i)
    }

    /// The node index of a `server_name`, e.g. a leader's name from stream info.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        (0..self.len()).find(|i| Self::name(*i) == server_name)
    }

    pub fn node(&self, i: usize) -> Option<&NatsServer> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).and_then(NatsServer::pid)
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.node(i).is_some_and(NatsServer::is_alive)
    }

    /// SIGKILL node `i` (a crash). Its ports and store are kept for [`restart`](Self::restart).
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        self.check(i)?;
        if let Some(node) = self.nodes.get_mut(i).and_then(Option::as_mut) {
            node.kill();
            tracing::debug!(node = %Self::name(i), "cluster node killed");
        }
        Ok(())
    }

    /// (Re)starts node `i` on its ports with its store; returns once the process is ready.
    /// It rejoins the cluster in the background: await
    /// [`wait_current`](Self::wait_current) or [`wait_ready`](Self::wait_ready).
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.check(i)?;
        match self.nodes.get_mut(i).and_then(Option::as_mut) {
            Some(node) => node.restart()?,
            None => {
                let node = self.start_node(i)?;
                self.nodes[i] = Some(node);
            }
        }
        tracing::debug!(node = %Self::name(i), "cluster node restarted");
        Ok(())
    }

    /// Until every node is healthy and JetStream works cluster-wide: each node's `/healthz`
    /// answers 200 (its meta layer has recovered), the meta leader sees every other node as a
    /// current peer (so R3 placement has three servers), and a client gets the account info
    /// (answered by the meta leader).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        let start = Instant::now();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(HarnessError::Http)?;
        let what = || format!("nats cluster of {} ready", self.len());
        poll(what, timeout, || self.probe(&http)).await?;
        tracing::debug!(waited = ?start.elapsed(), "nats cluster ready");
        Ok(())
    }

    /// One readiness check; `Err` says what is not there yet.
    async fn probe(&self, http: &reqwest::Client) -> Result<(), String> {
        let mut leader_view = None;
        for i in 0..self.len() {
            let name = Self::name(i);
            let base = self.monitor_url(i);
            let health = http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .map_err(|e| format!("{name} /healthz: {e}"))?;
            if !health.status().is_success() {
                return Err(format!("{name} /healthz: {}", health.status()));
            }
            let jsz: serde_json::Value = http
                .get(format!("{base}/jsz"))
                .send()
                .await
                .map_err(|e| format!("{name} /jsz: {e}"))?
                .json()
                .await
                .map_err(|e| format!("{name} /jsz: {e}"))?;
            if jsz["meta_cluster"]["leader"].as_str() == Some(name.as_str()) {
                leader_view = Some((name, jsz));
            }
        }
        // Only the leader's view of its peers is current; a follower's may be stale.
        let (leader, jsz) = leader_view.ok_or("no node is the meta leader")?;
        let meta = &jsz["meta_cluster"];
        let current = meta["replicas"]
            .as_array()
            .map(|r| r.iter().filter(|p| p["current"] == true).count())
            .unwrap_or(0);
        if meta["cluster_size"].as_u64() != Some(self.len() as u64) || current + 1 < self.len() {
            return Err(format!(
                "meta leader {leader} sees cluster_size {} and {current} current peers",
                meta["cluster_size"]
            ));
        }
        let client = self.client().await.map_err(|e| e.to_string())?;
        let account = jetstream::new(client.clone()).query_account().await;
        // Not a long-lived client: close it so each probe leaves no connection behind.
        let _ = client.drain().await;
        account.map_err(|e| format!("account info: {e}"))?;
        Ok(())
    }

    /// The server name of `group`'s leader, or `None` while there is none (an election) or the
    /// request fails (a client reconnecting after its node died).
    pub async fn leader(&self, js: &jetstream::Context, group: RaftGroup<'_>) -> Option<String> {
        group
            .cluster_info(js)
            .await?
            .leader
            .filter(|l| !l.is_empty())
    }

    /// `cluster.leader` of a stream's info.
    pub async fn stream_leader(&self, js: &jetstream::Context, stream: &str) -> Option<String> {
        self.leader(js, RaftGroup::Stream(stream)).await
    }

    pub async fn consumer_leader(
        &self,
        js: &jetstream::Context,
        stream: &str,
        consumer: &str,
    ) -> Option<String> {
        self.leader(js, RaftGroup::Consumer { stream, consumer })
            .await
    }

    /// The leader of a KV bucket's stream (`KV_<bucket>`).
    pub async fn kv_leader(&self, js: &jetstream::Context, bucket: &str) -> Option<String> {
        self.leader(js, RaftGroup::Kv(bucket)).await
    }

    /// Awaits a leader of `group` that is not `old`: the re-election after `old` was killed.
    pub async fn wait_leader_other_than(
        &self,
        js: &jetstream::Context,
        group: RaftGroup<'_>,
        old: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        let start = Instant::now();
        // The last leader seen, kept across a `None` (an election, a failed request).
        let seen = RefCell::new(None::<String>);
        let what = || format!("a leader of {} other than {old}", group.describe());
        let new = poll(what, timeout, || async {
            let leader = self.leader(js, group).await;
            if let Some(l) = leader.as_deref().filter(|l| *l != old) {
                return Ok(l.to_string());
            }
            let mut last = seen.borrow_mut();
            *last = leader.or(last.take());
            Err(format!("last leader seen: {:?}", *last))
        })
        .await?;
        tracing::debug!(group = %group.describe(), old, new, waited = ?start.elapsed(), "new leader");
        Ok(new)
    }

    /// Awaits node `i` being a current member of `group` (its leader, or a replica that has
    /// caught up): a restarted node has rejoined.
    pub async fn wait_current(
        &self,
        js: &jetstream::Context,
        group: RaftGroup<'_>,
        i: usize,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        self.check(i)?;
        let name = Self::name(i);
        let what = || format!("{name} current in {}", group.describe());
        poll(what, timeout, || async {
            let info = group
                .cluster_info(js)
                .await
                .ok_or_else(|| "no cluster info".to_string())?;
            let leads = info.leader.as_deref() == Some(name.as_str());
            let current = info
                .replicas
                .iter()
                .any(|p| p.name == name && p.current && !p.offline);
            if leads || current {
                return Ok(());
            }
            Err(format!(
                "leader {:?}, replicas {:?}",
                info.leader,
                info.replicas
                    .iter()
                    .map(|p| (p.name.as_str(), p.current))
                    .collect::<Vec<_>>()
            ))
        })
        .await
    }
}
