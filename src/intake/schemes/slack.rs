//! Slack: `X-Slack-Signature: v0=<hex>` over `v0:{timestamp}:{body}`, with the timestamp in unix
//! seconds in `X-Slack-Request-Timestamp`. The shape (a hex MAC in one header over
//! `{version}{timestamp}:{body}`, the timestamp in another) is defined here once as
//! [`TimestampHeaderMac`]; Webflow is the same shape with no version and milliseconds.

use std::time::Duration;

use hmac::Mac;

use super::encoding::encode;
use super::headers::prefixed;
use super::keys::{HmacSha256, Keys, Secret};
use super::timestamp::Unit;
use super::{Encoding, Request, Scheme, SchemeError, SignInput, Signed, VerifyError};

/// A hex MAC in `signature` (after `prefix`) over `{version}{timestamp}:{body}`, with the
/// timestamp in `unit`s in the `timestamp` header.
pub(super) struct TimestampHeaderMac {
    pub signature: &'static str,
    pub prefix: &'static str,
    pub timestamp: &'static str,
    pub unit: Unit,
    pub version: &'static [u8],
    /// The malformed-timestamp message, naming the header and its unit.
    pub not_a_timestamp: &'static str,
}

pub(super) const SLACK: TimestampHeaderMac = TimestampHeaderMac {
    signature: "X-Slack-Signature",
    prefix: "v0=",
    timestamp: "X-Slack-Request-Timestamp",
    unit: Unit::Secs,
    version: b"v0:",
    not_a_timestamp: "X-Slack-Request-Timestamp is not unix seconds",
};

impl TimestampHeaderMac {
    fn signed_content(&self, mac: &mut HmacSha256, timestamp: &str, body: &[u8]) {
        mac.update(self.version);
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
    }
}

impl Scheme for TimestampHeaderMac {
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let sig = prefixed(req.headers, self.signature, self.prefix, Encoding::Hex)?;
        let (ts, at) = self
            .unit
            .read(req.headers, self.timestamp, self.not_a_timestamp)?;
        keys.check_mac(&[sig], |m| self.signed_content(m, ts, req.body))?;
        Ok(Some(at))
    }

    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        since_epoch: Duration,
    ) -> Result<Signed, SchemeError> {
        let ts = self.unit.format(since_epoch);
        let sig = key.mac(|m| self.signed_content(m, &ts, input.body));
        Ok(Signed::from_headers([
            (
                self.signature,
                format!("{}{}", self.prefix, encode(&sig, Encoding::Hex)),
            ),
            (self.timestamp, ts),
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
