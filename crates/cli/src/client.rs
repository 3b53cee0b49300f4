//! The REST API client that `chorus job` and `chorus batch` share, and what they both print.
//!
//! Every request carries the API key (if any) as `Authorization: Bearer`; the key is held in a
//! [`SecretString`] so it never shows in debug output or `--help`. A non-2xx answer becomes
//! [`ClientError::Api`] with the message of OpenAI's error shape
//! (`{"error": {"message", "type", "param", "code"}}`) and the whole body, for commands that print
//! more of it. Answers are read as [`serde_json::Value`] or lenient structs by the commands,
//! so a server a little newer or older than the CLI still reads.

use std::time::{Duration, UNIX_EPOCH};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the API is and how to authenticate; global to the `job` and `batch` subcommands.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Base URL of a running Chorus edge.
    #[arg(
        long,
        env = "CHORUS_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "CHORUS_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<SecretString>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach Chorus at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("unexpected answer from {url}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A non-2xx answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The whole body (JSON if it was, else a string).
    pub body: Value,
}

impl ApiError {
    async fn read(response: Response) -> Self {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                body.as_str()
                    .filter(|s| !s.trim().is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        Self {
            status,
            message,
            body,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<SecretString>,
}

impl Client {
    pub fn new(args: &ApiArgs) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("chorus-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Transport {
                url: args.url.clone(),
                source,
            })?;
        Ok(Self {
            http,
            base: args.url.trim_end_matches('/').to_owned(),
            api_key: args.api_key.clone(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose_secret()),
            None => request,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(self.request(Method::GET, path)).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    /// Sends a request built with [`Client::request`] and decodes its JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| self.transport(source))?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { url, source })
    }

    /// Sends a request and returns the successful response unread, for streaming its body.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| self.transport(source))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(ApiError::read(response).await.into())
        }
    }

    /// The next chunk of a streamed body (`None` at its end).
    pub async fn chunk(
        &self,
        response: &mut Response,
    ) -> Result<Option<bytes::Bytes>, ClientError> {
        response
            .chunk()
            .await
            .map_err(|source| self.transport(source))
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: self.base.clone(),
            source,
        }
    }
}

/// Left-aligned columns two spaces apart, under an upper-case header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push('\n');
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A unix timestamp in seconds as RFC 3339, `-` for none.
pub fn unix_time(seconds: Option<i64>) -> String {
    match seconds.and_then(|s| u64::try_from(s).ok()) {
        Some(s) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        None => "-".into(),
    }
}

/// The value, or `-` for none.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A 0–1 ratio as a percentage with one decimal, `-` for none.
pub fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

/// A score with two decimals, `-` for none.
pub fn score(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["cfo".to_owned(), "3".to_owned()],
            vec!["security-officer".to_owned(), "12".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "N"], &rows),
            "NAME              N\ncfo               3\nsecurity-officer  12"
        );
    }

    #[test]
    fn formats_missing_values_as_dashes() {
        assert_eq!(unix_time(Some(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(unix_time(None), "-");
        assert_eq!(percent(Some(0.9183)), "91.8%");
        assert_eq!(percent(None), "-");
        assert_eq!(score(Some(0.5)), "0.50");
        assert_eq!(or_dash(None::<u64>), "-");
    }

    #[test]
    fn api_key_is_not_shown_in_debug_output() {
        let args = ApiArgs {
            url: "http://localhost:8080/".into(),
            api_key: Some(SecretString::from("sk-secret".to_owned())),
        };
        let client = Client::new(&args).unwrap();
        assert!(!format!("{args:?} {client:?}").contains("sk-secret"));
        assert_eq!(client.url("/v1/jobs"), "http://localhost:8080/v1/jobs");
    }
}
