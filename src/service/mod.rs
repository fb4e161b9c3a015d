//! Wires the pieces of `serve` together: NATS (embedded or external), topology, the intake edge.

mod edge;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{KeyValueError, StreamsError};
use tokio::sync::{oneshot, watch};

use crate::config::{Config, Durability, EnvSource};
use crate::console::{self, stats::Observed, AdminState};
use crate::dlq::crypto::{KeyError, KeyRing};
use crate::dlq::store::{DlqStore, DlqStoreError};
use crate::dlq::DlqWriter;
use crate::intake::group_key::{GroupKey, GroupKeyError};
use crate::intake::{self, Filing, Grouping, IntakeSetupError, IntakeState};
use crate::ledger::idempotency::Idempotency;
use crate::pipeline::enrich::{EnrichSetupError, Enricher};
use crate::pipeline::fence::Fence;
use crate::pipeline::schema::{SchemaError, SchemaRegistry};
use crate::pipeline::{HandlerPool, PipelineStats, PoolError, PoolParts};
use crate::queue::edges::{self, EdgeBoard};
use crate::queue::embedded::{EmbeddedError, EmbeddedNats, EmbeddedSpec};
use crate::queue::provision::{self, ProvisionError};
use crate::queue::{self, topology, Publisher, QueueError};
use crate::sinks::{self, SinkBuildError, SinkContext};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot create data dir {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The blocking task that finds (or installs) nats-server panicked or was cancelled.
    #[error("finding or installing nats-server did not finish")]
    ProvisionTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Intake(#[from] IntakeSetupError),
    #[error("config key `handlers.schemas_dir`")]
    Schemas(#[from] SchemaError),
    #[error(transparent)]
    Enrich(#[from] EnrichSetupError),
    #[error(transparent)]
    Sink(#[from] SinkBuildError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("config key `dlq.keys`")]
    DlqKeys(#[source] KeyError),
    /// A KV bucket the service needs (it is created by the topology step) cannot be opened.
    #[error("KV bucket {bucket}")]
    Kv {
        bucket: &'static str,
        #[source]
        source: KeyValueError,
    },
    #[error("opening the DLQ store")]
    DlqStore(#[source] DlqStoreError),
    #[error("listing the JetStream streams")]
    ListStreams(#[source] StreamsError),
    #[error("cannot listen on {addr} ({setting})")]
    Bind {
        addr: SocketAddr,
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the embedded nats-server did not load stream(s) {missing} found in its store {store}: it was started with a wrong or missing store key (nats.embedded.store_key_env), or the store was encrypted and the key is now unset. Refusing to start, because starting would create empty streams next to the hidden ones. Set the key that encrypted this store.")]
    HiddenStreams { missing: String, store: PathBuf },
    // The two variants below keep their cause in the message too: `Service::start`'s callers
    // compare its `to_string()` (the cause is also the source; `error_chain::chain` skips the
    // repeat).
    #[error("DLQ key check: {}", crate::error_chain::chain(.0))]
    DlqKeyCheck(#[source] crate::dlq::KeyCheckError),
    /// The key check failed for the key this router generated itself: the usual cause on a
    /// second router, since each data dir generates its own.
    #[error("DLQ key check: {}. This router uses the DLQ key it generated at {} because [dlq] keys is empty, and another router on this NATS account recorded a different `local` key: routers that share a NATS account must share [dlq] keys. Copy the first router's dlq.key here, or configure the same [dlq] keys (e.g. keys = [{{ id = \"k1\", env = \"LEADROUTER_DLQ_KEY\" }}]) on every router", crate::error_chain::chain(.source), .path.display())]
    LocalDlqKey {
        path: PathBuf,
        #[source]
        source: crate::dlq::KeyCheckError,
    },
    #[error("handlers group key: {0}")]
    GroupKey(#[from] GroupKeyError),
    #[error(transparent)]
    Durability(#[from] crate::queue::durability::DurabilityError),
    /// The server an edge stores its leads on is not in the edge's JetStream domain: its
    /// leads would land in the hub's store, or in another edge's.
    #[error("[edge] name = \"{name}\" needs nats-server's JetStream domain `{want}`, but the server at {url} is in {have}: give its jetstream block `domain: {want}` (the embedded server gets it from the template's {{{{jetstream_domain}}}} placeholder)")]
    EdgeDomain {
        name: String,
        want: String,
        have: String,
        url: String,
    },
    #[error("reading the JetStream account of the edge's server")]
    EdgeAccount(#[source] async_nats::jetstream::context::AccountError),
}

pub struct Service {
    intake_addr: SocketAddr,
    nats_url: String,
    stop_intake: Option<oneshot::Sender<()>>,
    intake_task: tokio::task::JoinHandle<()>,
    intake: Arc<IntakeState>,
    client: async_nats::Client,
    pool: Option<HandlerPool>,
    admin_addr: Option<SocketAddr>,
    stop_admin: Option<oneshot::Sender<()>>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    stop_ops: watch::Sender<bool>,
    /// The NATS operator service (none at an edge).
    ops_task: Option<tokio::task::JoinHandle<()>>,
    /// Gauges, samplers and watchers that stop with `stop_ops`.
    background: Vec<tokio::task::JoinHandle<()>>,
    embedded: Option<EmbeddedNats>,
}

impl Service {
    pub async fn start(cfg: &Config, env: &dyn EnvSource) -> Result<Service, ServiceError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServiceError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let mut on_disk = Vec::new();
        let durability = cfg.streams.durability();
        let embedded = if cfg.nats.is_embedded() {
            let store_key = cfg.nats.embedded.store_key(env)?;
            let explicit = cfg.nats.embedded.binary.clone();
            let binary = tokio::task::spawn_blocking(move || {
                provision::ensure_nats_server(explicit.as_deref(), &provision::tools_dir())
            })
            .await
            .map_err(ServiceError::ProvisionTask)??;
            let spec = EmbeddedSpec {
                binary,
                template: cfg.nats.embedded.template_dir.join("nats-server.conf.tmpl"),
                port: cfg.nats.embedded.port,
                dir: cfg.nats_store_dir(),
                ready_timeout: Duration::from_secs(30),
                store_key,
                sync_always: durability == Durability::Fsync,
                domain: cfg.edge.as_ref().map(|e| e.domain()),
                leafnodes: edge::leafnodes(cfg, env)?,
            };
            if spec.store_key.is_some() {
                tracing::info!(
                    cipher = cfg.nats.embedded.store_cipher.as_str(),
                    "nats-server store encryption on"
                );
            }
            on_disk = spec.streams_on_disk();
            Some(EmbeddedNats::start(spec).await?)
        } else {
            None
        };
        let nats_url = match &embedded {
            Some(e) => e.url().to_string(),
            None => cfg.nats.url.clone(),
        };
        let client = queue::connect(&nats_url, &cfg.nats, env).await?;
        let mut publisher = Publisher::new(client.clone(), cfg.nats.publish_timeout);
        if durability == Durability::Fsync && cfg.streams.group_commit.enabled {
            publisher = publisher
                .with_group_commit(&cfg.streams.group_commit, cfg.streams.duplicate_window);
        }
        crate::telemetry::metrics::metrics()
            .durability_info
            .with_label_values(&[durability.as_str()])
            .set(1);
        tracing::info!(
            durability = durability.as_str(),
            group_commit = publisher.group_commit(),
            "what a 202 survives: {}",
            match durability {
                Durability::Lazy => "a process crash (nats-server fsyncs lazily)",
                Durability::Fsync =>
                    "a process crash, an OS crash and power loss (fsync before the ack)",
            }
        );
        // Neither a server that would undo a 202 in a power cut nor one hiding streams may
        // answer vendors; the embedded one is stopped on the way out.
        let checked = async {
            check_durability(durability, embedded.as_ref(), cfg).await?;
            check_streams_loaded(publisher.context(), &on_disk, cfg).await
        };
        if let Err(e) = checked.await {
            if let Some(emb) = embedded {
                emb.stop().await;
            }
            return Err(e);
        }
        if let Some(edge) = &cfg.edge {
            return edge::start(cfg, edge, env, embedded, client, publisher, nats_url).await;
        }
        for change in topology::ensure(publisher.context(), &cfg.streams, &cfg.hub.edges).await? {
            tracing::info!(?change, "topology");
        }
        let partitions =
            topology::ensure_partitions(publisher.context(), cfg.handlers.partitions).await?;
        tracing::info!(change = ?partitions, partitions = cfg.handlers.partitions, "topology");
        let group_key = GroupKey::load(&cfg.handlers, &cfg.data_dir, env)?;
        group_key.check(publisher.context()).await?;
        let grouping = Grouping {
            key: group_key,
            partitions: cfg.handlers.partitions,
        };
        let keys = {
            let lookup = |name: &str| env.var(name);
            let loaded = KeyRing::load_or_create(&cfg.dlq, &cfg.data_dir, &lookup)
                .map_err(ServiceError::DlqKeys)?;
            if let Some(w) = &loaded.warning {
                tracing::warn!("{w}");
            }
            loaded.ring
        };
        let new_checks = crate::dlq::verify_keys(publisher.context(), &keys)
            .await
            .map_err(|e| {
                if keys
                    .key_ids()
                    .any(|id| id == crate::dlq::crypto::LOCAL_KEY_ID)
                {
                    ServiceError::LocalDlqKey {
                        path: cfg.data_dir.join(crate::dlq::crypto::LOCAL_KEY_FILE),
                        source: e,
                    }
                } else {
                    ServiceError::DlqKeyCheck(e)
                }
            })?;
        if !new_checks.is_empty() {
            tracing::info!(keys = ?new_checks, "DLQ key-check records written");
        }
        let kv = open_bucket(publisher.context(), queue::KV_IDEMPOTENCY).await?;
        let idem = Idempotency::new(
            kv,
            cfg.handlers.cache_capacity,
            cfg.streams.idempotency_ttl,
            cfg.handlers.ack_wait,
        );
        let fence = Fence::new(
            open_bucket(publisher.context(), queue::KV_FENCE).await?,
            cfg.handlers.ack_wait,
        );
        let dlq_writer = DlqWriter::new(publisher.context().clone(), keys.clone());
        let pool = if cfg.handlers.enabled {
            Some(
                start_pool(
                    cfg,
                    env,
                    &client,
                    &publisher,
                    idem.clone(),
                    fence,
                    dlq_writer,
                    grouping.clone(),
                )
                .await?,
            )
        } else {
            tracing::info!("handlers.enabled = false: edge-only node");
            None
        };
        let publisher_ctx = publisher.context().clone();
        let state =
            build_intake(cfg, env, publisher, Filing::Partitioned(grouping.clone())).await?;
        let store = DlqStore::open(publisher_ctx.clone(), Arc::new(keys), idem)
            .await
            .map_err(ServiceError::DlqStore)?
            .with_grouping(grouping.clone());
        let stats = pool.as_ref().map(|p| p.stats().clone());
        let edge_board = EdgeBoard::default();
        let observed = Arc::new(Observed {
            pipeline: stats.clone(),
            intake: state.clone(),
            windows: Default::default(),
            js: publisher_ctx.clone(),
            dlq: store.clone(),
            partitions: cfg.handlers.partitions,
            edges: edge_board.clone(),
        });
        let (stop_ops, ops_rx) = watch::channel(false);
        let mut background = Vec::new();
        if !cfg.hub.edges.is_empty() {
            tracing::info!(edges = ?cfg.hub.edges, "hub: LEADS sources these edges' streams");
            background.push(tokio::spawn(edges::watch_from_hub(
                client.clone(),
                cfg.hub.edges.clone(),
                cfg.hub.link_alert_after,
                edge_board,
                stop_ops.subscribe(),
            )));
        }
        let sampler_task = {
            let observed = observed.clone();
            let mut stop = stop_ops.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(console::stats::SAMPLE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => observed.sample(),
                        _ = stop.changed() => break,
                    }
                }
            })
        };
        let ops_task = {
            let (client, stats) = (client.clone(), observed.clone());
            let store = store
                .clone()
                .with_replay_source(crate::telemetry::metrics::replay_source::NATS);
            tokio::spawn(async move {
                if let Err(e) =
                    crate::console::nats_service::run(client, store, stats, ops_rx).await
                {
                    tracing::error!(error = %crate::error_chain::chain(&*e), "NATS operator service stopped");
                }
            })
        };
        let metrics_task = tokio::spawn(crate::queue::gauges::poll_queue(
            publisher_ctx.clone(),
            cfg.handlers.partitions,
            stop_ops.subscribe(),
        ));
        let (admin_addr, stop_admin, admin_task) = match env.var(&cfg.admin.token_env) {
            Some(token) => {
                let admin = Arc::new(AdminState {
                    token,
                    group_key: grouping.key.clone(),
                    dlq: store,
                    observed: observed.clone(),
                });
                let (tx, rx) = oneshot::channel::<()>();
                let (addr, server) = console::serve(admin, cfg.admin.listen, async {
                    let _ = rx.await;
                })
                .await
                .map_err(|e| ServiceError::Bind {
                    addr: cfg.admin.listen,
                    setting: "admin.listen / LEADROUTER_ADMIN_LISTEN",
                    source: e,
                })?;
                tracing::info!(admin = %addr, "admin API and operator console listening on http://{addr}/");
                (Some(addr), Some(tx), Some(tokio::spawn(server)))
            }
            None => {
                tracing::warn!(
                    "admin API not started: set {} to enable the operator console, the DLQ/replay API and the operator commands (the admin listener never runs open; everything else runs as usual)",
                    cfg.admin.token_env
                );
                (None, None, None)
            }
        };
        background.push(metrics_task);
        background.push(sampler_task);
        let (stop_intake, intake_addr, intake_task) = serve_intake(cfg, &state).await?;
        tracing::info!(intake = %intake_addr, nats = %nats_url, embedded = embedded.is_some(), "leadrouter serving");
        Ok(Service {
            intake_addr,
            nats_url,
            stop_intake: Some(stop_intake),
            intake_task,
            intake: state,
            client,
            pool,
            admin_addr,
            stop_admin,
            admin_task,
            stop_ops,
            ops_task: Some(ops_task),
            background,
            embedded,
        })
    }

    pub fn intake_addr(&self) -> SocketAddr {
        self.intake_addr
    }

    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// Where the admin API listens, when a token is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn embedded(&self) -> Option<&EmbeddedNats> {
        self.embedded.as_ref()
    }

    pub fn intake(&self) -> &Arc<IntakeState> {
        &self.intake
    }

    pub fn pipeline_stats(&self) -> Option<&Arc<PipelineStats>> {
        self.pool.as_ref().map(|p| p.stats())
    }

    /// Stops taking requests, lets in-flight ones finish, then stops NATS if we own it.
    pub async fn shutdown(mut self) {
        // Both listeners stop accepting at once; each then gets a bounded drain, because
        // hyper's graceful shutdown closes idle keep-alive connections but waits for every
        // request still being read, and a client trickling its request in can make that last
        // as long as the client likes.
        if let Some(tx) = self.stop_intake.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.stop_admin.take() {
            let _ = tx.send(());
        }
        drain(&mut self.intake_task, INTAKE_DRAIN, "intake").await;
        self.intake.stop();
        if let Some(mut t) = self.admin_task.take() {
            drain(&mut t, ADMIN_DRAIN, "admin API").await;
        }
        let _ = self.stop_ops.send(true);
        // In-flight NATS requests (a batch replay) get the same bounded drain.
        if let Some(mut t) = self.ops_task.take() {
            drain(&mut t, ADMIN_DRAIN, "operator service").await;
        }
        for t in self.background.drain(..) {
            let _ = t.await;
        }
        tracing::debug!("operator service stopped");
        if let Some(pool) = self.pool.take() {
            pool.stop(Duration::from_secs(10)).await;
            tracing::debug!("handler pool stopped");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        if let Some(e) = self.embedded.take() {
            e.stop().await;
        }
        tracing::info!("leadrouter stopped");
    }
}

/// Builds intake's state and warns about senders that cannot take requests yet.
async fn build_intake(
    cfg: &Config,
    env: &dyn EnvSource,
    publisher: Publisher,
    filing: Filing,
) -> Result<Arc<IntakeState>, ServiceError> {
    let (state, unconfigured) = IntakeState::build(cfg, env, publisher, filing).await?;
    for u in &unconfigured {
        tracing::warn!(
            sender = %u.sender,
            "sender `{}` has no secret yet, so its requests get 503 until you set {} and restart (for a new secret: export {}=whsec_$(head -c 24 /dev/urandom | base64))",
            u.sender,
            u.missing.join(" or "),
            u.missing
                .first()
                .and_then(|m| m.strip_prefix("env var "))
                .unwrap_or("THE_VAR"),
        );
    }
    Ok(Arc::new(state))
}

/// Binds the public listener and starts serving it.
async fn serve_intake(
    cfg: &Config,
    state: &Arc<IntakeState>,
) -> Result<(oneshot::Sender<()>, SocketAddr, tokio::task::JoinHandle<()>), ServiceError> {
    let (tx, rx) = oneshot::channel::<()>();
    let (addr, server) = intake::serve(state.clone(), cfg.intake.listen, async {
        let _ = rx.await;
    })
    .await
    .map_err(|e| ServiceError::Bind {
        addr: cfg.intake.listen,
        setting: "intake.listen / LEADROUTER_INTAKE_LISTEN",
        source: e,
    })?;
    Ok((tx, addr, tokio::spawn(server)))
}

async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &'static str,
) -> Result<async_nats::jetstream::kv::Store, ServiceError> {
    js.get_key_value(bucket)
        .await
        .map_err(|source| ServiceError::Kv { bucket, source })
}

/// Under `fsync`, the server must fsync before it acks: checked against its `/varz`, where there
/// is a monitoring endpoint to ask.
async fn check_durability(
    durability: Durability,
    embedded: Option<&EmbeddedNats>,
    cfg: &Config,
) -> Result<(), ServiceError> {
    if durability != Durability::Fsync {
        return Ok(());
    }
    let urls: Vec<String> = match embedded {
        Some(e) => vec![e
            .monitor_url()
            .ok_or(crate::queue::durability::DurabilityError::NoMonitor)?],
        None => cfg.nats.monitor_urls(),
    };
    if urls.is_empty() {
        tracing::warn!("streams.durability = \"fsync\" but nats.monitor_url is not set, so leadrouter cannot check that nats-server fsyncs before it acks (sync_interval: always); set nats.monitor_url to its monitoring URL(s)");
        return Ok(());
    }
    crate::queue::durability::check_sync_always(&urls).await?;
    Ok(())
}

/// Every stream directory in the embedded store must be a stream the server serves.
async fn check_streams_loaded(
    js: &async_nats::jetstream::Context,
    on_disk: &[String],
    cfg: &Config,
) -> Result<(), ServiceError> {
    if on_disk.is_empty() {
        return Ok(());
    }
    let mut loaded = std::collections::HashSet::new();
    let mut names = js.stream_names();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        match name {
            Ok(n) => {
                loaded.insert(n);
            }
            Err(e) => return Err(ServiceError::ListStreams(e)),
        }
    }
    let missing: Vec<&str> = on_disk
        .iter()
        .filter(|n| !loaded.contains(*n))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::HiddenStreams {
            missing: missing.join(", "),
            store: cfg.nats_store_dir(),
        })
    }
}

/// In-flight intake requests are bounded by the publish timeout; this covers them with room.
const INTAKE_DRAIN: Duration = Duration::from_secs(10);
/// A batch replay cut short here is safe: each entry is marked only once it is republished.
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

async fn drain(task: &mut tokio::task::JoinHandle<()>, limit: Duration, what: &str) {
    match tokio::time::timeout(limit, &mut *task).await {
        Ok(_) => tracing::debug!(task = what, "drained"),
        Err(_) => {
            task.abort();
            tracing::warn!(
                task = what,
                limit_s = limit.as_secs(),
                "still busy after the drain limit; stopped it"
            );
        }
    }
}

/// A process-unique owner prefix for idempotency claims.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[allow(clippy::too_many_arguments)]
async fn start_pool(
    cfg: &Config,
    env: &dyn EnvSource,
    client: &async_nats::Client,
    publisher: &Publisher,
    idem: Idempotency,
    fence: Fence,
    dlq: DlqWriter,
    grouping: Grouping,
) -> Result<HandlerPool, ServiceError> {
    let js = publisher.context().clone();
    let schemas = Arc::new(SchemaRegistry::load(&cfg.handlers.schemas_dir)?);
    schemas.set_check_interval(cfg.handlers.schema_reload);
    let enricher = Arc::new(Enricher::new(&cfg.enrich)?);
    let ctx = SinkContext {
        data_dir: cfg.data_dir.clone(),
        nats: Some(client.clone()),
        env: env.snapshot(),
    };
    let mut built = Vec::with_capacity(cfg.sinks.len());
    for (i, s) in cfg.sinks.iter().enumerate() {
        built.push(sinks::build(i, s, &ctx).await?);
    }
    if built.is_empty() {
        tracing::warn!("no [[sinks]] configured: leads are consumed and acknowledged without being written anywhere");
    }
    let parts = PoolParts {
        client: client.clone(),
        sinks: built,
        schemas,
        enricher,
        idem,
        fence,
        dlq,
        grouping,
        instance: instance_id(),
    };
    let placement = crate::pipeline::Placement {
        replicas: cfg.streams.replicas,
        solo: cfg.nats.is_embedded(),
    };
    Ok(HandlerPool::start(js, &cfg.handlers, placement, parts).await?)
}
