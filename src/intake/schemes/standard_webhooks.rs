//! Standard Webhooks (standardwebhooks.com; Svix and the vendors built on it): `webhook-id`,
//! `webhook-timestamp` in unix seconds, and `webhook-signature`, a space-separated list of
//! `v1,<base64>` over `{id}.{timestamp}.{body}`. Secrets are `whsec_` + base64 of the key.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine as _;
use hmac::Mac;

use super::encoding::{decode_base64_32, encode, BASE64_LENIENT};
use super::headers::required;
use super::keys::{HmacSha256, Keys, Offered, Secret};
use super::timestamp::Unit;
use super::{Encoding, Request, Scheme, SchemeError, SignInput, Signed, VerifyError};

const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
const SIGNATURE: &str = "webhook-signature";
const UNIT: Unit = Unit::Secs;
/// The symmetric version; others (e.g. asymmetric `v1a`) are skipped, not trusted.
const VERSION: &str = "v1";

fn signed_content(mac: &mut HmacSha256, id: &str, timestamp: &str, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
}

pub(super) struct StandardWebhooks;

impl Scheme for StandardWebhooks {
    /// The spec's `whsec_` + base64; bare base64 is taken as the same key, and a secret that is
    /// not base64 at all is used as raw bytes, as some senders hand them out.
    fn hmac_key<'s>(&self, raw: &'s str, which: usize) -> Result<Cow<'s, [u8]>, SchemeError> {
        Ok(match raw.strip_prefix("whsec_") {
            Some(rest) => Cow::Owned(BASE64_LENIENT.decode(rest).map_err(|_| {
                SchemeError::Invalid(format!(
                    "secret #{which} starts with whsec_ but the rest is not base64"
                ))
            })?),
            None => BASE64_LENIENT
                .decode(raw)
                .map_or(Cow::Borrowed(raw.as_bytes()), Cow::Owned),
        })
    }

    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let h = req.headers;
        let id = required(h, ID)?;
        let ts = required(h, TIMESTAMP)?;
        let sigs = required(h, SIGNATURE)?;
        let at = UNIT.parse(ts, "webhook-timestamp is not unix seconds")?;
        let mut offered = Offered::new();
        for entry in sigs.split(' ').filter(|e| !e.is_empty()) {
            let (version, sig) = entry.split_once(',').ok_or(VerifyError::Malformed(
                "webhook-signature entry has no version",
            ))?;
            if version == VERSION {
                offered.push(decode_base64_32(sig)?)?;
            }
        }
        if offered.is_empty() {
            return Err(VerifyError::Malformed(
                "webhook-signature has no v1 signature",
            ));
        }
        keys.check_mac(offered.as_slice(), |m| signed_content(m, id, ts, req.body))?;
        Ok(Some(at))
    }

    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        since_epoch: Duration,
    ) -> Result<Signed, SchemeError> {
        if input.event_id.is_empty() {
            return Err(SchemeError::Invalid(
                "standard-webhooks signing needs an event id for webhook-id".into(),
            ));
        }
        let ts = UNIT.format(since_epoch);
        let sig = key.mac(|m| signed_content(m, input.event_id, &ts, input.body));
        let sig = format!("{VERSION},{}", encode(&sig, Encoding::Base64));
        Ok(Signed::from_headers([
            (ID, input.event_id.to_string()),
            (TIMESTAMP, ts),
            (SIGNATURE, sig),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::MAX_OFFERED;
    use super::super::test_support::*;

    /// The verifier of the specification's published test vector (its secret, its time).
    fn published_verifier() -> Verifier {
        Verifier::new(
            SchemeName::StandardWebhooks,
            &SignatureOptions::default(),
            vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            TOL,
        )
        .unwrap()
    }

    #[test]
    fn standard_webhooks_published_vector() {
        let v = published_verifier();
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
        let req = sw_request(&headers, body);
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

    #[test]
    fn standard_webhooks_signature_list() {
        let v = published_verifier();
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

    /// The reference implementation and ours agree on the signed content, the header format and
    /// the key encoding, both ways. Its `verify` reads the wall clock, so this signs at now.
    #[test]
    fn agrees_with_the_standardwebhooks_crate() {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        use standardwebhooks::Webhook;

        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let old_secret = format!("whsec_{}", STANDARD.encode(OLD_SECRET));
        let theirs = Webhook::new(secret).expect("reference accepts the secret");
        let theirs_old = Webhook::new(&old_secret).expect("reference accepts the old secret");
        let opts = SignatureOptions::default();
        let ours = Verifier::new(
            SchemeName::StandardWebhooks,
            &opts,
            vec![secret.into(), old_secret.clone()],
            TOL,
        )
        .expect("valid verifier");
        let at = SystemTime::now();
        let secs = at
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let ts = secs.to_string();
        let ts_signed = i64::try_from(secs).expect("timestamp fits i64");

        // Signed by the reference, with either live secret, verified by us.
        for signer in [&theirs, &theirs_old] {
            let sig = signer
                .sign("msg_ref", ts_signed, BODY)
                .expect("reference signs");
            let headers = [
                ("webhook-id", "msg_ref"),
                ("webhook-timestamp", ts.as_str()),
                ("webhook-signature", sig.as_str()),
            ];
            assert_eq!(code(ours.verify(&sw_request(&headers, BODY), at)), "ok");
            let mut body = BODY.to_vec();
            body[3] ^= 1;
            assert_eq!(
                code(ours.verify(&sw_request(&headers, &body), at)),
                "signature_invalid"
            );
        }

        // Signed by us (with the first secret), verified by the reference.
        let signed = ours
            .sign(&SignInput {
                body: BODY,
                now: at,
                event_id: "msg_ours",
                method: "POST",
                url: URL,
            })
            .expect("sign");
        let mut map = HeaderMap::new();
        for (name, value) in &signed.headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        theirs
            .verify(BODY, &map)
            .expect("reference verifies what we signed");
        assert!(
            theirs_old.verify(BODY, &map).is_err(),
            "signed with the first secret"
        );
        let mut body = BODY.to_vec();
        body[3] ^= 1;
        assert!(theirs.verify(&body, &map).is_err());
    }
}
