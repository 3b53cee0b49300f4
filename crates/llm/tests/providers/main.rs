//! Wire-format tests of the real providers against the mock provider server (`chorus-mock-llm`):
//! what each sends (URL, headers, body), how it reads answers, and how every failure is
//! classified.

#![allow(clippy::unwrap_used)] // test helpers fail loudly on purpose

mod anthropic;
mod ollama;
mod openai;
mod streaming;
mod transport;

use std::path::PathBuf;
use std::time::Duration;

use chorus_core::config::RouteConfig;
use chorus_core::spec::{ChatMessage, Params, Role};
use chorus_llm::{Completion, LlmError, Route, Routes};
use chorus_mock_llm::{MockLlm, RecordedRequest};

pub const KEY: &str = "sk-test-key-0123";

/// A mock server and a key file for routes pointed at it.
pub struct Setup {
    pub mock: MockLlm,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        Self {
            mock: MockLlm::start().await.unwrap(),
            key_file,
            _dir: dir,
        }
    }

    /// A route named `r` of `provider` at the mock, with the test key and a 5 s timeout.
    pub fn config(&self, provider: &str, model: &str) -> RouteConfig {
        let base_url = match provider {
            "openai" => format!("{}/v1", self.mock.url()),
            _ => self.mock.url(),
        };
        RouteConfig {
            base_url: Some(base_url),
            api_key_file: Some(self.key_file.clone()),
            timeout: Duration::from_secs(5),
            ..RouteConfig::new("r", provider, model)
        }
    }

    pub fn route(&self, provider: &str, model: &str) -> Route {
        route(self.config(provider, model))
    }

    /// The one request the mock received for `model`.
    pub fn only_request(&self, model: &str) -> RecordedRequest {
        let mut requests = self.mock.requests(model);
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests.remove(0)
    }
}

pub fn route(config: RouteConfig) -> Route {
    let name = config.name.clone();
    Routes::new(&[config]).unwrap().resolve(&name).unwrap()
}

pub fn messages(pairs: &[(Role, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(role, text)| ChatMessage::new(*role, *text))
        .collect()
}

pub async fn call(route: &Route, params: Params) -> Result<Completion, LlmError> {
    let request = route.request(
        messages(&[
            (Role::System, "You are terse."),
            (Role::User, "Is the plan sound?"),
        ]),
        params,
        1,
    );
    route.provider.complete(&request).await
}
