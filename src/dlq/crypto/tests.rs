use super::*;
use std::collections::HashMap;

const AAD: &[u8] = b"LEADS:12";

fn ring(keys: &[(&str, u8)]) -> KeyRing {
    KeyRing::from_keys(keys.iter().map(|(id, b)| (id.to_string(), [*b; 32]))).unwrap()
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn cfg(toml_text: &str) -> DlqCryptoConfig {
    #[derive(Deserialize)]
    struct Top {
        dlq: DlqCryptoConfig,
    }
    toml::from_str::<Top>(toml_text).unwrap().dlq
}

// 32 bytes 0x00..0x1f in both encodings.
const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const B64_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn round_trip() {
    let r = ring(&[("k1", 7)]);
    let plain = br#"{"schema":"lead.v1","fields":{"email":"ada@example.com"}}"#;
    let s = r.seal(plain, AAD);
    assert_eq!(s.key_id, "k1");
    assert!(s.bytes.starts_with(b"LRD1"));
    assert!(is_sealed(&s.bytes));
    assert!(!s.bytes.windows(7).any(|w| w == b"example"));
    assert_eq!(s.bytes.len(), 4 + 1 + 2 + 24 + plain.len() + 16);
    assert_eq!(r.open("k1", &s.bytes, AAD).unwrap(), plain.to_vec());
    assert_eq!(sealed_key_id(&s.bytes).unwrap(), "k1");
    // Empty plaintext is fine too.
    let e = r.seal(b"", AAD);
    assert_eq!(r.open("k1", &e.bytes, AAD).unwrap(), Vec::<u8>::new());
}

#[test]
fn nonces_are_fresh() {
    let r = ring(&[("k1", 7)]);
    let a = r.seal(b"same", AAD);
    let b = r.seal(b"same", AAD);
    assert_ne!(a.bytes, b.bytes);
}

#[test]
fn rotation_new_seals_old_still_opens() {
    let old = ring(&[("k2025", 1)]);
    let rotated = ring(&[("k2026a", 2), ("k2025", 1)]);
    assert_eq!(rotated.active_key_id(), "k2026a");
    assert_eq!(rotated.key_ids().collect::<Vec<_>>(), ["k2026a", "k2025"]);

    let before = old.seal(b"old entry", AAD);
    assert_eq!(
        rotated.open("k2025", &before.bytes, AAD).unwrap(),
        b"old entry"
    );

    let after = rotated.seal(b"new entry", AAD);
    assert_eq!(after.key_id, "k2026a");
    assert_eq!(sealed_key_id(&after.bytes).unwrap(), "k2026a");
    assert_eq!(
        rotated.open("k2026a", &after.bytes, AAD).unwrap(),
        b"new entry"
    );
    // The old-only ring cannot read what the new key sealed.
    assert_eq!(
        old.open("k2026a", &after.bytes, AAD).unwrap_err(),
        CryptoError::UnknownKey {
            key_id: "k2026a".into()
        }
    );
}

#[test]
fn wrong_key_with_same_id_is_an_auth_error() {
    let s = ring(&[("k1", 1)]).seal(b"x", AAD);
    let err = ring(&[("k1", 2)]).open("k1", &s.bytes, AAD).unwrap_err();
    assert_eq!(
        err,
        CryptoError::Auth {
            key_id: "k1".into()
        }
    );
    assert!(err.to_string().contains("wrong key or tampered entry"));
}

#[test]
fn unknown_key_id_says_what_to_do() {
    let s = ring(&[("k2024", 1)]).seal(b"x", AAD);
    let err = ring(&[("k2026a", 2)])
        .open("k2024", &s.bytes, AAD)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "DLQ entry sealed with key `k2024` which is not configured: add it to [dlq] keys to read it"
    );
}

#[test]
fn header_and_payload_key_ids_must_agree() {
    let r = ring(&[("k1", 1), ("k2", 2)]);
    let s = r.seal(b"x", AAD);
    let err = r.open("k2", &s.bytes, AAD).unwrap_err();
    assert_eq!(
        err,
        CryptoError::KeyIdMismatch {
            header: "k2".into(),
            embedded: "k1".into()
        }
    );
    // A hostile header value is shown escaped.
    let err = r.open("k\n1", &s.bytes, AAD).unwrap_err();
    assert!(err.to_string().contains("k\\n1"), "{err}");
}

#[test]
fn every_flipped_bit_is_rejected() {
    let r = ring(&[("k1", 1)]);
    let s = r.seal(b"payload with some length", AAD);
    for i in 0..s.bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = s.bytes.clone();
            t[i] ^= bit;
            assert!(r.open("k1", &t, AAD).is_err(), "flip at {i} accepted");
        }
    }
    // A byte in the ciphertext body: authentication, not format.
    let mut t = s.bytes.clone();
    let last = t.len() - 20;
    t[last] ^= 1;
    assert_eq!(
        r.open("k1", &t, AAD).unwrap_err(),
        CryptoError::Auth {
            key_id: "k1".into()
        }
    );
}

#[test]
fn aad_binds_the_entry_id() {
    let r = ring(&[("k1", 1)]);
    let s = r.seal(b"lead of entry 12", b"LEADS:12");
    assert_eq!(
        r.open("k1", &s.bytes, b"LEADS:13").unwrap_err(),
        CryptoError::Auth {
            key_id: "k1".into()
        }
    );
    assert_eq!(
        r.open("k1", &s.bytes, b"LEADS:1").unwrap_err(),
        CryptoError::Auth {
            key_id: "k1".into()
        }
    );
    assert!(r.open("k1", &s.bytes, b"LEADS:12").is_ok());
}

#[test]
fn malformed_payloads_are_format_errors() {
    let r = ring(&[("k1", 1)]);
    let s = r.seal(b"x", AAD);
    let is_format = |b: &[u8]| matches!(r.open("k1", b, AAD), Err(CryptoError::Format(_)));
    assert!(is_format(b""));
    assert!(is_format(br#"{"schema":"lead.v1"}"#));
    assert!(is_format(b"LRD"));
    assert!(is_format(b"LRD2\x02k1"));
    assert!(is_format(b"LRD1"));
    assert!(is_format(b"LRD1\x00"));
    assert!(is_format(b"LRD1\x21"));
    assert!(is_format(&s.bytes[..7 + 24 + 15]));
    let mut bad_id = s.bytes.clone();
    bad_id[5] = b'/';
    assert!(is_format(&bad_id));
    assert!(!is_sealed(br#"{"a":1}"#));
    let err = r.open("k1", b"LRD9xxxx", AAD).unwrap_err();
    assert!(err.to_string().contains("version '9'"), "{err}");
}

#[test]
fn key_material_parses_from_base64_and_hex() {
    let expected: [u8; 32] = std::array::from_fn(|i| i as u8);
    assert_eq!(parse_key_material(HEX_KEY).unwrap(), expected);
    assert_eq!(
        parse_key_material(&HEX_KEY.to_uppercase()).unwrap(),
        expected
    );
    assert_eq!(parse_key_material(B64_KEY).unwrap(), expected);
    assert_eq!(
        parse_key_material(B64_KEY.trim_end_matches('=')).unwrap(),
        expected
    );
    assert_eq!(
        parse_key_material(&format!("  {B64_KEY}\n")).unwrap(),
        expected
    );
}

#[test]
fn bad_key_material_is_named_without_quoting_it() {
    let short_b64 = "AAECAwQFBgcICQoLDA0ODw=="; // 16 bytes
    let short_hex = &HEX_KEY[..62];
    let long_b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 48]);
    for (material, needle) in [
        (short_b64, "decodes to 16 bytes"),
        (short_hex, "decodes to"),
        (long_b64.as_str(), "decodes to 48 bytes"),
        ("not a key!", "neither hex nor base64"),
        ("   ", "is not set"),
    ] {
        let c = cfg(r#"dlq.keys = [{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }]"#);
        let env = env_of(&[("LEADROUTER_DLQ_KEY", material)]);
        let err = KeyRing::from_config(&c, &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`k2026a`"), "{text}");
        assert!(text.contains("env var LEADROUTER_DLQ_KEY"), "{text}");
        assert!(text.contains(needle), "{text}");
        if !material.trim().is_empty() {
            assert!(!text.contains(material), "material leaked: {text}");
        }
    }
}

#[test]
fn config_builds_the_ring_in_order_from_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("dlq_old");
    std::fs::write(&old, format!("{HEX_KEY}\n")).unwrap();
    let c = cfg(&format!(
        r#"
        [dlq]
        keys = [
          {{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }},
          {{ id = "k2025", file = "{}" }},
        ]"#,
        old.display()
    ));
    let env = env_of(&[(
        "LEADROUTER_DLQ_KEY",
        &base64::engine::general_purpose::STANDARD.encode([5u8; 32]),
    )]);
    let r = KeyRing::from_config(&c, &env).unwrap();
    assert_eq!(r.key_ids().collect::<Vec<_>>(), ["k2026a", "k2025"]);
    // The file key is the one from the file: a ring built from raw bytes opens its output.
    let from_file =
        KeyRing::from_keys([("k2025".to_string(), std::array::from_fn(|i| i as u8))]).unwrap();
    let s = from_file.seal(b"x", AAD);
    assert_eq!(r.open("k2025", &s.bytes, AAD).unwrap(), b"x");
    assert!(r.contains("k2025") && !r.contains("k2024"));
    // Debug output names ids, never bytes.
    let dbg = format!("{r:?}");
    assert!(dbg.contains("k2026a") && !dbg.contains("[5, 5"), "{dbg}");
}

#[test]
fn missing_sources_are_named() {
    let c = cfg(r#"dlq.keys = [{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }]"#);
    let err = KeyRing::from_config(&c, &env_of(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "[dlq] key `k2026a`: env var LEADROUTER_DLQ_KEY is not set"
    );
    let c = cfg(r#"dlq.keys = [{ id = "k2025", file = "/nonexistent/dlq_old" }]"#);
    let err = KeyRing::from_config(&c, &env_of(&[])).unwrap_err();
    assert!(
        err.to_string()
            .contains("`k2025`: file /nonexistent/dlq_old (it does not exist)"),
        "{err}"
    );
}

#[test]
fn an_unreadable_key_file_keeps_its_io_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory opens but cannot be read.
    let c = cfg(&format!(
        r#"dlq.keys = [{{ id = "k1", file = "{}" }}]"#,
        dir.path().display()
    ));
    let err = KeyRing::from_config(&c, &env_of(&[])).unwrap_err();
    assert!(matches!(err, KeyError::Read { .. }), "{err:?}");
    assert!(err
        .to_string()
        .ends_with(&format!("cannot read file {}", dir.path().display())));
    let text = crate::error_chain::chain(&err);
    assert!(
        text.len() > err.to_string().len() + 2,
        "the cause follows: {text}"
    );
}

#[test]
fn key_ids_are_validated() {
    for bad in ["", "has space", "a/b", "ключ", &"x".repeat(33)] {
        let c = DlqCryptoConfig {
            keys: vec![DlqKeyConfig {
                id: bad.to_string(),
                env: Some("X".into()),
                file: None,
            }],
        };
        assert!(
            matches!(c.validate(), Err(KeyError::BadId { .. })),
            "{bad:?} accepted"
        );
    }
    for good in ["k2026a", "local", "prod.2026-01_a", &"x".repeat(32)] {
        assert!(valid_key_id(good), "{good:?} refused");
    }
    let dup = cfg(r#"dlq.keys = [{ id = "k1", env = "A" }, { id = "k1", env = "B" }]"#);
    assert_eq!(
        dup.validate().unwrap_err().to_string(),
        "[dlq] keys: key id `k1` is listed more than once"
    );
    let both = cfg(r#"dlq.keys = [{ id = "k1", env = "A", file = "/x" }]"#);
    assert!(matches!(both.validate(), Err(KeyError::Source { .. })));
    let neither = cfg(r#"dlq.keys = [{ id = "k1" }]"#);
    assert!(matches!(neither.validate(), Err(KeyError::Source { .. })));
    assert!(matches!(
        KeyRing::from_keys([("k".to_string(), [0; 32]), ("k".to_string(), [1; 32])]),
        Err(KeyError::DuplicateId { .. })
    ));
    assert!(matches!(
        KeyRing::from_keys(Vec::new()),
        Err(KeyError::NoKeys)
    ));
}

#[test]
fn config_rejects_unknown_keys() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Top {
        dlq: DlqCryptoConfig,
    }
    assert!(toml::from_str::<Top>("[dlq]\nkey = []").is_err());
    assert!(toml::from_str::<Top>(r#"dlq.keys = [{ id = "a", envv = "X" }]"#).is_err());
    assert_eq!(cfg("[dlq]"), DlqCryptoConfig::default());
}

#[cfg(unix)]
#[test]
fn local_key_is_created_once_with_mode_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let none = DlqCryptoConfig::default();

    let first = KeyRing::load_or_create(&none, &data, &env_of(&[])).unwrap();
    assert!(first.created_local_key);
    assert_eq!(first.ring.active_key_id(), LOCAL_KEY_ID);
    let warning = first.warning.clone().unwrap();
    assert!(warning.contains("generated local key at"), "{warning}");
    assert!(warning.contains("dlq.key"), "{warning}");
    assert!(
        warning.contains("configure [dlq] keys for production"),
        "{warning}"
    );
    assert!(!warning.contains("chmod"), "{warning}");

    let path = data.join(LOCAL_KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let content = std::fs::read_to_string(&path).unwrap();
    assert_eq!(content.trim().len(), 44, "base64 of 32 bytes");
    // No temp files left behind.
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);

    let s = first.ring.seal(b"kept across restarts", AAD);
    let second = KeyRing::load_or_create(&none, &data, &env_of(&[])).unwrap();
    assert!(!second.created_local_key);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    assert_eq!(
        second.ring.open(LOCAL_KEY_ID, &s.bytes, AAD).unwrap(),
        b"kept across restarts"
    );

    // A loosened file still works but the warning says to fix it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let third = KeyRing::load_or_create(&none, &data, &env_of(&[])).unwrap();
    assert!(third.warning.unwrap().contains("chmod 600"));
}

#[test]
fn configured_keys_win_over_the_local_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(r#"dlq.keys = [{ id = "k2026a", env = "LEADROUTER_DLQ_KEY" }]"#);
    let env = env_of(&[("LEADROUTER_DLQ_KEY", B64_KEY)]);
    let loaded = KeyRing::load_or_create(&c, dir.path(), &env).unwrap();
    assert_eq!(loaded.ring.active_key_id(), "k2026a");
    assert!(loaded.warning.is_none());
    assert!(!dir.path().join(LOCAL_KEY_FILE).exists());
    // A configured key that is missing is fatal, not a silent fallback to a local key.
    assert!(KeyRing::load_or_create(&c, dir.path(), &env_of(&[])).is_err());
}

#[test]
fn a_corrupt_local_key_file_is_an_error_not_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LOCAL_KEY_FILE), "garbage\n").unwrap();
    let err =
        KeyRing::load_or_create(&DlqCryptoConfig::default(), dir.path(), &env_of(&[])).unwrap_err();
    assert!(err.to_string().contains("`local`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(LOCAL_KEY_FILE)).unwrap(),
        "garbage\n"
    );
}
