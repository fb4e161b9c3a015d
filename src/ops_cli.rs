//! The operator commands (`dlq tail`, `dlq show`, `replay`): thin clients of the admin API, with
//! JSON lines where a script pipes them to jq and progress where a person watches.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::admin_client::AdminClient;
use crate::cli::{DlqCommand, ReplayArgs};
use crate::config::{Config, ProcessEnv};
use crate::dlq::store::{DlqEntry, ReplayResult};

#[derive(serde::Deserialize)]
struct Listing {
    entries: Vec<DlqEntry>,
}

/// The runbook's line: the fields a script needs, nothing it must decrypt.
fn tail_line(e: &DlqEntry) -> Value {
    json!({
        "id": e.id,
        "sender": e.sender,
        "reason": e.reason,
        "last_error": e.last_error,
        "attempts": e.attempts,
        "received_at": e.received_at,
        "dead_at": e.dead_at,
        "replayed": e.replayed(),
        "preview": e.preview,
    })
}

pub async fn dlq(cfg: &Config, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = AdminClient::from_config(cfg, &ProcessEnv)?;
    match cmd {
        DlqCommand::Show { id } => {
            let e: DlqEntry = client.get(&format!("/api/dlq/{id}"), &[]).await?;
            println!("{}", serde_json::to_string_pretty(&e)?);
        }
        DlqCommand::Tail {
            since,
            follow,
            reason,
            sender,
            hide_replayed,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(s) = since {
                query.push(("since", s));
            }
            if let Some(r) = reason {
                query.push(("reason", r));
            }
            if let Some(s) = sender {
                query.push(("sender", s));
            }
            if hide_replayed {
                query.push(("hide_replayed", "true".into()));
            }
            let mut last: Option<u64> = None;
            let out = std::io::stdout();
            loop {
                let mut q = query.clone();
                if let Some(l) = last {
                    q.retain(|(k, _)| *k != "since");
                    q.push(("after_id", l.to_string()));
                }
                let listing: Listing = client.get("/api/dlq", &q).await?;
                let mut lock = out.lock();
                for e in &listing.entries {
                    // A closed pipe (| head) ends the command quietly.
                    if writeln!(lock, "{}", tail_line(e)).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    last = Some(last.map_or(e.id, |l| l.max(e.id)));
                }
                drop(lock);
                if !follow {
                    break;
                }
                if last.is_none() {
                    last = Some(0);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(cfg: &Config, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    if args.reason.trim().is_empty() {
        bail!("--reason must say what was fixed");
    }
    let client = AdminClient::from_config(cfg, &ProcessEnv)?;
    // (id, replayed before): a sweep by filter reports earlier-replayed entries as skipped,
    // as the API and the NATS service do, and leaves them alone.
    let ids: Vec<(u64, String, bool)> = match (args.id, &args.filter_reason) {
        (Some(id), _) => vec![(id, String::new(), false)],
        (None, Some(reason)) => {
            let mut q = vec![("reason", reason.clone())];
            if let Some(s) = &args.sender {
                q.push(("sender", s.clone()));
            }
            if let Some(s) = &args.since {
                q.push(("since", s.clone()));
            }
            let listing: Listing = client.get("/api/dlq", &q).await?;
            listing
                .entries
                .iter()
                .map(|e| (e.id, e.key.clone(), e.replayed()))
                .collect()
        }
        (None, None) => bail!("give --id or --filter-reason"),
    };
    let bar = if std::io::stderr().is_terminal() && ids.len() > 1 {
        let b = indicatif::ProgressBar::new(ids.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "replaying {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let (mut replayed, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    let mut results = Vec::with_capacity(ids.len());
    for (id, key, before) in &ids {
        let r: Result<ReplayResult, _> = if *before {
            Ok(ReplayResult::Skipped {
                id: *id,
                key: key.clone(),
                why: "replayed before".into(),
            })
        } else {
            client
                .post(
                    &format!("/api/dlq/{id}/replay"),
                    &json!({"reason": args.reason}),
                )
                .await
        };
        let r = match r {
            Ok(r) => r,
            // One entry failing does not stop the batch; a dead service does.
            Err(e @ crate::admin_client::AdminError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => ReplayResult::Failed {
                id: *id,
                error: e.to_string(),
            },
        };
        match &r {
            ReplayResult::Replayed { .. } => replayed += 1,
            ReplayResult::Skipped { .. } => skipped += 1,
            ReplayResult::Failed { .. } => failed += 1,
        }
        if !args.json && bar.is_none() {
            println!(
                "{}",
                serde_json::to_string(&r).context("encoding a result")?
            );
        }
        results.push(r);
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        println!(
            "{}",
            json!({"replayed": replayed, "skipped": skipped, "failed": failed, "results": results})
        );
    } else {
        eprintln!("replayed {replayed}, skipped {skipped}, failed {failed}");
    }
    if ids.is_empty() && !args.json {
        eprintln!("no DLQ entry matched");
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
