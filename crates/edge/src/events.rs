//! `GET /v1/jobs/{id}/events`: a job's lifecycle as Server-Sent Events.
//!
//! - `event: status`, data `{"id", "status", "version", "steps": [{"index", "kind", "persona",
//!   "route", "status"}], "updated_at", "waiting"?}`: sent first with the job's current state,
//!   then whenever the job's status or a step's status changes (a new version changing neither
//!   sends nothing); `waiting` (see [`crate::waiting`]) as it was when the event was sent.
//! - `event: done`, data the job's full record (what `GET /v1/jobs/{id}` answers): sent once the
//!   job's final state is committed in the database; then the stream ends. A job already committed
//!   gets only this event.
//! - A `:` comment every 15 s keeps idle connections open.
//!
//! An unknown job is a 404 before the stream starts. Progress comes from watching the job's key in
//! the jobs bucket; the end comes from the database, so, as everywhere in the API, a job reads as
//! finished only once it is committed: until then a final live state keeps the status last sent.
//! The persister's notification is subscribed to before the database is first read, so a commit
//! in between cannot be missed. That notification is core NATS (at most once), so once the live
//! state is final, or if the watch fails, the database is also polled every second.
//!
//! Tested by the unit tests below (summaries and their de-duplication) and by the end-to-end
//! suite at the workspace root, which follows real jobs.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chorus_bus::BusError;
use chorus_core::Tenant;
use chorus_core::auth::Caller;
use chorus_core::fair::Waiting;
use chorus_core::ids::JobId;
use chorus_core::job::{JobState, JobStatus, StepKind, StepStatus};
use chorus_store::JobRecord;
use futures::{Stream, StreamExt, stream};
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::Path;
use crate::jobs::{job_id, no_job};
use crate::openapi::ErrorBody;
use crate::state::AppState;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_secs(1);

type Watch = Pin<Box<dyn Stream<Item = Result<(JobState, u64), BusError>> + Send>>;

/// The job's lifecycle as Server-Sent Events: `status` events (a `StatusEvent` each), then one
/// `done` event with the stored job (a `JobRecord`), and the stream ends.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", operation_id = "streamJobEvents", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "`event: status` with a StatusEvent, then `event: done` with the JobRecord", body = StatusEvent, content_type = "text/event-stream"),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = job_id(&id)?;
    let tenant = &caller.tenant;

    let notify = state
        .bus
        .client
        .subscribe(state.bus.subjects.notify(tenant, job))
        .await
        .map_err(|e| ApiError::unavailable("NATS", e))?;
    let stored = state
        .store
        .get_job(tenant, job)
        .await
        .map_err(|e| ApiError::unavailable("the database", e))?;
    if let Some(record) = stored.as_ref().filter(|r| is_final(r)) {
        return Ok(sse(stream::iter(done(record))));
    }

    let watch = match state.jobs.watch(tenant, job).await {
        Ok(watch) => Some(watch.boxed()),
        // The database knows the job: follow it there alone.
        Err(e) if stored.is_some() => {
            tracing::warn!(error = %e, %job, "cannot watch the job-state bucket; polling the database");
            None
        }
        Err(e) => return Err(ApiError::unavailable("the job-state bucket", e)),
    };
    if stored.is_none() {
        let live = state
            .jobs
            .get(tenant, job)
            .await
            .map_err(|e| ApiError::unavailable("the job-state bucket", e))?;
        if live.is_none() {
            return Err(no_job(&id));
        }
    }

    let poll = watch.is_none().then(poll_timer);
    let follow = Follow {
        state,
        tenant: caller.tenant,
        job,
        notify: Some(notify),
        watch,
        poll,
        last: None,
        finished: false,
    };
    Ok(sse(stream::unfold(follow, |mut follow| async move {
        follow.next().await.map(|event| (event, follow))
    })))
}

/// An SSE response of `events`, with a comment every [`KEEP_ALIVE`] so proxies keep it open.
pub(crate) fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Response {
    Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// One follower's progress through a job.
struct Follow {
    state: AppState,
    tenant: Tenant,
    job: JobId,
    notify: Option<async_nats::Subscriber>,
    watch: Option<Watch>,
    /// Database polls, once the live state is final or a source has failed.
    poll: Option<tokio::time::Interval>,
    last: Option<StatusEvent>,
    finished: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            let watched = async {
                match self.watch.as_mut() {
                    Some(watch) => watch.next().await,
                    None => std::future::pending().await,
                }
            };
            let notified = async {
                match self.notify.as_mut() {
                    Some(notify) => notify.next().await,
                    None => std::future::pending().await,
                }
            };
            let polled = async {
                match self.poll.as_mut() {
                    Some(poll) => poll.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                watched = watched => {
                    match watched {
                        Some(Ok((live, _))) => {
                            if let Some(event) = self.progress(&live).await {
                                return Some(event);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, job = %self.job, "job-state watch failed; polling the database");
                            self.lost_watch();
                        }
                        None => self.lost_watch(),
                    }
                    continue;
                }
                notified = notified => {
                    if notified.is_none() {
                        self.notify = None;
                        self.poll.get_or_insert_with(poll_timer);
                    }
                }
                _ = polled => {}
            }
            if let Some(record) = self.committed().await {
                self.finished = true;
                return done(&record);
            }
        }
    }

    /// A `status` event for a new live state, unless it changes nothing a follower sees.
    async fn progress(&mut self, live: &JobState) -> Option<Event> {
        if live.status.is_terminal() {
            self.poll.get_or_insert_with(poll_timer);
        }
        let mut event = StatusEvent::of(live, self.last.as_ref());
        if self
            .last
            .as_ref()
            .is_some_and(|last| last.same_progress(&event))
        {
            return None;
        }
        event.waiting = crate::waiting::of(&self.state, live).await;
        let sent = status(&event);
        self.last = Some(event);
        sent
    }

    fn lost_watch(&mut self) {
        self.watch = None;
        self.poll.get_or_insert_with(poll_timer);
    }

    /// The job's record, once its final state is committed.
    async fn committed(&mut self) -> Option<JobRecord> {
        match self.state.store.get_job(&self.tenant, self.job).await {
            Ok(record) => record.filter(is_final),
            Err(e) => {
                tracing::warn!(error = %e, job = %self.job, "cannot read the job; retrying");
                self.poll.get_or_insert_with(poll_timer);
                None
            }
        }
    }
}

fn poll_timer() -> tokio::time::Interval {
    let mut timer = tokio::time::interval(POLL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

fn is_final(record: &JobRecord) -> bool {
    record.summary.status.is_terminal()
}

fn status(event: &StatusEvent) -> Option<Event> {
    json_event("status", event)
}

fn done(record: &JobRecord) -> Option<Event> {
    json_event("done", record)
}

fn json_event(name: &str, data: &impl Serialize) -> Option<Event> {
    match Event::default().event(name).json_data(data) {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a `{name}` event");
            None
        }
    }
}

/// The data of a `status` event.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatusEvent {
    id: JobId,
    status: JobStatus,
    version: u64,
    steps: Vec<StepSummary>,
    updated_at: String,
    /// Why and where the job waits, as it was when the event was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<Waiting>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StepSummary {
    index: u32,
    kind: StepKind,
    persona: Option<String>,
    route: String,
    status: StepStatus,
}

impl StatusEvent {
    /// The live state as a reader may see it: a final status is not shown before it is
    /// committed, so the status last sent (or `running`) stands in for it.
    fn of(live: &JobState, last: Option<&StatusEvent>) -> Self {
        let status = if live.status.is_terminal() {
            last.map_or(JobStatus::Running, |l| l.status)
        } else {
            live.status
        };
        Self {
            id: live.id,
            status,
            version: live.version,
            steps: live
                .steps
                .iter()
                .map(|s| StepSummary {
                    index: s.index,
                    kind: s.kind,
                    persona: s.persona.clone(),
                    route: s.route.clone(),
                    status: s.status,
                })
                .collect(),
            updated_at: chorus_store::view::rfc3339(live.updated_at),
            waiting: None,
        }
    }

    /// Same status and step statuses: nothing a follower needs to hear about.
    fn same_progress(&self, other: &Self) -> bool {
        self.status == other.status && self.steps == other.steps
    }
}

#[cfg(test)]
mod tests {
    use chorus_core::Tenant;
    use chorus_core::spec::JobSpec;
    use serde_json::json;

    use super::*;

    fn job() -> JobState {
        let spec: JobSpec = serde_json::from_value(json!({
            "model": "sim:echo",
            "prompt": "hello",
            "personas": [{"name": "cfo", "system": "You are the CFO."}],
        }))
        .unwrap();
        let tenant = Tenant::new("default").unwrap();
        JobState::new(JobId::new(), tenant, spec, 1_700_000_000_000, None)
    }

    #[test]
    fn status_event_has_the_documented_shape() {
        let live = job();
        let event = serde_json::to_value(StatusEvent::of(&live, None)).unwrap();
        assert_eq!(event["id"], json!(live.id.to_string()));
        assert_eq!(event["status"], "queued");
        assert_eq!(event["version"], json!(live.version));
        assert_eq!(event["updated_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(
            event["steps"][0],
            json!({"index": 0, "kind": "fanout", "persona": "cfo", "route": "sim:echo", "status": "pending"})
        );
    }

    #[test]
    fn only_status_or_step_changes_are_progress() {
        let mut live = job();
        let first = StatusEvent::of(&live, None);
        live.version += 1;
        live.updated_at += 5;
        assert!(StatusEvent::of(&live, Some(&first)).same_progress(&first));
        live.steps[0].status = StepStatus::Dispatched;
        assert!(!StatusEvent::of(&live, Some(&first)).same_progress(&first));
        live.status = JobStatus::Running;
        let running = StatusEvent::of(&live, Some(&first));
        assert!(!running.same_progress(&first));
        assert_eq!(running.status, JobStatus::Running);
    }

    #[test]
    fn a_final_live_status_is_not_shown_before_it_is_committed() {
        let mut live = job();
        live.status = JobStatus::Evaluating;
        let evaluating = StatusEvent::of(&live, None);
        live.status = JobStatus::Succeeded;
        let after = StatusEvent::of(&live, Some(&evaluating));
        assert_eq!(after.status, JobStatus::Evaluating);
        assert!(after.same_progress(&evaluating));
        assert_eq!(StatusEvent::of(&live, None).status, JobStatus::Running);
    }
}
