//! Reading signature headers. Values are trimmed and an empty value counts as absent, so a
//! proxy that forwards `X-Signature:` with nothing in it fails the same way as no header.

use super::encoding::decode_32;
use super::{Encoding, SchemeError, VerifyError};

pub trait HeaderSource {
    /// Case-insensitive lookup; a value that is not valid text counts as absent.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderSource for warp::http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        // HeaderValue already excludes control characters, so valid UTF-8 here is printable text.
        self.get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }
}

impl HeaderSource for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderSource for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl HeaderSource for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl HeaderSource for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Lets a slice reference (`&&[(&str, &str)]`) stand in for `&dyn HeaderSource`.
impl<T: HeaderSource + ?Sized> HeaderSource for &T {
    fn header(&self, name: &str) -> Option<&str> {
        (**self).header(name)
    }
}

/// The header value, trimmed; empty counts as absent.
pub(super) fn required<'h>(
    headers: &'h dyn HeaderSource,
    name: &'static str,
) -> Result<&'h str, VerifyError> {
    headers
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(VerifyError::Missing(name))
}

/// A 32-byte MAC sent as `prefix` + `encoding`; a different prefix is a version this code does
/// not know, so it is refused rather than stripped.
pub(super) fn prefixed(
    headers: &dyn HeaderSource,
    name: &'static str,
    prefix: &str,
    encoding: Encoding,
) -> Result<[u8; 32], VerifyError> {
    let value = required(headers, name)?;
    let sig = value
        .strip_prefix(prefix)
        .ok_or(VerifyError::Malformed("signature lacks its version prefix"))?;
    decode_32(sig, encoding)
}

/// Config names a header the HTTP layer could never deliver would fail every request; refuse
/// them at startup instead.
pub(super) fn check_header_name(option: &str, name: &str) -> Result<(), SchemeError> {
    warp::http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| SchemeError::Invalid(format!("{option} `{name}` is not a valid header name")))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn header_map_lookup_is_case_insensitive_and_rejects_non_text() {
        use warp::http::{HeaderMap, HeaderValue};
        let v = verifier(SchemeName::Slack, &SignatureOptions::default(), &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        let mut map = HeaderMap::new();
        for (k, val) in &signed.headers {
            let name =
                warp::http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap();
            map.insert(name, HeaderValue::from_str(val).unwrap());
        }
        assert_eq!(
            map.header("X-SLACK-SIGNATURE"),
            Some(signed.headers[0].1.as_str())
        );
        let req = sw_request(&map, BODY);
        assert_eq!(code(v.verify(&req, now())), "ok");

        map.insert(
            "x-slack-signature",
            HeaderValue::from_bytes(b"v0=\xff\xfe").unwrap(),
        );
        assert_eq!(map.header("x-slack-signature"), None);
        let req = sw_request(&map, BODY);
        assert_eq!(code(v.verify(&req, now())), "signature_missing");
    }
}
