use super::*;
use serde_json::json;
use std::path::PathBuf;

fn fixture_db() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/geoip/GeoLite2-City-Test.mmdb")
}

fn plain() -> Enricher {
    Enricher::new(&EnrichConfig::default()).unwrap()
}

fn with_geoip() -> Enricher {
    Enricher::new(&EnrichConfig {
        default_region: None,
        geoip_db: Some(fixture_db()),
    })
    .unwrap()
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn phone_of(e: &Enricher, raw: Value) -> (Map<String, Value>, EnrichReport) {
    let mut f = fields(json!({ "phone": raw }));
    let report = e.enrich(&mut f);
    (f, report)
}

#[test]
fn enricher_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Enricher>();
}

#[test]
fn email_is_trimmed_and_lowercased() {
    let mut f = fields(json!({"email": "  Grace.Hopper@Example.COM "}));
    let r = plain().enrich(&mut f);
    assert_eq!(f["email"], "grace.hopper@example.com");
    assert_eq!(r.flags, vec![flags::EMAIL_NORMALIZED]);

    let mut f = fields(json!({"email": "ada@example.com"}));
    assert!(plain().enrich(&mut f).flags.is_empty());
    assert_eq!(f["email"], "ada@example.com");
}

#[test]
fn invalid_email_is_kept_and_flagged() {
    for raw in [
        json!("not-an-email"),
        json!("a@b"),
        json!("a b@example.com"),
        json!(42),
    ] {
        let mut f = fields(json!({ "email": raw.clone() }));
        let r = plain().enrich(&mut f);
        assert!(r.has(flags::EMAIL_INVALID), "{raw}: {r:?}");
        assert!(f.contains_key("email"));
    }
    let mut f = fields(json!({"email": " NOPE "}));
    let r = plain().enrich(&mut f);
    assert_eq!(f["email"], "nope");
    assert_eq!(r.flags, vec![flags::EMAIL_NORMALIZED, flags::EMAIL_INVALID]);
}

#[test]
fn phone_with_own_country_code_ignores_default_region() {
    let (f, r) = phone_of(&plain(), json!("+44 20 7946 0958"));
    assert_eq!(f["phone"], "+442079460958");
    assert_eq!(f["phone_raw"], "+44 20 7946 0958");
    assert_eq!(r.flags, vec![flags::PHONE_E164]);
}

#[test]
fn national_phone_uses_default_region() {
    let (f, r) = phone_of(&plain(), json!("(757) 555-0142"));
    assert_eq!(f["phone"], "+17575550142");
    assert_eq!(f["phone_raw"], "(757) 555-0142");
    assert_eq!(r.flags, vec![flags::PHONE_E164]);

    let (f, _) = phone_of(&plain(), json!("757-555-0199"));
    assert_eq!(f["phone"], "+17575550199");

    // The same national digits mean something else with another default region.
    let gb = Enricher::new(&EnrichConfig {
        default_region: Some("gb".into()),
        geoip_db: None,
    })
    .unwrap();
    let (f, r) = phone_of(&gb, json!("020 7946 0958"));
    assert_eq!(f["phone"], "+442079460958");
    assert_eq!(r.flags, vec![flags::PHONE_E164]);
}

#[test]
fn e164_phone_is_unchanged_and_gets_no_raw_copy() {
    let (f, r) = phone_of(&plain(), json!("+16505550123"));
    assert_eq!(f["phone"], "+16505550123");
    assert!(!f.contains_key("phone_raw"));
    assert_eq!(r.flags, vec![flags::PHONE_E164]);
}

#[test]
fn garbage_phone_is_kept_raw_and_flagged() {
    for raw in [
        json!("call me maybe"),
        json!("12"),
        json!("555-0142"),
        json!(["x"]),
    ] {
        let (f, r) = phone_of(&plain(), raw.clone());
        assert_eq!(f["phone"], raw);
        assert!(!f.contains_key("phone_raw"));
        assert_eq!(r.flags, vec![flags::PHONE_UNPARSED], "{raw}");
    }
}

#[test]
fn parsable_but_invalid_phone_is_formatted_and_flagged_unverified() {
    // 555 is not a valid NANP area code, but 10 digits is a plausible +1 length.
    let (f, r) = phone_of(&plain(), json!("(555) 555-0100"));
    assert_eq!(f["phone"], "+15555550100");
    assert_eq!(f["phone_raw"], "(555) 555-0100");
    assert_eq!(r.flags, vec![flags::PHONE_UNVERIFIED]);
}

#[test]
fn numeric_phone_and_extension() {
    let (f, r) = phone_of(&plain(), json!(7575550142u64));
    assert_eq!(f["phone"], "+17575550142");
    assert_eq!(f["phone_raw"], 7575550142u64);
    assert_eq!(r.flags, vec![flags::PHONE_E164]);

    let (f, _) = phone_of(&plain(), json!("+1 212 555 0100 ext. 7"));
    assert_eq!(f["phone"], "+12125550100");
    assert_eq!(f["phone_extension"], "7");
    assert_eq!(f["phone_raw"], "+1 212 555 0100 ext. 7");
}

#[test]
fn enrichment_is_idempotent() {
    let e = with_geoip();
    let mut f = fields(json!({
        "email": " Ada@Example.com", "phone": "(757) 555-0142", "ip": "81.2.69.142",
        "utm_source": " Google "
    }));
    e.enrich(&mut f);
    let once = f.clone();
    e.enrich(&mut f);
    assert_eq!(f, once);
    assert_eq!(f["phone_raw"], "(757) 555-0142");
}

#[test]
fn utm_source_medium_campaign_are_normalized_term_content_kept() {
    let mut f = fields(json!({
        "utm_source": " Google ", "utm_medium": "CPC", "utm_campaign": "Spring_Promo",
        "utm_term": "Red Shoes", "utm_content": "Banner A"
    }));
    let r = plain().enrich(&mut f);
    assert_eq!(f["utm_source"], "google");
    assert_eq!(f["utm_medium"], "cpc");
    assert_eq!(f["utm_campaign"], "spring_promo");
    assert_eq!(f["utm_term"], "Red Shoes");
    assert_eq!(f["utm_content"], "Banner A");
    assert_eq!(r.flags, vec![flags::UTM_NORMALIZED]);
}

#[test]
fn geoip_hit_sets_city_and_country() {
    let e = with_geoip();
    assert!(e.has_geoip());
    for (ip, city, country, name) in [
        ("81.2.69.142", "London", "GB", "United Kingdom"),
        (" ::ffff:81.2.69.142 ", "London", "GB", "United Kingdom"),
        ("81.2.69.142:50123", "London", "GB", "United Kingdom"),
        ("2.125.160.216", "Boxford", "GB", "United Kingdom"),
        ("216.160.83.60", "Milton", "US", "United States"),
        ("2001:db8:1::5", "New York", "US", "United States"),
    ] {
        let mut f = fields(json!({ "ip": ip }));
        let r = e.enrich(&mut f);
        assert_eq!(r.flags, vec![flags::GEOIP_HIT], "{ip}");
        assert_eq!(f["geo_city"], city, "{ip}");
        assert_eq!(f["geo_country"], country, "{ip}");
        assert_eq!(f["geo_country_name"], name, "{ip}");
        assert_eq!(f["ip"], ip, "the ip itself is kept as sent");
    }
}

#[test]
fn geoip_country_only_record() {
    let mut f = fields(json!({"ip": "67.43.156.7"}));
    let r = with_geoip().enrich(&mut f);
    assert_eq!(r.flags, vec![flags::GEOIP_HIT]);
    assert_eq!(f["geo_country"], "BT");
    assert!(!f.contains_key("geo_city"));
}

#[test]
fn geoip_miss_and_invalid_ip() {
    let e = with_geoip();
    for ip in [
        "1.1.1.1",
        "10.0.0.1",
        "81.2.70.1",
        "2.125.160.224",
        "2001:db8:2::1",
    ] {
        let mut f = fields(json!({ "ip": ip }));
        let r = e.enrich(&mut f);
        assert_eq!(r.flags, vec![flags::GEOIP_MISS], "{ip}");
        assert!(!f.contains_key("geo_country"));
    }
    for ip in [json!("not an ip"), json!("999.1.1.1"), json!(""), json!(12)] {
        let mut f = fields(json!({ "ip": ip.clone() }));
        let r = e.enrich(&mut f);
        assert_eq!(r.flags, vec![flags::IP_INVALID], "{ip}");
        assert_eq!(f["ip"], ip);
    }
}

#[test]
fn no_geoip_db_means_no_geo_step() {
    let mut f = fields(json!({"ip": "81.2.69.142"}));
    let r = plain().enrich(&mut f);
    assert!(r.flags.is_empty());
    assert!(!f.contains_key("geo_city"));
    let mut f = fields(json!({"ip": "garbage"}));
    assert!(plain().enrich(&mut f).flags.is_empty());
}

#[test]
fn geoip_unavailable_on_a_corrupt_record() {
    // A tree that points at data the data section does not hold: every hit fails to decode.
    let mut bytes = std::fs::read(fixture_db()).unwrap();
    let node_count = 240usize; // see the fixture's metadata
    let data_start = node_count * 7 + 16;
    // Overwrite the first record's map control byte with an invalid extended type.
    bytes[data_start] = 0x00;
    bytes[data_start + 1] = 0xff;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.mmdb");
    std::fs::write(&path, bytes).unwrap();
    let e = Enricher::new(&EnrichConfig {
        default_region: None,
        geoip_db: Some(path),
    })
    .unwrap();
    let mut f = fields(json!({"ip": "81.2.69.142"}));
    let r = e.enrich(&mut f);
    assert_eq!(r.flags, vec![flags::GEOIP_UNAVAILABLE]);
    assert!(!f.contains_key("geo_city"));
}

#[test]
fn lead_with_all_fields() {
    let mut f = fields(json!({
        "email": "Mary.Jackson@Example.org ", "first_name": "Mary", "last_name": "Jackson",
        "full_name": "Mary Jackson", "phone": "757-555-0199", "company": "NACA",
        "postal_code": "23681", "ip": "81.2.69.142", "utm_source": "Facebook",
        "utm_medium": "paid_social", "utm_campaign": "spring", "utm_term": "Term",
        "utm_content": "Ad 1", "gclid": "Cj0KCQ"
    }));
    let r = with_geoip().enrich(&mut f);
    assert_eq!(
        r.flags,
        vec![
            flags::EMAIL_NORMALIZED,
            flags::PHONE_E164,
            flags::GEOIP_HIT,
            flags::UTM_NORMALIZED
        ]
    );
    assert_eq!(f["email"], "mary.jackson@example.org");
    assert_eq!(f["phone"], "+17575550199");
    assert_eq!(f["phone_raw"], "757-555-0199");
    assert_eq!(f["geo_city"], "London");
    assert_eq!(f["geo_country"], "GB");
    assert_eq!(f["utm_source"], "facebook");
    for untouched in [
        "first_name",
        "last_name",
        "full_name",
        "company",
        "postal_code",
        "gclid",
    ] {
        assert!(f.contains_key(untouched), "{untouched}");
    }
    assert_eq!(f["utm_term"], "Term");
    assert_eq!(f["gclid"], "Cj0KCQ");
}

#[test]
fn lead_with_nothing_enrichable() {
    let mut f = fields(json!({"first_name": "Ada", "company_size": 42}));
    let before = f.clone();
    let r = with_geoip().enrich(&mut f);
    assert!(r.flags.is_empty());
    assert_eq!(f, before);
    let mut empty = Map::new();
    assert!(with_geoip().enrich(&mut empty).flags.is_empty());
    assert!(empty.is_empty());
}

#[test]
fn missing_geoip_db_names_the_key() {
    let err = Enricher::new(&EnrichConfig {
        default_region: None,
        geoip_db: Some(PathBuf::from("/nonexistent/GeoLite2-City.mmdb")),
    })
    .err()
    .expect("setup error");
    assert_eq!(err.key, "geoip_db");
    let text = err.to_string();
    assert!(text.starts_with("config key `enrich.geoip_db`: "), "{text}");
    assert!(text.contains("/nonexistent/GeoLite2-City.mmdb"), "{text}");
    // The I/O error is the source, not a copy of its text.
    let io = err
        .source
        .as_deref()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("io source");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn non_mmdb_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mmdb");
    std::fs::write(&path, b"not a database").unwrap();
    let err = Enricher::new(&EnrichConfig {
        default_region: None,
        geoip_db: Some(path),
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("enrich.geoip_db"), "{err}");
}

#[test]
fn unknown_region_names_the_key() {
    for region in ["XX", "USA", ""] {
        let err = Enricher::new(&EnrichConfig {
            default_region: Some(region.into()),
            geoip_db: None,
        })
        .err()
        .unwrap();
        assert_eq!(err.key, "default_region", "{region}");
    }
}

#[test]
fn fixture_database_matches_its_readme() {
    // Read with the crate directly: the committed file must stay what the tests assume.
    let reader = maxminddb::Reader::open_readfile(fixture_db()).unwrap();
    reader.verify().unwrap();
    assert_eq!(reader.metadata().database_type, "GeoLite2-City");
    assert_eq!(reader.metadata().ip_version, 6);
    assert_eq!(reader.metadata().node_count, 240);
    let city = |ip: &str| {
        let found = reader.lookup(ip.parse().unwrap()).unwrap();
        found
            .decode::<maxminddb::geoip2::City<'_>>()
            .unwrap()
            .map(|c| {
                (
                    c.city.names.english.map(str::to_owned),
                    c.country.iso_code.map(str::to_owned),
                )
            })
    };
    assert_eq!(
        city("81.2.69.1"),
        Some((Some("London".into()), Some("GB".into())))
    );
    assert_eq!(
        city("2.125.160.217"),
        Some((Some("Boxford".into()), Some("GB".into())))
    );
    assert_eq!(
        city("216.160.83.63"),
        Some((Some("Milton".into()), Some("US".into())))
    );
    assert_eq!(city("67.43.156.0"), Some((None, Some("BT".into()))));
    assert_eq!(
        city("2001:db8:1:ffff::1"),
        Some((Some("New York".into()), Some("US".into())))
    );
    assert_eq!(city("1.1.1.1"), None);
    assert_eq!(city("216.160.83.64"), None);
}
