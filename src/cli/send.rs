//! `leadrouter send`: sign a payload the way the sender's vendor would, post it, print the answer.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use sha2::{Digest, Sha256};

use crate::config::{resolve_secrets, Config, EventIdSource, ProcessEnv};
use crate::intake::mapping::{BodyFormat, MappingConfig};
use crate::intake::schemes::{SignInput, Verifier};

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

/// A fresh, unguessable-enough event id for trying the service (not a security token).
fn fresh_event_id() -> String {
    let mut h = Sha256::new();
    h.update(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(std::process::id().to_le_bytes());
    format!("msg_{}", hex::encode(&h.finalize()[..12]))
}

pub fn content_type(mapping: &MappingConfig) -> &'static str {
    match mapping.format {
        BodyFormat::Json => "application/json",
        BodyFormat::Form => "application/x-www-form-urlencoded",
    }
}

pub async fn run(cfg: &Config, args: &SendArgs) -> anyhow::Result<ExitCode> {
    let sender = cfg.sender(&args.sender).ok_or_else(|| {
        let known: Vec<&str> = cfg.senders.iter().map(|s| s.id.as_str()).collect();
        anyhow!(
            "unknown sender `{}`; configured senders: {}",
            args.sender,
            known.join(", ")
        )
    })?;
    let secrets = resolve_secrets(sender, &ProcessEnv);
    if secrets.secrets.is_empty() {
        bail!(
            "sender `{}` has no secret here: set {}",
            sender.id,
            secrets.missing.join(" or ")
        );
    }
    let verifier = Verifier::new(
        sender.scheme,
        &sender.signature,
        secrets.secrets,
        sender.tolerance,
    )
    .with_context(|| format!("sender `{}` signature settings", sender.id))?;
    let body = if args.file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("reading the payload from stdin")?;
        b
    } else {
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.intake.listen));
    let url = format!("{}/v1/intake/{}", base.trim_end_matches('/'), sender.id);
    let event_id = args.event_id.clone().unwrap_or_else(fresh_event_id);
    let signed = verifier
        .sign(&SignInput {
            body: &body,
            now: SystemTime::now(),
            event_id: &event_id,
            method: "POST",
            url: &url,
        })
        .with_context(|| format!("signing for sender `{}`", sender.id))?;
    let full_url = match &signed.query {
        Some(q) => format!("{url}?{q}"),
        None => url.clone(),
    };
    let client = reqwest::Client::new();
    let mut req = client
        .post(&full_url)
        .header(reqwest::header::CONTENT_TYPE, content_type(&sender.mapping));
    let mut has_event_header = false;
    let event_header = match &sender.event_id {
        Some(EventIdSource::Header(h)) => Some(h.as_str()),
        _ => None,
    };
    for (k, v) in &signed.headers {
        if event_header.is_some_and(|h| h.eq_ignore_ascii_case(k)) {
            has_event_header = true;
        }
        req = req.header(k.as_str(), v.as_str());
    }
    if let (Some(h), false) = (event_header, has_event_header) {
        req = req.header(h, event_id.as_str());
    }
    let req = req.body(signed.body.unwrap_or(body));
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach leadrouter at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("HTTP {}", status.as_u16());
    println!("{text}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("intake answered {status}")
    }
}
