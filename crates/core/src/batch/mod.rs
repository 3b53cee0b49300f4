//! Batches in the OpenAI Batch API shape: what a batch line asks for, where a job came from when
//! it is one line of a batch, and the ids a line carries.
//!
//! Layout:
//! - [`file`]: reading and checking a whole input file (JSONL, one request per line).
//! - [`body`]: a request body as a job spec, read as its endpoint says (a line's `body`, or a
//!   JetStream submission's whole payload); a chat completion request is translated by
//!   [`crate::openai`].

use serde::{Deserialize, Serialize};

use crate::spec::FieldError;

pub mod body;
pub mod file;

/// What a batch line asks for: its `url`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// A plain chat completion on a route; the result is a `chat.completion` object.
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    /// A full Chorus job; the result is the job as `GET /v1/jobs/{id}` shows it.
    #[serde(rename = "/v1/jobs")]
    Jobs,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Self::ChatCompletions, Self::Jobs];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Jobs => "/v1/jobs",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The batch line a job came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub batch: String,
    pub custom_id: String,
    pub endpoint: Endpoint,
    /// The line's position in its input file (0-based); output files keep this order.
    #[serde(default)]
    pub line: u64,
}

/// The longest `custom_id`, in characters.
pub const MAX_CUSTOM_ID: usize = 256;
/// The longest batch id a JetStream submitter may give (`Chorus-Batch`), in characters.
pub const MAX_BATCH_ID: usize = 256;

/// Checks a batch line's `custom_id`, wherever it comes from (a line of an input file, a
/// JetStream submission's `Chorus-Custom-Id`): 1 to [`MAX_CUSTOM_ID`] characters, without line
/// breaks (the id travels in NATS headers, which cannot hold them). Any other character is
/// stored as it is.
pub fn check_custom_id(id: &str) -> Result<(), FieldError> {
    check_id("custom_id", id, MAX_CUSTOM_ID)
}

/// Checks the batch id a JetStream submission names (`Chorus-Batch`): 1 to [`MAX_BATCH_ID`]
/// characters (it is indexed, and part of the results subject), without line breaks.
pub fn check_batch_id(id: &str) -> Result<(), FieldError> {
    check_id("batch", id, MAX_BATCH_ID)
}

fn check_id(field: &str, id: &str, max: usize) -> Result<(), FieldError> {
    let problem = if id.is_empty() {
        "must not be empty".to_owned()
    } else if id.chars().count() > max {
        format!("longer than {max} characters")
    } else if id.contains(['\r', '\n']) {
        "must not contain line breaks".to_owned()
    } else {
        return Ok(());
    };
    Err(FieldError::new(field, problem))
}

#[cfg(test)]
mod tests;
