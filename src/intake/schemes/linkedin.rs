//! LinkedIn: `X-LI-Signature: hmacsha256=<hex>`, an HMAC of the body alone.

use super::hmac_sha256::BodyMac;
use super::Encoding;

pub(super) const LINKEDIN: BodyMac =
    BodyMac::vendor("X-LI-Signature", "hmacsha256=", Encoding::Hex);

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn linkedin_format() {
        let o = SignatureOptions::default;
        let linkedin = sign_at(
            &verifier(SchemeName::Linkedin, &o(), &[SECRET]),
            BODY,
            now(),
        );
        assert!(linkedin.headers[0].1.starts_with("hmacsha256="));
    }
}
