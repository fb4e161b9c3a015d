//! Slack: `X-Slack-Signature: v0=<hex>` over `v0:{timestamp}:{body}`, with the timestamp in unix
//! seconds in `X-Slack-Request-Timestamp`.

use std::time::Duration;

use hmac::Mac;

use super::encoding::encode;
use super::headers::prefixed;
use super::keys::{HmacSha256, Keys, Secret};
use super::timestamp::Unit;
use super::{Encoding, Request, Scheme, SchemeError, SignInput, Signed, VerifyError};

const SIGNATURE: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "X-Slack-Request-Timestamp";
const PREFIX: &str = "v0=";
const UNIT: Unit = Unit::Secs;

fn signed_content(mac: &mut HmacSha256, timestamp: &str, body: &[u8]) {
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
}

pub(super) struct Slack;

impl Scheme for Slack {
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let sig = prefixed(req.headers, SIGNATURE, PREFIX, Encoding::Hex)?;
        let (ts, at) = UNIT.read(
            req.headers,
            TIMESTAMP,
            "X-Slack-Request-Timestamp is not unix seconds",
        )?;
        keys.check_mac(&[sig], |m| signed_content(m, ts, req.body))?;
        Ok(Some(at))
    }

    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        since_epoch: Duration,
    ) -> Result<Signed, SchemeError> {
        let ts = UNIT.format(since_epoch);
        let sig = key.mac(|m| signed_content(m, &ts, input.body));
        Ok(Signed::from_headers([
            (
                SIGNATURE,
                format!("{PREFIX}{}", encode(&sig, Encoding::Hex)),
            ),
            (TIMESTAMP, ts),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn slack_format() {
        let o = SignatureOptions::default;
        let slack = sign_at(&verifier(SchemeName::Slack, &o(), &[SECRET]), BODY, now());
        assert!(slack.headers[0].1.starts_with("v0="));
        assert_eq!(slack.headers[1].1, "1700000000");

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
}
