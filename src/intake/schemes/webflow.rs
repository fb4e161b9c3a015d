//! Webflow: `x-webflow-signature: <hex>` over `{timestamp}:{body}`, with the timestamp in unix
//! milliseconds in `x-webflow-timestamp`: Slack's shape ([`TimestampHeaderMac`]) without a
//! version.

use super::slack::TimestampHeaderMac;
use super::timestamp::Unit;

pub(super) const WEBFLOW: TimestampHeaderMac = TimestampHeaderMac {
    signature: "x-webflow-signature",
    prefix: "",
    timestamp: "x-webflow-timestamp",
    unit: Unit::Millis,
    version: b"",
    not_a_timestamp: "x-webflow-timestamp is not unix milliseconds",
};

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn webflow_format() {
        let o = SignatureOptions::default;
        let webflow = sign_at(&verifier(SchemeName::Webflow, &o(), &[SECRET]), BODY, now());
        assert_eq!(webflow.headers[1].1, "1700000000000");
    }
}
