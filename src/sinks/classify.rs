//! What an HTTP answer means for a lead, shared by the `http` and `segment` sinks: success,
//! a transient failure (retry, honouring `Retry-After`) or a permanent one (DLQ); and the
//! client and URL checks both sinks build on.

use std::time::{Duration, SystemTime};

use super::{class, SinkBuildError, SinkError};

/// Longest `Retry-After` we pass on: a misbehaving server must not park a lead for months.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses `Retry-After` as delay-seconds or an HTTP-date (IMF-fixdate, plus the obsolete
/// RFC 850 and asctime forms RFC 9110 still asks recipients to accept: `httpdate` reads all
/// three). A date in the past is zero. Capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: huge values saturate instead of failing.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn status_text(what: &str, status: reqwest::StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    if what.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
            .trim_end()
            .to_string()
    } else {
        format!("{what}: HTTP {} {reason}", status.as_u16())
            .trim_end()
            .to_string()
    }
}

/// What the remote said with a refusal, for the operator: the first bytes of the answer body on
/// one line, masked here at the source because the message is stored (idempotency record, DLQ)
/// and CRMs like to echo the record they refused.
pub(crate) fn body_excerpt(body: &[u8]) -> Option<String> {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX * 4)]);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if one_line.is_empty() {
        return None;
    }
    let masked = crate::pii::mask_text(&one_line);
    let mut out: String = masked.chars().take(MAX).collect();
    if masked.chars().count() > MAX {
        out.push('…');
    }
    Some(out)
}

impl SinkError {
    /// Appends the remote's own words (see [`body_excerpt`]) to the message.
    pub(crate) fn with_detail(mut self, detail: Option<String>) -> SinkError {
        if let Some(d) = detail {
            match &mut self {
                SinkError::Transient { message, .. } | SinkError::Permanent { message, .. } => {
                    message.push_str(": ");
                    message.push_str(&d);
                }
            }
        }
        self
    }
}

/// Classifies a non-success answer. `what` names the call in the message (`""` for the only
/// one). 2xx is not an error and is not passed here; 409-on-create is decided by the caller.
pub(crate) fn classify_status(
    what: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> SinkError {
    let retry_after = || {
        headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    };
    let message = status_text(what, status);
    let code = status.as_u16();
    match code {
        429 => SinkError::Transient {
            class: class::RATE_LIMITED,
            message,
            retry_after: retry_after(),
            source: None,
        },
        408 => SinkError::Transient {
            class: class::TIMEOUT,
            message,
            retry_after: retry_after(),
            source: None,
        },
        500..=599 => SinkError::Transient {
            class: class::HTTP_5XX,
            message,
            // 503 often carries Retry-After too; honour it when present.
            retry_after: retry_after(),
            source: None,
        },
        400..=499 => SinkError::permanent(class::HTTP_4XX, message),
        300..=399 => SinkError::permanent(
            class::HTTP_3XX,
            format!("{message} (redirects are not followed; fix the url)"),
        ),
        _ => SinkError::permanent(class::HTTP_OTHER, message),
    }
}

/// Classifies a request that got no HTTP answer. The message is the innermost cause (e.g.
/// "Connection refused (os error 111)"): reqwest's own text would include the URL, which may
/// carry the lead key or a token.
pub(crate) fn classify_reqwest(what: &str, err: &reqwest::Error, timeout: Duration) -> SinkError {
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    if err.is_timeout() {
        return SinkError::transient(
            class::TIMEOUT,
            format!(
                "{prefix}no answer within {}",
                humantime::format_duration(timeout)
            ),
        );
    }
    if err.is_builder() {
        return SinkError::permanent(class::CONFIG, format!("{prefix}cannot build the request"));
    }
    SinkError::transient(class::CONNECT, format!("{prefix}{}", root_cause(err)))
}

fn root_cause(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    // reqwest's own text has the URL; its sources (hyper, io) do not.
    let Some(mut cur) = err.source() else {
        return "request failed".into();
    };
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Builds a reqwest client for one sink: pooled connections, no redirects (a 301/302 would turn
/// the POST into a body-less GET that "succeeds"), the sink's deadline on the whole request.
pub(crate) fn http_client(
    index: usize,
    timeout: Duration,
) -> Result<reqwest::Client, SinkBuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("leadrouter/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| SinkBuildError::new(index, "", "cannot build HTTP client").with_source(e))
}

/// `url` with a path ending in `/`, so a relative path (`v1/track`, `crm/v3/...`) joins below
/// it rather than replacing its last segment.
pub(crate) fn with_trailing_slash(mut url: reqwest::Url) -> reqwest::Url {
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    url
}

/// Sends `req` and reads the whole answer: its status, headers and body. `what` names the call
/// in the error when no answer came (see [`classify_reqwest`]).
pub(crate) async fn read_answer(
    req: reqwest::RequestBuilder,
    what: &str,
    timeout: Duration,
) -> Result<
    (
        reqwest::StatusCode,
        reqwest::header::HeaderMap,
        bytes::Bytes,
    ),
    SinkError,
> {
    let resp = req
        .send()
        .await
        .map_err(|e| classify_reqwest(what, &e, timeout))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| classify_reqwest(what, &e, timeout))?;
    Ok((status, headers, body))
}

/// Checks that `url` is an absolute http(s) URL; `key` names it in the error.
pub(crate) fn parse_http_url(
    index: usize,
    key: &str,
    url: &str,
) -> Result<reqwest::Url, SinkBuildError> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| {
        SinkBuildError::new(index, key, format!("`{url}` is not a URL")).with_source(e)
    })?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(SinkBuildError::new(
            index,
            key,
            format!("`{url}` must be an http:// or https:// URL"),
        ));
    }
    if u.cannot_be_a_base() || u.host_str().is_none() {
        return Err(SinkBuildError::new(
            index,
            key,
            format!("`{url}` has no host"),
        ));
    }
    Ok(u)
}
