use super::*;
use serde_json::json;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn one(name: &str, value: Value) -> String {
    let mut m = Map::new();
    m.insert(name.to_string(), value);
    let lines = preview(&m);
    assert_eq!(lines.len(), 1);
    lines[0]
        .strip_prefix(&format!("{name}: "))
        .unwrap_or(&lines[0])
        .to_string()
}

#[test]
fn emails() {
    assert_eq!(one("email", json!("jane.doe@example.com")), "j***@e***.com");
    assert_eq!(
        one("work_email", json!("Grace.Hopper@Example.COM ")),
        "g***@e***.com"
    );
    assert_eq!(one("email", json!("x@mail.example.co.uk")), "x***@m***.uk");
    assert_eq!(one("email", json!("grace@example")), "g***@e***");
    assert_eq!(
        one("email", json!("Grace Hopper")),
        "[not an email, 12 chars]"
    );
    // By shape, whatever the field is called.
    assert_eq!(
        one("referrer", json!("jane.doe@example.com")),
        "j***@e***.com"
    );
    assert_eq!(
        one("whatever", json!("katherine.johnson@example.com")),
        "k***@e***.com"
    );
}

#[test]
fn phones() {
    assert_eq!(one("phone", json!("+1 650 555 4567")), "+1 *** *** 4567");
    assert_eq!(one("phone", json!("+442079460958")), "+44 *** *** 0958");
    assert_eq!(one("phone", json!("+44 20 7946 0958")), "+44 *** *** 0958");
    assert_eq!(one("phone", json!("(757) 555-0142")), "*** *** 0142");
    assert_eq!(one("phone", json!("+16505550123")), "+1 *** *** 0123");
    assert_eq!(
        one("phone_number", json!("+353 1 234 5678")),
        "+353 *** *** 5678"
    );
    assert_eq!(one("mobile", json!(16505550123u64)), "*** *** 0123");
    assert_eq!(
        one("phone", json!("12345")),
        "[not a phone number, 5 chars]"
    );
    // Too short to keep the country code and still hide 3 digits.
    assert_eq!(one("phone", json!("+3531234")), "*** *** 1234");
    // By shape.
    assert_eq!(one("ref", json!("+44 20 7946 0958")), "+44 *** *** 0958");
    assert_eq!(one("Phone", json!("757-555-0199")), "*** *** 0199");
}

#[test]
fn names_become_initials() {
    assert_eq!(one("full_name", json!("Grace Hopper")), "G. H.");
    assert_eq!(one("first_name", json!("Ada")), "A.");
    assert_eq!(one("name", json!("katherine  johnson")), "K. J.");
    assert_eq!(one("contact", json!("Mary Jackson")), "M. J.");
    assert_eq!(one("First Name", json!("Dorothy")), "D.");
    assert_eq!(one("name", json!("A B C D E F")), "A. B. C. D. …");
    // Markup is skipped to the first letter or digit; nothing left means no initial.
    assert_eq!(one("name", json!("<script>alert(1)</script>")), "S.");
    assert_eq!(one("name", json!("\"Ada\" (Lovelace)")), "A. L.");
    assert_eq!(one("name", json!("<> !!")), "[no letters]");
    assert_eq!(one("last_name", json!("Éowyn")), "É.");
}

#[test]
fn ip_addresses() {
    assert_eq!(one("ip", json!("81.2.69.142")), "81.2.x.x");
    assert_eq!(one("ip_address", json!("81.2.69.142")), "81.2.x.x");
    assert_eq!(
        one("client_ip", json!("2001:db8:85a3::8a2e:370:7334")),
        "2001:db8:x:x:x:x:x:x"
    );
    assert_eq!(one("ip", json!("::ffff:81.2.69.142")), "81.2.x.x");
    assert_eq!(one("ip", json!("nope")), "[not an IP address, 4 chars]");
    // By shape.
    assert_eq!(one("origin", json!("81.2.69.142")), "81.2.x.x");
}

#[test]
fn free_text_is_summarized() {
    let notes = "My personal mobile is 07700 900123, call after 6pm";
    assert_eq!(one("notes", json!(notes)), "[text, 50 chars]");
    assert_eq!(one("message", json!("ok")), "[text, 2 chars]");
    assert_eq!(one("street_address", json!("1 Main St")), "[text, 9 chars]");
    assert_eq!(one("Anything else?", json!("hi")), "hi");
    // Unknown strings: long ones summarized, short ones shown.
    assert_eq!(
        one(
            "favourite_colour",
            json!("a fairly long answer to a question")
        ),
        "[text, 34 chars]"
    );
    assert_eq!(one("Company Size", json!("51-200")), "51-200");
    assert_eq!(one("page_name", json!("Spring Promo")), "Spring Promo");
}

#[test]
fn business_geo_campaign_fields() {
    assert_eq!(one("company", json!("Eckert-Mauchly")), "Eckert-Mauchly");
    assert_eq!(one("country", json!("GB")), "GB");
    assert_eq!(one("city", json!("London")), "London");
    assert_eq!(one("utm_campaign", json!("q4-demo")), "q4-demo");
    assert_eq!(one("postal_code", json!("23666")), "23***");
    assert_eq!(one("zip", json!(23666)), "23***");
    assert_eq!(one("postcode", json!("SW1A 1AA")), "SW***");
    assert_eq!(one("postal_code", json!("AB")), "A***");
    assert_eq!(one("gclid", json!("Cj0KCQiA")), "Cj0K…");
    assert_eq!(one("gcl_id", json!("TeSter-123-gclid")), "TeSt…");
    assert_eq!(
        one("google_key", json!("configured-shared-key")),
        "[hidden]"
    );
    assert_eq!(one("date_of_birth", json!("1906-12-09")), "[hidden]");
    // PII inside a shown field is still masked.
    assert_eq!(
        one("company", json!("Acme, ask jane@acme.io")),
        "Acme, ask j***@a***.io"
    );
}

#[test]
fn non_string_values() {
    assert_eq!(one("lead_score", json!(87)), "87");
    assert_eq!(one("form_id", json!(40000000000u64)), "40000000000");
    assert_eq!(one("utm_id", json!(12)), "12");
    assert_eq!(one("age", json!(42)), "[number]");
    assert_eq!(one("customer_number", json!(123456)), "[number]");
    assert_eq!(one("email", json!(5)), "[number]");
    assert_eq!(one("is_test", json!(true)), "true");
    assert_eq!(one("company", json!(null)), "null");
    assert_eq!(one("tags", json!(["a", "b"])), "[list, 2 items]");
    assert_eq!(one("extra", json!({"a": 1})), "[object, 1 key]");
    assert_eq!(one("tags", json!([])), "[list, 0 items]");
    // Unbounce wraps each value in a one-element list.
    assert_eq!(
        one("email", json!(["mary.jackson@example.org"])),
        "m***@e***.org"
    );
    assert_eq!(one("first_name", json!(["Mary"])), "M.");
    assert_eq!(one("email", json!("")), "(empty)");
}

#[test]
fn order_is_stable_and_useful() {
    let lines = preview(&obj(json!({
        "zeta": "z",
        "utm_campaign": "q4",
        "utm_source": "google",
        "city": "London",
        "country": "GB",
        "company": "Acme",
        "phone": "+44 20 7946 0958",
        "last_name": "Hopper",
        "first_name": "Grace",
        "email": "grace@example.com",
        "alpha": "a",
    })));
    assert_eq!(
        lines,
        [
            "email: g***@e***.com",
            "first_name: G.",
            "last_name: H.",
            "phone: +44 *** *** 0958",
            "company: Acme",
            "country: GB",
            "city: London",
            "utm_source: google",
            "utm_campaign: q4",
            "(2 more fields)",
        ]
    );
}

#[test]
fn line_counts() {
    let mut big = Map::new();
    for i in 0..20 {
        big.insert(format!("field_{i:02}"), json!(i));
    }
    let lines = preview(&big);
    assert_eq!(lines.len(), MAX_FIELD_LINES);
    assert_eq!(lines[9], "(11 more fields)");
    assert_eq!(lines[0], "field_00: [number]");

    let ten: Map<String, Value> = (0..10).map(|i| (format!("f{i}"), json!("v"))).collect();
    assert_eq!(preview(&ten).len(), 10);
    assert!(preview(&ten).iter().all(|l| !l.contains("more fields")));

    let two = obj(json!({"email": "ada@example.com", "first_name": "Ada"}));
    let lines = preview(&two);
    assert_eq!(lines, ["email: a***@e***.com", "first_name: A."]);
    assert!(preview(&Map::new()).is_empty());

    let padded = with_context(
        lines,
        &[
            ("sender", "demo"),
            ("schema", "lead.v1"),
            ("received_at", "2026-11-24T20:01:02.345Z"),
            ("unused", "x"),
        ],
    );
    assert_eq!(
        padded,
        [
            "sender: demo",
            "schema: lead.v1",
            "received_at: 2026-11-24T20:01:02.345Z",
            "email: a***@e***.com",
            "first_name: A.",
        ]
    );
    let full = with_context(preview(&ten), &[("sender", "demo")]);
    assert_eq!(full.len(), 10);
}

#[test]
fn control_characters_are_stripped_and_lines_capped() {
    assert_eq!(
        one("company", json!("Ac\u{7}me\u{202E}\u{200B} Inc")),
        "Acme Inc"
    );
    assert_eq!(one("first_name", json!("Grace\nHopper")), "G. H.");
    let mut m = Map::new();
    m.insert("comp\u{1b}any".into(), json!("x".repeat(200)));
    let lines = preview(&m);
    assert_eq!(lines[0].chars().count(), MAX_LINE_CHARS);
    assert!(lines[0].starts_with("company: xxx"), "{}", lines[0]);
    assert!(lines[0].ends_with('…'));
    assert!(lines.iter().all(|l| !l.chars().any(char::is_control)));
    // Markup is left for the renderer to escape.
    assert_eq!(one("utm_content", json!("<b>x</b>")), "<b>x</b>");
}

#[test]
fn mask_text_examples() {
    assert_eq!(
        mask_text("My personal mobile is 07700 900123, call after 6pm"),
        "My personal mobile is *** *** 0123, call after 6pm"
    );
    assert_eq!(
        mask_text(r#"crm 422: {"email":"Grace.Hopper@Example.COM","phone":"+44 20 7946 0958"}"#),
        r#"crm 422: {"email":"g***@e***.com","phone":"+44 *** *** 0958"}"#
    );
    assert_eq!(
        mask_text("\"jane.doe@example.com\" is not a \"email\""),
        "\"j***@e***.com\" is not a \"email\""
    );
    assert_eq!(
        mask_text("mail jane@x.io. Or (757) 555-0142 / +1-650-555-4567."),
        "mail j***@x***.io. Or *** *** 0142 / +1 *** *** 4567."
    );
    assert_eq!(
        mask_text("from 81.2.69.142:443 and [2001:db8:85a3::8a2e:370:7334]"),
        "from 81.2.x.x:443 and [2001:db8:x:x:x:x:x:x]"
    );
    assert_eq!(mask_text("card 4111 1111 1111 1111"), "card [16 digits]");
    assert_eq!(
        mask_text("listening on 127.0.0.1:8080 and 0.0.0.0:9091"),
        "listening on 127.0.0.1:8080 and 0.0.0.0:9091"
    );
    assert_eq!(
        mask_text("ip=10.1.2.3, 1 2.3.4.5"),
        "ip=10.1.x.x, 1 2.3.x.x"
    );
}

#[test]
fn mask_text_leaves_ids_dates_and_small_numbers() {
    for keep in [
        "HTTP 503 after 3 attempts, retry in 2000 ms",
        "received_at 2026-11-20T14:03:27Z, due 20/11/2026, on 2026.11.20",
        "key lr_9f2c0123456789abcdef0123456789ab seq 12345",
        "page_uuid a1b2c3d4-0000-4000-8000-000000000001",
        "token a3a12ec67a1365927098a606107fac15",
        "nats-server 2.15.1, TeSter-123-gclid, v1.2.3.4",
        "id 6321ca84df3949bfc6752327 at 14:03:27",
        "user@host without tld, a@b, @ alone, trailing @",
        "",
        "ünïcödé … 🙂 text",
    ] {
        assert_eq!(mask_text(keep), keep);
    }
}

#[test]
fn mask_text_is_linear_on_hostile_input() {
    let n = 200_000;
    for unit in [
        "a@", "1 ", "1.", "::", "@a.", "+(", "a.b@c", "9-", "f:", "1.2.3.4.", "x@y.zz ",
    ] {
        let s = unit.repeat(n / unit.len());
        // A quadratic scan would make this test take minutes rather than fail outright;
        // timings themselves belong in benches.
        let out = mask_text(&s);
        assert!(!out.is_empty(), "{unit:?}");
    }
}

/// The vendor fixtures' PII never survives in clear.
#[test]
fn vendor_fixture_pii_never_appears_in_clear() {
    let typeform: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/vendors/typeform.json")).unwrap();
    let answers = typeform["form_response"]["answers"].as_array().unwrap();
    let answer = |r: &str| -> Value {
        let a = answers.iter().find(|a| a["field"]["ref"] == r).unwrap();
        let t = a["type"].as_str().unwrap();
        a[t].clone()
    };
    let google: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/vendors/google-ads-lead-form.json"
    ))
    .unwrap();
    let column = |id: &str| -> Value {
        google["user_column_data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["column_id"] == id)
            .unwrap()["string_value"]
            .clone()
    };
    let form: Vec<(String, String)> =
        serde_urlencoded::from_str(include_str!("../../tests/fixtures/vendors/unbounce.form"))
            .unwrap();
    let data = &form.iter().find(|(k, _)| k == "data.json").unwrap().1;
    let unbounce: Map<String, Value> = serde_json::from_str(data).unwrap();
    let webflow: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/vendors/webflow-form-submission.json"
    ))
    .unwrap();

    let leads = [
        obj(json!({
            "first_name": answer("first_name"),
            "last_name": answer("last_name"),
            "email": answer("work_email"),
            "phone": answer("phone"),
            "company": answer("company"),
            "notes": answer("notes"),
            // The same values under names that say nothing: masked by shape.
            "x1": answer("work_email"),
            "x2": answer("phone"),
            "utm_source": typeform["form_response"]["hidden"]["utm_source"],
            "gclid": typeform["form_response"]["hidden"]["gclid"],
        })),
        obj(json!({
            "full_name": column("FULL_NAME"),
            "phone": column("PHONE_NUMBER"),
            "email": column("EMAIL"),
            "postal_code": column("POSTAL_CODE"),
            "gclid": google["gcl_id"],
            "form_id": google["form_id"],
        })),
        unbounce,
        webflow["payload"]["data"].as_object().unwrap().clone(),
    ];
    let secrets = [
        "Grace.Hopper@Example.COM",
        "grace.hopper@example.com",
        "Grace",
        "Hopper",
        "+44 20 7946 0958",
        "7946",
        "07700 900123",
        "900123",
        "Katherine",
        "Johnson",
        "katherine.johnson",
        "6505550123",
        "Mary",
        "Jackson",
        "mary.jackson",
        "757-555-0199",
        "81.2.69.142",
        "69.142",
        "Dorothy",
        "Vaughan",
        "dorothy@",
        "555-0142",
        "23666",
    ];
    let mut all = Vec::new();
    for lead in &leads {
        let lines = preview(lead);
        assert!(lines.len() <= MAX_FIELD_LINES);
        all.extend(lines);
        // The whole lead serialized, as it might appear in an error message.
        all.push(mask_text(&Value::Object(lead.clone()).to_string()));
    }
    for raw in [
        include_str!("../../tests/fixtures/vendors/typeform.json"),
        include_str!("../../tests/fixtures/vendors/webflow-form-submission.json"),
    ] {
        all.push(mask_text(raw));
    }
    all.push(mask_text(
        "validation failed: \"Grace.Hopper@Example.COM \" at /email; notes: My personal \
         mobile is 07700 900123; phone +44 20 7946 0958; from 81.2.69.142",
    ));
    let text = all.join("\n");
    for s in secrets {
        // Names only appear in previews (mask_text cannot see names in prose), so check
        // names against preview lines and everything else against all output.
        // A bare postal code in prose is indistinguishable from any other short number,
        // so it too is only promised masked in preview lines.
        let preview_only = s.chars().all(char::is_alphabetic) || s == "23666";
        let haystack = if preview_only {
            all.iter()
                .filter(|l| !l.starts_with('{') && !l.starts_with('"'))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text.clone()
        };
        assert!(
            !haystack.to_lowercase().contains(&s.to_lowercase()),
            "{s:?} in clear:\n{haystack}"
        );
    }
    // And the masked forms are there.
    assert!(text.contains("g***@e***.com"));
    assert!(text.contains("+44 *** *** 0958"));
    assert!(text.contains("*** *** 0123"));
    assert!(text.contains("81.2.x.x"));
    assert!(text.contains("K. J."));
}
