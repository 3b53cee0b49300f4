//! Token estimates for reserving a route's token budget before a call: the prompt counted with
//! tiktoken's `cl100k_base` encoding, plus the completion the call may produce (`max_tokens`).
//! Providers tokenize differently; the reservation is reconciled with the count they report.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use chorus_core::spec::{ChatMessage, Params};

use crate::provider::CompletionRequest;

/// Tokens OpenAI's chat format adds around each message.
const PER_MESSAGE: u32 = 4;

fn encoding() -> Option<&'static CoreBPE> {
    static ENCODING: OnceLock<Option<CoreBPE>> = OnceLock::new();
    ENCODING
        .get_or_init(|| tiktoken_rs::cl100k_base().ok())
        .as_ref()
}

/// Tokens in `text`; a characters/4 guess if the encoding cannot load.
pub fn count(text: &str) -> u32 {
    let n = match encoding() {
        Some(bpe) => bpe.encode_ordinary(text).len(),
        None => text.chars().count().div_ceil(4),
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `max_tokens` assumed for the completion part of an estimate when neither the job nor the
/// route sets one.
pub const DEFAULT_COMPLETION: u32 = 1024;

/// The prompt's tokens plus the completion allowance: the request's `max_tokens`, else
/// `default_completion`.
pub fn estimate(request: &CompletionRequest, default_completion: u32) -> u32 {
    estimate_messages(&request.messages, &request.params, default_completion)
}

/// [`estimate`] of a call not yet made into a request (what the fair scheduler charges).
pub fn estimate_messages(
    messages: &[ChatMessage],
    params: &Params,
    default_completion: u32,
) -> u32 {
    prompt(messages).saturating_add(params.max_tokens.unwrap_or(default_completion))
}

/// The prompt's tokens: each message's content and the chat format's wrapping.
pub fn prompt(messages: &[ChatMessage]) -> u32 {
    messages
        .iter()
        .map(|m| count(&m.content).saturating_add(PER_MESSAGE))
        .fold(0, u32::saturating_add)
}

#[cfg(test)]
mod tests {
    use chorus_core::spec::Role;

    use super::*;

    #[test]
    fn counts_with_cl100k_and_adds_the_completion_allowance() {
        assert_eq!(count("hello world"), 2);
        let request = CompletionRequest {
            model: "m".into(),
            messages: vec![ChatMessage::new(Role::User, "hello world")],
            params: Params {
                max_tokens: Some(100),
                ..Params::default()
            },
            seed_key: 0,
            deltas: None,
        };
        assert_eq!(estimate(&request, 1024), 2 + PER_MESSAGE + 100);
        let request = CompletionRequest {
            params: Params::default(),
            ..request
        };
        assert_eq!(estimate(&request, 1024), 2 + PER_MESSAGE + 1024);
    }
}
