//! Identifiers that travel in subjects, message ids and database keys.
//!
//! A job id is a UUIDv7 (time-ordered) when Chorus mints it, or a UUIDv5 derived from the client's
//! idempotency key when one is given, so the same key always names the same job. Tenants are subject
//! tokens and are validated as such: they come from API keys or from the submit subject, never from
//! a request body.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for ids derived from client-supplied keys (UUIDv5).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6368_6f72_7573_4000_8000_0000_0000_0001);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id a client's idempotency key (or JetStream message id) stands for within a tenant.
    pub fn derived(tenant: &Tenant, key: &str) -> Self {
        let name = format!("{}\u{0}{}", tenant.as_str(), key);
        Self(Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for JobId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A tenant name: 1–64 characters of `[a-z0-9_-]`, usable as one subject token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9_-]{1,64}$"))]
pub struct Tenant(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid tenant `{name}`: use 1-64 characters of a-z, 0-9, '_' or '-'")]
pub struct InvalidTenant {
    pub name: String,
}

impl Tenant {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidTenant> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(InvalidTenant { name })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tenant {
    type Error = InvalidTenant;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Tenant> for String {
    fn from(value: Tenant) -> Self {
        value.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Nats-Msg-Id` values: derived from ids, so publishing the same fact twice is de-duplicated.
pub mod msg_id {
    use super::JobId;

    pub fn submit(job: JobId) -> String {
        format!("{job}:submit")
    }

    pub fn call(job: JobId, step: u32) -> String {
        format!("{job}:call:{step}")
    }

    /// A step's result; a replayed call's result has an id of its own, so it is not taken for a
    /// duplicate of the failure it replaces.
    pub fn step_result(job: JobId, step: u32, replays: u32) -> String {
        match replays {
            0 => format!("{job}:step:{step}"),
            n => format!("{job}:step:{step}:replay:{n}"),
        }
    }

    pub fn evaluation_request(job: JobId) -> String {
        format!("{job}:eval")
    }

    pub fn evaluation(job: JobId) -> String {
        format!("{job}:evaluated")
    }

    /// A job's abort by `stage`: one per stage, so a retried abort is a duplicate.
    pub fn abort(job: JobId, stage: &str) -> String {
        format!("{job}:abort:{stage}")
    }

    /// A dead letter of the message at `sequence` on `subject`.
    pub fn dead_letter(subject: &str, sequence: u64) -> String {
        format!("dlq:{subject}:{sequence}")
    }
}

/// Milliseconds since the Unix epoch; the one timestamp type on the wire.
pub type UnixMillis = i64;

pub fn now_millis() -> UnixMillis {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_per_tenant_and_key() -> Result<(), InvalidTenant> {
        let a = Tenant::new("acme")?;
        let b = Tenant::new("other")?;
        assert_eq!(JobId::derived(&a, "k1"), JobId::derived(&a, "k1"));
        assert_ne!(JobId::derived(&a, "k1"), JobId::derived(&a, "k2"));
        assert_ne!(JobId::derived(&a, "k1"), JobId::derived(&b, "k1"));
        Ok(())
    }

    #[test]
    fn tenants_must_be_subject_tokens() {
        assert!(Tenant::new("team-a_1").is_ok());
        for bad in ["", "a.b", "A", "a b", "*", ">", &"x".repeat(65)] {
            assert!(Tenant::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
