//! Pulling from a durable consumer for as long as the process runs: the loop every consumer of
//! ours shares (the partitions, the re-partitioner).
//!
//! NATS goes away and comes back (a restart, a leader election, a reconnect); the consumer may
//! not exist yet (the first router creates it). So the loop (re)creates the consumer with our
//! config (create-or-update, so every router converges on the same settings), pulls until the
//! stream errors or ends, and starts over after a capped backoff. It never gives up on its own.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::watch;

use super::NatsError;
use crate::backoff::Retries;
use crate::error_chain::chain;

/// How to pull.
#[derive(Debug, Clone)]
pub struct Pull {
    /// Messages per pull request.
    pub batch: usize,
    pub heartbeat: Duration,
    /// Pull requests expire after this (and are renewed): under a priority policy the server
    /// unpins a client that has not pulled for `priority_timeout`, so this must be shorter.
    pub expires: Duration,
    /// The priority group, for consumers with a priority policy.
    pub group: Option<&'static str>,
    /// For log lines: what is being pulled.
    pub what: String,
}

/// Pulls from `config`'s durable consumer on `stream` until `stop` turns true, handing each
/// message to `handle`; `handle` returning false ends the loop (its receiver is gone).
pub async fn pull_forever<F, Fut>(
    js: &jetstream::Context,
    stream: &str,
    config: consumer::pull::Config,
    pull: Pull,
    mut stop: watch::Receiver<bool>,
    mut handle: F,
) where
    F: FnMut(jetstream::Message) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut retries = Retries::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return;
        }
        let attempt = async {
            let s = js
                .get_stream(stream)
                .await
                .map_err(NatsError::during("opening the stream"))?;
            let c: consumer::PullConsumer = s
                .create_consumer(config.clone())
                .await
                .map_err(NatsError::during("creating the consumer"))?;
            let mut b = c.stream();
            if let Some(g) = pull.group {
                b = b.group(g);
            }
            b.max_messages_per_batch(pull.batch)
                .heartbeat(pull.heartbeat)
                .expires(pull.expires)
                .messages()
                .await
                .map_err(NatsError::during("starting to pull"))
        };
        let attempt = tokio::select! {
            _ = stop.changed() => return,
            a = attempt => a,
        };
        let mut messages = match attempt {
            Ok(m) => {
                retries.succeeded();
                m
            }
            Err(e) => {
                let backoff = retries.failed();
                tracing::debug!(consumer = %pull.what, error = %chain(&e), retry_in = ?backoff, "cannot consume yet");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(m)) => {
                    if !handle(m).await {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(consumer = %pull.what, error = %chain(&e), "pull error; re-subscribing");
                    break;
                }
                None => break,
            }
        }
    }
}
