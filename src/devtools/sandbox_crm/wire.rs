//! What every route shares at the HTTP edge: JSON answers (404s included), and decoding of
//! path segments, query strings and headers.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

pub(super) fn json_response(status: u16, v: &Value) -> Response {
    let mut resp = Response::new(v.to_string().into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn to_json<T: Serialize>(status: u16, v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => json_response(status, &v),
        Err(_) => json_response(500, &json!({"error": "encode"})),
    }
}

pub(super) fn not_found() -> Response {
    json_response(404, &json!({"error": "not_found"}))
}

pub(super) fn bad_request(msg: &str) -> Response {
    json_response(400, &json!({"error": "bad_request", "message": msg}))
}

/// Decodes `%XX` escapes of one path segment (keys are plain, but clients encode anyway).
pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub(super) fn header_map(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("lr_abc"), "lr_abc");
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("end%4"), "end%4");
        assert_eq!(percent_decode("%+1"), "%+1", "only hex digits after %");
    }

    #[test]
    fn query_params_are_form_decoded() {
        assert_eq!(query_param("scope=crm", "scope").as_deref(), Some("crm"));
        assert_eq!(
            query_param("x=1&scope=%61ll", "scope").as_deref(),
            Some("all")
        );
        assert_eq!(query_param("scope", "scope").as_deref(), Some(""));
        assert_eq!(query_param("", "scope"), None);
    }
}
