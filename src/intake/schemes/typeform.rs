//! Typeform: `Typeform-Signature: sha256=<base64>`, an HMAC of the body alone.

use super::hmac_sha256::BodyMac;
use super::Encoding;

pub(super) const TYPEFORM: BodyMac =
    BodyMac::vendor("Typeform-Signature", "sha256=", Encoding::Base64);

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn typeform_format() {
        let o = SignatureOptions::default;
        let typeform = sign_at(
            &verifier(SchemeName::Typeform, &o(), &[SECRET]),
            BODY,
            now(),
        );
        assert!(typeform.headers[0].1.starts_with("sha256="));
    }
}
