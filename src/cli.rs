//! The `leadrouter` command line (the binary edge: errors are `anyhow` here and nowhere else).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ProcessEnv, DEFAULT_CONFIG_PATH};
use crate::service::Service;

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
pub struct DrillArgs {
    /// Leads the vendor sends.
    #[arg(long, default_value_t = 100_000)]
    pub leads: usize,
    /// Leads per second the vendor offers (retries and duplicate submits come on top).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Share of leads submitted twice or three times at once (double clicks, retry storms).
    #[arg(long, default_value_t = 0.30)]
    pub duplicates: f64,
    /// Share of payloads that are malformed: most fail the schema (-> DLQ), a fifth is not JSON
    /// (-> refused with 400 at the edge).
    #[arg(long, default_value_t = 0.005)]
    pub malformed: f64,
    /// Share of good leads that reuse an earlier lead's email (shared inboxes).
    #[arg(long, default_value_t = 0.01)]
    pub shared_inbox: f64,
    /// Seed of the lead generator (same seed, same leads).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the same storm first against another design and show both.
    #[arg(long, value_enum)]
    pub baseline: Option<crate::drill::Baseline>,
    /// Leave out the kill -9s and the nats-server restart (the CRM still flaps).
    #[arg(long)]
    pub no_process_faults: bool,
    /// How long to wait after the storm for every lead to be placed.
    #[arg(long, default_value = "3m")]
    pub drain_timeout: humantime::Duration,
    /// The vendor's patience per request.
    #[arg(long, default_value = "5s")]
    pub vendor_timeout: humantime::Duration,
    /// Where the router's config, data and log go (default: a temp dir, removed when the
    /// drill passes).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the temp work dir even when the drill passes.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Run the router against this NATS (a cluster, a leaf node) instead of the embedded
    /// default; the nats-server restart is then skipped. Use a NATS account of its own: the
    /// drill's router creates and uses the standard streams and buckets there.
    #[arg(long)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub topology: crate::drill::TopologyArgs,
}

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

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The JSON-lines file (`-` reads stdin).
    pub file: PathBuf,
    /// The sender of raw vendor-payload lines (envelope lines name their own).
    #[arg(long)]
    pub sender: Option<String>,
    /// Write every rejected line here as `{"line": N, "error": "..."}` JSON lines.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// JSON pointer to an RFC 3339 receive time inside raw lines (default: import time).
    #[arg(long)]
    pub received_at_field: Option<String>,
    /// PubAcks awaited at once.
    #[arg(long, default_value_t = crate::import::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
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

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Sender id from the config.
    #[arg(long)]
    pub sender: String,
    /// Payload file (`-` for stdin).
    pub file: PathBuf,
    /// Intake base URL; default: http://{intake.listen}.
    #[arg(long, env = "LEADROUTER_INTAKE_URL")]
    pub url: Option<String>,
    /// Event id to send (default: a fresh one); reuse one to see duplicate handling.
    #[arg(long)]
    pub event_id: Option<String>,
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
    let cfg = Config::load(&cli.config, &ProcessEnv)
        .with_context(|| format!("loading {}", cli.config.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve => rt.block_on(serve(cfg)),
        Command::Send(args) => rt.block_on(crate::send::run(&cfg, &args)),
        Command::SandboxCrm(_) | Command::Drill(_) => Ok(ExitCode::SUCCESS),
        Command::Dlq { command } => rt.block_on(crate::ops_cli::dlq(&cfg, command)),
        Command::Replay(args) => rt.block_on(crate::ops_cli::replay(&cfg, &args)),
        Command::Import(args) => rt.block_on(import(&cfg, args)),
        Command::Latency(args) => rt.block_on(crate::ops_cli::latency(&cfg, &args)),
        Command::Stats(args) => rt.block_on(crate::ops_cli::stats(&cfg, &args)),
    }
}

async fn import(cfg: &Config, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::import::ImportOptions {
        file: args.file,
        sender: args.sender,
        rejects: args.rejects,
        received_at_pointer: args.received_at_field,
        quiet: args.quiet,
        concurrency: args.concurrency,
    };
    let summary = crate::import::run(cfg, &ProcessEnv, &opts).await?;
    crate::import::print_summary(&summary, args.json).context("writing the summary")?;
    Ok(summary.exit_code())
}

async fn drill(args: &DrillArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::drill::DrillOptions {
        leads: args.leads,
        rate: args.rate,
        duplicate_share: args.duplicates,
        malformed_share: args.malformed,
        shared_inbox_share: args.shared_inbox,
        seed: args.seed,
        baseline: args.baseline,
        no_process_faults: args.no_process_faults,
        drain_timeout: args.drain_timeout.into(),
        work_dir: args.work_dir.clone(),
        keep: args.keep,
        json: args.json,
        vendor: crate::drill::vendor::RetryPolicy {
            timeout: args.vendor_timeout.into(),
            ..Default::default()
        },
        nats_url: args.nats_url.clone(),
        topology: args.topology,
    };
    let report = crate::drill::run(&opts).await.context("drill")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::drill::render_summary(&report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn sandbox(addr: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging();
    let crm = crate::sandbox_crm::SandboxCrm::start(addr)
        .await
        .with_context(|| format!("starting the sandbox CRM on {addr}"))?;
    eprintln!(
        "leadrouter sandbox-crm on {url}: POST {url}/leads, faults via POST {url}/_sandbox/faults, records at {url}/_sandbox/records; Ctrl-C to stop",
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
