//! Webhook signature schemes: one [`Verifier`] per sender checks inbound requests, and the same
//! verifier signs outbound requests for `leadrouter send` and the tests.
//!
//! Rules every scheme follows:
//! - MACs are computed over the raw body bytes exactly as received; the parsed document is only
//!   consulted for `token` in the body.
//! - Fail closed: an absent or unparsable header, an unknown signature version or a sender with
//!   no live secret is an error, never a pass.
//! - Rotation: every live secret is tried against every offered signature; signing uses the first
//!   secret, so operators put the new secret first and keep the old one until senders move.
//! - The MAC is checked before the timestamp window, so `signature_stale` / `signature_future`
//!   only ever describe requests that are otherwise authentic (a replay or a skewed clock), and
//!   forged requests are always reported as `signature_invalid`.
//! - Error messages carry header names and reasons, never a secret or an expected signature.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Padding is not part of what a signature proves, so a sender that strips `=` still verifies.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const DEFAULT_HMAC_HEADER: &str = "X-Hub-Signature-256";
const DEFAULT_HMAC_PREFIX: &str = "sha256=";
const DEFAULT_TOKEN_HEADER: &str = "X-Webhook-Token";

/// Bounds the work an unauthenticated request can cause; vendors send one signature per live
/// secret, which in practice is one or two.
const MAX_OFFERED: usize = 8;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeName {
    StandardWebhooks,
    Stripe,
    HmacSha256,
    Typeform,
    HubspotV3,
    Slack,
    Calendly,
    Webflow,
    Linkedin,
    Token,
}

impl SchemeName {
    /// The spelling used in config files, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemeName::StandardWebhooks => "standard-webhooks",
            SchemeName::Stripe => "stripe",
            SchemeName::HmacSha256 => "hmac-sha256",
            SchemeName::Typeform => "typeform",
            SchemeName::HubspotV3 => "hubspot-v3",
            SchemeName::Slack => "slack",
            SchemeName::Calendly => "calendly",
            SchemeName::Webflow => "webflow",
            SchemeName::Linkedin => "linkedin",
            SchemeName::Token => "token",
        }
    }

    /// Whether the scheme signs a timestamp, i.e. whether `tolerance` applies.
    pub fn has_timestamp(self) -> bool {
        matches!(
            self,
            SchemeName::StandardWebhooks
                | SchemeName::Stripe
                | SchemeName::HubspotV3
                | SchemeName::Slack
                | SchemeName::Calendly
                | SchemeName::Webflow
        )
    }
}

impl fmt::Display for SchemeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenLocation {
    Header,
    Query,
    Body,
}

/// `[senders.signature]`. Which keys are accepted depends on the scheme; [`Verifier::new`]
/// rejects the rest by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureOptions {
    /// hmac-sha256: header carrying the signature (default `X-Hub-Signature-256`).
    pub header: Option<String>,
    /// hmac-sha256: text before the encoded MAC (default `sha256=` with the default header,
    /// else empty).
    pub prefix: Option<String>,
    /// hmac-sha256: `hex` (default) or `base64`.
    pub encoding: Option<Encoding>,
    /// token: `header` (default), `query` or `body`.
    pub location: Option<TokenLocation>,
    /// token: header name (default `X-Webhook-Token`), query parameter, or body key / JSON
    /// pointer (required for query and body).
    pub name: Option<String>,
    /// hubspot-v3: the public URL the vendor calls (scheme, host, path; no query), for when the
    /// Host header seen here is not the public one.
    pub url: Option<String>,
}

pub trait HeaderSource {
    /// Case-insensitive lookup; a value that is not valid text counts as absent.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderSource for warp::http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        // HeaderValue already excludes control characters, so valid UTF-8 here is printable text.
        self.get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }
}

impl HeaderSource for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderSource for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl HeaderSource for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl HeaderSource for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Lets a slice reference (`&&[(&str, &str)]`) stand in for `&dyn HeaderSource`.
impl<T: HeaderSource + ?Sized> HeaderSource for &T {
    fn header(&self, name: &str) -> Option<&str> {
        (**self).header(name)
    }
}

/// One inbound request, borrowed from the HTTP layer.
pub struct Request<'a> {
    /// As received, e.g. `POST` (hubspot-v3 signs it).
    pub method: &'a str,
    /// The raw, still percent-encoded request target, e.g. `/hooks/hubspot?x=1`.
    pub path_and_query: &'a str,
    /// The public host the vendor called (hubspot-v3 without `signature.url`).
    pub host: Option<&'a str>,
    pub headers: &'a dyn HeaderSource,
    /// The raw query string without `?` (token in query).
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// The parsed body; needed only when [`Verifier::needs_body_doc`].
    pub body_doc: Option<&'a serde_json::Value>,
}

/// A sender's signature configuration cannot work; raised at startup / config reload, or by
/// `sign` for input it cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    #[error("{0}")]
    Invalid(String),
    #[error("no live secret is configured for this sender, so nothing can be signed")]
    NoSecret,
}

/// Why a request was refused. [`VerifyError::code`] is the stable machine-readable form.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("sender has no live secret configured")]
    Unconfigured,
    #[error("signature missing: {0}")]
    Missing(&'static str),
    /// Like `Missing`, for names that come from the sender's config.
    #[error("signature missing: {0}")]
    MissingNamed(String),
    #[error("signature malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "signature timestamp is {}s old, beyond the {}s tolerance",
        .age.as_secs(),
        .tolerance.as_secs()
    )]
    Stale { age: Duration, tolerance: Duration },
    #[error(
        "signature timestamp is {}s in the future, beyond the {}s tolerance",
        .ahead.as_secs(),
        .tolerance.as_secs()
    )]
    Future {
        ahead: Duration,
        tolerance: Duration,
    },
    #[error("signature does not match")]
    Mismatch,
}

impl VerifyError {
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Unconfigured => "sender_unconfigured",
            VerifyError::Missing(_) | VerifyError::MissingNamed(_) => "signature_missing",
            VerifyError::Malformed(_) => "signature_malformed",
            VerifyError::Stale { .. } => "signature_stale",
            VerifyError::Future { .. } => "signature_future",
            VerifyError::Mismatch => "signature_invalid",
        }
    }
}

pub struct SignInput<'a> {
    pub body: &'a [u8],
    pub now: SystemTime,
    /// standard-webhooks: sent as `webhook-id`.
    pub event_id: &'a str,
    /// hubspot-v3: the method the request will use.
    pub method: &'a str,
    /// hubspot-v3: the full URL the request will be sent to. What gets signed is what the
    /// verifier rebuilds: `https://` + host and path of this URL, or `signature.url` + this
    /// URL's query when that option is set.
    pub url: &'a str,
}

/// What a vendor would send for a body.
#[derive(Debug)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    /// `name=value` to append to the URL's query (token in query).
    pub query: Option<String>,
    /// Replaces the body (token in body).
    pub body: Option<Vec<u8>>,
}

#[derive(Clone)]
enum Kind {
    StandardWebhooks,
    Stripe,
    Hmac {
        header: String,
        prefix: String,
        encoding: Encoding,
    },
    Typeform,
    Hubspot {
        url: Option<String>,
    },
    Slack,
    Calendly,
    Webflow,
    Linkedin,
    Token(TokenSpec),
}

#[derive(Clone)]
enum TokenSpec {
    Header(String),
    Query(String),
    Body(String),
}

#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Millis,
}

#[derive(Clone)]
struct Secret {
    raw: String,
    /// Pre-keyed so each verification clones instead of re-deriving the HMAC key block.
    mac: HmacSha256,
    /// Tokens are compared as digests so the comparison time does not depend on their length.
    digest: [u8; 32],
}

/// Verifies (and signs) requests for one sender.
#[derive(Clone)]
pub struct Verifier {
    scheme: SchemeName,
    kind: Kind,
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// Validates `opts` for `scheme` and prepares the keys. An empty `secrets` is accepted so a
    /// sender can be declared before its secret is provisioned; `verify` then refuses everything
    /// with `sender_unconfigured`.
    pub fn new(
        scheme: SchemeName,
        opts: &SignatureOptions,
        secrets: Vec<String>,
        tolerance: Duration,
    ) -> Result<Self, SchemeError> {
        check_options_apply(scheme, opts)?;
        let kind = build_kind(scheme, opts)?;
        let secrets = secrets
            .into_iter()
            .enumerate()
            .map(|(i, raw)| prepare_secret(scheme, i, raw))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier {
            scheme,
            kind,
            secrets,
            tolerance,
        })
    }

    pub fn scheme(&self) -> SchemeName {
        self.scheme
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    pub fn needs_body_doc(&self) -> bool {
        matches!(self.kind, Kind::Token(TokenSpec::Body(_)))
    }

    pub fn verify(&self, req: &Request<'_>, now: SystemTime) -> Result<(), VerifyError> {
        if self.secrets.is_empty() {
            return Err(VerifyError::Unconfigured);
        }
        let h = req.headers;
        let body = req.body;
        match &self.kind {
            Kind::StandardWebhooks => {
                let id = required(h, "webhook-id")?;
                let ts = required(h, "webhook-timestamp")?;
                let sigs = required(h, "webhook-signature")?;
                let at = parse_timestamp(ts, Unit::Secs, "webhook-timestamp is not unix seconds")?;
                let mut offered = Offered::new();
                for entry in sigs.split(' ').filter(|e| !e.is_empty()) {
                    let (version, sig) = entry.split_once(',').ok_or(VerifyError::Malformed(
                        "webhook-signature entry has no version",
                    ))?;
                    // Other versions (e.g. asymmetric v1a) are skipped, not trusted.
                    if version == "v1" {
                        offered.push(decode_base64_32(sig)?)?;
                    }
                }
                if offered.is_empty() {
                    return Err(VerifyError::Malformed(
                        "webhook-signature has no v1 signature",
                    ));
                }
                self.check_mac(offered.as_slice(), |m| {
                    m.update(id.as_bytes());
                    m.update(b".");
                    m.update(ts.as_bytes());
                    m.update(b".");
                    m.update(body);
                })?;
                self.check_window(at, now)
            }
            Kind::Stripe | Kind::Calendly => {
                let header = if matches!(self.kind, Kind::Stripe) {
                    "Stripe-Signature"
                } else {
                    "Calendly-Webhook-Signature"
                };
                let (ts, offered) = parse_t_v1(required(h, header)?)?;
                let at = parse_timestamp(ts, Unit::Secs, "t= is not unix seconds")?;
                self.check_mac(offered.as_slice(), |m| {
                    m.update(ts.as_bytes());
                    m.update(b".");
                    m.update(body);
                })?;
                self.check_window(at, now)
            }
            Kind::Hmac {
                header,
                prefix,
                encoding,
            } => {
                let value = h
                    .header(header)
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| VerifyError::MissingNamed(header.clone()))?;
                let sig = value
                    .strip_prefix(prefix.as_str())
                    .ok_or(VerifyError::Malformed(
                        "signature header lacks the configured prefix",
                    ))?;
                let sig = decode_32(sig, *encoding)?;
                self.check_mac(&[sig], |m| m.update(body))
            }
            Kind::Typeform => {
                let sig = prefixed(h, "Typeform-Signature", "sha256=", Encoding::Base64)?;
                self.check_mac(&[sig], |m| m.update(body))
            }
            Kind::Linkedin => {
                let sig = prefixed(h, "X-LI-Signature", "hmacsha256=", Encoding::Hex)?;
                self.check_mac(&[sig], |m| m.update(body))
            }
            Kind::Slack => {
                let sig = prefixed(h, "X-Slack-Signature", "v0=", Encoding::Hex)?;
                let ts = required(h, "X-Slack-Request-Timestamp")?;
                let at = parse_timestamp(
                    ts,
                    Unit::Secs,
                    "X-Slack-Request-Timestamp is not unix seconds",
                )?;
                self.check_mac(&[sig], |m| {
                    m.update(b"v0:");
                    m.update(ts.as_bytes());
                    m.update(b":");
                    m.update(body);
                })?;
                self.check_window(at, now)
            }
            Kind::Webflow => {
                let sig = prefixed(h, "x-webflow-signature", "", Encoding::Hex)?;
                let ts = required(h, "x-webflow-timestamp")?;
                let at = parse_timestamp(
                    ts,
                    Unit::Millis,
                    "x-webflow-timestamp is not unix milliseconds",
                )?;
                self.check_mac(&[sig], |m| {
                    m.update(ts.as_bytes());
                    m.update(b":");
                    m.update(body);
                })?;
                self.check_window(at, now)
            }
            Kind::Hubspot { url } => {
                let sig = prefixed(h, "X-HubSpot-Signature-v3", "", Encoding::Base64)?;
                let ts = required(h, "X-HubSpot-Request-Timestamp")?;
                let at = parse_timestamp(
                    ts,
                    Unit::Millis,
                    "X-HubSpot-Request-Timestamp is not unix milliseconds",
                )?;
                // The URI is fed in pieces to avoid building it. Decoding piecewise equals
                // decoding the whole because every boundary is followed by '/' or '?', which
                // cannot continue a %XX escape.
                let uri: [&str; 3] = match url {
                    Some(base) => {
                        let query = req
                            .path_and_query
                            .find('?')
                            .map_or("", |i| &req.path_and_query[i..]);
                        [base.as_str(), query, ""]
                    }
                    None => {
                        let host =
                            req.host.map(str::trim).filter(|v| !v.is_empty()).ok_or(
                                VerifyError::Missing("Host header (or set signature.url)"),
                            )?;
                        ["https://", host, req.path_and_query]
                    }
                };
                self.check_mac(&[sig], |m| {
                    m.update(req.method.as_bytes());
                    for part in uri {
                        feed_hubspot_uri(m, part);
                    }
                    m.update(body);
                    m.update(ts.as_bytes());
                })?;
                self.check_window(at, now)
            }
            Kind::Token(spec) => self.check_token(spec, req),
        }
    }

    /// Produces what the vendor would send for `input.body`, using the first live secret.
    pub fn sign(&self, input: &SignInput<'_>) -> Result<Signed, SchemeError> {
        let secret = self.secrets.first().ok_or(SchemeError::NoSecret)?;
        let since_epoch = input
            .now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SchemeError::Invalid("signing time is before the unix epoch".into()))?;
        let secs = since_epoch.as_secs().to_string();
        let millis = since_epoch.as_millis().to_string();
        let body = input.body;
        let mac = |feed: &dyn Fn(&mut HmacSha256)| {
            let mut m = secret.mac.clone();
            feed(&mut m);
            m.finalize().into_bytes()
        };
        let header = |name: &str, value: String| (name.to_string(), value);
        let mut signed = Signed {
            headers: Vec::new(),
            query: None,
            body: None,
        };
        match &self.kind {
            Kind::StandardWebhooks => {
                if input.event_id.is_empty() {
                    return Err(SchemeError::Invalid(
                        "standard-webhooks signing needs an event id for webhook-id".into(),
                    ));
                }
                let sig = mac(&|m| {
                    m.update(input.event_id.as_bytes());
                    m.update(b".");
                    m.update(secs.as_bytes());
                    m.update(b".");
                    m.update(body);
                });
                signed.headers = vec![
                    header("webhook-id", input.event_id.to_string()),
                    header("webhook-timestamp", secs),
                    header("webhook-signature", format!("v1,{}", STANDARD.encode(sig))),
                ];
            }
            Kind::Stripe | Kind::Calendly => {
                let sig = mac(&|m| {
                    m.update(secs.as_bytes());
                    m.update(b".");
                    m.update(body);
                });
                let name = if matches!(self.kind, Kind::Stripe) {
                    "Stripe-Signature"
                } else {
                    "Calendly-Webhook-Signature"
                };
                signed.headers = vec![header(name, format!("t={secs},v1={}", hex::encode(sig)))];
            }
            Kind::Hmac {
                header: name,
                prefix,
                encoding,
            } => {
                let sig = mac(&|m| m.update(body));
                signed.headers = vec![header(name, format!("{prefix}{}", encode(&sig, *encoding)))];
            }
            Kind::Typeform => {
                let sig = mac(&|m| m.update(body));
                signed.headers = vec![header(
                    "Typeform-Signature",
                    format!("sha256={}", STANDARD.encode(sig)),
                )];
            }
            Kind::Linkedin => {
                let sig = mac(&|m| m.update(body));
                signed.headers = vec![header(
                    "X-LI-Signature",
                    format!("hmacsha256={}", hex::encode(sig)),
                )];
            }
            Kind::Slack => {
                let sig = mac(&|m| {
                    m.update(b"v0:");
                    m.update(secs.as_bytes());
                    m.update(b":");
                    m.update(body);
                });
                signed.headers = vec![
                    header("X-Slack-Signature", format!("v0={}", hex::encode(sig))),
                    header("X-Slack-Request-Timestamp", secs),
                ];
            }
            Kind::Webflow => {
                let sig = mac(&|m| {
                    m.update(millis.as_bytes());
                    m.update(b":");
                    m.update(body);
                });
                signed.headers = vec![
                    header("x-webflow-signature", hex::encode(sig)),
                    header("x-webflow-timestamp", millis),
                ];
            }
            Kind::Hubspot { url } => {
                // Sign the URI `verify` will rebuild rather than the literal URL, so that
                // `leadrouter send` to a local http listener still verifies: the verifier
                // assumes TLS is terminated in front of it, or uses `signature.url`.
                let rest = input
                    .url
                    .strip_prefix("https://")
                    .or_else(|| input.url.strip_prefix("http://"))
                    .filter(|r| !r.is_empty() && !input.method.is_empty())
                    .ok_or_else(|| {
                        SchemeError::Invalid(
                            "hubspot-v3 signing needs the method and a full http(s) URL".into(),
                        )
                    })?;
                let uri: [&str; 2] = match url {
                    Some(base) => [base.as_str(), rest.find('?').map_or("", |i| &rest[i..])],
                    None => ["https://", rest],
                };
                let sig = mac(&|m| {
                    m.update(input.method.as_bytes());
                    for part in uri {
                        feed_hubspot_uri(m, part);
                    }
                    m.update(body);
                    m.update(millis.as_bytes());
                });
                signed.headers = vec![
                    header("X-HubSpot-Signature-v3", STANDARD.encode(sig)),
                    header("X-HubSpot-Request-Timestamp", millis),
                ];
            }
            Kind::Token(TokenSpec::Header(name)) => {
                signed.headers = vec![header(name, secret.raw.clone())];
            }
            Kind::Token(TokenSpec::Query(name)) => {
                let query = serde_urlencoded::to_string([(name.as_str(), secret.raw.as_str())])
                    .map_err(|e| SchemeError::Invalid(format!("cannot encode token query: {e}")))?;
                signed.query = Some(query);
            }
            Kind::Token(TokenSpec::Body(name)) => {
                let mut doc: Value = serde_json::from_slice(body).map_err(|_| {
                    SchemeError::Invalid("token in body needs a JSON object body".into())
                })?;
                insert_token(&mut doc, name, Value::String(secret.raw.clone()))?;
                let body = serde_json::to_vec(&doc)
                    .map_err(|e| SchemeError::Invalid(format!("cannot serialize body: {e}")))?;
                signed.body = Some(body);
            }
        }
        Ok(signed)
    }

    /// Passes if any live secret's MAC equals any offered signature. Every pair is compared, so
    /// timing does not reveal which secret matched.
    fn check_mac(
        &self,
        offered: &[[u8; 32]],
        feed: impl Fn(&mut HmacSha256),
    ) -> Result<(), VerifyError> {
        let mut matched = Choice::from(0);
        for secret in &self.secrets {
            let mut mac = secret.mac.clone();
            feed(&mut mac);
            let expected = mac.finalize().into_bytes();
            for sig in offered {
                matched |= expected.as_slice().ct_eq(sig);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn check_window(&self, at: Duration, now: SystemTime) -> Result<(), VerifyError> {
        // A clock before 1970 makes every timestamp "future": refusing is the safe outcome.
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let tolerance = self.tolerance;
        match now.checked_sub(at) {
            Some(age) if age > tolerance => Err(VerifyError::Stale { age, tolerance }),
            Some(_) => Ok(()),
            None => {
                let ahead = at - now;
                if ahead > tolerance {
                    Err(VerifyError::Future { ahead, tolerance })
                } else {
                    Ok(())
                }
            }
        }
    }

    fn check_token(&self, spec: &TokenSpec, req: &Request<'_>) -> Result<(), VerifyError> {
        let offered: Cow<'_, [u8]> = match spec {
            TokenSpec::Header(name) => Cow::Borrowed(
                req.headers
                    .header(name)
                    .map(str::trim)
                    .unwrap_or("")
                    .as_bytes(),
            ),
            TokenSpec::Query(name) => {
                query_param(req.query.unwrap_or(""), name)?.unwrap_or(Cow::Borrowed(b""))
            }
            TokenSpec::Body(name) => {
                let doc = req.body_doc.ok_or_else(|| {
                    VerifyError::MissingNamed(format!("token field `{name}` (body was not parsed)"))
                })?;
                let value = if name.starts_with('/') {
                    doc.pointer(name)
                } else {
                    doc.get(name.as_str())
                };
                match value {
                    None | Some(Value::Null) => Cow::Borrowed(&b""[..]),
                    Some(Value::String(s)) => Cow::Borrowed(s.as_bytes()),
                    Some(_) => return Err(VerifyError::Malformed("token field is not a string")),
                }
            }
        };
        if offered.is_empty() {
            return Err(VerifyError::MissingNamed(match spec {
                TokenSpec::Header(name) => name.clone(),
                TokenSpec::Query(name) => format!("query parameter `{name}`"),
                TokenSpec::Body(name) => format!("token field `{name}`"),
            }));
        }
        let digest = Sha256::digest(&offered);
        let mut matched = Choice::from(0);
        for secret in &self.secrets {
            matched |= digest.as_slice().ct_eq(&secret.digest);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// Rejects options that the scheme would silently ignore, so a typo'd config fails at startup
/// instead of verifying something other than what the operator meant.
fn check_options_apply(scheme: SchemeName, opts: &SignatureOptions) -> Result<(), SchemeError> {
    let set: [(&str, bool, SchemeName); 6] = [
        ("header", opts.header.is_some(), SchemeName::HmacSha256),
        ("prefix", opts.prefix.is_some(), SchemeName::HmacSha256),
        ("encoding", opts.encoding.is_some(), SchemeName::HmacSha256),
        ("location", opts.location.is_some(), SchemeName::Token),
        ("name", opts.name.is_some(), SchemeName::Token),
        ("url", opts.url.is_some(), SchemeName::HubspotV3),
    ];
    for (option, is_set, owner) in set {
        if is_set && scheme != owner {
            let hint = if scheme == SchemeName::Token && option == "header" {
                " (for scheme token, name the header with signature.name)"
            } else {
                ""
            };
            return Err(SchemeError::Invalid(format!(
                "signature.{option} is only valid for scheme {owner}, not {scheme}{hint}"
            )));
        }
    }
    Ok(())
}

fn build_kind(scheme: SchemeName, opts: &SignatureOptions) -> Result<Kind, SchemeError> {
    Ok(match scheme {
        SchemeName::StandardWebhooks => Kind::StandardWebhooks,
        SchemeName::Stripe => Kind::Stripe,
        SchemeName::Typeform => Kind::Typeform,
        SchemeName::Slack => Kind::Slack,
        SchemeName::Calendly => Kind::Calendly,
        SchemeName::Webflow => Kind::Webflow,
        SchemeName::Linkedin => Kind::Linkedin,
        SchemeName::HmacSha256 => {
            let header = opts
                .header
                .clone()
                .unwrap_or_else(|| DEFAULT_HMAC_HEADER.to_string());
            check_header_name("signature.header", &header)?;
            let prefix = match &opts.prefix {
                Some(p) => p.clone(),
                None if header.eq_ignore_ascii_case(DEFAULT_HMAC_HEADER) => {
                    DEFAULT_HMAC_PREFIX.to_string()
                }
                None => String::new(),
            };
            // Header values arrive trimmed and printable, so any other prefix can never match.
            if prefix.starts_with(' ') || !prefix.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            {
                return Err(SchemeError::Invalid(
                    "signature.prefix must be printable ASCII and not start with a space".into(),
                ));
            }
            Kind::Hmac {
                header,
                prefix,
                encoding: opts.encoding.unwrap_or(Encoding::Hex),
            }
        }
        SchemeName::HubspotV3 => {
            if let Some(url) = &opts.url {
                let has_scheme = url.starts_with("https://") || url.starts_with("http://");
                if !has_scheme || url.contains(['?', '#']) {
                    return Err(SchemeError::Invalid(format!(
                        "signature.url `{url}` must be an http(s) URL without query or fragment \
                         (the request's query is appended)"
                    )));
                }
            }
            Kind::Hubspot {
                url: opts.url.clone(),
            }
        }
        SchemeName::Token => {
            let location = opts.location.unwrap_or(TokenLocation::Header);
            let name = opts.name.clone().filter(|n| !n.is_empty());
            match location {
                TokenLocation::Header => {
                    let name = name.unwrap_or_else(|| DEFAULT_TOKEN_HEADER.to_string());
                    check_header_name("signature.name", &name)?;
                    Kind::Token(TokenSpec::Header(name))
                }
                TokenLocation::Query => Kind::Token(TokenSpec::Query(name.ok_or_else(|| {
                    SchemeError::Invalid(
                        "signature.name is required for token location query (the parameter name)"
                            .into(),
                    )
                })?)),
                TokenLocation::Body => Kind::Token(TokenSpec::Body(name.ok_or_else(|| {
                    SchemeError::Invalid(
                        "signature.name is required for token location body (a key or JSON pointer)"
                            .into(),
                    )
                })?)),
            }
        }
    })
}

fn check_header_name(option: &str, name: &str) -> Result<(), SchemeError> {
    warp::http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| SchemeError::Invalid(format!("{option} `{name}` is not a valid header name")))
}

fn prepare_secret(scheme: SchemeName, index: usize, raw: String) -> Result<Secret, SchemeError> {
    let which = index + 1;
    if raw.is_empty() {
        // An empty key would make the MAC (or token) forgeable by anyone.
        return Err(SchemeError::Invalid(format!("secret #{which} is empty")));
    }
    let key: Cow<'_, [u8]> = if scheme == SchemeName::StandardWebhooks {
        match raw.strip_prefix("whsec_") {
            Some(rest) => Cow::Owned(BASE64_LENIENT.decode(rest).map_err(|_| {
                SchemeError::Invalid(format!(
                    "secret #{which} starts with whsec_ but the rest is not base64"
                ))
            })?),
            None => BASE64_LENIENT
                .decode(&raw)
                .map_or(Cow::Borrowed(raw.as_bytes()), Cow::Owned),
        }
    } else {
        Cow::Borrowed(raw.as_bytes())
    };
    if key.is_empty() {
        return Err(SchemeError::Invalid(format!(
            "secret #{which} decodes to an empty key"
        )));
    }
    let mac = HmacSha256::new_from_slice(&key)
        .map_err(|_| SchemeError::Invalid(format!("secret #{which} is not a usable HMAC key")))?;
    let digest = Sha256::digest(raw.as_bytes()).into();
    Ok(Secret { raw, mac, digest })
}

/// Signatures offered by one request, kept on the stack.
struct Offered {
    sigs: [[u8; 32]; MAX_OFFERED],
    len: usize,
}

impl Offered {
    fn new() -> Self {
        Offered {
            sigs: [[0; 32]; MAX_OFFERED],
            len: 0,
        }
    }

    fn push(&mut self, sig: [u8; 32]) -> Result<(), VerifyError> {
        let slot = self
            .sigs
            .get_mut(self.len)
            .ok_or(VerifyError::Malformed("too many signatures offered"))?;
        *slot = sig;
        self.len += 1;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[[u8; 32]] {
        &self.sigs[..self.len]
    }
}

/// The header value, trimmed; empty counts as absent.
fn required<'h>(headers: &'h dyn HeaderSource, name: &'static str) -> Result<&'h str, VerifyError> {
    headers
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(VerifyError::Missing(name))
}

fn prefixed(
    headers: &dyn HeaderSource,
    name: &'static str,
    prefix: &str,
    encoding: Encoding,
) -> Result<[u8; 32], VerifyError> {
    let value = required(headers, name)?;
    let sig = value
        .strip_prefix(prefix)
        .ok_or(VerifyError::Malformed("signature lacks its version prefix"))?;
    decode_32(sig, encoding)
}

/// `t=<unix>,v1=<hex>[,v1=<hex>...]` as used by Stripe and Calendly; `v0` and unknown keys are
/// ignored so vendors can add fields without breaking us.
fn parse_t_v1(value: &str) -> Result<(&str, Offered), VerifyError> {
    let mut ts = None;
    let mut offered = Offered::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, val) = item.split_once('=').ok_or(VerifyError::Malformed(
            "signature header item is not key=value",
        ))?;
        match key {
            "t" if ts.is_some() => {
                return Err(VerifyError::Malformed("signature header repeats t="))
            }
            "t" => ts = Some(val),
            "v1" => offered.push(decode_hex_32(val)?)?,
            _ => {}
        }
    }
    let ts = ts.ok_or(VerifyError::Malformed(
        "signature header has no t= timestamp",
    ))?;
    if offered.is_empty() {
        return Err(VerifyError::Malformed(
            "signature header has no v1 signature",
        ));
    }
    Ok((ts, offered))
}

/// Digits only: `u64::from_str` would also take a leading `+`, which no vendor sends.
fn parse_timestamp(value: &str, unit: Unit, what: &'static str) -> Result<Duration, VerifyError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed(what));
    }
    let n: u64 = value.parse().map_err(|_| VerifyError::Malformed(what))?;
    Ok(match unit {
        Unit::Secs => Duration::from_secs(n),
        Unit::Millis => Duration::from_millis(n),
    })
}

fn decode_32(value: &str, encoding: Encoding) -> Result<[u8; 32], VerifyError> {
    match encoding {
        Encoding::Hex => decode_hex_32(value),
        Encoding::Base64 => decode_base64_32(value),
    }
}

/// Decoding (rather than comparing text) makes hex case-insensitive.
fn decode_hex_32(value: &str) -> Result<[u8; 32], VerifyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| VerifyError::Malformed("signature is not 64 hex digits"))?;
    Ok(out)
}

fn decode_base64_32(value: &str) -> Result<[u8; 32], VerifyError> {
    let mut buf = [0u8; 48];
    match BASE64_LENIENT.decode_slice(value, &mut buf) {
        Ok(32) => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&buf[..32]);
            Ok(out)
        }
        _ => Err(VerifyError::Malformed(
            "signature is not base64 of a 32-byte MAC",
        )),
    }
}

fn encode(mac: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Hex => hex::encode(mac),
        Encoding::Base64 => STANDARD.encode(mac),
    }
}

/// HubSpot decodes exactly these escapes before signing; everything else (e.g. `%20`) stays
/// encoded. Hex case is accepted either way because percent-encoding is case-insensitive.
fn hubspot_unescape(hi: u8, lo: u8) -> Option<u8> {
    Some(match (hi, lo.to_ascii_uppercase()) {
        (b'2', b'1') => b'!',
        (b'2', b'4') => b'$',
        (b'2', b'7') => b'\'',
        (b'2', b'8') => b'(',
        (b'2', b'9') => b')',
        (b'2', b'A') => b'*',
        (b'2', b'C') => b',',
        (b'2', b'F') => b'/',
        (b'3', b'A') => b':',
        (b'3', b'B') => b';',
        (b'3', b'F') => b'?',
        (b'4', b'0') => b'@',
        _ => return None,
    })
}

fn feed_hubspot_uri(mac: &mut HmacSha256, uri: &str) {
    let bytes = uri.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(c) = hubspot_unescape(bytes[i + 1], bytes[i + 2]) {
                mac.update(&bytes[start..i]);
                mac.update(&[c]);
                i += 3;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    mac.update(&bytes[start..]);
}

/// The decoded value of query parameter `name`; repeated occurrences are refused because the
/// HTTP layer and this check might otherwise disagree about which one counts.
fn query_param<'q>(query: &'q str, name: &str) -> Result<Option<Cow<'q, [u8]>>, VerifyError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(key).as_ref() == name.as_bytes() {
            if found.is_some() {
                return Err(VerifyError::Malformed("token query parameter is repeated"));
            }
            found = Some(form_decode(value));
        }
    }
    Ok(found)
}

/// application/x-www-form-urlencoded decoding; invalid escapes stay literal, as browsers and
/// serde_urlencoded treat them. Borrows unless something needs decoding.
fn form_decode(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let hex_val = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi << 4) | lo);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Puts the token where the verifier will look: a top-level key, or a JSON pointer whose
/// missing parent objects are created.
fn insert_token(doc: &mut Value, name: &str, token: Value) -> Result<(), SchemeError> {
    let not_object = || {
        SchemeError::Invalid(format!(
            "cannot place token at `{name}`: not inside a JSON object"
        ))
    };
    let Some(pointer) = name.strip_prefix('/') else {
        doc.as_object_mut()
            .ok_or_else(not_object)?
            .insert(name.to_string(), token);
        return Ok(());
    };
    let mut segments = pointer
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .peekable();
    let mut current = doc;
    while let Some(segment) = segments.next() {
        let object = current.as_object_mut().ok_or_else(not_object)?;
        if segments.peek().is_none() {
            object.insert(segment, token);
            return Ok(());
        }
        current = object
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "leads.example.com";
    const PATH: &str = "/hooks/x";
    const URL: &str = "https://leads.example.com/hooks/x";
    const SECRET: &str = "s3cr3t-value-0123456789";
    const OLD_SECRET: &str = "old-secret-abcdefghij";
    const BODY: &[u8] = br#"{"email":"ada@example.com","name":"Ada"}"#;
    const TOL: Duration = Duration::from_secs(300);

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn secret_for(scheme: SchemeName, raw: &str) -> String {
        if scheme == SchemeName::StandardWebhooks {
            format!("whsec_{}", STANDARD.encode(raw))
        } else {
            raw.to_string()
        }
    }

    fn verifier(scheme: SchemeName, opts: &SignatureOptions, secrets: &[&str]) -> Verifier {
        let secrets = secrets.iter().map(|s| secret_for(scheme, s)).collect();
        Verifier::new(scheme, opts, secrets, TOL).expect("valid verifier")
    }

    /// Every scheme, plus the option variants that change verification.
    fn cases() -> Vec<(&'static str, SchemeName, SignatureOptions)> {
        let o = SignatureOptions::default;
        vec![
            ("standard-webhooks", SchemeName::StandardWebhooks, o()),
            ("stripe", SchemeName::Stripe, o()),
            ("hmac-sha256 github", SchemeName::HmacSha256, o()),
            (
                "hmac-sha256 shopify",
                SchemeName::HmacSha256,
                SignatureOptions {
                    header: Some("X-Shopify-Hmac-Sha256".into()),
                    encoding: Some(Encoding::Base64),
                    ..o()
                },
            ),
            ("typeform", SchemeName::Typeform, o()),
            ("hubspot-v3", SchemeName::HubspotV3, o()),
            (
                "hubspot-v3 url",
                SchemeName::HubspotV3,
                SignatureOptions {
                    url: Some(URL.into()),
                    ..o()
                },
            ),
            ("slack", SchemeName::Slack, o()),
            ("calendly", SchemeName::Calendly, o()),
            ("webflow", SchemeName::Webflow, o()),
            ("linkedin", SchemeName::Linkedin, o()),
            ("token header", SchemeName::Token, o()),
            (
                "token query",
                SchemeName::Token,
                SignatureOptions {
                    location: Some(TokenLocation::Query),
                    name: Some("token".into()),
                    ..o()
                },
            ),
            (
                "token body",
                SchemeName::Token,
                SignatureOptions {
                    location: Some(TokenLocation::Body),
                    name: Some("webhook_key".into()),
                    ..o()
                },
            ),
        ]
    }

    fn sign_at(v: &Verifier, body: &[u8], at: SystemTime) -> Signed {
        v.sign(&SignInput {
            body,
            now: at,
            event_id: "msg_1",
            method: "POST",
            url: URL,
        })
        .expect("sign")
    }

    /// Sends `signed` as the HTTP layer would hand it over; `body` is used unless the signature
    /// replaced it.
    fn verify_with(
        v: &Verifier,
        headers: &Vec<(String, String)>,
        query: Option<&str>,
        body: &[u8],
        at: SystemTime,
    ) -> Result<(), VerifyError> {
        let doc: Option<Value> = serde_json::from_slice(body).ok();
        let path_and_query = match query {
            Some(q) => format!("{PATH}?{q}"),
            None => PATH.to_string(),
        };
        let req = Request {
            method: "POST",
            path_and_query: &path_and_query,
            host: Some(HOST),
            headers,
            query,
            body,
            body_doc: doc.as_ref(),
        };
        v.verify(&req, at)
    }

    fn verify_signed(v: &Verifier, signed: &Signed, at: SystemTime) -> Result<(), VerifyError> {
        let body = signed.body.as_deref().unwrap_or(BODY);
        verify_with(v, &signed.headers, signed.query.as_deref(), body, at)
    }

    fn code(r: Result<(), VerifyError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn round_trip_every_scheme() {
        for (label, scheme, opts) in cases() {
            let v = verifier(scheme, &opts, &[SECRET]);
            let signed = sign_at(&v, BODY, now());
            assert_eq!(code(verify_signed(&v, &signed, now())), "ok", "{label}");
        }
    }

    #[test]
    fn flipped_body_byte_is_invalid() {
        for (label, scheme, opts) in cases() {
            if scheme == SchemeName::Token {
                continue; // no MAC over the body; see wrong_token_is_invalid
            }
            let v = verifier(scheme, &opts, &[SECRET]);
            let signed = sign_at(&v, BODY, now());
            let mut body = BODY.to_vec();
            body[3] ^= 0x01;
            let r = verify_with(&v, &signed.headers, None, &body, now());
            assert_eq!(code(r), "signature_invalid", "{label}");
        }
    }

    #[test]
    fn wrong_secret_is_invalid() {
        for (label, scheme, opts) in cases() {
            let signer = verifier(scheme, &opts, &["some-other-secret"]);
            let v = verifier(scheme, &opts, &[SECRET]);
            let signed = sign_at(&signer, BODY, now());
            assert_eq!(
                code(verify_signed(&v, &signed, now())),
                "signature_invalid",
                "{label}"
            );
        }
    }

    #[test]
    fn each_missing_header_is_reported_as_missing() {
        for (label, scheme, opts) in cases() {
            let v = verifier(scheme, &opts, &[SECRET]);
            let signed = sign_at(&v, BODY, now());
            for i in 0..signed.headers.len() {
                let mut headers = signed.headers.clone();
                let (removed, _) = headers.remove(i);
                let r = verify_with(&v, &headers, signed.query.as_deref(), BODY, now());
                assert_eq!(code(r), "signature_missing", "{label} without {removed}");
            }
            // An empty value is no better than an absent one.
            for i in 0..signed.headers.len() {
                let mut headers = signed.headers.clone();
                headers[i].1 = "  ".into();
                let r = verify_with(&v, &headers, signed.query.as_deref(), BODY, now());
                assert_eq!(
                    code(r),
                    "signature_missing",
                    "{label} empty {}",
                    headers[i].0
                );
            }
        }
        let v = verifier(SchemeName::Token, &cases()[12].2, &[SECRET]);
        assert_eq!(
            code(verify_with(&v, &vec![], None, BODY, now())),
            "signature_missing"
        );
        let v = verifier(SchemeName::Token, &cases()[13].2, &[SECRET]);
        assert_eq!(
            code(verify_with(&v, &vec![], None, BODY, now())),
            "signature_missing"
        );
    }

    #[test]
    fn stale_and_future_timestamps() {
        let past_limit = now() - TOL - Duration::from_secs(1);
        let future_limit = now() + TOL + Duration::from_secs(1);
        let mut checked = 0;
        for (label, scheme, opts) in cases() {
            if !scheme.has_timestamp() {
                continue;
            }
            checked += 1;
            let v = verifier(scheme, &opts, &[SECRET]);
            let stale = sign_at(&v, BODY, past_limit);
            assert_eq!(
                code(verify_signed(&v, &stale, now())),
                "signature_stale",
                "{label}"
            );
            let future = sign_at(&v, BODY, future_limit);
            assert_eq!(
                code(verify_signed(&v, &future, now())),
                "signature_future",
                "{label}"
            );
            // The tolerance itself is inclusive on both sides.
            let edge = sign_at(&v, BODY, now() - TOL);
            assert_eq!(
                code(verify_signed(&v, &edge, now())),
                "ok",
                "{label} edge past"
            );
            let edge = sign_at(&v, BODY, now() + TOL);
            assert_eq!(
                code(verify_signed(&v, &edge, now())),
                "ok",
                "{label} edge future"
            );
        }
        assert_eq!(checked, 7);
    }

    #[test]
    fn stale_error_message_is_readable() {
        let v = verifier(SchemeName::Slack, &SignatureOptions::default(), &[SECRET]);
        let signed = sign_at(&v, BODY, now() - Duration::from_secs(400));
        let err = verify_signed(&v, &signed, now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature timestamp is 400s old, beyond the 300s tolerance"
        );
    }

    #[test]
    fn rotation_accepts_any_live_secret_and_signs_with_the_first() {
        for (label, scheme, opts) in cases() {
            let old_only = verifier(scheme, &opts, &[OLD_SECRET]);
            let new_only = verifier(scheme, &opts, &[SECRET]);
            let rotating = verifier(scheme, &opts, &[SECRET, OLD_SECRET]);
            let from_old = sign_at(&old_only, BODY, now());
            assert_eq!(
                code(verify_signed(&rotating, &from_old, now())),
                "ok",
                "{label}"
            );
            let from_rotating = sign_at(&rotating, BODY, now());
            assert_eq!(
                code(verify_signed(&new_only, &from_rotating, now())),
                "ok",
                "{label}: sign must use the first secret"
            );
        }
    }

    #[test]
    fn standard_webhooks_published_vector() {
        let v = Verifier::new(
            SchemeName::StandardWebhooks,
            &SignatureOptions::default(),
            vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            TOL,
        )
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let headers = [
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ];
        let at = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let req = Request {
            method: "POST",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &headers,
            query: None,
            body,
            body_doc: None,
        };
        assert_eq!(code(v.verify(&req, at)), "ok");

        let signed = v
            .sign(&SignInput {
                body,
                now: at,
                event_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                method: "POST",
                url: URL,
            })
            .unwrap();
        assert!(signed.headers.contains(&(
            "webhook-signature".into(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into()
        )));
    }

    fn sw_request<'a, H: HeaderSource>(headers: &'a H, body: &'a [u8]) -> Request<'a> {
        Request {
            method: "POST",
            path_and_query: PATH,
            host: Some(HOST),
            headers,
            query: None,
            body,
            body_doc: None,
        }
    }

    #[test]
    fn standard_webhooks_signature_list() {
        let v = Verifier::new(
            SchemeName::StandardWebhooks,
            &SignatureOptions::default(),
            vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            TOL,
        )
        .unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let body = br#"{"test": 2432232314}"#;
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let other = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let run = |sig: &str| {
            let headers = [
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
                ("webhook-timestamp", "1614265330"),
                ("webhook-signature", sig),
            ];
            code(v.verify(&sw_request(&headers, body), at))
        };
        // The matching signature may be anywhere in the list; other versions are skipped.
        assert_eq!(run(&format!("{other} v1a,Zm9v {good}")), "ok");
        assert_eq!(run(&format!("v2,abc  {good}")), "ok");
        assert_eq!(run(other), "signature_invalid");
        let mut last_flipped = STANDARD.decode(&good[3..]).unwrap();
        last_flipped[31] ^= 1;
        let last_flipped = format!("v1,{}", STANDARD.encode(last_flipped));
        assert_eq!(run(&last_flipped), "signature_invalid");
        assert_eq!(run("v1a,Zm9vYmFy v2,Zm9v"), "signature_malformed");
        assert_eq!(
            run("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
            "signature_malformed"
        );
        assert_eq!(run("v1,not*base64"), "signature_malformed");
        assert_eq!(run("v1,Zm9v"), "signature_malformed");
        let many = [other; MAX_OFFERED + 1].join(" ");
        assert_eq!(run(&many), "signature_malformed");

        let run_ts = |ts: &str| {
            let headers = [
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
                ("webhook-timestamp", ts),
                ("webhook-signature", good),
            ];
            code(v.verify(&sw_request(&headers, body), at))
        };
        assert_eq!(run_ts("+1614265330"), "signature_malformed");
        assert_eq!(run_ts("1614265330.0"), "signature_malformed");
        assert_eq!(run_ts("99999999999999999999999"), "signature_malformed");
        // A different (well-formed) timestamp is part of the signed content.
        assert_eq!(run_ts("1614265331"), "signature_invalid");
    }

    #[test]
    fn standard_webhooks_secret_forms() {
        let key = b"raw key bytes for test";
        let opts = SignatureOptions::default();
        let prefixed = verifier(
            SchemeName::StandardWebhooks,
            &opts,
            &["raw key bytes for test"],
        );
        // The same key without `whsec_` (plain base64) and a non-base64 secret used as bytes.
        let bare = Verifier::new(
            SchemeName::StandardWebhooks,
            &opts,
            vec![STANDARD.encode(key)],
            TOL,
        )
        .unwrap();
        let signed = sign_at(&prefixed, BODY, now());
        assert_eq!(code(verify_signed(&bare, &signed, now())), "ok");

        let raw = Verifier::new(
            SchemeName::StandardWebhooks,
            &opts,
            vec!["not base64!".into()],
            TOL,
        )
        .unwrap();
        let signed = sign_at(&raw, BODY, now());
        let mut mac = HmacSha256::new_from_slice(b"not base64!").unwrap();
        mac.update(b"msg_1.1700000000.");
        mac.update(BODY);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert!(signed
            .headers
            .contains(&("webhook-signature".into(), expected)));

        let err = Verifier::new(
            SchemeName::StandardWebhooks,
            &opts,
            vec!["whsec_***".into()],
            TOL,
        )
        .unwrap_err();
        assert!(err.to_string().contains("secret #1"), "{err}");
        assert!(!err.to_string().contains("***"), "{err}");
    }

    #[test]
    fn github_published_vector() {
        let secret = "It's a Secret to Everybody";
        let v = Verifier::new(
            SchemeName::HmacSha256,
            &SignatureOptions::default(),
            vec![secret.into()],
            TOL,
        )
        .unwrap();
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let run = |value: &str| {
            let headers = [("X-Hub-Signature-256", value)];
            code(v.verify(&sw_request(&headers, body), now()))
        };
        assert_eq!(run(expected), "ok");
        assert_eq!(
            run(&expected.to_ascii_uppercase().replace("SHA256=", "sha256=")),
            "ok"
        );
        // Every byte of the MAC counts, including the last.
        assert_eq!(run(&expected.replace("3e17", "3e16")), "signature_invalid");
        assert_eq!(
            run(&expected.replace("757107", "757106")),
            "signature_invalid"
        );
        assert_eq!(run(&expected["sha256=".len()..]), "signature_malformed");
        assert_eq!(run("sha256=757107ea"), "signature_malformed");
        assert_eq!(
            run("sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            "signature_malformed"
        );

        let signed = sign_at(&v, body, now());
        assert_eq!(
            signed.headers,
            vec![("X-Hub-Signature-256".to_string(), expected.to_string())]
        );
    }

    #[test]
    fn shopify_base64_variant() {
        // Shopify signs the same HMAC as GitHub, base64 and without a prefix.
        let opts = SignatureOptions {
            header: Some("X-Shopify-Hmac-Sha256".into()),
            encoding: Some(Encoding::Base64),
            ..SignatureOptions::default()
        };
        let v = Verifier::new(
            SchemeName::HmacSha256,
            &opts,
            vec!["It's a Secret to Everybody".into()],
            TOL,
        )
        .unwrap();
        let mac = hex::decode("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
            .unwrap();
        let b64 = STANDARD.encode(&mac);
        let run = |name: &str, value: &str| {
            let headers = [(name, value)];
            code(v.verify(&sw_request(&headers, b"Hello, World!"), now()))
        };
        assert_eq!(run("x-shopify-hmac-sha256", &b64), "ok");
        assert_eq!(
            run("X-Shopify-Hmac-Sha256", b64.trim_end_matches('=')),
            "ok"
        );
        assert_eq!(
            run("X-Shopify-Hmac-Sha256", &format!("sha256={b64}")),
            "signature_malformed"
        );
        assert_eq!(run("X-Hub-Signature-256", &b64), "signature_missing");
    }

    #[test]
    fn stripe_header_parsing() {
        let v = verifier(SchemeName::Stripe, &SignatureOptions::default(), &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        let value = &signed.headers[0].1;
        let (t, v1) = value.split_once(",v1=").unwrap();
        let dummy = "0".repeat(64);
        let run = |header: String| {
            let headers = vec![("Stripe-Signature".to_string(), header)];
            code(verify_with(&v, &headers, None, BODY, now()))
        };
        assert_eq!(run(format!("{t},v1={dummy},v1={v1},v0={dummy},x=y")), "ok");
        assert_eq!(run(format!("{t},v1={}", v1.to_ascii_uppercase())), "ok");
        assert_eq!(run(format!("{t},v0={v1}")), "signature_malformed");
        assert_eq!(run(format!("v1={v1}")), "signature_malformed");
        assert_eq!(run(format!("{t},{t},v1={v1}")), "signature_malformed");
        assert_eq!(run(format!("{t},v1")), "signature_malformed");
        assert_eq!(run(format!("t=abc,v1={v1}")), "signature_malformed");
        assert_eq!(run(format!("{t},v1={dummy}")), "signature_invalid");
    }

    #[test]
    fn stripe_uses_whole_secret_as_key() {
        let secret = "whsec_test_secret";
        let v = Verifier::new(
            SchemeName::Stripe,
            &SignatureOptions::default(),
            vec![secret.into()],
            TOL,
        )
        .unwrap();
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"1700000000.");
        mac.update(BODY);
        let header = format!(
            "t=1700000000,v1={}",
            hex::encode(mac.finalize().into_bytes())
        );
        let headers = vec![("stripe-signature".to_string(), header)];
        assert_eq!(code(verify_with(&v, &headers, None, BODY, now())), "ok");
    }

    fn hubspot_expected(secret: &str, signed_uri: &str, body: &[u8], ts: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"POST");
        mac.update(signed_uri.as_bytes());
        mac.update(body);
        mac.update(ts.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }

    #[test]
    fn hubspot_decodes_reserved_escapes_in_uri() {
        let ts = "1700000000000";
        let path_and_query =
            "/hooks/x?email=ada%40example.com&t=%3a%2F%3F%21%24%27%28%29%2A%2C%3B&sp=a%20b";
        let decoded =
            "https://leads.example.com/hooks/x?email=ada@example.com&t=:/?!$'()*,;&sp=a%20b";
        let sig = hubspot_expected(SECRET, decoded, BODY, ts);
        let headers = [
            ("X-HubSpot-Signature-v3", sig.as_str()),
            ("X-HubSpot-Request-Timestamp", ts),
        ];
        let req = |host: Option<&'static str>| Request {
            method: "POST",
            path_and_query,
            host,
            headers: &headers,
            query: path_and_query.split_once('?').map(|(_, q)| q),
            body: BODY,
            body_doc: None,
        };
        let v = verifier(
            SchemeName::HubspotV3,
            &SignatureOptions::default(),
            &[SECRET],
        );
        assert_eq!(code(v.verify(&req(Some(HOST)), now())), "ok");
        assert_eq!(
            code(v.verify(&req(Some("evil.example.com")), now())),
            "signature_invalid"
        );
        assert_eq!(code(v.verify(&req(None), now())), "signature_missing");

        // With signature.url the Host header is irrelevant but the query still counts.
        let opts = SignatureOptions {
            url: Some(URL.into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HubspotV3, &opts, &[SECRET]);
        assert_eq!(code(v.verify(&req(Some("10.0.0.7:8080")), now())), "ok");
        assert_eq!(code(v.verify(&req(None), now())), "ok");

        // Signing decodes the same way.
        let signed = v
            .sign(&SignInput {
                body: BODY,
                now: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
                event_id: "",
                method: "POST",
                url: &format!("https://{HOST}{path_and_query}"),
            })
            .unwrap();
        assert_eq!(
            signed.headers[0],
            ("X-HubSpot-Signature-v3".into(), sig.clone())
        );
    }

    #[test]
    fn hubspot_signs_what_the_verifier_rebuilds() {
        let local = "http://127.0.0.1:8080/v1/intake/hs?portal=1";
        let sign_for = |v: &Verifier| {
            v.sign(&SignInput {
                body: BODY,
                now: now(),
                event_id: "",
                method: "POST",
                url: local,
            })
            .unwrap()
        };
        let verify_at = |v: &Verifier, signed: &Signed, host: &str| {
            let req = Request {
                method: "POST",
                path_and_query: "/v1/intake/hs?portal=1",
                host: Some(host),
                headers: &signed.headers,
                query: Some("portal=1"),
                body: BODY,
                body_doc: None,
            };
            code(v.verify(&req, now()))
        };
        // Plain http to a local listener: the verifier assumes https in front of it.
        let v = verifier(
            SchemeName::HubspotV3,
            &SignatureOptions::default(),
            &[SECRET],
        );
        let signed = sign_for(&v);
        assert_eq!(verify_at(&v, &signed, "127.0.0.1:8080"), "ok");
        assert_eq!(
            verify_at(&v, &signed, "127.0.0.1:8081"),
            "signature_invalid"
        );

        // With signature.url the public URL is signed, whatever host the request went to.
        let opts = SignatureOptions {
            url: Some("https://crm.example.com/hooks/hs".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HubspotV3, &opts, &[SECRET]);
        let signed = sign_for(&v);
        assert_eq!(verify_at(&v, &signed, "anything"), "ok");
        let expected = hubspot_expected(
            SECRET,
            "https://crm.example.com/hooks/hs?portal=1",
            BODY,
            "1700000000000",
        );
        assert_eq!(signed.headers[0].1, expected);

        let no_scheme = v.sign(&SignInput {
            body: BODY,
            now: now(),
            event_id: "",
            method: "POST",
            url: "127.0.0.1:8080/v1/intake/hs",
        });
        assert!(matches!(no_scheme, Err(SchemeError::Invalid(_))));
    }

    #[test]
    fn hubspot_method_and_milliseconds_are_signed() {
        let v = verifier(
            SchemeName::HubspotV3,
            &SignatureOptions::default(),
            &[SECRET],
        );
        let signed = sign_at(&v, BODY, now());
        assert_eq!(signed.headers[1].1, "1700000000000");
        let req = Request {
            method: "PUT",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &signed.headers,
            query: None,
            body: BODY,
            body_doc: None,
        };
        assert_eq!(code(v.verify(&req, now())), "signature_invalid");
    }

    #[test]
    fn token_in_header() {
        let v = verifier(SchemeName::Token, &SignatureOptions::default(), &[SECRET]);
        let ok = [("x-webhook-token", SECRET)];
        assert_eq!(code(v.verify(&sw_request(&ok, BODY), now())), "ok");
        let bad = [("X-Webhook-Token", "s3cr3t-value-012345678")];
        assert_eq!(
            code(v.verify(&sw_request(&bad, BODY), now())),
            "signature_invalid"
        );
        let longer = [("X-Webhook-Token", "s3cr3t-value-0123456789x")];
        assert_eq!(
            code(v.verify(&sw_request(&longer, BODY), now())),
            "signature_invalid"
        );

        let opts = SignatureOptions {
            location: Some(TokenLocation::Header),
            name: Some("X-Unbounce-Key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        assert_eq!(
            signed.headers,
            vec![("X-Unbounce-Key".into(), SECRET.into())]
        );
        assert_eq!(
            code(v.verify(&sw_request(&ok, BODY), now())),
            "signature_missing"
        );
    }

    #[test]
    fn token_in_query() {
        let opts = SignatureOptions {
            location: Some(TokenLocation::Query),
            name: Some("token".into()),
            ..SignatureOptions::default()
        };
        let secret = "a b&c=d/é";
        let v = Verifier::new(SchemeName::Token, &opts, vec![secret.into()], TOL).unwrap();
        let signed = sign_at(&v, BODY, now());
        let query = signed.query.clone().unwrap();
        assert!(query.starts_with("token="), "{query}");
        assert!(!query.contains(' ') && !query.contains("&c"), "{query}");
        let none = Vec::new();
        let run = |q: &str| code(verify_with(&v, &none, Some(q), BODY, now()));
        assert_eq!(run(&query), "ok");
        assert_eq!(run(&format!("page=1&{query}&utm=x")), "ok");
        assert_eq!(run("token=a%20b%26c%3Dd%2F%C3%A9"), "ok");
        assert_eq!(run("tok%65n=a+b%26c%3dd/%c3%a9"), "ok");
        assert_eq!(run("token=a+b"), "signature_invalid");
        assert_eq!(run("token=%zz"), "signature_invalid");
        assert_eq!(run(&format!("{query}&{query}")), "signature_malformed");
        assert_eq!(run("other=1"), "signature_missing");
        assert_eq!(run("token="), "signature_missing");
        assert_eq!(run(""), "signature_missing");
    }

    #[test]
    fn token_in_body() {
        let opts = SignatureOptions {
            location: Some(TokenLocation::Body),
            name: Some("webhook_key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        assert!(v.needs_body_doc());
        let none = Vec::new();
        let run = |body: &str| code(verify_with(&v, &none, None, body.as_bytes(), now()));
        assert_eq!(run(&format!(r#"{{"a":1,"webhook_key":"{SECRET}"}}"#)), "ok");
        assert_eq!(run(r#"{"webhook_key":"nope"}"#), "signature_invalid");
        assert_eq!(run(r#"{"webhook_key":12}"#), "signature_malformed");
        assert_eq!(run(r#"{"webhook_key":null}"#), "signature_missing");
        assert_eq!(run(r#"{"other":"x"}"#), "signature_missing");
        assert_eq!(run("not json"), "signature_missing");

        let signed = sign_at(&v, BODY, now());
        let doc: Value = serde_json::from_slice(signed.body.as_deref().unwrap()).unwrap();
        assert_eq!(doc["webhook_key"], SECRET);
        assert_eq!(doc["email"], "ada@example.com");
        assert!(v
            .sign(&SignInput {
                body: b"[1,2]",
                now: now(),
                event_id: "",
                method: "POST",
                url: URL,
            })
            .is_err());

        // A JSON pointer reaches into nested objects, and signing creates the path.
        let opts = SignatureOptions {
            location: Some(TokenLocation::Body),
            name: Some("/auth/google~1key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        let doc: Value = serde_json::from_slice(signed.body.as_deref().unwrap()).unwrap();
        assert_eq!(doc["auth"]["google/key"], SECRET);
        assert_eq!(code(verify_signed(&v, &signed, now())), "ok");
        let flat = format!(r#"{{"auth/google/key":"{SECRET}"}}"#);
        assert_eq!(
            code(verify_with(&v, &none, None, flat.as_bytes(), now())),
            "signature_missing"
        );
    }

    #[test]
    fn token_form_body_as_json_object_of_strings() {
        let opts = SignatureOptions {
            location: Some(TokenLocation::Body),
            name: Some("google_key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        let form = serde_json::json!({ "google_key": SECRET, "email": "a@b.c" });
        let none: Vec<(String, String)> = Vec::new();
        let req = Request {
            method: "POST",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &none,
            query: None,
            body: b"google_key=...&email=a%40b.c",
            body_doc: Some(&form),
        };
        assert_eq!(code(v.verify(&req, now())), "ok");
    }

    #[test]
    fn wrong_token_is_invalid() {
        for (label, scheme, opts) in cases() {
            if scheme != SchemeName::Token {
                continue;
            }
            let v = verifier(scheme, &opts, &[SECRET]);
            let attacker = verifier(scheme, &opts, &["guessed"]);
            let signed = sign_at(&attacker, BODY, now());
            assert_eq!(
                code(verify_signed(&v, &signed, now())),
                "signature_invalid",
                "{label}"
            );
        }
    }

    #[test]
    fn slack_calendly_webflow_linkedin_typeform_formats() {
        let o = SignatureOptions::default;
        let slack = sign_at(&verifier(SchemeName::Slack, &o(), &[SECRET]), BODY, now());
        assert!(slack.headers[0].1.starts_with("v0="));
        assert_eq!(slack.headers[1].1, "1700000000");
        let calendly = sign_at(
            &verifier(SchemeName::Calendly, &o(), &[SECRET]),
            BODY,
            now(),
        );
        assert!(calendly.headers[0].1.starts_with("t=1700000000,v1="));
        let webflow = sign_at(&verifier(SchemeName::Webflow, &o(), &[SECRET]), BODY, now());
        assert_eq!(webflow.headers[1].1, "1700000000000");
        let linkedin = sign_at(
            &verifier(SchemeName::Linkedin, &o(), &[SECRET]),
            BODY,
            now(),
        );
        assert!(linkedin.headers[0].1.starts_with("hmacsha256="));
        let typeform = sign_at(
            &verifier(SchemeName::Typeform, &o(), &[SECRET]),
            BODY,
            now(),
        );
        assert!(typeform.headers[0].1.starts_with("sha256="));

        // Known answer for Slack's base string, computed independently.
        let mut mac = HmacSha256::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(b"v0:1700000000:");
        mac.update(BODY);
        assert_eq!(
            slack.headers[0].1,
            format!("v0={}", hex::encode(mac.finalize().into_bytes()))
        );

        // A version prefix other than the scheme's is not trusted.
        let v = verifier(SchemeName::Slack, &o(), &[SECRET]);
        let mut headers = slack.headers.clone();
        headers[0].1 = headers[0].1.replacen("v0=", "v1=", 1);
        assert_eq!(
            code(verify_with(&v, &headers, None, BODY, now())),
            "signature_malformed"
        );
    }

    #[test]
    fn unconfigured_sender_fails_closed() {
        let v = Verifier::new(
            SchemeName::Stripe,
            &SignatureOptions::default(),
            vec![],
            TOL,
        )
        .unwrap();
        assert!(!v.has_secrets());
        let signer = verifier(SchemeName::Stripe, &SignatureOptions::default(), &[SECRET]);
        let signed = sign_at(&signer, BODY, now());
        assert_eq!(
            code(verify_signed(&v, &signed, now())),
            "sender_unconfigured"
        );
        assert!(matches!(
            v.sign(&SignInput {
                body: BODY,
                now: now(),
                event_id: "",
                method: "POST",
                url: URL,
            }),
            Err(SchemeError::NoSecret)
        ));
        assert!(signer.has_secrets());
    }

    #[test]
    fn options_that_do_not_apply_are_rejected_by_name() {
        let err = |scheme, opts: SignatureOptions| {
            Verifier::new(scheme, &opts, vec![SECRET.into()], TOL)
                .unwrap_err()
                .to_string()
        };
        let d = SignatureOptions::default;
        let e = err(
            SchemeName::Stripe,
            SignatureOptions {
                location: Some(TokenLocation::Query),
                ..d()
            },
        );
        assert!(
            e.contains("signature.location is only valid for scheme token"),
            "{e}"
        );
        let e = err(
            SchemeName::Token,
            SignatureOptions {
                encoding: Some(Encoding::Base64),
                ..d()
            },
        );
        assert!(
            e.contains("signature.encoding is only valid for scheme hmac-sha256"),
            "{e}"
        );
        let e = err(
            SchemeName::Token,
            SignatureOptions {
                header: Some("X-Key".into()),
                ..d()
            },
        );
        assert!(
            e.contains("signature.header") && e.contains("signature.name"),
            "{e}"
        );
        let e = err(
            SchemeName::Slack,
            SignatureOptions {
                url: Some(URL.into()),
                ..d()
            },
        );
        assert!(
            e.contains("signature.url is only valid for scheme hubspot-v3"),
            "{e}"
        );
        let e = err(
            SchemeName::Token,
            SignatureOptions {
                location: Some(TokenLocation::Query),
                ..d()
            },
        );
        assert!(e.contains("signature.name is required"), "{e}");
        let e = err(
            SchemeName::Token,
            SignatureOptions {
                location: Some(TokenLocation::Body),
                name: Some(String::new()),
                ..d()
            },
        );
        assert!(e.contains("signature.name is required"), "{e}");
        let e = err(
            SchemeName::HmacSha256,
            SignatureOptions {
                header: Some("X Bad Header".into()),
                ..d()
            },
        );
        assert!(e.contains("signature.header"), "{e}");
        let e = err(
            SchemeName::HubspotV3,
            SignatureOptions {
                url: Some("https://x.example/hook?a=1".into()),
                ..d()
            },
        );
        assert!(e.contains("signature.url"), "{e}");
        let e = err(
            SchemeName::HmacSha256,
            SignatureOptions {
                prefix: Some(" sha256=".into()),
                ..d()
            },
        );
        assert!(e.contains("signature.prefix"), "{e}");

        let e = Verifier::new(
            SchemeName::Slack,
            &d(),
            vec![SECRET.into(), String::new()],
            TOL,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("secret #2 is empty"), "{e}");
    }

    #[test]
    fn hmac_prefix_defaults_follow_the_header() {
        let custom = SignatureOptions {
            header: Some("X-Signature".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HmacSha256, &custom, &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        assert_eq!(signed.headers[0].0, "X-Signature");
        assert_eq!(
            signed.headers[0].1.len(),
            64,
            "no prefix: {}",
            signed.headers[0].1
        );

        let explicit_default = SignatureOptions {
            header: Some("x-hub-signature-256".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HmacSha256, &explicit_default, &[SECRET]);
        assert!(sign_at(&v, BODY, now()).headers[0].1.starts_with("sha256="));
    }

    #[test]
    fn header_map_lookup_is_case_insensitive_and_rejects_non_text() {
        use warp::http::{HeaderMap, HeaderValue};
        let v = verifier(SchemeName::Slack, &SignatureOptions::default(), &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        let mut map = HeaderMap::new();
        for (k, val) in &signed.headers {
            let name =
                warp::http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap();
            map.insert(name, HeaderValue::from_str(val).unwrap());
        }
        assert_eq!(
            map.header("X-SLACK-SIGNATURE"),
            Some(signed.headers[0].1.as_str())
        );
        let req = Request {
            method: "POST",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &map,
            query: None,
            body: BODY,
            body_doc: None,
        };
        assert_eq!(code(v.verify(&req, now())), "ok");

        map.insert(
            "x-slack-signature",
            HeaderValue::from_bytes(b"v0=\xff\xfe").unwrap(),
        );
        assert_eq!(map.header("x-slack-signature"), None);
        let req = Request {
            method: "POST",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &map,
            query: None,
            body: BODY,
            body_doc: None,
        };
        assert_eq!(code(v.verify(&req, now())), "signature_missing");
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        let secret = "super-secret-do-not-log";
        for (label, scheme, opts) in cases() {
            let v = Verifier::new(scheme, &opts, vec![secret_for(scheme, secret)], TOL).unwrap();
            assert!(!format!("{v:?}").contains(secret), "{label}");
            let signed = sign_at(&v, BODY, now());
            let mut body = BODY.to_vec();
            body[3] ^= 1;
            let errors = [
                verify_with(&v, &vec![], None, BODY, now()),
                verify_with(&v, &signed.headers, None, &body, now()),
                verify_signed(&v, &sign_at(&v, BODY, now() - TOL * 2), now()),
            ];
            for e in errors.into_iter().filter_map(Result::err) {
                let text = format!("{e} {e:?}");
                assert!(!text.contains(secret), "{label}: {text}");
                for (_, value) in &signed.headers {
                    assert!(
                        value.len() < 8 || !text.contains(value.as_str()),
                        "{label}: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn codes_are_stable() {
        let t = Duration::from_secs(1);
        let all = [
            (VerifyError::Unconfigured, "sender_unconfigured"),
            (VerifyError::Missing("x"), "signature_missing"),
            (VerifyError::MissingNamed("x".into()), "signature_missing"),
            (VerifyError::Malformed("x"), "signature_malformed"),
            (
                VerifyError::Stale {
                    age: t,
                    tolerance: t,
                },
                "signature_stale",
            ),
            (
                VerifyError::Future {
                    ahead: t,
                    tolerance: t,
                },
                "signature_future",
            ),
            (VerifyError::Mismatch, "signature_invalid"),
        ];
        for (e, c) in all {
            assert_eq!(e.code(), c);
        }
    }

    #[test]
    fn needs_body_doc_only_for_token_in_body() {
        for (label, scheme, opts) in cases() {
            let v = verifier(scheme, &opts, &[SECRET]);
            assert_eq!(v.needs_body_doc(), label == "token body", "{label}");
        }
    }

    #[test]
    fn scheme_names_round_trip_through_serde() {
        for (_, scheme, _) in cases() {
            let parsed: SchemeName =
                serde_json::from_value(Value::String(scheme.as_str().into())).unwrap();
            assert_eq!(parsed, scheme);
        }
    }
}
