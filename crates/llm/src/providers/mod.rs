//! The real providers, one module per wire format, each following the provider's public API
//! reference: [`openai`] (Chat Completions: OpenAI, Azure OpenAI and every OpenAI-compatible
//! server), [`anthropic`] (Messages) and [`ollama`] (native `/api/chat`).
//!
//! They share [`http`]: one HTTP client per route with the route's timeouts, the API key held as a
//! secret, and the one classification of transport failures, statuses and `retry-after` into
//! [`crate::LlmError`]. A provider module only builds its request body and reads its own success
//! and error bodies. Finish reasons are reported in OpenAI's words (`stop`, `length`,
//! `tool_calls`, `content_filter`) whichever provider answered, so results compare across routes.

/// Implements [`Provider`] for a provider module's type: its `PROVIDER_NAME`, and its inherent
/// `call`.
macro_rules! provider {
    ($provider:ty) => {
        impl crate::provider::Provider for $provider {
            fn name(&self) -> &str {
                PROVIDER_NAME
            }

            fn complete<'a>(
                &'a self,
                request: &'a crate::provider::CompletionRequest,
            ) -> futures::future::BoxFuture<'a, Result<crate::provider::Completion, LlmError>> {
                Box::pin(self.call(request))
            }
        }
    };
}
use provider;

pub mod anthropic;
mod http;
pub mod ollama;
pub mod openai;

use std::sync::Arc;

use chorus_core::config::{RouteConfig, SecretError};

use crate::provider::Provider;
use crate::routes::RouteError;

pub use anthropic::Anthropic;
pub use http::ApiKey;
pub use ollama::Ollama;
pub use openai::OpenAi;

/// Every provider name a route may use, the simulator's included.
pub const SUPPORTED: [&str; 4] = [
    crate::sim::PROVIDER_NAME,
    openai::PROVIDER_NAME,
    anthropic::PROVIDER_NAME,
    ollama::PROVIDER_NAME,
];

/// Why a route's HTTP provider cannot be built. The message names the setting, never the key.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("set `api_key_env` or `api_key_file`, not both")]
    TwoKeys,
    #[error("the API key: {source}")]
    Key {
        #[source]
        source: SecretError,
    },
    #[error("the API key has characters an HTTP header cannot carry")]
    KeyNotAHeader,
    #[error("{provider} needs an API key: set `api_key_env` or `api_key_file`")]
    NoKey { provider: &'static str },
    #[error("bad base_url `{base}`: {source}")]
    BaseUrl {
        base: String,
        #[source]
        source: url::ParseError,
    },
    #[error("bad base_url `{base}`: scheme `{scheme}` is not http or https")]
    Scheme { base: String, scheme: String },
    #[error("bad api_version `{version}`")]
    ApiVersion {
        version: String,
        #[source]
        source: reqwest::header::InvalidHeaderValue,
    },
    #[error("cannot build an HTTP client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },
}

/// Whether a process reads the routes' API keys: only one that calls providers (the llm role)
/// does. The others need a route's name, model, price and fallbacks, and must start where the
/// key files are not mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    Load,
    Skip,
}

/// Builds the HTTP provider a route names (the simulator is the caller's). The error names the
/// route and, for a missing key, the variable or file — never the key. With
/// [`Credentials::Skip`] no key is read and none is required; its calls would go unauthenticated.
pub fn build(
    config: &RouteConfig,
    credentials: Credentials,
) -> Result<Arc<dyn Provider>, RouteError> {
    fn shared<P: Provider + 'static>(
        provider: Result<P, ProviderError>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        provider.map(|p| Arc::new(p) as Arc<dyn Provider>)
    }
    match config.provider.as_str() {
        openai::PROVIDER_NAME => shared(OpenAi::new(config, credentials)),
        anthropic::PROVIDER_NAME => shared(Anthropic::new(config, credentials)),
        ollama::PROVIDER_NAME => shared(Ollama::new(config, credentials)),
        other => {
            return Err(RouteError::UnknownProvider {
                route: config.name.clone(),
                provider: other.into(),
            });
        }
    }
    .map_err(|source| RouteError::Provider {
        route: config.name.clone(),
        source,
    })
}
