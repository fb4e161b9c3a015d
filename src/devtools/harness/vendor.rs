//! Posting a lead as a form vendor would: sign the exact bytes with the sender's scheme, then
//! post them to the sender's intake URL. The tests, the drill and the benches all send this way.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::HarnessError;
use crate::config::{resolve_secrets, Config, EnvSource};
use crate::intake::schemes::{SchemeName, SignInput, SignatureOptions, Verifier};

/// A Standard Webhooks signer for one secret (`whsec_...`), the shape of the shipped `demo`
/// sender.
pub fn standard_webhooks_signer(secret: &str) -> Result<Verifier, HarnessError> {
    Verifier::new(
        SchemeName::StandardWebhooks,
        &SignatureOptions::default(),
        vec![secret.to_string()],
        Duration::from_secs(300),
    )
    .map_err(|e| HarnessError::Sign(e.to_string()))
}

/// The signer of a configured sender's vendor: the sender's scheme, signature options and
/// tolerance, with its secrets read from `env` as the router reads them.
pub fn sender_signer(
    cfg: &Config,
    sender: &str,
    env: &dyn EnvSource,
) -> Result<Verifier, HarnessError> {
    let s = cfg
        .sender(sender)
        .ok_or_else(|| HarnessError::Sign(format!("no sender `{sender}` in the config")))?;
    let secrets = resolve_secrets(s, env).secrets;
    Verifier::new(s.scheme, &s.signature, secrets, s.tolerance)
        .map_err(|e| HarnessError::Sign(format!("sender `{sender}`: {e}")))
}

/// One request as the vendor sends it: where the scheme puts the signature (headers, the
/// query, the body) already applied.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// `url` with the signature's query appended, when the scheme signs in the query.
    pub url: String,
    /// The signature headers and the content type.
    pub headers: HeaderMap,
    /// The body to send: the scheme's when it signs in the body, else the one signed.
    pub body: Vec<u8>,
}

/// Signs `body` for a POST to `url` as of `now`, for any scheme; `content_type` is the
/// sender's body format (`application/json`, or the form type for a `form` sender).
pub fn sign_request(
    signer: &Verifier,
    url: &str,
    event_id: &str,
    body: &[u8],
    now: SystemTime,
    content_type: &str,
) -> Result<SignedRequest, HarnessError> {
    let signed = signer
        .sign(&SignInput {
            body,
            now,
            event_id,
            method: "POST",
            url,
        })
        .map_err(|e| HarnessError::Sign(e.to_string()))?;
    let mut headers = HeaderMap::new();
    let ct = HeaderValue::from_str(content_type)
        .map_err(|e| HarnessError::Sign(format!("content type {content_type}: {e}")))?;
    headers.insert(CONTENT_TYPE, ct);
    for (k, v) in signed.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| HarnessError::Sign(format!("header name {k}: {e}")))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|e| HarnessError::Sign(format!("header {k}: {e}")))?;
        headers.insert(name, value);
    }
    Ok(SignedRequest {
        url: match signed.query {
            Some(q) => format!("{url}?{q}"),
            None => url.to_string(),
        },
        headers,
        body: signed.body.unwrap_or_else(|| body.to_vec()),
    })
}

/// The headers a vendor would send with `body` signed now (JSON content type included), for
/// header-signed schemes such as Standard Webhooks; a load generator signs ahead with this.
pub fn signed_headers(
    signer: &Verifier,
    url: &str,
    event_id: &str,
    body: &[u8],
) -> Result<HeaderMap, HarnessError> {
    sign_request(
        signer,
        url,
        event_id,
        body,
        SystemTime::now(),
        "application/json",
    )
    .map(|r| r.headers)
}

/// Signs `body` now and posts it to `url` (`http://host/v1/intake/{sender}`) as JSON; the answer
/// is the caller's to judge (a vendor retries 5xx and connection errors). Header-signed schemes
/// only (see [`signed_headers`]). A signing failure is
/// a broken test set-up: the request then goes out unsigned, so the router's 401 says so.
pub async fn post_signed(
    http: &reqwest::Client,
    signer: &Verifier,
    url: &str,
    event_id: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<reqwest::Response, reqwest::Error> {
    let headers = signed_headers(signer, url, event_id, body).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not sign; sending unsigned");
        HeaderMap::new()
    });
    http.post(url)
        .headers(headers)
        .timeout(timeout)
        .body(body.to_vec())
        .send()
        .await
}
