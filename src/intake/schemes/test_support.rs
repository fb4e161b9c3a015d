//! Fixtures shared by the scheme tests: one request shape, one set of secrets, and every scheme
//! with the option variants that change what is signed.

pub(super) use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) use base64::engine::general_purpose::STANDARD;
pub(super) use base64::Engine as _;
pub(super) use hmac::Mac;
pub(super) use serde_json::Value;

pub(super) use super::keys::HmacSha256;
pub(super) use super::{
    Encoding, HeaderSource, Request, SchemeError, SchemeName, SignInput, SignatureOptions, Signed,
    TokenLocation, Verifier, VerifyError,
};

pub(super) const HOST: &str = "leads.example.com";
pub(super) const PATH: &str = "/hooks/x";
pub(super) const URL: &str = "https://leads.example.com/hooks/x";
pub(super) const SECRET: &str = "s3cr3t-value-0123456789";
pub(super) const OLD_SECRET: &str = "old-secret-abcdefghij";
pub(super) const BODY: &[u8] = br#"{"email":"ada@example.com","name":"Ada"}"#;
pub(super) const TOL: Duration = Duration::from_secs(300);

pub(super) fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub(super) fn secret_for(scheme: SchemeName, raw: &str) -> String {
    if scheme == SchemeName::StandardWebhooks {
        format!("whsec_{}", STANDARD.encode(raw))
    } else {
        raw.to_string()
    }
}

pub(super) fn verifier(scheme: SchemeName, opts: &SignatureOptions, secrets: &[&str]) -> Verifier {
    let secrets = secrets.iter().map(|s| secret_for(scheme, s)).collect();
    Verifier::new(scheme, opts, secrets, TOL).expect("valid verifier")
}

/// Every scheme, plus the option variants that change verification.
pub(super) fn cases() -> Vec<(&'static str, SchemeName, SignatureOptions)> {
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

pub(super) fn sign_at(v: &Verifier, body: &[u8], at: SystemTime) -> Signed {
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
pub(super) fn verify_with(
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

pub(super) fn verify_signed(
    v: &Verifier,
    signed: &Signed,
    at: SystemTime,
) -> Result<(), VerifyError> {
    let body = signed.body.as_deref().unwrap_or(BODY);
    verify_with(v, &signed.headers, signed.query.as_deref(), body, at)
}

pub(super) fn code(r: Result<(), VerifyError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(e) => e.code(),
    }
}

/// A POST to the intake path with these headers and body, as the HTTP layer hands it over.
pub(super) fn sw_request<'a, H: HeaderSource>(headers: &'a H, body: &'a [u8]) -> Request<'a> {
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
