//! The `leadrouter` command line (the binary edge: errors are `anyhow` here and nowhere else).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub mod admin_client;
pub mod import;
pub mod ops;
pub mod send;

use crate::config::{Config, ProcessEnv, DEFAULT_CONFIG_PATH};
use crate::devtools::drill::DrillArgs;
use crate::service::Service;
use import::ImportArgs;
use ops::{DlqCommand, LatencyArgs, ReplayArgs, StatsArgs};
use send::SendArgs;

#[derive(Debug, Parser)]
#[command(
    name = "leadrouter",
    version,
    about = "Buffered webhook lead router on NATS JetStream"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "LEADROUTER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: intake edge, NATS (embedded by default).
    Serve,
    /// Sign a payload with a sender's scheme and secret, post it, print the answer.
    Send(SendArgs),
    /// Run a CRM + analytics stand-in with fault injection (for demos, drills and tests).
    SandboxCrm(SandboxArgs),
    /// Look at the dead-letter queue (talks to the running service's admin API).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Replay DLQ entries: one by id, or every entry matching a filter.
    Replay(ReplayArgs),
    /// Push a historical export (JSON lines: lead envelopes or raw vendor payloads) through the
    /// pipeline; re-importing the same file writes nothing new to the sinks.
    Import(ImportArgs),
    /// End-to-end latency (received -> sink persisted) percentile over a window, from the
    /// running service.
    Latency(LatencyArgs),
    /// Intake rate, queue depth, success and duplicate rates, DLQ counts by reason.
    Stats(StatsArgs),
    /// The chaos drill: a retrying, double-submitting vendor, a flapping CRM, kill -9 of the
    /// router and a nats-server restart; then every lead is reconciled. Run it from the
    /// checkout. Exit 1 when a lead was lost or duplicated.
    Drill(DrillArgs),
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: std::net::SocketAddr,
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::SandboxCrm(args) = &cli.command {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return rt.block_on(sandbox(args.listen));
    }
    if let Command::Drill(args) = &cli.command {
        // The drill writes its own router config; it needs none from the operator.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return rt.block_on(drill(args));
    }
    let cfg = load_config(&cli.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve => rt.block_on(serve(cfg)),
        Command::Send(args) => rt.block_on(crate::cli::send::run(&cfg, &args)),
        Command::SandboxCrm(_) | Command::Drill(_) => Ok(ExitCode::SUCCESS),
        Command::Dlq { command } => rt.block_on(crate::cli::ops::dlq(&cfg, command)),
        Command::Replay(args) => rt.block_on(crate::cli::ops::replay(&cfg, &args)),
        Command::Import(args) => rt.block_on(import(&cfg, args)),
        Command::Latency(args) => rt.block_on(crate::cli::ops::latency(&cfg, &args)),
        Command::Stats(args) => rt.block_on(crate::cli::ops::stats(&cfg, &args)),
    }
}

/// The binary's one-line report of a failed command: the error and every cause under it (an
/// error's own cause is what an operator acts on: the TOML parse error, the refused connection).
pub fn error_line(e: &anyhow::Error) -> String {
    crate::error_chain::chain(&**e)
        .trim_end()
        .replace('\n', " ")
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path, &ProcessEnv).with_context(|| format!("loading {}", path.display()))
}

async fn import(cfg: &Config, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::cli::import::ImportOptions {
        file: args.file,
        sender: args.sender,
        rejects: args.rejects,
        received_at_pointer: args.received_at_field,
        quiet: args.quiet,
        concurrency: args.concurrency,
    };
    // A trace per imported lead (when `[telemetry]` exports): the handler continues it, as it
    // continues the edge's for a lead that came in over HTTP.
    let traces = crate::telemetry::traces::init(&cfg.telemetry).context("config `[telemetry]`")?;
    if traces.is_some() {
        crate::telemetry::init_traces_only();
    }
    let summary = crate::cli::import::run(cfg, &ProcessEnv, &opts).await;
    if let Some(t) = traces {
        t.shutdown().await;
    }
    let summary = summary?;
    crate::cli::import::print_summary(&summary, args.json).context("writing the summary")?;
    Ok(summary.exit_code())
}

async fn drill(args: &DrillArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::devtools::drill::DrillOptions {
        leads: args.leads,
        rate: args.rate,
        duplicate_share: args.duplicates,
        malformed_share: args.malformed,
        shared_inbox_share: args.shared_inbox,
        seed: args.seed,
        baseline: args.baseline,
        crm: args.crm,
        no_process_faults: args.no_process_faults,
        drain_timeout: args.drain_timeout.into(),
        work_dir: args.work_dir.clone(),
        keep: args.keep,
        json: args.json,
        vendor: crate::devtools::drill::vendor::RetryPolicy {
            timeout: args.vendor_timeout.into(),
            ..Default::default()
        },
        nats_url: args.nats_url.clone(),
        topology: args.topology,
    };
    let report = crate::devtools::drill::run(&opts).await.context("drill")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::devtools::drill::render_summary(&report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn sandbox(addr: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging();
    let crm = crate::devtools::sandbox_crm::SandboxCrm::start(addr)
        .await
        .with_context(|| format!("starting the sandbox CRM on {addr}"))?;
    eprintln!(
        "leadrouter sandbox-crm on {url}: POST {url}/leads, HubSpot at {url}/crm/v3/objects/contacts/batch/upsert, Salesforce at {url}/services/ (token: {url}/services/oauth2/token), faults via POST {url}/_sandbox/faults, records at {url}/_sandbox/records; Ctrl-C to stop",
        url = crm.url()
    );
    wait_for_signal().await;
    crm.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn serve(cfg: Config) -> anyhow::Result<ExitCode> {
    // Before the log set-up, which adds the span layer when an exporter is installed.
    let traces = crate::telemetry::traces::init(&cfg.telemetry).context("config `[telemetry]`")?;
    crate::telemetry::init_logging();
    if let Some(t) = &traces {
        tracing::info!(
            endpoint = t.endpoint(),
            protocol = t.protocol(),
            "exporting traces over OTLP"
        );
    }
    let service = match Service::start(&cfg, &ProcessEnv).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(t) = traces {
                t.shutdown().await;
            }
            return Err(e.into());
        }
    };
    // A person at a terminal gets the one line that matters; a log pipeline gets only JSON.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "leadrouter: intake on http://{} (NATS {}); Ctrl-C to stop",
            service.intake_addr(),
            service.nats_url()
        );
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    service.shutdown().await;
    // Spans still buffered in the batch processor go out before the process ends.
    if let Some(t) = traces {
        t.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_config_is_reported_on_one_line_down_to_the_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "data_dir = \"d\"\n[intake]\nlisen = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let line = error_line(&load_config(&path).unwrap_err());
        let want = format!(
            "loading {p}: config file {p}: TOML parse error at line 3",
            p = path.display()
        );
        assert!(line.starts_with(&want), "{line}");
        assert!(line.contains("unknown field `lisen`"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_missing_config_names_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let line = error_line(&load_config(&path).unwrap_err());
        assert!(
            line.starts_with(&format!(
                "loading {p}: cannot read config file {p}: ",
                p = path.display()
            )),
            "{line}"
        );
        assert!(line.contains("No such file"), "{line}");
    }
}
