//! Webflow: `x-webflow-signature: <hex>` over `{timestamp}:{body}`, with the timestamp in unix
//! milliseconds in `x-webflow-timestamp`.

use std::time::Duration;

use hmac::Mac;

use super::encoding::encode;
use super::headers::prefixed;
use super::keys::{HmacSha256, Keys, Secret};
use super::timestamp::Unit;
use super::{Encoding, Request, Scheme, SchemeError, SignInput, Signed, VerifyError};

const SIGNATURE: &str = "x-webflow-signature";
const TIMESTAMP: &str = "x-webflow-timestamp";
const UNIT: Unit = Unit::Millis;

fn signed_content(mac: &mut HmacSha256, timestamp: &str, body: &[u8]) {
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
}

pub(super) struct Webflow;

impl Scheme for Webflow {
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let sig = prefixed(req.headers, SIGNATURE, "", Encoding::Hex)?;
        let (ts, at) = UNIT.read(
            req.headers,
            TIMESTAMP,
            "x-webflow-timestamp is not unix milliseconds",
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
            (SIGNATURE, encode(&sig, Encoding::Hex)),
            (TIMESTAMP, ts),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn webflow_format() {
        let o = SignatureOptions::default;
        let webflow = sign_at(&verifier(SchemeName::Webflow, &o(), &[SECRET]), BODY, now());
        assert_eq!(webflow.headers[1].1, "1700000000000");
    }
}
