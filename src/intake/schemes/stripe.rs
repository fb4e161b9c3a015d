//! Stripe: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]` over `{t}.{body}`, keyed
//! with the whole secret (its `whsec_` is part of the key, unlike Standard Webhooks). Calendly
//! copied the format under its own header name, so [`TimestampedV1`] serves both.

use std::time::Duration;

use hmac::Mac;

use super::encoding::{decode_hex_32, encode};
use super::headers::required;
use super::keys::{HmacSha256, Keys, Offered, Secret};
use super::timestamp::Unit;
use super::{Encoding, Request, Scheme, SchemeError, SignInput, Signed, VerifyError};

const UNIT: Unit = Unit::Secs;

pub(super) const STRIPE: TimestampedV1 = TimestampedV1 {
    header: "Stripe-Signature",
};

fn signed_content(mac: &mut HmacSha256, timestamp: &str, body: &[u8]) {
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// The `t=…,v1=…` format; only the header name differs between the vendors that use it.
pub(super) struct TimestampedV1 {
    pub(super) header: &'static str,
}

impl Scheme for TimestampedV1 {
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let (ts, offered) = parse_t_v1(required(req.headers, self.header)?)?;
        let at = UNIT.parse(ts, "t= is not unix seconds")?;
        keys.check_mac(offered.as_slice(), |m| signed_content(m, ts, req.body))?;
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
        let value = format!("t={ts},v1={}", encode(&sig, Encoding::Hex));
        Ok(Signed::from_headers([(self.header, value)]))
    }
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

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
}
