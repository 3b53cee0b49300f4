//! The one place that spells subjects, stream names and KV bucket names.
//!
//! Everything hangs off a configurable prefix (`chorus` by default), so several Chorus installations
//! can share one NATS account. Stream and bucket names derive from the same prefix.

use crate::ids::{JobId, Tenant};

/// Kinds of job events (results that move a job on); the last token of
/// `<prefix>.events.<tenant>.<job>.<kind>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Step,
    Evaluated,
    Aborted,
}

impl EventKind {
    pub fn token(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Evaluated => "evaluated",
            Self::Aborted => "aborted",
        }
    }
}

/// Pipeline stages, as named in DLQ subjects and in dead-letter entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Orchestrator,
    Llm,
    Evaluator,
    Persister,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Orchestrator => "orchestrator",
            Self::Llm => "llm",
            Self::Evaluator => "evaluator",
            Self::Persister => "persister",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
    streams: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            streams: prefix.to_ascii_uppercase().replace('-', "_"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream-name prefix: the subject prefix upper-cased (`CHORUS`).
    pub fn stream_prefix(&self) -> &str {
        &self.streams
    }

    pub fn submit(&self, tenant: &Tenant) -> String {
        format!("{}.submit.{}", self.prefix, tenant)
    }

    /// The tenant named by a submit subject, if it is one.
    pub fn tenant_of_submit(&self, subject: &str) -> Option<Tenant> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".submit.")?;
        Tenant::new(rest).ok()
    }

    /// Calls of a route without shared limits: one consumer takes them all (`work.llm.*`).
    pub fn llm_work(&self, route: &str) -> String {
        format!("{}.work.llm.{}", self.prefix, subject_token(route))
    }

    /// Calls of a route with shared limits: a consumer of their own, so a route waiting for
    /// budget never holds up another's calls.
    pub fn limited_llm_work(&self, route: &str) -> String {
        format!("{}.work.llm.limited.{}", self.prefix, name_token(route))
    }

    pub fn evaluator_work(&self) -> String {
        format!("{}.work.evaluator", self.prefix)
    }

    /// Job snapshots for the persister that are not new versions of a job's state: those replayed
    /// from the DLQ (a replay must not rewrite the jobs bucket).
    pub fn persister_work(&self) -> String {
        format!("{}.work.persister", self.prefix)
    }

    pub fn event(&self, tenant: &Tenant, job: JobId, kind: EventKind) -> String {
        format!("{}.events.{}.{}.{}", self.prefix, tenant, job, kind.token())
    }

    /// Core-NATS notification the persister sends once a job's final state is committed.
    pub fn notify(&self, tenant: &Tenant, job: JobId) -> String {
        format!("{}.notify.{}.{}", self.prefix, tenant, job)
    }

    /// Core NATS (not stored): the text of a streamed job's answer as the provider sends it, for
    /// the edge request streaming it to its client.
    pub fn answer_stream(&self, tenant: &Tenant, job: JobId) -> String {
        format!("{}.stream.{}.{}", self.prefix, tenant, job)
    }

    /// Results of a batch's lines, for JetStream submitters.
    pub fn results(&self, tenant: &Tenant, batch: &str) -> String {
        format!(
            "{}.results.{}.{}",
            self.prefix,
            tenant,
            subject_token(batch)
        )
    }

    pub fn cancels_bucket(&self) -> String {
        format!("{}_cancels", self.prefix.replace('-', "_"))
    }

    pub fn dlq(&self, stage: Stage) -> String {
        format!("{}.dlq.{}", self.prefix, stage.as_str())
    }

    pub fn stream(&self, name: &str) -> String {
        format!("{}_{}", self.streams, name.to_ascii_uppercase())
    }

    pub fn jobs_bucket(&self) -> String {
        format!("{}_jobs", self.prefix.replace('-', "_"))
    }

    /// The stream behind the jobs bucket: one message per state version.
    pub fn jobs_stream(&self) -> String {
        format!("KV_{}", self.jobs_bucket())
    }

    /// The subject of a job's key in the jobs bucket.
    pub fn job_key(&self, tenant: &Tenant, job: JobId) -> String {
        format!("$KV.{}.{}.{}", self.jobs_bucket(), tenant, job)
    }
}

/// Makes any route name usable as one subject token (`.`, `*`, `>` and whitespace become `_`).
/// The token only steers routing and filtering; the route itself travels in the message body.
pub fn subject_token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// Makes a route name usable in consumer and key names: ASCII letters, digits, `-` and `_`.
pub fn name_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_every_subject_from_one_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let s = Subjects::new("chorus");
        let tenant = Tenant::new("acme")?;
        let job: JobId = "0190f5c2-0000-7000-8000-000000000001".parse()?;
        assert_eq!(s.submit(&tenant), "chorus.submit.acme");
        assert_eq!(
            s.tenant_of_submit("chorus.submit.acme"),
            Some(tenant.clone())
        );
        assert_eq!(s.tenant_of_submit("chorus.submit.a.b"), None);
        assert_eq!(
            s.llm_work("openai:gpt-4.1 mini"),
            "chorus.work.llm.openai:gpt-4_1_mini"
        );
        assert_eq!(
            s.event(&tenant, job, EventKind::Step),
            "chorus.events.acme.0190f5c2-0000-7000-8000-000000000001.step"
        );
        assert_eq!(s.stream("work"), "CHORUS_WORK");
        assert_eq!(
            s.limited_llm_work("openai:gpt-4.1"),
            "chorus.work.llm.limited.openai_gpt-4_1"
        );
        assert_eq!(s.jobs_bucket(), "chorus_jobs");
        assert_eq!(
            s.job_key(&tenant, job),
            "$KV.chorus_jobs.acme.0190f5c2-0000-7000-8000-000000000001"
        );
        Ok(())
    }
}
