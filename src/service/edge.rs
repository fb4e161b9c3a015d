//! `serve` in edge mode, and the embedded server's leaf node side for an edge or a hub.

use tokio::sync::watch;

use super::{build_intake, serve_intake, Service, ServiceError};
use crate::config::{Config, EdgeConfig, EnvSource};
use crate::intake::Filing;
use crate::queue::edges;
use crate::queue::embedded::{EmbeddedNats, Leafnodes};
use crate::queue::{topology, Publisher};

/// Edge mode: the edge's stream, intake filing into it, and the edge's own watcher. No
/// handlers, no DLQ, no KV and no admin API: those are the hub's.
pub(super) async fn start(
    cfg: &Config,
    edge: &EdgeConfig,
    env: &dyn EnvSource,
    embedded: Option<EmbeddedNats>,
    client: async_nats::Client,
    publisher: Publisher,
    nats_url: String,
) -> Result<Service, ServiceError> {
    let js = publisher.context().clone();
    let checked = async {
        check_edge_domain(&js, edge, &nats_url).await?;
        Ok::<_, ServiceError>(topology::ensure_edge(&js, edge, &cfg.streams).await?)
    };
    let change = match checked.await {
        Ok(c) => c,
        Err(e) => {
            if let Some(emb) = embedded {
                emb.stop().await;
            }
            return Err(e);
        }
    };
    tracing::info!(?change, "topology");
    tracing::info!(
        edge = %edge.name,
        domain = %edge.domain(),
        max_leads = edge.max_msgs(),
        max_bytes = edge.max_bytes(),
        "edge: intake only; leads wait in LEADS_EDGE until the hub has stored them. The store holds {} leads ({} at {}/s); when it is full, intake answers 503 and vendors retry",
        edge.max_msgs(),
        humantime::format_duration(edge.outage),
        edge.rate,
    );
    let state = build_intake(cfg, env, publisher, Filing::Edge(edge.name.clone())).await?;
    let (stop_ops, _) = watch::channel(false);
    let monitor: Box<dyn Fn() -> Option<String> + Send> = match &embedded {
        Some(e) => {
            let status = e.status();
            Box::new(move || status.borrow().monitor_url.clone())
        }
        None => {
            let url = cfg.nats.monitor_urls().into_iter().next();
            Box::new(move || url.clone())
        }
    };
    let watcher = tokio::spawn(edges::watch_local(
        js,
        edge.name.clone(),
        monitor,
        stop_ops.subscribe(),
    ));
    if env.var(&cfg.admin.token_env).is_some() {
        tracing::info!("edge: no admin API here (the DLQ, replays and lead lookups are the hub's); this edge's figures are on /metrics");
    }
    let (stop_intake, intake_addr, intake_task) = serve_intake(cfg, &state).await?;
    tracing::info!(intake = %intake_addr, nats = %nats_url, embedded = embedded.is_some(), edge = %edge.name, "leadrouter edge serving");
    Ok(Service {
        intake_addr,
        nats_url,
        stop_intake: Some(stop_intake),
        intake_task,
        intake: state,
        client,
        pool: None,
        admin_addr: None,
        stop_admin: None,
        admin_task: None,
        stop_ops,
        ops_task: None,
        background: vec![watcher],
        embedded,
    })
}

/// An edge's server must be in the edge's domain: otherwise its `$JS.API` is the hub's (a leaf
/// in the hub's domain) and the edge would store into the hub, or its 202 would depend on it.
async fn check_edge_domain(
    js: &async_nats::jetstream::Context,
    edge: &EdgeConfig,
    url: &str,
) -> Result<(), ServiceError> {
    let account = js
        .query_account()
        .await
        .map_err(ServiceError::EdgeAccount)?;
    let want = edge.domain();
    match account.domain.as_deref() {
        Some(d) if d == want => Ok(()),
        have => Err(ServiceError::EdgeDomain {
            name: edge.name.clone(),
            want,
            have: have.map_or_else(|| "no domain".to_string(), |d| format!("domain `{d}`")),
            url: url.to_string(),
        }),
    }
}

/// The embedded server's leaf node side: an edge's remote to its hub, or a hub's listener.
pub(super) fn leafnodes(
    cfg: &Config,
    env: &dyn EnvSource,
) -> Result<Option<Leafnodes>, ServiceError> {
    let secret = |key: &'static str, name: &str| {
        env.var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            crate::config::ConfigError::invalid(key, format!("env var {name} is not set"))
        })
    };
    if let Some(edge) = &cfg.edge {
        let Some(hub) = &edge.hub else {
            return Ok(None);
        };
        let password = match &edge.hub_password_env {
            Some(name) => Some(secret("edge.hub_password_env", name)?),
            None => None,
        };
        let urls = hub
            .split(',')
            .map(|u| with_credentials(u.trim(), edge.hub_user.as_deref(), password.as_deref()))
            .collect();
        return Ok(Some(Leafnodes::Remote {
            urls,
            creds_file: edge.hub_creds_file.clone(),
            tls_ca_file: edge.hub_tls_ca_file.clone(),
            tls_client: edge
                .hub_tls_cert_file
                .clone()
                .zip(edge.hub_tls_key_file.clone()),
        }));
    }
    let e = &cfg.nats.embedded;
    let Some(port) = e.leafnode_port else {
        return Ok(None);
    };
    let password = match &e.leafnode_password_env {
        Some(name) => Some(secret("nats.embedded.leafnode_password_env", name)?),
        None => None,
    };
    Ok(Some(Leafnodes::Listen {
        host: e.leafnode_host.clone(),
        port,
        user: e.leafnode_user.clone(),
        password,
        tls: e
            .leafnode_tls_cert_file
            .clone()
            .zip(e.leafnode_tls_key_file.clone()),
    }))
}

/// `nats-leaf://host:7422` with `user:password@` put in, both percent-encoded.
fn with_credentials(url: &str, user: Option<&str>, password: Option<&str>) -> String {
    let (Some(user), Some(password)) = (user, password) else {
        return url.to_string();
    };
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}:{}@{rest}", enc(user), enc(password)),
        None => url.to_string(),
    }
}
