//! MAC encodings on the wire. Signatures are decoded to bytes and compared as bytes, never as
//! text, which makes hex case-insensitive and base64 padding optional.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use super::{Encoding, VerifyError};

/// Padding is not part of what a signature proves, so a sender that strips `=` still verifies.
pub(super) const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) fn decode_32(value: &str, encoding: Encoding) -> Result<[u8; 32], VerifyError> {
    match encoding {
        Encoding::Hex => decode_hex_32(value),
        Encoding::Base64 => decode_base64_32(value),
    }
}

/// Decoding (rather than comparing text) makes hex case-insensitive.
pub(super) fn decode_hex_32(value: &str) -> Result<[u8; 32], VerifyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| VerifyError::Malformed("signature is not 64 hex digits"))?;
    Ok(out)
}

pub(super) fn decode_base64_32(value: &str) -> Result<[u8; 32], VerifyError> {
    let mut buf = [0u8; 48];
    match BASE64_LENIENT.decode_slice(value, &mut buf) {
        Ok(32) => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&buf[..32]);
            Ok(out)
        }
        _ => Err(VerifyError::Malformed(
            "signature is not base64 of a 32-byte MAC",
        )),
    }
}

pub(super) fn encode(mac: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Hex => hex::encode(mac),
        Encoding::Base64 => STANDARD.encode(mac),
    }
}
