//! The one place that spells every NATS name: subjects, stream, consumer and bucket names, and KV
//! keys.
//!
//! Everything hangs off a configurable prefix (`chorus` by default, letters, digits, `_` and `-`:
//! see [`check_prefix`]), so several Chorus installations can share one NATS account. Subjects use
//! the prefix as it is; stream names upper-case it, bucket names keep its case, and both turn `-`
//! into `_` (the names JetStream allows). The stream and consumer definitions in `nats/` spell the
//! same names through placeholders (`${prefix}`, `${PREFIX}`, `${bucket}`) filled in from here.
//!
//! A name users choose (a route, a batch id) becomes part of a NATS name through [`token`], which
//! keeps a name of letters, digits, `_` and `-` as it is and gives any other a readable form plus
//! a hash of the original, so two names never share a consumer, a limit or a results subject.

use crate::fair::Band;
use crate::ids::{JobId, Tenant};

/// Kinds of job events (results that move a job on); the last token of
/// `<prefix>.events.<band>.<tenant>.<job>.<kind>`.
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
    buckets: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            streams: prefix.to_ascii_uppercase().replace('-', "_"),
            buckets: prefix.replace('-', "_"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream-name prefix: the subject prefix upper-cased (`CHORUS`).
    pub fn stream_prefix(&self) -> &str {
        &self.streams
    }

    /// Bucket-name prefix: the subject prefix with `-` as `_` (`chorus`).
    pub fn bucket_prefix(&self) -> &str {
        &self.buckets
    }

    /// Fills the placeholders of a stream or consumer definition: `${prefix}` (subjects),
    /// `${PREFIX}` (stream names), `${bucket}` (bucket names and their streams).
    pub fn fill(&self, definition: &str) -> String {
        definition
            .replace("${prefix}", &self.prefix)
            .replace("${PREFIX}", &self.streams)
            .replace("${bucket}", &self.buckets)
    }

    pub fn submit(&self, tenant: &Tenant) -> String {
        format!("{}.submit.{}", self.prefix, tenant)
    }

    /// The tenant whose submission `subject` is: a JetStream submitter's
    /// (`<prefix>.submit.<tenant>`) or the edge's (a flow of [`Self::submit_flows`]).
    pub fn tenant_of_submit(&self, subject: &str) -> Option<Tenant> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".submit.")?;
        Tenant::new(rest)
            .ok()
            .or_else(|| Some(self.submit_flows().flow(subject)?.tenant))
    }

    /// The flows of the edge's submissions, taken by the orchestrator in fair order:
    /// `<prefix>.submit.<band>.<tenant>`. (A JetStream submitter's `<prefix>.submit.<tenant>` is
    /// taken in arrival order by the `orchestrator-submit` consumer itself.)
    pub fn submit_flows(&self) -> FlowSubjects {
        FlowSubjects {
            base: format!("{}.submit", self.prefix),
            laned: false,
            trailing: 0,
            consumer: "orchestrator-submit".to_owned(),
        }
    }

    /// The flows of calls of routes without shared limits, laned by route:
    /// `<prefix>.work.llm.<route>.<band>.<tenant>`.
    pub fn llm_flows(&self) -> FlowSubjects {
        FlowSubjects {
            base: format!("{}.work.llm", self.prefix),
            laned: true,
            trailing: 0,
            consumer: "llm".to_owned(),
        }
    }

    /// The flows of a route with shared limits, a consumer each, so a route waiting for budget
    /// never holds up another's calls: `<prefix>.work.llm.limited.<route>.<band>.<tenant>`.
    pub fn limited_llm_flows(&self, route: &str) -> FlowSubjects {
        FlowSubjects {
            base: format!("{}.work.llm.limited.{}", self.prefix, token(route)),
            laned: false,
            trailing: 0,
            consumer: format!("llm-{}", token(route)),
        }
    }

    /// The flows of evaluation requests: `<prefix>.work.evaluator.<band>.<tenant>`. (The
    /// `evaluator` consumer itself drains `<prefix>.work.evaluator`, where a Chorus before flows
    /// published them.)
    pub fn evaluator_flows(&self) -> FlowSubjects {
        FlowSubjects {
            base: format!("{}.work.evaluator", self.prefix),
            laned: false,
            trailing: 0,
            consumer: "evaluator".to_owned(),
        }
    }

    /// The flows of job events, taken by the orchestrator in fair order:
    /// `<prefix>.events.<band>.<tenant>.<job>.<kind>`, a flow per band and tenant. (The
    /// `orchestrator` consumer itself drains `<prefix>.events.<tenant>.<job>.<kind>`, where a
    /// Chorus before flows published them.)
    pub fn event_flows(&self) -> FlowSubjects {
        FlowSubjects {
            base: format!("{}.events", self.prefix),
            laned: false,
            trailing: 2,
            consumer: "orchestrator".to_owned(),
        }
    }

    /// Calls a Chorus before flows published for a route with shared limits; drained by the
    /// consumer [`Self::limited_llm_consumer`] while an installation upgrades.
    pub fn limited_llm_work(&self, route: &str) -> String {
        format!("{}.work.llm.limited.{}", self.prefix, token(route))
    }

    /// The durable consumer of [`Self::limited_llm_work`].
    pub fn limited_llm_consumer(&self, route: &str) -> String {
        format!("llm-{}", token(route))
    }

    /// The tenant whose waiting work a message on `subject` is, and where it waits: a
    /// submission (at the orchestrator's intake) or an llm call (a flow of the llm stage).
    pub fn queued_work(&self, subject: &str) -> Option<(Tenant, Queue)> {
        if let Some(tenant) = self.tenant_of_submit(subject) {
            return Some((tenant, Queue::Intake));
        }
        let flow = self.llm_flow_set(subject)?.flow(subject)?;
        Some((flow.tenant, Queue::Llm))
    }

    /// The route (as its [`token`]) and the flow of an llm flow's subject or filter.
    pub fn llm_flow(&self, subject: &str) -> Option<(String, Flow)> {
        let flows = self.llm_flow_set(subject)?;
        let flow = flows.flow(subject)?;
        let route = match &flow.lane {
            Some(lane) => lane.clone(),
            None => flows.consumer.strip_prefix("llm-")?.to_owned(),
        };
        Some((route, flow))
    }

    /// The llm flow set `subject` (a flow's subject or filter) belongs to.
    fn llm_flow_set(&self, subject: &str) -> Option<FlowSubjects> {
        let flows = self.llm_flows();
        if flows.flow(subject).is_some() {
            return Some(flows);
        }
        let route = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".work.llm.limited.")?
            .split('.')
            .next()?;
        let limited = self.limited_llm_flows(route);
        limited.flow(subject).map(|_| limited)
    }

    /// The name of the flow set a flow's consumer filter (`subject`) belongs to:
    /// `orchestrator-submit`, `orchestrator` (events), `evaluator`, `llm` or `llm-<route>`;
    /// `None` for any other subject.
    pub fn flow_set_of(&self, subject: &str) -> Option<String> {
        [
            self.submit_flows(),
            self.event_flows(),
            self.evaluator_flows(),
        ]
        .into_iter()
        .find(|flows| flows.flow(subject).is_some())
        .or_else(|| self.llm_flow_set(subject))
        .map(|flows| flows.consumer)
    }

    /// The core-NATS subject a publisher rings when it puts work on a flow (`subject`, the flow's
    /// [`FlowSubjects::subject`]), so the stages pulling that flow's stage notice a new flow at
    /// once: `<prefix>.doorbell.<subject after the prefix>`. Pass [`FlowSubjects::heads`] to get
    /// the doorbells of every flow of a set.
    pub fn doorbell(&self, subject: &str) -> String {
        let rest = subject
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(subject);
        format!("{}.doorbell.{rest}", self.prefix)
    }

    /// Job snapshots for the persister that are not new versions of a job's state: those replayed
    /// from the DLQ (a replay must not rewrite the jobs bucket).
    pub fn persister_work(&self) -> String {
        format!("{}.work.persister", self.prefix)
    }

    /// An event of `tenant`'s `job`, in the flow of the job's `band` ([`Self::event_flows`]).
    pub fn event(&self, band: Band, tenant: &Tenant, job: JobId, kind: EventKind) -> String {
        let flow = self.event_flows().subject(None, band, tenant);
        format!("{flow}.{job}.{}", kind.token())
    }

    /// Core NATS: the orchestrator's word that a job's final state is in the jobs bucket, for
    /// requests waiting on the job (which commit it themselves if the persister is behind).
    pub fn finished(&self, tenant: &Tenant, job: JobId) -> String {
        format!("{}.finished.{}.{}", self.prefix, tenant, job)
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
        format!("{}.results.{}.{}", self.prefix, tenant, token(batch))
    }

    pub fn cancels_bucket(&self) -> String {
        format!("{}_cancels", self.buckets)
    }

    /// The cancels bucket's key of a cancelled job.
    pub fn cancelled_job_key(&self, tenant: &Tenant, job: JobId) -> String {
        format!("job.{tenant}.{job}")
    }

    /// The cancels bucket's key of a cancelled batch.
    pub fn cancelled_batch_key(&self, tenant: &Tenant, batch: &str) -> String {
        format!("batch.{tenant}.{}", token(batch))
    }

    /// The bucket of route limits shared by every llm process.
    pub fn limits_bucket(&self) -> String {
        format!("{}_limits", self.buckets)
    }

    /// The limits bucket's key of a route's rate state.
    pub fn rate_key(&self, route: &str) -> String {
        format!("rate.{}", token(route))
    }

    /// The limits bucket's key of a route's `n`th concurrency slot.
    pub fn slot_key(&self, route: &str, n: u32) -> String {
        format!("slot.{}.{n}", token(route))
    }

    /// The bucket of spend budgets: one ledger per tenant or key budget (`crate::budget`).
    pub fn budgets_bucket(&self) -> String {
        format!("{}_budgets", self.buckets)
    }

    /// The budgets bucket's key of a budget: `tenant.<tenant>` or `key.<id>`.
    pub fn budget_key(&self, scope: &crate::budget::Scope) -> String {
        format!("{}.{}", scope.kind(), token(scope.id()))
    }

    /// The budget a key of the budgets bucket names.
    pub fn budget_of_key(&self, key: &str) -> Option<crate::budget::Scope> {
        let (kind, id) = key.split_once('.')?;
        crate::budget::Scope::parse(kind, id).ok()
    }

    /// The stream behind a bucket: `KV_<bucket>`.
    pub fn bucket_stream(bucket: &str) -> String {
        format!("KV_{bucket}")
    }

    /// Whether a stream is one of this installation's: its own or one of its buckets'.
    pub fn owns_stream(&self, stream: &str) -> bool {
        let ours = |rest: Option<&str>| rest.is_some_and(|rest| rest.starts_with('_'));
        ours(stream.strip_prefix(&self.streams))
            || ours(
                stream
                    .strip_prefix("KV_")
                    .and_then(|bucket| bucket.strip_prefix(&self.buckets)),
            )
    }

    pub fn dlq(&self, stage: Stage) -> String {
        format!("{}.dlq.{}", self.prefix, stage.as_str())
    }

    pub fn stream(&self, name: &str) -> String {
        format!("{}_{}", self.streams, name.to_ascii_uppercase())
    }

    pub fn jobs_bucket(&self) -> String {
        format!("{}_jobs", self.buckets)
    }

    /// The stream behind the jobs bucket: one message per state version.
    pub fn jobs_stream(&self) -> String {
        Self::bucket_stream(&self.jobs_bucket())
    }

    /// A job's key in the jobs bucket.
    pub fn job_key(&self, tenant: &Tenant, job: JobId) -> String {
        format!("{tenant}.{job}")
    }

    /// The subject of a job's key in the jobs bucket.
    pub fn job_key_subject(&self, tenant: &Tenant, job: JobId) -> String {
        format!("$KV.{}.{}", self.jobs_bucket(), self.job_key(tenant, job))
    }
}

/// Where a tenant's work waits, for its backlog quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// Submitted, not yet taken by an orchestrator.
    Intake,
    /// An llm call waiting in its flow.
    Llm,
}

/// The subjects of a stage's work split into flows, `<base>[.<lane>].<band>.<tenant>` (the
/// flow's subject) and, for a set with trailing tokens, any subject below it with exactly that
/// many more (an event's `.<job>.<kind>`); and the durable consumer of each flow. A lane is a
/// [`token`] (the route of an llm call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSubjects {
    base: String,
    laned: bool,
    trailing: usize,
    consumer: String,
}

/// One flow: whose work, at which band, in which lane.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub lane: Option<String>,
    pub band: Band,
    pub tenant: Tenant,
}

impl FlowSubjects {
    /// The subject of `tenant`'s work at `band` (in `lane`, a name given as it is, for a laned
    /// set): where it is published, or, for a set with trailing tokens, what its subjects begin
    /// with. A publisher rings the flow's doorbell with it.
    pub fn subject(&self, lane: Option<&str>, band: Band, tenant: &Tenant) -> String {
        match lane.filter(|_| self.laned) {
            Some(lane) => format!("{}.{}.{band}.{tenant}", self.base, token(lane)),
            None => format!("{}.{band}.{tenant}", self.base),
        }
    }

    /// A filter matching every flow's messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.heads(), ".*".repeat(self.trailing))
    }

    /// A filter matching every flow's [`Self::subject`] (and no message's, for a set with
    /// trailing tokens): what doorbells ring with.
    pub fn heads(&self) -> String {
        match self.laned {
            true => format!("{}.*.*.*", self.base),
            false => format!("{}.*.*", self.base),
        }
    }

    /// The flow a message's subject (or a flow consumer's filter) belongs to, if it is one of
    /// these.
    pub fn flow(&self, subject: &str) -> Option<Flow> {
        self.parse(subject, self.trailing)
    }

    /// The flow whose [`Self::subject`] `subject` is (a doorbell's flow).
    pub fn flow_of_head(&self, subject: &str) -> Option<Flow> {
        self.parse(subject, 0)
    }

    fn parse(&self, subject: &str, trailing: usize) -> Option<Flow> {
        let rest = subject.strip_prefix(&self.base)?.strip_prefix('.')?;
        let mut tokens = rest.split('.');
        let lane = match self.laned {
            true => Some(tokens.next()?.to_owned()),
            false => None,
        };
        let band = Band::parse(tokens.next()?)?;
        let tenant = Tenant::new(tokens.next()?).ok()?;
        let below = tokens.count();
        (below == trailing).then_some(Flow { lane, band, tenant })
    }

    /// The filter of a flow's consumer: its subject, and its trailing tokens as wildcards.
    pub fn filter(&self, flow: &Flow) -> String {
        let head = match &flow.lane {
            Some(lane) => format!("{}.{lane}.{}.{}", self.base, flow.band, flow.tenant),
            None => format!("{}.{}.{}", self.base, flow.band, flow.tenant),
        };
        format!("{head}{}", ".*".repeat(self.trailing))
    }

    /// The durable consumer of a flow: `<stage consumer>[-<lane>]-<band>-<tenant>`.
    pub fn consumer(&self, flow: &Flow) -> String {
        match &flow.lane {
            Some(lane) => format!("{}-{lane}-{}-{}", self.consumer, flow.band, flow.tenant),
            None => format!("{}-{}-{}", self.consumer, flow.band, flow.tenant),
        }
    }

    /// The name the stage's flows are known by in logs and metrics (`llm`, `llm-<route>`,
    /// `orchestrator`, `orchestrator-submit`, `evaluator`).
    pub fn name(&self) -> &str {
        &self.consumer
    }
}

/// A `nats.prefix` Chorus cannot build names from.
#[derive(Debug, thiserror::Error)]
#[error("nats.prefix: `{prefix}` must be 1-32 letters, digits, '_' or '-'")]
pub struct InvalidPrefix {
    pub prefix: String,
}

/// Checks a `nats.prefix`: 1-32 ASCII letters, digits, `_` or `-` (a subject token, and a
/// stream or bucket name once `-` is `_`).
pub fn check_prefix(prefix: &str) -> Result<(), InvalidPrefix> {
    let valid = (1..=32).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match valid {
        true => Ok(()),
        false => Err(InvalidPrefix {
            prefix: prefix.to_owned(),
        }),
    }
}

/// A name a user chose (a route, a batch id) as part of a NATS name: a name of ASCII letters,
/// digits, `_` and `-` as it is; any other with every other character as `_`, then `_` and a hash
/// of the whole name, so two names never give the same token (`openai:gpt-4.1` →
/// `openai_gpt-4_1_…`). A token is valid in a subject, a consumer name and a KV key.
pub fn token(name: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.is_empty() && name.chars().all(plain) {
        return name.to_owned();
    }
    let readable: String = name
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    let hash = hash.simple().to_string();
    format!("{readable}_{}", &hash[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_every_name_from_one_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let s = Subjects::new("chorus");
        let tenant = Tenant::new("acme")?;
        let job: JobId = "0190f5c2-0000-7000-8000-000000000001".parse()?;
        assert_eq!(s.submit(&tenant), "chorus.submit.acme");
        assert_eq!(
            s.tenant_of_submit("chorus.submit.acme"),
            Some(tenant.clone())
        );
        assert_eq!(s.tenant_of_submit("chorus.submit.a.b"), None);
        let submitted = s.submit_flows().subject(None, Band::Interactive, &tenant);
        assert_eq!(submitted, "chorus.submit.interactive.acme");
        assert_eq!(s.tenant_of_submit(&submitted), Some(tenant.clone()));
        assert_eq!(
            s.flow_set_of(&submitted).as_deref(),
            Some("orchestrator-submit")
        );
        assert_eq!(
            s.queued_work(&submitted),
            Some((tenant.clone(), Queue::Intake))
        );
        assert_eq!(
            s.queued_work("chorus.submit.acme"),
            Some((tenant.clone(), Queue::Intake))
        );
        assert_eq!(
            s.queued_work("chorus.work.llm.limited.gpt-4o.batch.acme"),
            Some((tenant.clone(), Queue::Llm))
        );
        assert_eq!(
            s.queued_work("chorus.work.llm.fast.batch.acme"),
            Some((tenant.clone(), Queue::Llm))
        );
        assert_eq!(s.queued_work("chorus.work.evaluator"), None);
        let (route, flow) = s
            .llm_flow("chorus.work.llm.limited.gpt-4o.batch.acme")
            .expect("a flow");
        assert_eq!((route.as_str(), flow.band), ("gpt-4o", Band::Batch));
        let (route, _) = s
            .llm_flow("chorus.work.llm.fast.batch.acme")
            .expect("a flow");
        assert_eq!(route, "fast");
        let fast = s.llm_flows().subject(Some("fast"), Band::Batch, &tenant);
        assert_eq!(fast, "chorus.work.llm.fast.batch.acme");
        let event = s.event(Band::Batch, &tenant, job, EventKind::Step);
        assert_eq!(
            event,
            "chorus.events.batch.acme.0190f5c2-0000-7000-8000-000000000001.step"
        );
        let events = s.event_flows();
        let flow = events.flow(&event).expect("an event's flow");
        assert_eq!((flow.band, &flow.tenant), (Band::Batch, &tenant));
        assert_eq!(events.filter(&flow), "chorus.events.batch.acme.*.*");
        assert_eq!(events.consumer(&flow), "orchestrator-batch-acme");
        assert_eq!(events.all(), "chorus.events.*.*.*.*");
        assert_eq!(events.heads(), "chorus.events.*.*");
        // A doorbell rings with the flow's subject, without the job and kind.
        let head = events.subject(None, Band::Batch, &tenant);
        assert_eq!(events.flow_of_head(&head), Some(flow.clone()));
        assert_eq!(events.flow(&head), None);
        // An event published before flows (`events.<tenant>.<job>.<kind>`) is no flow's.
        assert_eq!(
            events.flow("chorus.events.acme.0190f5c2-0000-7000-8000-000000000001.step"),
            None
        );
        assert_eq!(
            s.flow_set_of(&events.filter(&flow)).as_deref(),
            Some("orchestrator")
        );
        assert_eq!(s.queued_work(&event), None);
        let evaluator = s.evaluator_flows();
        let request = evaluator.subject(None, Band::Interactive, &tenant);
        assert_eq!(request, "chorus.work.evaluator.interactive.acme");
        let flow = evaluator.flow(&request).expect("an evaluation's flow");
        assert_eq!(evaluator.consumer(&flow), "evaluator-interactive-acme");
        assert_eq!(s.flow_set_of(&request).as_deref(), Some("evaluator"));
        assert_eq!(evaluator.flow("chorus.work.evaluator"), None);
        assert_eq!(s.stream("work"), "CHORUS_WORK");
        assert_eq!(
            s.limited_llm_flows("gpt-4o")
                .subject(None, Band::Interactive, &tenant),
            "chorus.work.llm.limited.gpt-4o.interactive.acme"
        );
        assert_eq!(
            s.doorbell("chorus.work.llm.fast.batch.acme"),
            "chorus.doorbell.work.llm.fast.batch.acme"
        );
        assert_eq!(s.limited_llm_consumer("gpt-4o"), "llm-gpt-4o");
        assert_eq!(s.jobs_bucket(), "chorus_jobs");
        assert_eq!(s.jobs_stream(), "KV_chorus_jobs");
        assert_eq!(
            s.job_key_subject(&tenant, job),
            "$KV.chorus_jobs.acme.0190f5c2-0000-7000-8000-000000000001"
        );
        assert_eq!(s.rate_key("gpt"), "rate.gpt");
        assert_eq!(s.slot_key("gpt", 3), "slot.gpt.3");
        assert_eq!(s.cancelled_batch_key(&tenant, "b_1"), "batch.acme.b_1");
        Ok(())
    }

    #[test]
    fn flows_name_their_subjects_consumers_and_read_back() -> Result<(), Box<dyn std::error::Error>>
    {
        let s = Subjects::new("chorus");
        let acme = Tenant::new("acme")?;
        let flows = s.llm_flows();
        assert_eq!(flows.all(), "chorus.work.llm.*.*.*");
        let subject = flows.subject(Some("openai:gpt-4.1"), Band::Batch, &acme);
        let flow = flows.flow(&subject).ok_or("not a flow")?;
        assert_eq!(flow.band, Band::Batch);
        assert_eq!(flow.tenant, acme);
        assert_eq!(flow.lane.as_deref(), Some(token("openai:gpt-4.1").as_str()));
        assert_eq!(flows.filter(&flow), subject);
        assert_eq!(
            flows.consumer(&flow),
            format!("llm-{}-batch-acme", token("openai:gpt-4.1"))
        );
        // Not a flow: another band name, a bad tenant, too many or too few tokens, another base.
        for other in [
            "chorus.work.llm.fast.premium.acme",
            "chorus.work.llm.fast.batch.ACME",
            "chorus.work.llm.fast.batch.acme.x",
            "chorus.work.llm.fast.batch",
            "chorus.work.evaluator",
        ] {
            assert_eq!(flows.flow(other), None, "{other}");
        }
        let limited = s.limited_llm_flows("gpt");
        assert_eq!(limited.all(), "chorus.work.llm.limited.gpt.*.*");
        let flow = limited
            .flow("chorus.work.llm.limited.gpt.interactive.acme")
            .ok_or("not a flow")?;
        assert_eq!(limited.consumer(&flow), "llm-gpt-interactive-acme");
        // Flow consumers are counted under their flow set's name.
        assert_eq!(s.flow_set_of(&subject).as_deref(), Some("llm"));
        assert_eq!(
            s.flow_set_of("chorus.work.llm.limited.gpt.interactive.acme")
                .as_deref(),
            Some("llm-gpt")
        );
        assert_eq!(s.flow_set_of("chorus.work.evaluator"), None);
        // The unlimited set's filter never matches a limited route's flows, nor the reverse.
        assert_eq!(
            flows.flow("chorus.work.llm.limited.gpt.interactive.acme"),
            None
        );
        Ok(())
    }

    #[test]
    fn a_prefix_with_a_dash_names_streams_and_buckets_with_an_underscore() {
        let s = Subjects::new("team-a");
        assert_eq!(s.stream("work"), "TEAM_A_WORK");
        assert_eq!(s.jobs_bucket(), "team_a_jobs");
        assert_eq!(s.limits_bucket(), "team_a_limits");
        assert_eq!(s.cancels_bucket(), "team_a_cancels");
        assert_eq!(s.evaluator_flows().all(), "team-a.work.evaluator.*.*");
        assert_eq!(
            s.fill(r#"{"name": "KV_${bucket}_jobs", "subjects": ["$KV.${bucket}_jobs.>"], "s": "${PREFIX}_WORK", "f": "${prefix}.work.>"}"#),
            r#"{"name": "KV_team_a_jobs", "subjects": ["$KV.team_a_jobs.>"], "s": "TEAM_A_WORK", "f": "team-a.work.>"}"#
        );
        assert!(s.owns_stream("TEAM_A_WORK") && s.owns_stream("KV_team_a_jobs"));
        assert!(!s.owns_stream("TEAM_AB_WORK") && !s.owns_stream("KV_team_ab_jobs"));
        assert!(check_prefix("team-a").is_ok());
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(33)] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_name_gives_its_own_token_valid_in_subjects_consumers_and_keys() {
        assert_eq!(token("gpt-4o_mini"), "gpt-4o_mini");
        let names = [
            "a@b", "a+b", "a.b", "a_b", "a b", "a:b", "a*b", "a>b", "", "ü",
        ];
        let tokens: Vec<String> = names.iter().map(|n| token(n)).collect();
        let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{tokens:?}");
        for t in &tokens {
            assert!(
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{t}"
            );
        }
        assert!(token("openai:gpt-4.1").starts_with("openai_gpt-4_1_"));
        assert_eq!(token("a@b"), token("a@b"), "stable");
    }
}
