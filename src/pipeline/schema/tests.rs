use super::*;
use serde_json::json;
use std::fs::File;
use std::io::Write;

fn shipped() -> SchemaRegistry {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    SchemaRegistry::load(&dir).expect("shipped schemas load")
}

fn write_schema(path: &Path, body: &Value, mtime: SystemTime) {
    let mut f = File::create(path).unwrap();
    f.write_all(body.to_string().as_bytes()).unwrap();
    // Set explicitly: two writes within one second can share an mtime on coarse filesystems.
    f.set_modified(mtime).unwrap();
}

fn invalid_errors(result: Result<(), SchemaError>) -> Vec<String> {
    match result {
        Err(SchemaError::Invalid { errors, .. }) => errors,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn registry_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SchemaRegistry>();
}

#[test]
fn shipped_lead_v1_accepts_a_full_lead() {
    let reg = shipped();
    assert!(reg.contains("lead.v1"));
    let fields = json!({
        "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
        "full_name": "Ada Lovelace", "phone": "(757) 555-0142", "company": "Analytical Engines",
        "postal_code": "98354", "ip": "81.2.69.142", "utm_source": "Google",
        "utm_medium": "cpc", "utm_campaign": "Spring", "utm_term": "x", "utm_content": "y",
        "gclid": "abc", "company_size": 42, "accepts_marketing": "subscribed"
    });
    reg.validate("lead.v1", &fields).unwrap();
    // Only email is required; unknown fields are allowed.
    reg.validate(
        "lead.v1",
        &json!({"email": "a@example.org", "favourite": true}),
    )
    .unwrap();
}

#[test]
fn phone_is_never_rejected_for_its_shape() {
    let reg = shipped();
    for phone in [
        json!("call me maybe"),
        json!("+44 20 7946 0958"),
        json!(7575550142u64),
    ] {
        reg.validate(
            "lead.v1",
            &json!({"email": "a@example.org", "phone": phone}),
        )
        .unwrap();
    }
}

#[test]
fn missing_email_names_the_path() {
    let errors = invalid_errors(shipped().validate("lead.v1", &json!({"first_name": "Ada"})));
    assert_eq!(errors, vec!["/email: required".to_string()]);
}

#[test]
fn bad_email_format_fails_without_echoing_the_value() {
    let result = shipped().validate("lead.v1", &json!({"email": "secret-not-an-email"}));
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("lead does not match lead.v1: "), "{text}");
    let SchemaError::Invalid { schema, errors } = err else {
        panic!("expected Invalid");
    };
    assert_eq!(schema, "lead.v1");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("/email: format: "), "{errors:?}");
    assert!(!text.contains("secret"), "value leaked: {text}");
}

#[test]
fn wrong_type_and_length_are_reported_masked() {
    let long = "x".repeat(600);
    let errors = invalid_errors(shipped().validate(
        "lead.v1",
        &json!({"email": "a@example.org", "first_name": 5, "utm_source": long}),
    ));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("/first_name: type: ")));
    assert!(errors
        .iter()
        .any(|e| e.starts_with("/utm_source: maxLength: ")));
    assert!(errors.iter().all(|e| !e.contains("xxx")), "{errors:?}");
}

#[test]
fn errors_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let props: serde_json::Map<String, Value> = (0..15)
        .map(|i| (format!("f{i}"), json!({"type": "string"})))
        .collect();
    write_schema(
        &dir.path().join("many.json"),
        &json!({"properties": props}),
        SystemTime::now(),
    );
    let reg = SchemaRegistry::load(dir.path()).unwrap();
    let doc: serde_json::Map<String, Value> =
        (0..15).map(|i| (format!("f{i}"), json!(i))).collect();
    let errors = invalid_errors(reg.validate("many", &Value::Object(doc)));
    assert_eq!(errors.len(), MAX_REPORTED_ERRORS + 1);
    assert_eq!(errors[MAX_REPORTED_ERRORS], "... and 5 more");
}

#[test]
fn unknown_schema() {
    let err = shipped()
        .validate("lead.v9", &json!({"email": "a@example.org"}))
        .unwrap_err();
    assert!(
        matches!(err, SchemaError::Unknown(ref n) if n == "lead.v9"),
        "{err:?}"
    );
}

#[test]
fn invalid_names_are_rejected() {
    let reg = shipped();
    for name in [
        "../x",
        "..",
        ".hidden",
        "Lead.v1",
        "lead/v1",
        "",
        "lead v1",
        "lead.v1\0",
    ] {
        let err = reg.validate(name, &json!({})).unwrap_err();
        assert!(matches!(err, SchemaError::Unknown(_)), "{name:?}: {err:?}");
    }
    assert!(is_valid_schema_name("lead.v1"));
    assert!(is_valid_schema_name("crm-lead_v2.1"));
    assert!(!is_valid_schema_name(&"a".repeat(MAX_SCHEMA_NAME_LEN + 1)));
}

#[test]
fn broken_file_fails_load_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_schema(&dir.path().join("good.json"), &json!({}), SystemTime::now());
    fs::write(dir.path().join("bad.json"), "{ not json").unwrap();
    fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let err = SchemaRegistry::load(dir.path()).err().expect("load fails");
    let text = err.to_string();
    assert!(
        text.contains("bad.json") && text.contains("not JSON: key must be a string"),
        "{text}"
    );
    // The parse error itself is kept, typed, not only its text.
    let SchemaError::Load(problems) = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(&problems[..], [LoadProblem::Json { path, .. }] if path.ends_with("bad.json")),
        "{problems:?}"
    );
    assert!(std::error::Error::source(&problems[0]).is_some());

    fs::write(dir.path().join("bad.json"), r#"{"type": "no-such-type"}"#).unwrap();
    let text = SchemaRegistry::load(dir.path()).err().unwrap().to_string();
    assert!(
        text.contains("bad.json") && text.contains("invalid schema"),
        "{text}"
    );
}

#[test]
fn bad_file_name_and_missing_dir_fail_load() {
    let dir = tempfile::tempdir().unwrap();
    write_schema(
        &dir.path().join("Lead.V1.json"),
        &json!({}),
        SystemTime::now(),
    );
    let text = SchemaRegistry::load(dir.path()).err().unwrap().to_string();
    assert!(text.contains("Lead.V1.json"), "{text}");

    let text = SchemaRegistry::load(&dir.path().join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(text.contains("nope"), "{text}");
}

#[test]
fn hidden_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".#lead.v1.json"), "garbage").unwrap();
    write_schema(
        &dir.path().join("lead.v1.json"),
        &json!({}),
        SystemTime::now(),
    );
    let reg = SchemaRegistry::load(dir.path()).unwrap();
    assert_eq!(reg.names(), vec!["lead.v1".to_string()]);
}

#[test]
fn hot_reload_picks_up_a_fixed_file_without_a_new_registry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hot.v1.json");
    let t0 = SystemTime::now() - Duration::from_secs(60);
    write_schema(&path, &json!({"type": "object", "required": ["x"]}), t0);
    let reg = SchemaRegistry::load(dir.path()).unwrap();
    reg.set_check_interval(Duration::ZERO);
    let doc = json!({"email": "a@example.org"});
    assert_eq!(
        invalid_errors(reg.validate("hot.v1", &doc)),
        vec!["/x: required"]
    );

    // The hot fix.
    write_schema(
        &path,
        &json!({"type": "object"}),
        t0 + Duration::from_secs(1),
    );
    reg.validate("hot.v1", &doc).unwrap();

    // A broken edit keeps the last good version.
    fs::write(&path, "{ broken").unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(t0 + Duration::from_secs(2))
        .unwrap();
    reg.validate("hot.v1", &doc).unwrap();
    let err = reg.reload().unwrap_err();
    assert!(err.to_string().contains("hot.v1.json"), "{err}");
    reg.validate("hot.v1", &doc).unwrap();

    // A new file appears and is usable at once.
    write_schema(
        &dir.path().join("new.v1.json"),
        &json!({"required": ["y"]}),
        t0,
    );
    assert_eq!(
        invalid_errors(reg.validate("new.v1", &doc)),
        vec!["/y: required"]
    );

    // Deleting a file keeps its compiled version.
    fs::remove_file(dir.path().join("new.v1.json")).unwrap();
    assert!(reg.validate("new.v1", &doc).is_err());
    assert!(reg.contains("new.v1"));
}

#[test]
fn changes_wait_for_the_check_interval_and_reload_forces_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.json");
    let t0 = SystemTime::now() - Duration::from_secs(60);
    write_schema(&path, &json!({"required": ["x"]}), t0);
    let reg = SchemaRegistry::load(dir.path()).unwrap();
    reg.set_check_interval(Duration::from_secs(3600));
    let doc = json!({});
    write_schema(&path, &json!({}), t0 + Duration::from_secs(1));
    assert!(
        reg.validate("slow", &doc).is_err(),
        "checked before the interval"
    );
    reg.reload().unwrap();
    reg.validate("slow", &doc).unwrap();
}

#[test]
fn draft_2020_12_formats_are_asserted_even_without_schema_keyword() {
    let dir = tempfile::tempdir().unwrap();
    write_schema(
        &dir.path().join("f.json"),
        &json!({"properties": {"email": {"format": "email"}}}),
        SystemTime::now(),
    );
    let reg = SchemaRegistry::load(dir.path()).unwrap();
    assert!(reg.validate("f", &json!({"email": "nope"})).is_err());
    reg.validate("f", &json!({"email": "a@example.org"}))
        .unwrap();
}

#[test]
fn required_property_with_slash_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    write_schema(
        &dir.path().join("s.json"),
        &json!({"properties": {"a": {"required": ["b/c"]}}}),
        SystemTime::now(),
    );
    let reg = SchemaRegistry::load(dir.path()).unwrap();
    let errors = invalid_errors(reg.validate("s", &json!({"a": {}})));
    assert_eq!(errors, vec!["/a/b~1c: required"]);
}
