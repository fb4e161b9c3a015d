//! Micro-benchmarks of the functions every lead goes through: signature verification per
//! scheme, the idempotency key, schema validation, and the masks (DLQ preview, log lines).
//!
//! `cargo bench --bench hot_paths` (criterion; HTML report under target/criterion/).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leadrouter::devtools::harness::{sender_signer, RouterConfig, SenderSpec};
use leadrouter::intake::envelope::{email_hash, idempotency_key};
use leadrouter::intake::schemes::{Request, SignInput};
use leadrouter::pii::{mask_text, preview};
use leadrouter::pipeline::schema::SchemaRegistry;
use leadrouter::telemetry::logs::mask_json_lines;
use serde_json::{json, Map, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One sender per scheme, with the `[senders.signature]` option a scheme needs.
const SCHEMES: &[(&str, Option<(&str, &str)>)] = &[
    ("standard-webhooks", None),
    ("stripe", None),
    ("hmac-sha256", None),
    ("typeform", None),
    ("hubspot-v3", Some(("url", "https://hooks.example.com"))),
    ("slack", None),
    ("calendly", None),
    ("webflow", None),
    ("linkedin", None),
    ("token", Some(("name", "x-token"))),
];

fn lead() -> Map<String, Value> {
    json!({
        "email": "Grace.Hopper@Example.COM",
        "first_name": "Grace",
        "last_name": "Hopper",
        "phone": "+44 20 7946 0958",
        "company": "Eckert-Mauchly",
        "ip": "81.2.69.142",
        "utm_source": "google",
        "notes": "call me after 6pm on 07700 900123"
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn verify(c: &mut Criterion) {
    let env: HashMap<String, String> = HashMap::from([("BENCH_SECRET".into(), SECRET.into())]);
    let body = serde_json::to_vec(&Value::Object(lead())).unwrap_or_default();
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for (scheme, option) in SCHEMES {
        let mut sender = SenderSpec::new("s", *scheme)
            .secret_env("BENCH_SECRET")
            .field("email", "$.email");
        if let Some((key, value)) = option {
            sender = sender.signature(*key, *value);
        }
        let cfg = match RouterConfig::new()
            .sender(sender)
            .parse(Path::new("bench.toml"), &env)
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("verify/{scheme}: skipped, config: {e}");
                continue;
            }
        };
        let verifier = match sender_signer(&cfg, "s", &env) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("verify/{scheme}: skipped, verifier: {e}");
                continue;
            }
        };
        let now = SystemTime::now();
        let url = "https://hooks.example.com/v1/intake/s";
        // The signature's raw parts, not an HTTP request: `verify` is measured on the parts.
        let signed = match verifier.sign(&SignInput {
            body: &body,
            now,
            event_id: "evt_bench_1",
            method: "POST",
            url,
        }) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("verify/{scheme}: skipped, sign: {e}");
                continue;
            }
        };
        let body = signed.body.clone().unwrap_or_else(|| body.clone());
        let doc: Option<Value> = serde_json::from_slice(&body).ok();
        let path = match &signed.query {
            Some(q) => format!("/v1/intake/s?{q}"),
            None => "/v1/intake/s".to_string(),
        };
        let headers = signed.headers.clone();
        let req = Request {
            method: "POST",
            path_and_query: &path,
            host: Some("hooks.example.com"),
            headers: &headers,
            query: signed.query.as_deref(),
            body: &body,
            body_doc: doc.as_ref(),
        };
        if let Err(e) = verifier.verify(&req, now) {
            eprintln!("verify/{scheme}: skipped, does not verify its own signature: {e}");
            continue;
        }
        g.bench_function(*scheme, |b| {
            b.iter(|| black_box(verifier.verify(black_box(&req), now)).is_ok())
        });
    }
    g.finish();
}

fn keys_and_schema(c: &mut Criterion) {
    let fields = lead();
    c.bench_function("idempotency_key (email hash + key)", |b| {
        b.iter(|| {
            let h = email_hash(black_box(&fields));
            idempotency_key("demo", black_box("evt_bench_1"), &h)
        })
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    if let Ok(schemas) = SchemaRegistry::load(&dir) {
        let doc = Value::Object(fields.clone());
        c.bench_function("schema validate lead.v1", |b| {
            b.iter(|| schemas.validate("lead.v1", black_box(&doc)).is_ok())
        });
    }
}

fn masks(c: &mut Criterion) {
    let fields = lead();
    c.bench_function("dlq preview (8 fields)", |b| {
        b.iter(|| preview(black_box(&fields)))
    });
    let error = "crm 422: {\"email\":\"Grace.Hopper@Example.COM\",\"phone\":\"+44 20 7946 0958\"} from 81.2.69.142";
    c.bench_function("mask_text (last error, 90 bytes)", |b| {
        b.iter(|| mask_text(black_box(error)))
    });
    let line = r#"{"timestamp":"2026-11-24T22:00:40.891510Z","level":"INFO","stage":"sink","sink":"crm","outcome":"ok","duration_ms":5.2,"span":{"name":"handle","key":"lr_e9205a734e807f9513bda673ba5a1672","sender":"demo","seq":1234567,"attempt":1,"replay":false},"target":"leadrouter::pipeline::handler"}"#;
    let mut g = c.benchmark_group("log mask");
    g.throughput(Throughput::Bytes(line.len() as u64));
    g.bench_function("mask_json_lines (one stage event)", |b| {
        b.iter(|| mask_json_lines(black_box(line)))
    });
    g.finish();
}

criterion_group!(benches, verify, keys_and_schema, masks);
criterion_main!(benches);
