//! HubSpot v3: `X-HubSpot-Signature-v3: <base64>` over `{method}{uri}{body}{timestamp}`, with
//! the timestamp in unix milliseconds in `X-HubSpot-Request-Timestamp`. The URI is the full
//! public URL, so this scheme needs the host the vendor called (or `signature.url`), with a few
//! reserved escapes decoded.

use std::time::Duration;

use hmac::Mac;

use super::encoding::encode;
use super::headers::prefixed;
use super::keys::{HmacSha256, Keys, Secret};
use super::timestamp::Unit;
use super::{
    Encoding, Request, Scheme, SchemeError, SignInput, SignatureOptions, Signed, VerifyError,
};

const SIGNATURE: &str = "X-HubSpot-Signature-v3";
const TIMESTAMP: &str = "X-HubSpot-Request-Timestamp";
const UNIT: Unit = Unit::Millis;

/// The URI is fed in pieces to avoid building it. Decoding piecewise equals decoding the whole
/// because every boundary is followed by '/' or '?', which cannot continue a %XX escape.
fn signed_content(mac: &mut HmacSha256, method: &str, uri: [&str; 3], body: &[u8], ts: &str) {
    mac.update(method.as_bytes());
    for part in uri {
        feed_hubspot_uri(mac, part);
    }
    mac.update(body);
    mac.update(ts.as_bytes());
}

pub(super) struct HubspotV3 {
    /// `signature.url`: the public base URL, when the Host header seen here is not the public one.
    url: Option<String>,
}

impl HubspotV3 {
    pub(super) fn from_options(opts: &SignatureOptions) -> Result<Self, SchemeError> {
        if let Some(url) = &opts.url {
            let has_scheme = url.starts_with("https://") || url.starts_with("http://");
            if !has_scheme || url.contains(['?', '#']) {
                return Err(SchemeError::Invalid(format!(
                    "signature.url `{url}` must be an http(s) URL without query or fragment \
                     (the request's query is appended)"
                )));
            }
        }
        Ok(HubspotV3 {
            url: opts.url.clone(),
        })
    }

    /// The URI HubSpot signed, in pieces: `signature.url` plus the query of `target`, or
    /// `https://` + `host` + `target` (TLS is assumed to end in front of us). `None` when the
    /// host is needed and there is none.
    fn signed_uri<'a>(&'a self, host: Option<&'a str>, target: &'a str) -> Option<[&'a str; 3]> {
        Some(match &self.url {
            Some(base) => [
                base.as_str(),
                target.find('?').map_or("", |i| &target[i..]),
                "",
            ],
            None => ["https://", host?, target],
        })
    }
}

impl Scheme for HubspotV3 {
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let sig = prefixed(req.headers, SIGNATURE, "", Encoding::Base64)?;
        let (ts, at) = UNIT.read(
            req.headers,
            TIMESTAMP,
            "X-HubSpot-Request-Timestamp is not unix milliseconds",
        )?;
        let host = req.host.map(str::trim).filter(|v| !v.is_empty());
        let uri = self
            .signed_uri(host, req.path_and_query)
            .ok_or(VerifyError::Missing("Host header (or set signature.url)"))?;
        keys.check_mac(&[sig], |m| {
            signed_content(m, req.method, uri, req.body, ts);
        })?;
        Ok(Some(at))
    }

    /// Signs the URI `verify` will rebuild rather than the literal URL, so that `leadrouter
    /// send` to a local http listener still verifies: the verifier assumes TLS is terminated in
    /// front of it, or uses `signature.url`.
    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        since_epoch: Duration,
    ) -> Result<Signed, SchemeError> {
        let unusable = || {
            SchemeError::Invalid(
                "hubspot-v3 signing needs the method and a full http(s) URL".into(),
            )
        };
        let rest = input
            .url
            .strip_prefix("https://")
            .or_else(|| input.url.strip_prefix("http://"))
            .filter(|r| !r.is_empty() && !input.method.is_empty())
            .ok_or_else(unusable)?;
        // The host ends where the request target begins, as the verifier sees the two apart.
        let (host, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let uri = self.signed_uri(Some(host), target).ok_or_else(unusable)?;
        let ts = UNIT.format(since_epoch);
        let sig = key.mac(|m| signed_content(m, input.method, uri, input.body, &ts));
        Ok(Signed::from_headers([
            (SIGNATURE, encode(&sig, Encoding::Base64)),
            (TIMESTAMP, ts),
        ]))
    }
}

/// HubSpot decodes exactly these escapes before signing; everything else (e.g. `%20`) stays
/// encoded, so a general percent-decoder (the `percent-encoding` crate) would sign a different
/// URI. Hex case is accepted either way because percent-encoding is case-insensitive.
fn hubspot_unescape(hi: u8, lo: u8) -> Option<u8> {
    Some(match (hi, lo.to_ascii_uppercase()) {
        (b'2', b'1') => b'!',
        (b'2', b'4') => b'$',
        (b'2', b'7') => b'\'',
        (b'2', b'8') => b'(',
        (b'2', b'9') => b')',
        (b'2', b'A') => b'*',
        (b'2', b'C') => b',',
        (b'2', b'F') => b'/',
        (b'3', b'A') => b':',
        (b'3', b'B') => b';',
        (b'3', b'F') => b'?',
        (b'4', b'0') => b'@',
        _ => return None,
    })
}

fn feed_hubspot_uri(mac: &mut HmacSha256, uri: &str) {
    let bytes = uri.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(c) = hubspot_unescape(bytes[i + 1], bytes[i + 2]) {
                mac.update(&bytes[start..i]);
                mac.update(&[c]);
                i += 3;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    mac.update(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn hubspot_expected(secret: &str, signed_uri: &str, body: &[u8], ts: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"POST");
        mac.update(signed_uri.as_bytes());
        mac.update(body);
        mac.update(ts.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }

    #[test]
    fn hubspot_decodes_reserved_escapes_in_uri() {
        let ts = "1700000000000";
        let path_and_query =
            "/hooks/x?email=ada%40example.com&t=%3a%2F%3F%21%24%27%28%29%2A%2C%3B&sp=a%20b";
        let decoded =
            "https://leads.example.com/hooks/x?email=ada@example.com&t=:/?!$'()*,;&sp=a%20b";
        let sig = hubspot_expected(SECRET, decoded, BODY, ts);
        let headers = [
            ("X-HubSpot-Signature-v3", sig.as_str()),
            ("X-HubSpot-Request-Timestamp", ts),
        ];
        let req = |host: Option<&'static str>| Request {
            method: "POST",
            path_and_query,
            host,
            headers: &headers,
            query: path_and_query.split_once('?').map(|(_, q)| q),
            body: BODY,
            body_doc: None,
        };
        let v = verifier(
            SchemeName::HubspotV3,
            &SignatureOptions::default(),
            &[SECRET],
        );
        assert_eq!(code(v.verify(&req(Some(HOST)), now())), "ok");
        assert_eq!(
            code(v.verify(&req(Some("evil.example.com")), now())),
            "signature_invalid"
        );
        assert_eq!(code(v.verify(&req(None), now())), "signature_missing");

        // With signature.url the Host header is irrelevant but the query still counts.
        let opts = SignatureOptions {
            url: Some(URL.into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HubspotV3, &opts, &[SECRET]);
        assert_eq!(code(v.verify(&req(Some("10.0.0.7:8080")), now())), "ok");
        assert_eq!(code(v.verify(&req(None), now())), "ok");

        // Signing decodes the same way.
        let signed = v
            .sign(&SignInput {
                body: BODY,
                now: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
                event_id: "",
                method: "POST",
                url: &format!("https://{HOST}{path_and_query}"),
            })
            .unwrap();
        assert_eq!(
            signed.headers[0],
            ("X-HubSpot-Signature-v3".into(), sig.clone())
        );
    }

    #[test]
    fn hubspot_signs_what_the_verifier_rebuilds() {
        let local = "http://127.0.0.1:8080/v1/intake/hs?portal=1";
        let sign_for = |v: &Verifier| {
            v.sign(&SignInput {
                body: BODY,
                now: now(),
                event_id: "",
                method: "POST",
                url: local,
            })
            .unwrap()
        };
        let verify_at = |v: &Verifier, signed: &Signed, host: &str| {
            let req = Request {
                method: "POST",
                path_and_query: "/v1/intake/hs?portal=1",
                host: Some(host),
                headers: &signed.headers,
                query: Some("portal=1"),
                body: BODY,
                body_doc: None,
            };
            code(v.verify(&req, now()))
        };
        // Plain http to a local listener: the verifier assumes https in front of it.
        let v = verifier(
            SchemeName::HubspotV3,
            &SignatureOptions::default(),
            &[SECRET],
        );
        let signed = sign_for(&v);
        assert_eq!(verify_at(&v, &signed, "127.0.0.1:8080"), "ok");
        assert_eq!(
            verify_at(&v, &signed, "127.0.0.1:8081"),
            "signature_invalid"
        );

        // With signature.url the public URL is signed, whatever host the request went to.
        let opts = SignatureOptions {
            url: Some("https://crm.example.com/hooks/hs".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HubspotV3, &opts, &[SECRET]);
        let signed = sign_for(&v);
        assert_eq!(verify_at(&v, &signed, "anything"), "ok");
        let expected = hubspot_expected(
            SECRET,
            "https://crm.example.com/hooks/hs?portal=1",
            BODY,
            "1700000000000",
        );
        assert_eq!(signed.headers[0].1, expected);

        let no_scheme = v.sign(&SignInput {
            body: BODY,
            now: now(),
            event_id: "",
            method: "POST",
            url: "127.0.0.1:8080/v1/intake/hs",
        });
        assert!(matches!(no_scheme, Err(SchemeError::Invalid(_))));
    }

    #[test]
    fn hubspot_method_and_milliseconds_are_signed() {
        let v = verifier(
            SchemeName::HubspotV3,
            &SignatureOptions::default(),
            &[SECRET],
        );
        let signed = sign_at(&v, BODY, now());
        assert_eq!(signed.headers[1].1, "1700000000000");
        let req = Request {
            method: "PUT",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &signed.headers,
            query: None,
            body: BODY,
            body_doc: None,
        };
        assert_eq!(code(v.verify(&req, now())), "signature_invalid");
    }
}
