//! What every HTTP provider shares: the route's client, its API key, and the one place a failed
//! exchange becomes an [`LlmError`].
//!
//! Classification happens once, in [`Http::post`]: a transport failure by what reqwest reports
//! (timeout, or a connection that could not be made or broke before the answer), a non-success
//! status by [`ErrorKind::from_status`] refined by the provider's own error type, a success whose
//! body is cut short by its read error. Providers only say how to read their error body, and decode
//! success bodies with [`decode`], which calls anything unreadable [`ErrorKind::Malformed`].
//! The key never reaches a log or an error: it is a [`SecretString`], its header is marked
//! sensitive, and a provider message that echoes it is redacted.

use std::time::{Duration, SystemTime};

use chorus_core::config::{RouteConfig, load_secret};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Credentials, ProviderError};
use crate::error::{ErrorKind, LlmError};
use crate::provider::{Completion, DeltaSink};

/// A route's API key, from the variable named by `api_key_env` or the file `api_key_file`.
#[derive(Clone, Debug)]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// `Ok(None)` when the route names no key. Errors name the variable or file, never the key.
    pub fn load(config: &RouteConfig) -> Result<Option<Self>, ProviderError> {
        if config.api_key_env.is_some() && config.api_key_file.is_some() {
            return Err(ProviderError::TwoKeys);
        }
        let key = load_secret(
            config.api_key_env.as_deref(),
            config.api_key_file.as_deref(),
        )
        .map_err(|source| ProviderError::Key { source })?;
        let Some(key) = key else {
            return Ok(None);
        };
        if !key.expose_secret().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProviderError::KeyNotAHeader);
        }
        Ok(Some(Self(key)))
    }

    /// `prefix` and the key as a header value marked sensitive.
    fn header(&self, prefix: &str) -> Result<HeaderValue, LlmError> {
        let mut value = HeaderValue::try_from(format!("{prefix}{}", self.0.expose_secret()))
            .map_err(|_| {
                LlmError::new(ErrorKind::Unauthorized, "the API key is not a valid header")
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn redact(&self, text: String) -> String {
        let key = self.0.expose_secret();
        if text.contains(key) {
            text.replace(key, "[redacted]")
        } else {
            text
        }
    }
}

/// What a provider reads from one of its error bodies.
#[derive(Debug, Default)]
pub(crate) struct ErrorBody {
    /// A kind the provider's error type says more precisely than the status.
    pub kind: Option<ErrorKind>,
    pub message: Option<String>,
}

/// One route's HTTP client.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    timeout: Duration,
    connect_timeout: Duration,
    key: Option<ApiKey>,
}

impl Http {
    pub fn new(config: &RouteConfig, credentials: Credentials) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|source| ProviderError::Client { source })?;
        Ok(Self {
            client,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            key: match credentials {
                Credentials::Load => ApiKey::load(config)?,
                Credentials::Skip => None,
            },
        })
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Adds `name: <prefix><key>` when the route has a key.
    pub fn auth(
        &self,
        headers: &mut HeaderMap,
        name: HeaderName,
        prefix: &str,
    ) -> Result<(), LlmError> {
        if let Some(key) = &self.key {
            headers.insert(name, key.header(prefix)?);
        }
        Ok(())
    }

    /// POSTs `body` as JSON and returns the body of a success answer; everything else is an
    /// [`LlmError`], with the status, `retry-after` and what `read_error` found in the body.
    pub async fn post(
        &self,
        url: Url,
        headers: HeaderMap,
        body: &impl Serialize,
        read_error: fn(&[u8]) -> ErrorBody,
    ) -> Result<Vec<u8>, LlmError> {
        let response = self.send(url, headers, body, read_error).await?;
        match response.bytes().await {
            Ok(body) => Ok(body.to_vec()),
            Err(e) if e.is_timeout() => Err(LlmError::timeout(self.timeout)),
            Err(e) => Err(LlmError::new(
                ErrorKind::Malformed,
                format!("response body cut short: {}", root_cause(&e)),
            )),
        }
    }

    /// POSTs `body` as JSON and hands each line of a success answer to `line` as it arrives
    /// (a streamed answer: Server-Sent Events or JSON lines), without its line ending; a failure
    /// is an [`LlmError`] as for [`Http::post`], or whatever `line` returns. A stream that breaks
    /// off is [`ErrorKind::Malformed`], which is retryable.
    pub async fn post_lines(
        &self,
        url: Url,
        headers: HeaderMap,
        body: &impl Serialize,
        read_error: fn(&[u8]) -> ErrorBody,
        mut line: impl FnMut(&str) -> Result<(), LlmError>,
    ) -> Result<(), LlmError> {
        let mut response = self.send(url, headers, body, read_error).await?;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    pending.extend_from_slice(&chunk);
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = pending.drain(..=end).collect();
                        line(String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']))?;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(LlmError::timeout(self.timeout)),
                Err(e) => {
                    return Err(LlmError::new(
                        ErrorKind::Malformed,
                        format!("the streamed answer broke off: {}", root_cause(&e)),
                    ));
                }
            }
        }
        if !pending.is_empty() {
            line(String::from_utf8_lossy(&pending).trim_end_matches('\r'))?;
        }
        Ok(())
    }

    /// Sends the request; a success answer is returned unread, anything else is the error.
    async fn send(
        &self,
        url: Url,
        mut headers: HeaderMap,
        body: &impl Serialize,
        read_error: fn(&[u8]) -> ErrorBody,
    ) -> Result<reqwest::Response, LlmError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            LlmError::new(
                ErrorKind::BadRequest,
                format!("cannot encode the request: {e}"),
            )
        })?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(e) if e.is_timeout() => return Err(LlmError::timeout(self.timeout)),
            // The status says enough; an unreadable error body adds nothing.
            Err(_) => Vec::new(),
        };
        let found = read_error(&body);
        let message = found
            .message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| snippet(&body, status));
        let message = match &self.key {
            Some(key) => key.redact(message),
            None => message,
        };
        let mut error = LlmError::from_status(status.as_u16(), message);
        if let Some(kind) = found.kind {
            error.kind = kind;
        }
        error.retry_after = retry_after;
        Err(error)
    }

    fn transport_error(&self, error: &reqwest::Error) -> LlmError {
        let cause = root_cause(error);
        if error.is_timeout() && error.is_connect() {
            let after = humantime::format_duration(self.connect_timeout);
            LlmError::new(
                ErrorKind::Timeout,
                format!("could not connect within {after}"),
            )
        } else if error.is_timeout() {
            LlmError::timeout(self.timeout)
        } else if error.is_connect() {
            LlmError::new(ErrorKind::Connection, format!("cannot connect: {cause}"))
        } else {
            LlmError::new(
                ErrorKind::Connection,
                format!("connection failed before an answer: {cause}"),
            )
        }
    }
}

/// The payload of a Server-Sent Events `data:` line; `None` for any other line (event names,
/// comments, blank separators).
pub(crate) fn sse_data(line: &str) -> Option<&str> {
    let data = line.strip_prefix("data:")?;
    Some(data.strip_prefix(' ').unwrap_or(data))
}

/// The error of a streamed answer that ended before the provider said it was complete.
pub(crate) fn ended_early() -> LlmError {
    LlmError::new(
        ErrorKind::Malformed,
        "the streamed answer ended before its last event",
    )
}

/// Decodes a success body; anything else than the expected shape is [`ErrorKind::Malformed`].
/// How a provider's streamed answer is read: line by line as it arrives (each line's text goes
/// to the sink), then finished into the whole answer.
pub(crate) trait LineStream: Default {
    fn line(&mut self, line: &str, sink: &DeltaSink) -> Result<(), LlmError>;
    fn finish(self) -> Result<Completion, LlmError>;
}

impl Http {
    /// Posts `body` and reads the answer streamed back through `S`.
    pub(crate) async fn streamed<S: LineStream>(
        &self,
        url: Url,
        headers: HeaderMap,
        body: &impl Serialize,
        read_error: fn(&[u8]) -> ErrorBody,
        sink: &DeltaSink,
    ) -> Result<Completion, LlmError> {
        let mut stream = S::default();
        self.post_lines(url, headers, body, read_error, |line| {
            stream.line(line, sink)
        })
        .await?;
        stream.finish()
    }

    /// Posts `body` and decodes the whole answer, which should be `what`.
    pub(crate) async fn answer<T: DeserializeOwned>(
        &self,
        url: Url,
        headers: HeaderMap,
        body: &impl Serialize,
        read_error: fn(&[u8]) -> ErrorBody,
        what: &str,
    ) -> Result<T, LlmError> {
        let body = self.post(url, headers, body, read_error).await?;
        decode(&body, what)
    }
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, LlmError> {
    serde_json::from_slice(body).map_err(|e| {
        LlmError::new(
            ErrorKind::Malformed,
            format!("response body is not {what}: {e}"),
        )
    })
}

/// `base` with `path` appended (a base URL may or may not end in `/`).
pub(crate) fn endpoint(base: &str, path: &str) -> Result<Url, ProviderError> {
    let url = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let url = Url::parse(&url).map_err(|source| ProviderError::BaseUrl {
        base: base.into(),
        source,
    })?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(ProviderError::Scheme {
            base: base.into(),
            scheme: other.into(),
        }),
    }
}

/// How long the provider asks us to wait: `retry-after-ms` (OpenAI), else `retry-after` as
/// seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let seconds = |value: &str| {
        value
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    };
    if let Some(wait) = text("retry-after-ms").and_then(seconds).map(|ms| ms / 1000) {
        return Some(wait);
    }
    let value = text("retry-after")?;
    seconds(value).or_else(|| {
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(now).unwrap_or_default())
    })
}

/// The start of a body that is not the provider's error JSON (a proxy's HTML page, plain text),
/// or the status's reason when there is none.
fn snippet(body: &[u8], status: StatusCode) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::config::SecretError;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |h: &[(&'static str, &str)]| retry_after(&headers(h), now);
        assert_eq!(at(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            at(&[("retry-after", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(at(&[("retry-after", &date)]), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(at(&[("retry-after", &past)]), Some(Duration::ZERO));
        assert_eq!(
            at(&[("retry-after", "3"), ("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(at(&[("retry-after", "soon")]), None);
        assert_eq!(at(&[("retry-after", "-1")]), None);
        assert_eq!(at(&[("retry-after", "1e300")]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        let html = format!("<html>\n  <body>{}</body></html>", "x".repeat(400));
        let s = snippet(html.as_bytes(), StatusCode::BAD_GATEWAY);
        assert!(s.starts_with("<html> <body>xxx") && s.ends_with('…'), "{s}");
        assert_eq!(snippet(b"", StatusCode::BAD_GATEWAY), "Bad Gateway");
    }

    #[test]
    fn endpoints_join_paths_and_refuse_other_schemes() {
        let url = endpoint("http://h:1/v1/", "/chat/completions").unwrap();
        assert_eq!(url.as_str(), "http://h:1/v1/chat/completions");
        assert_eq!(
            endpoint("ftp://h", "x").unwrap_err().to_string(),
            "bad base_url `ftp://h`: scheme `ftp` is not http or https"
        );
        assert!(matches!(
            endpoint("not a url", "x"),
            Err(ProviderError::BaseUrl { .. })
        ));
    }

    #[test]
    fn keys_come_trimmed_from_a_file_and_errors_never_show_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-secret-1\n").unwrap();
        let mut config = RouteConfig::new("r", "openai", "m");
        config.api_key_file = Some(path.clone());
        let key = ApiKey::load(&config).unwrap().unwrap();
        assert_eq!(key.0.expose_secret(), "sk-secret-1");
        assert!(!format!("{key:?}").contains("sk-secret"));
        assert!(key.header("Bearer ").unwrap().is_sensitive());
        assert_eq!(
            key.redact("Incorrect API key provided: sk-secret-1.".into()),
            "Incorrect API key provided: [redacted]."
        );

        std::fs::write(&path, "sk bad\n").unwrap();
        let error = ApiKey::load(&config).unwrap_err().to_string();
        assert!(
            error.contains("cannot carry") && !error.contains("sk bad"),
            "{error}"
        );
        config.api_key_env = Some("CHORUS_TEST_NO_SUCH_KEY_VARIABLE".into());
        assert_eq!(
            ApiKey::load(&config).unwrap_err().to_string(),
            "set `api_key_env` or `api_key_file`, not both"
        );
        config.api_key_file = None;
        assert_eq!(
            ApiKey::load(&config).unwrap_err().to_string(),
            "the API key: the variable `CHORUS_TEST_NO_SUCH_KEY_VARIABLE` is not set"
        );
        config.api_key_env = None;
        config.api_key_file = Some(dir.path().join("missing"));
        let unreadable = ApiKey::load(&config).unwrap_err();
        assert!(
            unreadable
                .to_string()
                .starts_with("the API key: cannot read "),
            "{unreadable}"
        );
        assert!(matches!(
            unreadable,
            ProviderError::Key {
                source: SecretError::Unreadable { .. }
            }
        ));
    }
}
