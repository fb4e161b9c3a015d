//! The console's HTML pages and static assets, embedded in the binary (`assets/`): plain HTML,
//! one stylesheet, one script, no build step and nothing fetched from elsewhere.
//!
//! The pages carry no data: the script fetches it from `/api/...` and renders it with
//! `textContent` / `createElement` only, never as HTML. The assets themselves hold no data
//! and are served without a login (the login page needs the stylesheet); every page needs one.

use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::reply::Response;

use super::{error, Req};

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// HTML-escapes text for the one place the server puts text into HTML (the login message).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /assets/{name}`.
pub fn asset(req: &Req, name: &str) -> Response {
    if req.method != Method::GET && req.method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET");
    }
    let (ct, body) = match name {
        "console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
        "console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
        "icon.svg" => ("image/svg+xml", ICON_SVG),
        _ => return error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
    };
    text(StatusCode::OK, ct, body.to_string())
}

/// The login page, with a message when a login failed.
pub fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let notice = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape_html(m)))
        .unwrap_or_default();
    text(
        status,
        "text/html; charset=utf-8",
        LOGIN_HTML.replace("<!--error-->", &notice),
    )
}

/// The console itself (one page; the script renders the view the path names). The login check
/// in front of it is `auth::console_page`'s, so this module needs nothing from `auth`.
pub fn index() -> Response {
    text(
        StatusCode::OK,
        "text/html; charset=utf-8",
        INDEX_HTML.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<img src=x onerror=\"a('1')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;1&#39;)&quot;&gt;&amp;"
        );
    }

    fn has_inline_handler(s: &str) -> bool {
        s.match_indices(" on").any(|(i, _)| {
            let rest = &s[i + 3..];
            let n = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            n > 0 && rest[n..].starts_with('=')
        })
    }

    #[test]
    fn pages_have_no_inline_code() {
        assert!(has_inline_handler("<img onerror=x>"));
        assert!(!has_inline_handler("<p>based on data</p>"));
        for page in [INDEX_HTML, LOGIN_HTML] {
            let lower = page.to_lowercase();
            assert!(!lower.contains("<script>"), "inline script");
            assert!(!lower.contains("style="), "inline style");
            assert!(!lower.contains("<style"), "inline style");
            assert!(!has_inline_handler(&lower), "inline event handler");
        }
        assert!(!CONSOLE_JS.contains("innerHTML"), "render with textContent");
        assert!(!CONSOLE_JS.contains("insertAdjacentHTML"));
        assert!(!CONSOLE_JS.contains("document.write"));
    }
}
