//! A shared secret sent as it is, in a header, a query parameter or a body field, for vendors
//! that sign nothing and hand out a shared key instead. Nothing binds the token to the
//! body, so it only proves the sender knows the secret.

use std::borrow::Cow;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use super::headers::check_header_name;
use super::keys::{Keys, Secret};
use super::{
    Request, Scheme, SchemeError, SignInput, SignatureOptions, Signed, TokenLocation, VerifyError,
};

const DEFAULT_HEADER: &str = "X-Webhook-Token";

/// Where the token travels, and under which name; both `verify` and `sign` read it from here.
pub(super) enum Token {
    Header(String),
    Query(String),
    /// A top-level key, or a JSON pointer when it starts with `/`.
    Body(String),
}

impl Token {
    pub(super) fn from_options(opts: &SignatureOptions) -> Result<Self, SchemeError> {
        let name = opts.name.clone().filter(|n| !n.is_empty());
        Ok(match opts.location.unwrap_or(TokenLocation::Header) {
            TokenLocation::Header => {
                let name = name.unwrap_or_else(|| DEFAULT_HEADER.to_string());
                check_header_name("signature.name", &name)?;
                Token::Header(name)
            }
            TokenLocation::Query => Token::Query(name.ok_or_else(|| {
                SchemeError::Invalid(
                    "signature.name is required for token location query (the parameter name)"
                        .into(),
                )
            })?),
            TokenLocation::Body => Token::Body(name.ok_or_else(|| {
                SchemeError::Invalid(
                    "signature.name is required for token location body (a key or JSON pointer)"
                        .into(),
                )
            })?),
        })
    }

    /// What an absent token is reported as.
    fn missing(&self) -> VerifyError {
        VerifyError::MissingNamed(match self {
            Token::Header(name) => name.clone(),
            Token::Query(name) => format!("query parameter `{name}`"),
            Token::Body(name) => format!("token field `{name}`"),
        })
    }
}

impl Scheme for Token {
    fn needs_body_doc(&self) -> bool {
        matches!(self, Token::Body(_))
    }

    fn verify(&self, keys: &Keys, req: &Request<'_>) -> Result<Option<Duration>, VerifyError> {
        let offered: Cow<'_, [u8]> = match self {
            Token::Header(name) => Cow::Borrowed(
                req.headers
                    .header(name)
                    .map(str::trim)
                    .unwrap_or("")
                    .as_bytes(),
            ),
            Token::Query(name) => {
                query_param(req.query.unwrap_or(""), name)?.unwrap_or(Cow::Borrowed(b""))
            }
            Token::Body(name) => {
                let doc = req.body_doc.ok_or_else(|| {
                    VerifyError::MissingNamed(format!("token field `{name}` (body was not parsed)"))
                })?;
                let value = if name.starts_with('/') {
                    doc.pointer(name)
                } else {
                    doc.get(name.as_str())
                };
                match value {
                    None | Some(Value::Null) => Cow::Borrowed(&b""[..]),
                    Some(Value::String(s)) => Cow::Borrowed(s.as_bytes()),
                    Some(_) => return Err(VerifyError::Malformed("token field is not a string")),
                }
            }
        };
        if offered.is_empty() {
            return Err(self.missing());
        }
        keys.check_token(&offered)?;
        Ok(None)
    }

    fn sign(
        &self,
        key: &Secret,
        input: &SignInput<'_>,
        _since_epoch: Duration,
    ) -> Result<Signed, SchemeError> {
        let mut signed = Signed {
            headers: Vec::new(),
            query: None,
            body: None,
        };
        match self {
            Token::Header(name) => {
                signed.headers = vec![(name.clone(), key.raw().to_string())];
            }
            Token::Query(name) => {
                let query = serde_urlencoded::to_string([(name.as_str(), key.raw())])
                    .map_err(SchemeError::TokenQuery)?;
                signed.query = Some(query);
            }
            Token::Body(name) => {
                let mut doc: Value = serde_json::from_slice(input.body).map_err(|_| {
                    SchemeError::Invalid("token in body needs a JSON object body".into())
                })?;
                insert_token(&mut doc, name, Value::String(key.raw().to_string()))?;
                let body = serde_json::to_vec(&doc).map_err(SchemeError::TokenBody)?;
                signed.body = Some(body);
            }
        }
        Ok(signed)
    }
}

/// The decoded value of query parameter `name`; repeated occurrences are refused because the
/// HTTP layer and this check might otherwise disagree about which one counts.
fn query_param<'q>(query: &'q str, name: &str) -> Result<Option<Cow<'q, [u8]>>, VerifyError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(key).as_ref() == name.as_bytes() {
            if found.is_some() {
                return Err(VerifyError::Malformed("token query parameter is repeated"));
            }
            found = Some(form_decode(value));
        }
    }
    Ok(found)
}

/// application/x-www-form-urlencoded decoding to bytes; invalid escapes stay literal, as
/// browsers and serde_urlencoded treat them. Not `form_urlencoded::parse`: it decodes to text,
/// replacing invalid UTF-8 with U+FFFD, so different tokens could decode alike. Borrows unless
/// something needs decoding.
fn form_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('+') {
        return percent_decode_str(s).into();
    }
    // `+` is a space; an encoded plus is `%2B`, which the percent decoding turns back into `+`.
    Cow::Owned(percent_decode_str(&s.replace('+', " ")).collect())
}

/// Puts the token where the verifier will look: a top-level key, or a JSON pointer whose
/// missing parent objects are created.
fn insert_token(doc: &mut Value, name: &str, token: Value) -> Result<(), SchemeError> {
    let not_object = || {
        SchemeError::Invalid(format!(
            "cannot place token at `{name}`: not inside a JSON object"
        ))
    };
    let Some(pointer) = name.strip_prefix('/') else {
        doc.as_object_mut()
            .ok_or_else(not_object)?
            .insert(name.to_string(), token);
        return Ok(());
    };
    let mut segments = pointer
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .peekable();
    let mut current = doc;
    while let Some(segment) = segments.next() {
        let object = current.as_object_mut().ok_or_else(not_object)?;
        if segments.peek().is_none() {
            object.insert(segment, token);
            return Ok(());
        }
        current = object
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn token_in_header() {
        let v = verifier(SchemeName::Token, &SignatureOptions::default(), &[SECRET]);
        let ok = [("x-webhook-token", SECRET)];
        assert_eq!(code(v.verify(&sw_request(&ok, BODY), now())), "ok");
        let bad = [("X-Webhook-Token", "s3cr3t-value-012345678")];
        assert_eq!(
            code(v.verify(&sw_request(&bad, BODY), now())),
            "signature_invalid"
        );
        let longer = [("X-Webhook-Token", "s3cr3t-value-0123456789x")];
        assert_eq!(
            code(v.verify(&sw_request(&longer, BODY), now())),
            "signature_invalid"
        );

        let opts = SignatureOptions {
            location: Some(TokenLocation::Header),
            name: Some("X-Unbounce-Key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        assert_eq!(
            signed.headers,
            vec![("X-Unbounce-Key".into(), SECRET.into())]
        );
        assert_eq!(
            code(v.verify(&sw_request(&ok, BODY), now())),
            "signature_missing"
        );
    }

    #[test]
    fn token_in_query() {
        let opts = SignatureOptions {
            location: Some(TokenLocation::Query),
            name: Some("token".into()),
            ..SignatureOptions::default()
        };
        let secret = "a b&c=d/é";
        let v = Verifier::new(SchemeName::Token, &opts, vec![secret.into()], TOL).unwrap();
        let signed = sign_at(&v, BODY, now());
        let query = signed.query.clone().unwrap();
        assert!(query.starts_with("token="), "{query}");
        assert!(!query.contains(' ') && !query.contains("&c"), "{query}");
        let none = Vec::new();
        let run = |q: &str| code(verify_with(&v, &none, Some(q), BODY, now()));
        assert_eq!(run(&query), "ok");
        assert_eq!(run(&format!("page=1&{query}&utm=x")), "ok");
        assert_eq!(run("token=a%20b%26c%3Dd%2F%C3%A9"), "ok");
        assert_eq!(run("tok%65n=a+b%26c%3dd/%c3%a9"), "ok");
        assert_eq!(run("token=a+b"), "signature_invalid");
        assert_eq!(run("token=%zz"), "signature_invalid");
        assert_eq!(run(&format!("{query}&{query}")), "signature_malformed");
        assert_eq!(run("other=1"), "signature_missing");
        assert_eq!(run("token="), "signature_missing");
        assert_eq!(run(""), "signature_missing");
    }

    #[test]
    fn token_in_body() {
        let opts = SignatureOptions {
            location: Some(TokenLocation::Body),
            name: Some("webhook_key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        assert!(v.needs_body_doc());
        let none = Vec::new();
        let run = |body: &str| code(verify_with(&v, &none, None, body.as_bytes(), now()));
        assert_eq!(run(&format!(r#"{{"a":1,"webhook_key":"{SECRET}"}}"#)), "ok");
        assert_eq!(run(r#"{"webhook_key":"nope"}"#), "signature_invalid");
        assert_eq!(run(r#"{"webhook_key":12}"#), "signature_malformed");
        assert_eq!(run(r#"{"webhook_key":null}"#), "signature_missing");
        assert_eq!(run(r#"{"other":"x"}"#), "signature_missing");
        assert_eq!(run("not json"), "signature_missing");

        let signed = sign_at(&v, BODY, now());
        let doc: Value = serde_json::from_slice(signed.body.as_deref().unwrap()).unwrap();
        assert_eq!(doc["webhook_key"], SECRET);
        assert_eq!(doc["email"], "ada@example.com");
        assert!(v
            .sign(&SignInput {
                body: b"[1,2]",
                now: now(),
                event_id: "",
                method: "POST",
                url: URL,
            })
            .is_err());

        // A JSON pointer reaches into nested objects, and signing creates the path.
        let opts = SignatureOptions {
            location: Some(TokenLocation::Body),
            name: Some("/auth/google~1key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        let signed = sign_at(&v, BODY, now());
        let doc: Value = serde_json::from_slice(signed.body.as_deref().unwrap()).unwrap();
        assert_eq!(doc["auth"]["google/key"], SECRET);
        assert_eq!(code(verify_signed(&v, &signed, now())), "ok");
        let flat = format!(r#"{{"auth/google/key":"{SECRET}"}}"#);
        assert_eq!(
            code(verify_with(&v, &none, None, flat.as_bytes(), now())),
            "signature_missing"
        );
    }

    #[test]
    fn token_form_body_as_json_object_of_strings() {
        let opts = SignatureOptions {
            location: Some(TokenLocation::Body),
            name: Some("google_key".into()),
            ..SignatureOptions::default()
        };
        let v = verifier(SchemeName::Token, &opts, &[SECRET]);
        let form = serde_json::json!({ "google_key": SECRET, "email": "a@b.c" });
        let none: Vec<(String, String)> = Vec::new();
        let req = Request {
            method: "POST",
            path_and_query: PATH,
            host: Some(HOST),
            headers: &none,
            query: None,
            body: b"google_key=...&email=a%40b.c",
            body_doc: Some(&form),
        };
        assert_eq!(code(v.verify(&req, now())), "ok");
    }

    #[test]
    fn wrong_token_is_invalid() {
        for (label, scheme, opts) in cases() {
            if scheme != SchemeName::Token {
                continue;
            }
            let v = verifier(scheme, &opts, &[SECRET]);
            let attacker = verifier(scheme, &opts, &["guessed"]);
            let signed = sign_at(&attacker, BODY, now());
            assert_eq!(
                code(verify_signed(&v, &signed, now())),
                "signature_invalid",
                "{label}"
            );
        }
    }

    #[test]
    fn form_decode_matches_form_urlencoding() {
        let cases: [(&str, &[u8]); 9] = [
            ("plain", b"plain"),
            ("a+b%2Bc", b"a b+c"),
            ("%41%6a", b"Aj"),
            ("%zz", b"%zz"),
            ("%2", b"%2"),
            ("%", b"%"),
            ("%%41", b"%A"),
            ("%2+", b"%2 "),
            ("%FF%fe", b"\xff\xfe"),
        ];
        for (input, expected) in cases {
            assert_eq!(form_decode(input).as_ref(), expected, "{input}");
        }
        assert!(matches!(form_decode("no-escapes"), Cow::Borrowed(_)));
    }
}
