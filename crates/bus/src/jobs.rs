//! Job state in the `<prefix>_jobs` KV bucket, keyed `<tenant>.<job>`, written by compare-and-set.
//!
//! Any orchestrator pod can take any event of any job: it writes with the revision it read, and a
//! concurrent writer makes the write fail with [`Write::Conflict`] instead of losing an update.
//! [`JobStore::apply`] is the one read → apply → compare-and-set loop every writer of a job's
//! state goes through (the orchestrator, the edge's cancel): on a conflict it reads again and
//! re-applies.
//! Writes go straight to the key's subject with `Nats-Expected-Last-Subject-Sequence` (what a KV
//! update is) so they can carry the usual headers: the bucket's stream is then a stream of typed
//! job snapshots, which the persister consumes like any other.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{Operation, Store};
use chorus_core::codec::{self, headers};
use chorus_core::job::{self, Input, JobState, Transition};
use chorus_core::{JobId, Tenant};
use futures::{Stream, StreamExt};

use crate::{Bus, BusError};

#[derive(Clone)]
pub struct JobStore {
    bus: Bus,
    kv: Store,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("bucket", &self.kv.name)
            .finish()
    }
}

/// Where [`JobStore::apply`] starts from, when not from a fresh read.
#[derive(Debug, Default)]
pub struct Start<'a> {
    /// A copy of the state and its revision the caller kept (a cache): applied to without a
    /// read. An input that changes nothing on it is checked against the bucket before that is
    /// believed, since the copy may be stale and the input a duplicate of one applied elsewhere.
    pub cached: Option<(JobState, u64)>,
    /// The state to create when the job has none (a submission's queued state).
    pub new: Option<&'a JobState>,
    /// Create `new` without reading first (nothing else has stored it, in the common case); a
    /// conflict reads.
    pub assume_new: bool,
}

/// An input applied: the transition and the revision that holds its state (the one written,
/// or the one read when nothing changed).
#[derive(Debug)]
pub struct Applied {
    pub transition: Transition,
    pub revision: u64,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Stored; the new revision.
    Stored(u64),
    /// Someone else wrote first (or the key exists, for a create).
    Conflict,
}

impl JobStore {
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let kv = bus
            .js
            .get_key_value(bus.subjects.jobs_bucket())
            .await
            .map_err(|e| BusError::request("open the jobs bucket", e))?;
        Ok(Self {
            bus: bus.clone(),
            kv,
        })
    }

    /// The state and its revision.
    pub async fn get(
        &self,
        tenant: &Tenant,
        job: JobId,
    ) -> Result<Option<(JobState, u64)>, BusError> {
        let Some(entry) = self
            .kv
            .entry(self.bus.subjects.job_key(tenant, job))
            .await
            .map_err(|e| BusError::request(format!("read the state of job {job}"), e))?
        else {
            return Ok(None);
        };
        Ok(Some((decode(&entry.value)?, entry.revision)))
    }

    /// The job's current state (if any), then every later version with its revision, as they are
    /// written. Ends only when the watch fails.
    pub async fn watch(
        &self,
        tenant: &Tenant,
        job: JobId,
    ) -> Result<impl Stream<Item = Result<(JobState, u64), BusError>> + Send + use<>, BusError>
    {
        let watch = self
            .kv
            .watch_with_history(self.bus.subjects.job_key(tenant, job))
            .await
            .map_err(|e| BusError::request(format!("watch job {job}"), e))?;
        Ok(watch.filter_map(move |entry| async move {
            match entry {
                Ok(entry) if entry.operation == Operation::Put => {
                    Some(decode(&entry.value).map(|state| (state, entry.revision)))
                }
                Ok(_) => None,
                Err(e) => Some(Err(BusError::request(format!("watch job {job}"), e))),
            }
        }))
    }

    /// Stores a new job's state; [`Write::Conflict`] if the key exists.
    pub async fn create(&self, state: &JobState) -> Result<Write, BusError> {
        self.write(state, 0).await
    }

    /// Applies `input` to the job's state with [`job::apply`] and writes the result by
    /// compare-and-set, reading and re-applying after a conflict until it is stored: one KV write
    /// and no read in the common case with a [`Start::cached`] copy. A state that `input` does not
    /// change is not written (unless it is the new state to create). `None` when the job has no
    /// state and `start` none to create.
    pub async fn apply(
        &self,
        tenant: &Tenant,
        id: JobId,
        start: Start<'_>,
        input: &Input,
    ) -> Result<Option<Applied>, BusError> {
        let Start {
            mut cached,
            new,
            mut assume_new,
        } = start;
        let mut reloaded = false;
        loop {
            let from_cache = cached.is_some();
            let current = match cached.take() {
                Some(entry) => Some(entry),
                None if std::mem::take(&mut assume_new) => None,
                None => self.get(tenant, id).await?,
            };
            let (state, revision) = match (current, new) {
                (Some(current), _) => current,
                (None, Some(new)) => (new.clone(), 0),
                (None, None) => return Ok(None),
            };
            let transition = job::apply(&state, input.clone());
            if !transition.changed && from_cache && !reloaded {
                // Possibly a duplicate seen against a stale copy: check the bucket first.
                reloaded = true;
                continue;
            }
            if !transition.changed && revision != 0 {
                return Ok(Some(Applied {
                    transition,
                    revision,
                }));
            }
            match self.write(&transition.state, revision).await? {
                Write::Stored(revision) => {
                    return Ok(Some(Applied {
                        transition,
                        revision,
                    }));
                }
                Write::Conflict => reloaded = true,
            }
        }
    }

    async fn write(&self, state: &JobState, revision: u64) -> Result<Write, BusError> {
        let mut message_headers = HeaderMap::new();
        message_headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            revision.to_string().as_str(),
        );
        message_headers.insert(headers::TYPE, codec::type_header::<JobState>().as_str());
        message_headers.insert(headers::JOB, state.id.to_string().as_str());
        message_headers.insert(headers::TENANT, state.tenant.as_str());
        // The persister's span for this version is a child of the span that wrote it.
        if let Some(trace) = chorus_telemetry::trace::outgoing(state.trace.as_ref()) {
            message_headers.insert(headers::TRACEPARENT, trace.to_string().as_str());
        }
        let what = || format!("write the state of job {}", state.id);
        let body = codec::encode(state).map_err(|e| BusError::codec(what(), e))?;
        let subject = self.bus.subjects.job_key_subject(&state.tenant, state.id);
        let ack = self
            .bus
            .js
            .publish_with_headers(subject, message_headers, body)
            .await
            .map_err(|e| BusError::request(what(), e))?;
        match ack.await {
            Ok(ack) => Ok(Write::Stored(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Write::Conflict),
            Err(e) => Err(BusError::request(what(), e)),
        }
    }
}

fn decode(value: &[u8]) -> Result<JobState, BusError> {
    codec::decode(Some(&codec::type_header::<JobState>()), value)
        .map_err(|e| BusError::codec("decode a job state", e))
}
