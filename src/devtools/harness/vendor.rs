//! Posting a lead as a form vendor would: sign the exact bytes with the sender's scheme, then
//! post them to the sender's intake URL. The tests, the drill and the benches all send this way.

use std::time::{Duration, SystemTime};

use super::HarnessError;
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

/// The headers a vendor would send with `body` signed now (JSON content type included), for
/// header-signed schemes such as Standard Webhooks; a load generator signs ahead with this.
pub fn signed_headers(
    signer: &Verifier,
    url: &str,
    event_id: &str,
    body: &[u8],
) -> Result<reqwest::header::HeaderMap, HarnessError> {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
    let signed = signer
        .sign(&SignInput {
            body,
            now: SystemTime::now(),
            event_id,
            method: "POST",
            url,
        })
        .map_err(|e| HarnessError::Sign(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in signed.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| HarnessError::Sign(format!("header name {k}: {e}")))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|e| HarnessError::Sign(format!("header {k}: {e}")))?;
        headers.insert(name, value);
    }
    Ok(headers)
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
        reqwest::header::HeaderMap::new()
    });
    http.post(url)
        .headers(headers)
        .timeout(timeout)
        .body(body.to_vec())
        .send()
        .await
}
