//! Proof, at start-up, that the server keeps the promise `streams.durability = "fsync"` makes.
//!
//! `sync_interval` is server-wide config that leadrouter cannot read through the client
//! protocol, and a server without it acks from the page cache: a 202 that a power cut undoes.
//! nats-server reports the setting in its monitoring endpoint (`GET /varz` ->
//! `jetstream.config.sync_always`), so that is what `serve` asks before it answers any vendor.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    #[error("streams.durability = \"fsync\", but nats-server at {url} runs with lazy fsync (/varz jetstream.config.sync_always is false): it acknowledges writes before they reach the disk. Set `sync_interval: always` in its jetstream block (the embedded template's {{{{jetstream_sync}}}} placeholder does this), or set streams.durability = \"lazy\"")]
    NotSynced { url: String },
    #[error("streams.durability = \"fsync\", but nats-server at {url} does not run JetStream (/varz has no jetstream.config)")]
    NoJetstream { url: String },
    #[error("streams.durability = \"fsync\": cannot read {url}/varz to check that nats-server fsyncs before it acks")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("streams.durability = \"fsync\", but the embedded nats-server has no monitoring endpoint to check it against; keep the `http: \"127.0.0.1:-1\"` line of nats/nats-server.conf.tmpl")]
    NoMonitor,
}

#[derive(Deserialize)]
struct Varz {
    jetstream: Option<VarzJetstream>,
}

#[derive(Deserialize)]
struct VarzJetstream {
    config: Option<VarzJsConfig>,
}

#[derive(Deserialize)]
struct VarzJsConfig {
    #[serde(default)]
    sync_always: bool,
}

/// Checks every monitoring URL (one per server of a cluster) and fails on the first server that
/// does not fsync before it acks.
pub async fn check_sync_always(monitor_urls: &[String]) -> Result<(), DurabilityError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| DurabilityError::Unreachable {
            url: monitor_urls.join(","),
            source,
        })?;
    for url in monitor_urls {
        let url = url.trim_end_matches('/').to_string();
        let varz: Varz = async {
            client
                .get(format!("{url}/varz"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|source| DurabilityError::Unreachable {
            url: url.clone(),
            source,
        })?;
        match varz.jetstream.and_then(|j| j.config) {
            None => return Err(DurabilityError::NoJetstream { url }),
            Some(c) if !c.sync_always => return Err(DurabilityError::NotSynced { url }),
            Some(_) => {
                tracing::info!(target: "leadrouter::queue", monitor = %url, "nats-server fsyncs every write before its ack (sync_always)")
            }
        }
    }
    Ok(())
}
