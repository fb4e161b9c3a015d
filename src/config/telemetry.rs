//! `[telemetry]`: OTLP trace export, with the standard `OTEL_*` overrides.

use serde::Deserialize;

use super::env::EnvSource;
use super::error::ConfigError;

/// `[telemetry]`: OTLP traces. The standard `OTEL_EXPORTER_OTLP_*` / `OTEL_SERVICE_NAME`
/// variables override the file (see `Config::apply_env`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Collector base URL, like `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:4317` for
    /// gRPC, `http://127.0.0.1:4318` for HTTP, where `/v1/traces` is appended). Unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The full traces URL, used as is (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); env only.
    #[serde(skip)]
    pub otlp_traces_endpoint: Option<String>,
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a sampled or unsampled incoming
    /// `traceparent` decides for its own trace.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

fn default_service_name() -> String {
    "leadrouter".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

impl TelemetryConfig {
    /// Where spans go, or `None` when traces are off. A base URL gets `/v1/traces` for HTTP
    /// (as the OTLP spec does with `OTEL_EXPORTER_OTLP_ENDPOINT`); gRPC needs no path.
    pub fn traces_endpoint(&self) -> Option<String> {
        if let Some(e) = self.otlp_traces_endpoint.as_deref().map(str::trim) {
            return Some(e.to_string());
        }
        let base = self.otlp_endpoint.as_deref()?.trim();
        Some(match self.otlp_protocol {
            OtlpProtocol::Grpc => base.to_string(),
            OtlpProtocol::HttpProtobuf if base.trim_end_matches('/').ends_with("/v1/traces") => {
                base.to_string()
            }
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        })
    }

    pub(super) fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        if let Some(v) = env.var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.otlp_endpoint = Some(v);
        }
        if let Some(v) = env.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.otlp_traces_endpoint = Some(v);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(v) = env.var(name) {
                self.otlp_protocol = OtlpProtocol::parse(&v).ok_or_else(|| {
                    ConfigError::invalid(name, format!("`{v}`: use grpc or http/protobuf"))
                })?;
                break;
            }
        }
        if let Some(v) = env.var("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        let off = |name: &str, value: &str| {
            env.var(name)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        if off("OTEL_SDK_DISABLED", "true") || off("OTEL_TRACES_EXPORTER", "none") {
            self.otlp_endpoint = None;
            self.otlp_traces_endpoint = None;
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("telemetry.otlp_endpoint", &self.otlp_endpoint),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &self.otlp_traces_endpoint,
            ),
        ] {
            if let Some(u) = url.as_deref().map(str::trim) {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{u}` is not an http:// or https:// URL"),
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}
