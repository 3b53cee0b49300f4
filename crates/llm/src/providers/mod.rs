//! The real providers, one module per wire format, each following the provider's public API
//! reference: [`openai`] (Chat Completions: OpenAI, Azure OpenAI and every OpenAI-compatible
//! server), [`anthropic`] (Messages) and [`ollama`] (native `/api/chat`).
//!
//! They share [`http`]: one HTTP client per route with the route's timeouts, the API key held as a
//! secret, and the one classification of transport failures, statuses and `retry-after` into
//! [`crate::LlmError`]. A provider module only builds its request body and reads its own success
//! and error bodies. Finish reasons are reported in OpenAI's words (`stop`, `length`,
//! `tool_calls`, `content_filter`) whichever provider answered, so results compare across routes.

pub mod anthropic;
mod http;
pub mod ollama;
pub mod openai;

use std::sync::Arc;

use chorus_core::config::RouteConfig;

use crate::provider::Provider;

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

/// Builds the HTTP provider a route names (the simulator is the caller's). The error names the
/// route and, for a missing key, the variable or file — never the key.
pub fn build(config: &RouteConfig) -> Result<Arc<dyn Provider>, String> {
    fn shared<P: Provider + 'static>(
        provider: Result<P, String>,
    ) -> Result<Arc<dyn Provider>, String> {
        provider.map(|p| Arc::new(p) as Arc<dyn Provider>)
    }
    let name = &config.name;
    match config.provider.as_str() {
        openai::PROVIDER_NAME => shared(OpenAi::new(config)),
        anthropic::PROVIDER_NAME => shared(Anthropic::new(config)),
        ollama::PROVIDER_NAME => shared(Ollama::new(config)),
        other => {
            let supported: Vec<String> = SUPPORTED.iter().map(|p| format!("`{p}`")).collect();
            return Err(format!(
                "unknown provider `{other}` in route `{name}`: supported providers are {}",
                supported.join(", ")
            ));
        }
    }
    .map_err(|e| format!("route `{name}`: {e}"))
}
