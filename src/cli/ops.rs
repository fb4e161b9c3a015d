//! The operator commands (`dlq tail`, `dlq show`, `replay`): thin clients of the admin API, with
//! JSON lines where a script pipes them to jq and progress where a person watches.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::cli::admin_client::AdminClient;

use crate::config::{Config, ProcessEnv};
use crate::console::stats::{parse_percentile, parse_window};
use crate::dlq::store::{DlqEntry, ReplayResult};

#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// How far back: 30s, 15m, 1h ... up to 24h.
    #[arg(long, default_value = "15m")]
    pub window: String,
    /// Which percentile (0-100].
    #[arg(long, default_value = "95")]
    pub percentile: String,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// How far back: 30s, 15m, 1h ... up to 24h.
    #[arg(long, default_value = "15m")]
    pub window: String,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// One JSON object per entry (id, sender, reason, last_error, attempts, received_at,
    /// preview): `leadrouter dlq tail | jq -r .reason | sort | uniq -c`.
    Tail {
        /// Only entries dead-lettered within this long (1h, 30m, 7d) or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Keep printing new entries as they arrive.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        sender: Option<String>,
        /// Leave out entries that were replayed.
        #[arg(long)]
        hide_replayed: bool,
    },
    /// Everything about one entry, replays included.
    Show { id: u64 },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "filter_reason"])))]
pub struct ReplayArgs {
    /// The DLQ entry id (from `dlq tail`).
    #[arg(long)]
    pub id: Option<u64>,
    /// Replay every entry with this reason (replayed ones are skipped).
    #[arg(long)]
    pub filter_reason: Option<String>,
    #[arg(long, requires = "filter_reason")]
    pub sender: Option<String>,
    /// Only entries dead-lettered within this long (1h, 7d) or since an RFC 3339 time.
    #[arg(long, requires = "filter_reason")]
    pub since: Option<String>,
    /// Why (what was fixed); recorded with the entry and on the replayed message.
    #[arg(long)]
    pub reason: String,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

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
            Err(e @ crate::cli::admin_client::AdminError::Unreachable { .. }) => {
                return Err(e.into())
            }
            Err(e) => ReplayResult::Failed {
                id: *id,
                error: crate::error_chain::chain(&e),
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

pub async fn latency(cfg: &Config, args: &LatencyArgs) -> anyhow::Result<ExitCode> {
    // Local mistakes first, with the same words the API would use.
    parse_window(&args.window).map_err(anyhow::Error::msg)?;
    let p = parse_percentile(&args.percentile).map_err(anyhow::Error::msg)?;
    let client = AdminClient::from_config(cfg, &ProcessEnv)?;
    let v: Value = client
        .get(
            "/api/latency",
            &[
                ("window", args.window.clone()),
                ("percentile", p.to_string()),
            ],
        )
        .await?;
    if args.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    if v["handlers"] == "disabled" {
        println!("no handlers run on this node (handlers.enabled = false): no latency to report");
        return Ok(ExitCode::SUCCESS);
    }
    match v["latency_ms"].as_f64() {
        Some(ms) => println!(
            "p{} end-to-end latency over the last {}: {} ({} deliveries; SLO {}: {})",
            p,
            args.window,
            fmt_ms(ms),
            v["samples"],
            fmt_ms(v["slo_ms"].as_f64().unwrap_or(0.0)),
            if v["within_slo"] == true {
                "met"
            } else {
                "MISSED"
            },
        ),
        None => println!("no deliveries in the last {}", args.window),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(cfg: &Config, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    parse_window(&args.window).map_err(anyhow::Error::msg)?;
    let client = AdminClient::from_config(cfg, &ProcessEnv)?;
    let v: Value = client
        .get("/api/stats", &[("window", args.window.clone())])
        .await?;
    if args.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |x: &Value| {
        x.as_f64()
            .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0))
    };
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "window          {} (figures cover {} s)",
        args.window, v["covered_s"]
    );
    let _ = writeln!(
        out,
        "intake          {:.2} leads/s ({} accepted)",
        v["intake"]["rate_per_s"].as_f64().unwrap_or(0.0),
        v["intake"]["accepted"]
    );
    let q = &v["queue"];
    if q.is_null() {
        let _ = writeln!(out, "queue           unknown (consumer info unavailable)");
    } else {
        let _ = writeln!(
            out,
            "queue           {} pending, {} ack pending (limit {})",
            q["pending"], q["ack_pending"], q["max_ack_pending"]
        );
    }
    let d = &v["deliveries"];
    let _ = writeln!(
        out,
        "deliveries      {} delivered, {} duplicates, {} retries, {} dead-lettered",
        d["delivered"], d["duplicates"], d["retries"], d["dead"]
    );
    let _ = writeln!(out, "success rate    {}", pct(&v["success_rate"]));
    let _ = writeln!(out, "duplicate rate  {}", pct(&v["duplicate_rate"]));
    match v["e2e_p95_ms"].as_f64() {
        Some(ms) => {
            let _ = writeln!(out, "e2e p95         {}", fmt_ms(ms));
        }
        None if v["handlers"] == "disabled" => {
            let _ = writeln!(out, "e2e p95         - (handlers disabled on this node)");
        }
        None => {
            let _ = writeln!(out, "e2e p95         - (no deliveries)");
        }
    }
    for (i, e) in v["edges"].as_array().into_iter().flatten().enumerate() {
        let label = if i == 0 { "edges" } else { "" };
        let _ = writeln!(out, "{label:<15} {}", edge_line(e));
    }
    let by = v["dlq_by_reason"].as_object().cloned().unwrap_or_default();
    if by.is_empty() {
        let _ = writeln!(out, "dlq             nothing dead-lettered in the window");
    } else {
        for (i, (reason, n)) in by.iter().enumerate() {
            let label = if i == 0 { "dlq by reason" } else { "" };
            let _ = writeln!(out, "{label:<15} {n} {reason}");
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// One edge for `stats`: `eu1  link up · 0 waiting` or `eu1  LINK DOWN 2m 5s · 340 waiting
/// (as of the last answer), oldest 2m 10s`.
fn edge_line(e: &Value) -> String {
    let name = e["name"].as_str().unwrap_or("?");
    let secs = |v: &Value| {
        v.as_f64()
            .map(|s| humantime::format_duration(Duration::from_secs(s as u64)).to_string())
    };
    let waiting = match e["waiting"].as_u64() {
        Some(n) => format!("{n} waiting"),
        None => "waiting unknown".to_string(),
    };
    let oldest = match (e["waiting"].as_u64(), secs(&e["oldest_waiting_seconds"])) {
        (Some(n), Some(age)) if n > 0 => format!(", oldest {age}"),
        _ => String::new(),
    };
    match e["link_up"].as_bool() {
        Some(true) => format!("{name:<8} link up · {waiting}{oldest}"),
        Some(false) => format!(
            "{name:<8} LINK DOWN {} · {waiting} (as of its last answer){oldest}",
            secs(&e["link_down_seconds"]).unwrap_or_default()
        ),
        None => format!("{name:<8} link unknown · {waiting}{oldest}"),
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}
