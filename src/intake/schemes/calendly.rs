//! Calendly: Stripe's `t=<unix seconds>,v1=<hex>` over `{t}.{body}`, in its own header. The
//! signed content is Stripe's, defined once in [`super::stripe`].

use super::stripe::TimestampedV1;

pub(super) const CALENDLY: TimestampedV1 = TimestampedV1 {
    header: "Calendly-Webhook-Signature",
};

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn calendly_format() {
        let o = SignatureOptions::default;
        let calendly = sign_at(
            &verifier(SchemeName::Calendly, &o(), &[SECRET]),
            BODY,
            now(),
        );
        assert!(calendly.headers[0].1.starts_with("t=1700000000,v1="));
    }
}
