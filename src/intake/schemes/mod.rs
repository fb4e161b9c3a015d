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
//!
//! Layout: each vendor's file defines its header names and its signed content once, and both
//! `verify` and `sign` feed the MAC through that one definition, so the two cannot drift apart.
//! Which file serves a sender is decided once, in [`Verifier::new`].

mod calendly;
mod encoding;
mod headers;
mod hmac_sha256;
mod hubspot_v3;
mod keys;
mod linkedin;
mod slack;
mod standard_webhooks;
mod stripe;
#[cfg(test)]
mod test_support;
mod timestamp;
mod token;
mod typeform;
mod webflow;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

pub use headers::HeaderSource;
use keys::{Keys, Secret};

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
    /// `sign` for token-in-query: the query could not be encoded.
    #[error("cannot encode token query")]
    TokenQuery(#[source] serde_urlencoded::ser::Error),
    /// `sign` for token-in-body: the body with the token could not be written.
    #[error("cannot serialize body")]
    TokenBody(#[source] serde_json::Error),
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

impl Signed {
    fn from_headers<const N: usize>(headers: [(&str, String); N]) -> Self {
        Signed {
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
            query: None,
            body: None,
        }
    }
}

/// One vendor's wire format. Implementations hold only what the sender's options chose; the
/// secrets live in the [`Verifier`].
trait Scheme: Send + Sync {
    /// The HMAC key for secret number `which` (1-based, for messages). Most vendors use the
    /// secret's bytes as they are.
    fn hmac_key<'s>(&self, raw: &'s str, _which: usize) -> Result<Cow<'s, [u8]>, SchemeError> {
        Ok(Cow::Borrowed(raw.as_bytes()))
    }

    fn needs_body_doc(&self) -> bool {
        false
    }

    /// Checks the signature against the live keys and returns the signed timestamp, if the
    /// scheme has one. The window is checked by the caller, only after this passed, so that
    /// stale / future only ever describe authentic requests.
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError>;

    /// What the vendor would send, signed with `key` at `since_epoch`.
    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        since_epoch: Duration,
    ) -> Result<Signed, SchemeError>;
}

/// Verifies (and signs) requests for one sender.
#[derive(Clone)]
pub struct Verifier {
    scheme: SchemeName,
    imp: Arc<dyn Scheme>,
    keys: Keys,
    tolerance: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &format_args!("<{} redacted>", self.keys.len()))
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
        let imp = build(scheme, opts)?;
        let keys = Keys::prepare(secrets, imp.as_ref())?;
        Ok(Verifier {
            scheme,
            imp,
            keys,
            tolerance,
        })
    }

    pub fn scheme(&self) -> SchemeName {
        self.scheme
    }

    pub fn has_secrets(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn needs_body_doc(&self) -> bool {
        self.imp.needs_body_doc()
    }

    pub fn verify(&self, req: &Request<'_>, now: SystemTime) -> Result<(), VerifyError> {
        if self.keys.is_empty() {
            return Err(VerifyError::Unconfigured);
        }
        match self.imp.verify(&self.keys, req)? {
            Some(signed_at) => timestamp::check_window(signed_at, now, self.tolerance),
            None => Ok(()),
        }
    }

    /// Produces what the vendor would send for `input.body`, using the first live secret.
    pub fn sign(&self, input: &SignInput<'_>) -> Result<Signed, SchemeError> {
        let key = self.keys.first().ok_or(SchemeError::NoSecret)?;
        let since_epoch = input
            .now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SchemeError::Invalid("signing time is before the unix epoch".into()))?;
        self.imp.sign(key, input, since_epoch)
    }
}

/// The one place a scheme name picks its implementation.
fn build(scheme: SchemeName, opts: &SignatureOptions) -> Result<Arc<dyn Scheme>, SchemeError> {
    Ok(match scheme {
        SchemeName::StandardWebhooks => Arc::new(standard_webhooks::StandardWebhooks),
        SchemeName::Stripe => Arc::new(stripe::STRIPE),
        SchemeName::HmacSha256 => Arc::new(hmac_sha256::BodyMac::from_options(opts)?),
        SchemeName::Typeform => Arc::new(typeform::TYPEFORM),
        SchemeName::HubspotV3 => Arc::new(hubspot_v3::HubspotV3::from_options(opts)?),
        SchemeName::Slack => Arc::new(slack::SLACK),
        SchemeName::Calendly => Arc::new(calendly::CALENDLY),
        SchemeName::Webflow => Arc::new(webflow::WEBFLOW),
        SchemeName::Linkedin => Arc::new(linkedin::LINKEDIN),
        SchemeName::Token => Arc::new(token::Token::from_options(opts)?),
    })
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

#[cfg(test)]
mod tests {
    use super::test_support::*;

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
