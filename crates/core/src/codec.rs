//! The wire codec: named MessagePack bodies and the headers that describe them.
//!
//! Bodies are encoded with field names (`to_vec_named`) so a field added with `#[serde(default)]`
//! stays readable by older and newer workers alike. The `Chorus-Type` header says what the body
//! is; decoding checks it first and names the mismatch.

use crate::messages::Envelope;

/// Header names Chorus sets or reads.
pub mod headers {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// `kind/version` of the body, e.g. `llm.call/1`.
    pub const TYPE: &str = "Chorus-Type";
    pub const JOB: &str = "Chorus-Job";
    pub const TENANT: &str = "Chorus-Tenant";
    /// On dead letters: the stage, error kind and route, so tools can filter without decoding.
    pub const STAGE: &str = "Chorus-Stage";
    pub const ERROR_KIND: &str = "Chorus-Error-Kind";
    pub const ROUTE: &str = "Chorus-Route";
    /// A job's priority on its LLM calls; a backlog serves higher first.
    pub const PRIORITY: &str = "Chorus-Priority";
    /// The band ([`crate::fair::Band`]) of the job a work message or event is for, so what
    /// answers it is queued in the same band.
    pub const BAND: &str = "Chorus-Band";
    /// A unit of work's estimated tokens: what the fair scheduler charges its tenant.
    pub const COST: &str = "Chorus-Cost";
    /// A JetStream submitter's batch id and the line's own id in it.
    pub const BATCH: &str = "Chorus-Batch";
    pub const CUSTOM_ID: &str = "Chorus-Custom-Id";
    /// What a JetStream submission's body is: `/v1/jobs` (a job spec, the default) or
    /// `/v1/chat/completions` (a chat completion request).
    pub const ENDPOINT: &str = "Chorus-Endpoint";
    /// On a message replayed from the DLQ: how often it has been replayed.
    pub const REPLAYS: &str = "Chorus-Replays";
    /// On a streamed answer's message: `begin` (an attempt's answer starts; earlier text is void).
    pub const DELTA: &str = "Chorus-Delta";
}

pub const MSGPACK: &str = "application/msgpack";
pub const JSON: &str = "application/json";

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("missing {} header: expected a `{expected}` message", headers::TYPE)]
    MissingType { expected: &'static str },
    #[error("unexpected message type `{found}`: expected `{expected}`")]
    WrongType { expected: String, found: String },
    #[error("undecodable `{kind}` body: {source}")]
    Decode {
        kind: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("cannot encode `{kind}`: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
}

/// The `Chorus-Type` value for `T`.
pub fn type_header<T: Envelope>() -> String {
    format!("{}/{}", T::KIND, T::VERSION)
}

pub fn encode<T: Envelope>(value: &T) -> Result<bytes::Bytes, CodecError> {
    rmp_serde::to_vec_named(value)
        .map(bytes::Bytes::from)
        .map_err(|source| CodecError::Encode {
            kind: T::KIND,
            source,
        })
}

/// Decodes a body whose `Chorus-Type` header is `type_header`.
pub fn decode<T: Envelope>(type_header: Option<&str>, body: &[u8]) -> Result<T, CodecError> {
    let found = type_header.ok_or(CodecError::MissingType { expected: T::KIND })?;
    let expected = self::type_header::<T>();
    if found != expected {
        return Err(CodecError::WrongType {
            expected,
            found: found.to_owned(),
        });
    }
    rmp_serde::from_slice(body).map_err(|source| CodecError::Decode {
        kind: T::KIND,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::LlmCall;
    use crate::spec::{ChatMessage, Params, Role};
    use crate::{JobId, Tenant};

    fn call() -> LlmCall {
        LlmCall {
            job_id: JobId::new(),
            tenant: Tenant::new("t").expect("tenant"),
            step: 2,
            route: "sim:echo".into(),
            messages: vec![ChatMessage::new(Role::User, "hi")],
            params: Params::default(),
            priority: 3,
            deadline: Some(1_000),
            batch: Some("batch_1".into()),
            judge: true,
            stream: true,
            band: crate::fair::Band::Batch,
            key: Some("0123456789abcdef".into()),
        }
    }

    #[test]
    fn round_trips_and_checks_the_type() {
        let value = call();
        let bytes = encode(&value).expect("encode");
        let back: LlmCall = decode(Some("llm.call/1"), &bytes).expect("decode");
        assert_eq!(back, value);
        let err = decode::<LlmCall>(Some("llm.call/2"), &bytes).expect_err("wrong version");
        assert!(err.to_string().contains("llm.call/2"), "{err}");
        assert!(matches!(
            decode::<LlmCall>(None, &bytes),
            Err(CodecError::MissingType { .. })
        ));
        assert!(matches!(
            decode::<LlmCall>(Some("llm.call/1"), b"\xc1garbage"),
            Err(CodecError::Decode { .. })
        ));
    }
}
