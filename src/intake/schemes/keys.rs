//! A sender's live secrets and the constant-time comparisons against them.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{Scheme, SchemeError, VerifyError};

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Bounds the work an unauthenticated request can cause; vendors send one signature per live
/// secret, which in practice is one or two.
pub(super) const MAX_OFFERED: usize = 8;

#[derive(Clone)]
pub(super) struct Secret {
    raw: String,
    /// Pre-keyed so each verification clones instead of re-deriving the HMAC key block.
    mac: HmacSha256,
    /// Tokens are compared as digests so the comparison time does not depend on their length.
    digest: [u8; 32],
}

impl Secret {
    /// The secret as configured; only the token scheme sends it as it is.
    pub(super) fn raw(&self) -> &str {
        &self.raw
    }

    /// The MAC, under this secret, of what `feed` writes.
    pub(super) fn mac(&self, feed: impl FnOnce(&mut HmacSha256)) -> [u8; 32] {
        let mut mac = self.mac.clone();
        feed(&mut mac);
        mac.finalize().into_bytes().into()
    }
}

/// Live secrets in configured order: the first signs, all verify.
#[derive(Clone)]
pub(super) struct Keys(Vec<Secret>);

impl Keys {
    pub(super) fn prepare(secrets: Vec<String>, scheme: &dyn Scheme) -> Result<Self, SchemeError> {
        let mut keys = Vec::with_capacity(secrets.len());
        for (index, raw) in secrets.into_iter().enumerate() {
            let which = index + 1;
            if raw.is_empty() {
                // An empty key would make the MAC (or token) forgeable by anyone.
                return Err(SchemeError::Invalid(format!("secret #{which} is empty")));
            }
            let key = scheme.hmac_key(&raw, which)?;
            if key.is_empty() {
                return Err(SchemeError::Invalid(format!(
                    "secret #{which} decodes to an empty key"
                )));
            }
            let mac = HmacSha256::new_from_slice(&key).map_err(|_| {
                SchemeError::Invalid(format!("secret #{which} is not a usable HMAC key"))
            })?;
            let digest = Sha256::digest(raw.as_bytes()).into();
            keys.push(Secret { raw, mac, digest });
        }
        Ok(Keys(keys))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn first(&self) -> Option<&Secret> {
        self.0.first()
    }

    /// Passes if any live secret's MAC equals any offered signature. Every pair is compared, so
    /// timing does not reveal which secret matched.
    pub(super) fn check_mac(
        &self,
        offered: &[[u8; 32]],
        feed: impl Fn(&mut HmacSha256),
    ) -> Result<(), VerifyError> {
        let mut matched = Choice::from(0);
        for secret in &self.0 {
            let expected = secret.mac(&feed);
            for sig in offered {
                matched |= expected.as_slice().ct_eq(sig);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    /// Passes if `offered` equals any live secret, comparing digests so that neither the
    /// secrets' lengths nor the position of a first difference shows in the timing.
    pub(super) fn check_token(&self, offered: &[u8]) -> Result<(), VerifyError> {
        let digest = Sha256::digest(offered);
        let mut matched = Choice::from(0);
        for secret in &self.0 {
            matched |= digest.as_slice().ct_eq(&secret.digest);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// Signatures offered by one request, kept on the stack.
pub(super) struct Offered {
    sigs: [[u8; 32]; MAX_OFFERED],
    len: usize,
}

impl Offered {
    pub(super) fn new() -> Self {
        Offered {
            sigs: [[0; 32]; MAX_OFFERED],
            len: 0,
        }
    }

    pub(super) fn push(&mut self, sig: [u8; 32]) -> Result<(), VerifyError> {
        let slot = self
            .sigs
            .get_mut(self.len)
            .ok_or(VerifyError::Malformed("too many signatures offered"))?;
        *slot = sig;
        self.len += 1;
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn as_slice(&self) -> &[[u8; 32]] {
        &self.sigs[..self.len]
    }
}
