//! Waiting for a job's final state to be committed, for a client that waits for the answer
//! (`/v1/chat/completions`, `POST /v1/jobs?wait`).
//!
//! A client is answered only once its job's final state is in the database. The persister
//! commits final states in the order the jobs bucket stored them, a transaction of up to
//! `persister.batch_size` at a time, so behind another tenant's flood of finished batch lines a
//! waiting client would wait for all of their commits. So the orchestrator says on
//! `<prefix>.finished.<tenant>.<job>` (core NATS) when a job's final state is in the bucket, and
//! if the persister has not committed it [`GRACE`] later, the waiter commits it itself, with the
//! persister's own forward-only upsert: the client is still answered only once its job is
//! stored, never behind other tenants' commits, and the persister's write of the same state
//! later changes nothing. A batch line's final state is left to the persister, which publishes
//! its result line; a write the database refuses is too (the persister stores the refusal).
//!
//! The persister's word (`<prefix>.notify.<tenant>.<job>`) carries the status it committed. A
//! `succeeded` word is answered with the bucket's final state, which is then exactly what was
//! committed, without reading the job back from the database; any other word, and the polls,
//! read the database.

use std::time::Duration;

use chorus_core::job::{JobState, JobStatus};
use chorus_core::{JobId, Tenant};
use futures::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;

/// How often the database is asked again without a word from the persister or the orchestrator
/// (a word missed: core NATS does not keep them).
const POLL: Duration = Duration::from_secs(1);

/// How long after the orchestrator's word the persister has to commit the final state before
/// the waiter does.
pub const GRACE: Duration = Duration::from_millis(50);

/// Waits for one job's final state to be committed.
pub struct Waiter {
    state: AppState,
    tenant: Tenant,
    job: JobId,
    notify: async_nats::Subscriber,
    finished: async_nats::Subscriber,
    deadline: tokio::time::Instant,
}

impl Waiter {
    /// Listens for `job`'s end until `deadline`. Call it before publishing the job, so neither
    /// word can come first.
    pub async fn listen(
        state: &AppState,
        tenant: &Tenant,
        job: JobId,
        deadline: tokio::time::Instant,
    ) -> Result<Self, ApiError> {
        let subjects = &state.bus.subjects;
        Ok(Self {
            notify: subscribe(state, subjects.notify(tenant, job)).await?,
            finished: subscribe(state, subjects.finished(tenant, job)).await?,
            state: state.clone(),
            tenant: tenant.clone(),
            job,
            deadline,
        })
    }

    /// The job's final state once it is committed; `None` past the deadline. A read that fails
    /// (the database or the bucket busy or briefly away) is asked again at the next poll: the job
    /// runs on regardless, so the caller is answered with the failure only if it lasts until the
    /// deadline.
    pub async fn finished(mut self) -> Result<Option<JobState>, ApiError> {
        let mut poll = tokio::time::interval(POLL);
        let mut failed = None;
        let mut grace = std::pin::pin!(tokio::time::sleep_until(self.deadline));
        let mut overdue = false;
        let mut told = false;
        loop {
            tokio::select! {
                Some(word) = self.notify.next() => {
                    if let Some(state) = self.committed_as_succeeded(&word.payload).await {
                        return Ok(Some(state));
                    }
                }
                Some(_) = self.finished.next(), if !told => {
                    told = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + GRACE);
                    continue;
                }
                () = &mut grace, if told && !overdue => overdue = true,
                _ = poll.tick() => {}
                _ = tokio::time::sleep_until(self.deadline) => {
                    return failed.map_or(Ok(None), Err);
                }
            }
            let answer = match self.committed().await {
                Ok(None) if overdue => self.commit().await,
                answer => answer,
            };
            match answer {
                Ok(Some(state)) => return Ok(Some(state)),
                Ok(None) => failed = None,
                Err(e) => failed = Some(e),
            }
        }
    }

    /// The job's final state when the persister's word (the status it committed) says
    /// `succeeded` and the bucket's final state agrees: what the persister committed, answered
    /// without reading the job back from the database. Only a refused snapshot makes the two
    /// differ, and it is committed as failed; any other word, or a read that fails, is left to
    /// [`Waiter::committed`].
    async fn committed_as_succeeded(&self, word: &[u8]) -> Option<JobState> {
        let status = std::str::from_utf8(word).ok().and_then(JobStatus::parse);
        if status != Some(JobStatus::Succeeded) {
            return None;
        }
        self.final_state()
            .await
            .ok()
            .flatten()
            .filter(|state| state.status == JobStatus::Succeeded)
    }

    /// The final state, if the job is committed as final.
    async fn committed(&self) -> Result<Option<JobState>, ApiError> {
        let stored = self
            .state
            .store
            .get_job(&self.tenant, self.job)
            .await
            .map_err(|e| ApiError::unavailable("the database", e))?;
        if !stored.is_some_and(|r| r.summary.status.is_terminal()) {
            return Ok(None);
        }
        self.final_state().await
    }

    /// Commits the job's final state from the jobs bucket, as the persister would: the state,
    /// once stored; `None` if there is none to commit here (see the module's documentation).
    async fn commit(&self) -> Result<Option<JobState>, ApiError> {
        let Some(state) = self.final_state().await?.filter(|s| s.origin.is_none()) else {
            return Ok(None);
        };
        match self.state.store.write_batch(vec![state.clone()]).await {
            Ok(_) => {
                tracing::debug!(job = %self.job, "committed a waiting client's job ahead of the persister");
                Ok(Some(state))
            }
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "cannot commit a waiting client's job; the persister will");
                Ok(None)
            }
        }
    }

    /// The job's state in the jobs bucket, if final.
    async fn final_state(&self) -> Result<Option<JobState>, ApiError> {
        let live = self
            .state
            .jobs
            .get(&self.tenant, self.job)
            .await
            .map_err(|e| ApiError::unavailable("the job-state bucket", e))?;
        Ok(live
            .map(|(state, _)| state)
            .filter(|s| s.status.is_terminal()))
    }

    pub fn job(&self) -> JobId {
        self.job
    }
}

/// Subscribes to `subject` (core NATS) for a request.
pub(crate) async fn subscribe(
    state: &AppState,
    subject: String,
) -> Result<async_nats::Subscriber, ApiError> {
    state
        .bus
        .client
        .subscribe(subject)
        .await
        .map_err(|e| ApiError::unavailable("NATS", e))
}
