//! A bare HMAC-SHA256 of the body in one header, as GitHub (`X-Hub-Signature-256: sha256=<hex>`,
//! the default), Shopify (base64, no prefix) and many others send it. Typeform and LinkedIn use
//! the same construction with their own fixed header, so [`BodyMac`] serves them too.

use std::borrow::Cow;
use std::time::Duration;

use hmac::Mac;

use super::encoding::{decode_32, encode};
use super::headers::check_header_name;
use super::keys::{HmacSha256, Keys, Secret};
use super::{
    Encoding, Request, Scheme, SchemeError, SignInput, SignatureOptions, Signed, VerifyError,
};

const DEFAULT_HEADER: &str = "X-Hub-Signature-256";
const DEFAULT_PREFIX: &str = "sha256=";

/// No timestamp is signed, so these requests can be replayed; the schemes that use this have
/// nothing better to offer.
fn signed_content(mac: &mut HmacSha256, body: &[u8]) {
    mac.update(body);
}

pub(super) struct BodyMac {
    header: Cow<'static, str>,
    prefix: Cow<'static, str>,
    encoding: Encoding,
    /// A vendor's prefix names a signature version; a configured one is only the operator's
    /// choice, and the message says which so they know where to look.
    lacks_prefix: &'static str,
}

impl BodyMac {
    /// A vendor's fixed format.
    pub(super) const fn vendor(
        header: &'static str,
        prefix: &'static str,
        encoding: Encoding,
    ) -> Self {
        BodyMac {
            header: Cow::Borrowed(header),
            prefix: Cow::Borrowed(prefix),
            encoding,
            lacks_prefix: "signature lacks its version prefix",
        }
    }

    /// Scheme `hmac-sha256`, shaped by `signature.header`, `.prefix` and `.encoding`.
    pub(super) fn from_options(opts: &SignatureOptions) -> Result<Self, SchemeError> {
        let header = opts
            .header
            .clone()
            .unwrap_or_else(|| DEFAULT_HEADER.to_string());
        check_header_name("signature.header", &header)?;
        let prefix = match &opts.prefix {
            Some(p) => p.clone(),
            None if header.eq_ignore_ascii_case(DEFAULT_HEADER) => DEFAULT_PREFIX.to_string(),
            None => String::new(),
        };
        // Header values arrive trimmed and printable, so any other prefix can never match.
        if prefix.starts_with(' ') || !prefix.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(SchemeError::Invalid(
                "signature.prefix must be printable ASCII and not start with a space".into(),
            ));
        }
        Ok(BodyMac {
            header: Cow::Owned(header),
            prefix: Cow::Owned(prefix),
            encoding: opts.encoding.unwrap_or(Encoding::Hex),
            lacks_prefix: "signature header lacks the configured prefix",
        })
    }

    fn missing(&self) -> VerifyError {
        match &self.header {
            Cow::Borrowed(name) => VerifyError::Missing(name),
            Cow::Owned(name) => VerifyError::MissingNamed(name.clone()),
        }
    }
}

impl Scheme for BodyMac {
    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let value = req
            .headers
            .header(&self.header)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.missing())?;
        let sig = value
            .strip_prefix(self.prefix.as_ref())
            .ok_or(VerifyError::Malformed(self.lacks_prefix))?;
        let sig = decode_32(sig, self.encoding)?;
        keys.check_mac(&[sig], |m| signed_content(m, req.body))?;
        Ok(None)
    }

    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        _since_epoch: Duration,
    ) -> Result<Signed, SchemeError> {
        let sig = key.mac(|m| signed_content(m, input.body));
        let value = format!("{}{}", self.prefix, encode(&sig, self.encoding));
        Ok(Signed::from_headers([(self.header.as_ref(), value)]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn github_published_vector() {
        let secret = "It's a Secret to Everybody";
        let v = Verifier::new(
            SchemeName::HmacSha256,
            &SignatureOptions::default(),
            vec![secret.into()],
            TOL,
        )
        .unwrap();
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let run = |value: &str| {
            let headers = [("X-Hub-Signature-256", value)];
            code(v.verify(&sw_request(&headers, body), now()))
        };
        assert_eq!(run(expected), "ok");
        assert_eq!(
            run(&expected.to_ascii_uppercase().replace("SHA256=", "sha256=")),
            "ok"
        );
        // Every byte of the MAC counts, including the last.
        assert_eq!(run(&expected.replace("3e17", "3e16")), "signature_invalid");
        assert_eq!(
            run(&expected.replace("757107", "757106")),
            "signature_invalid"
        );
        assert_eq!(run(&expected["sha256=".len()..]), "signature_malformed");
        assert_eq!(run("sha256=757107ea"), "signature_malformed");
        assert_eq!(
            run("sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            "signature_malformed"
        );

        let signed = sign_at(&v, body, now());
        assert_eq!(
            signed.headers,
            vec![("X-Hub-Signature-256".to_string(), expected.to_string())]
        );
    }

    #[test]
    fn shopify_base64_variant() {
        // Shopify signs the same HMAC as GitHub, base64 and without a prefix.
        let opts = SignatureOptions {
            header: Some("X-Shopify-Hmac-Sha256".into()),
            encoding: Some(Encoding::Base64),
            ..SignatureOptions::default()
        };
        let v = Verifier::new(
            SchemeName::HmacSha256,
            &opts,
            vec!["It's a Secret to Everybody".into()],
            TOL,
        )
        .unwrap();
        let mac = hex::decode("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
            .unwrap();
        let b64 = STANDARD.encode(&mac);
        let run = |name: &str, value: &str| {
            let headers = [(name, value)];
            code(v.verify(&sw_request(&headers, b"Hello, World!"), now()))
        };
        assert_eq!(run("x-shopify-hmac-sha256", &b64), "ok");
        assert_eq!(
            run("X-Shopify-Hmac-Sha256", b64.trim_end_matches('=')),
            "ok"
        );
        assert_eq!(
            run("X-Shopify-Hmac-Sha256", &format!("sha256={b64}")),
            "signature_malformed"
        );
        assert_eq!(run("X-Hub-Signature-256", &b64), "signature_missing");
    }

    #[test]
    fn hmac_prefix_defaults_follow_the_header() {
        let custom = SignatureOptions {
            header: Some("X-Signature".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HmacSha256, &custom, &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        assert_eq!(signed.headers[0].0, "X-Signature");
        assert_eq!(
            signed.headers[0].1.len(),
            64,
            "no prefix: {}",
            signed.headers[0].1
        );

        let explicit_default = SignatureOptions {
            header: Some("x-hub-signature-256".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::HmacSha256, &explicit_default, &[SECRET]);
        assert!(sign_at(&v, BODY, now()).headers[0].1.starts_with("sha256="));
    }
}
