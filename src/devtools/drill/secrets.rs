//! A run's random secrets: the vendor's signing secret, the routers' admin token and DLQ key.

use rand::Rng;

pub(super) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    hex::encode(b)
}

pub(super) fn base64_of(hex_text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_text).unwrap_or_default())
}
