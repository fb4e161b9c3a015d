//! Signed timestamps: how each scheme writes them and the tolerance window they must fall in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::headers::{required, HeaderSource};
use super::VerifyError;

/// What a scheme's timestamp counts; one constant per scheme serves both parsing and signing.
#[derive(Clone, Copy)]
pub(super) enum Unit {
    Secs,
    Millis,
}

impl Unit {
    /// Digits only: `u64::from_str` would also take a leading `+`, which no vendor sends.
    pub(super) fn parse(self, value: &str, what: &'static str) -> Result<Duration, VerifyError> {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::Malformed(what));
        }
        let n: u64 = value.parse().map_err(|_| VerifyError::Malformed(what))?;
        Ok(match self {
            Unit::Secs => Duration::from_secs(n),
            Unit::Millis => Duration::from_millis(n),
        })
    }

    /// The header text `parse` reads back; it is also what gets signed.
    pub(super) fn format(self, since_epoch: Duration) -> String {
        match self {
            Unit::Secs => since_epoch.as_secs().to_string(),
            Unit::Millis => since_epoch.as_millis().to_string(),
        }
    }

    /// Header `name` as sent (the signed text) and as a time.
    pub(super) fn read<'h>(
        self,
        headers: &'h dyn HeaderSource,
        name: &'static str,
        what: &'static str,
    ) -> Result<(&'h str, Duration), VerifyError> {
        let text = required(headers, name)?;
        Ok((text, self.parse(text, what)?))
    }
}

/// Both bounds are inclusive.
pub(super) fn check_window(
    at: Duration,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    // A clock before 1970 makes every timestamp "future": refusing is the safe outcome.
    let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    match now.checked_sub(at) {
        Some(age) if age > tolerance => Err(VerifyError::Stale { age, tolerance }),
        Some(_) => Ok(()),
        None => {
            let ahead = at - now;
            if ahead > tolerance {
                Err(VerifyError::Future { ahead, tolerance })
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn stale_error_message_is_readable() {
        let v = verifier(SchemeName::Slack, &SignatureOptions::default(), &[SECRET]);
        let signed = sign_at(&v, BODY, now() - Duration::from_secs(400));
        let err = verify_signed(&v, &signed, now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature timestamp is 400s old, beyond the 300s tolerance"
        );
    }
}
