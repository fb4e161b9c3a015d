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

/// Signs `body` now and posts it to `url` (`http://host/v1/intake/{sender}`) as JSON; the answer
/// is the caller's to judge (a vendor retries 5xx and connection errors).
pub async fn post_signed(
    http: &reqwest::Client,
    signer: &Verifier,
    url: &str,
    event_id: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<reqwest::Response, reqwest::Error> {
    let signed = signer.sign(&SignInput {
        body,
        now: SystemTime::now(),
        event_id,
        method: "POST",
        url,
    });
    // A signer built from a secret always signs; a failure here is a broken test setup, and the
    // request goes out unsigned so the router's 401 says so.
    let (headers, query, replaced) = match signed {
        Ok(s) => (s.headers, s.query, s.body),
        Err(e) => {
            tracing::warn!(error = %e, "could not sign; sending unsigned");
            (Vec::new(), None, None)
        }
    };
    let url = match query {
        Some(q) => format!("{url}?{q}"),
        None => url.to_string(),
    };
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .timeout(timeout);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.body(replaced.unwrap_or_else(|| body.to_vec()))
        .send()
        .await
}
