//! Tenants' backlogs — the jobs and calls each has waiting in JetStream — for backlog quotas.
//!
//! Every waiting submission and llm call is on a subject naming its tenant (a JetStream
//! submitter's `<prefix>.submit.<tenant>`, a flow's `….<band>.<tenant>`), and the work streams are
//! work queues, so what a stream holds on a tenant's subjects is exactly that tenant's waiting
//! work. [`Backlogs::watch`] counts it from the streams' per-subject counts every
//! [`COUNT_EVERY`], the same numbers every process sees; what this process accepted since the
//! last count is added to it, so a burst between two counts cannot overshoot a quota by more
//! than what other processes accept in one interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_core::Tenant;
use chorus_core::subjects::Queue;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError};

/// How often the backlogs are counted again.
pub const COUNT_EVERY: Duration = Duration::from_secs(1);

/// One tenant's waiting work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Submissions not yet taken by an orchestrator.
    pub intake: u64,
    /// llm calls waiting in their flows (fetched by a process but not finished included).
    pub llm: u64,
}

impl Backlog {
    pub fn total(&self) -> u64 {
        self.intake + self.llm
    }

    fn add(&mut self, queue: Queue, n: u64) {
        match queue {
            Queue::Intake => self.intake += n,
            Queue::Llm => self.llm += n,
        }
    }
}

/// Every tenant's backlog as last counted, plus what this process accepted since.
#[derive(Debug, Default)]
pub struct Backlogs {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counted: HashMap<Tenant, Backlog>,
    accepted: HashMap<Tenant, Backlog>,
}

impl Backlogs {
    /// Counts the backlogs now and every [`COUNT_EVERY`] until `stop`.
    pub async fn watch(bus: Bus, stop: CancellationToken) -> Arc<Self> {
        let backlogs = Arc::new(Self::default());
        backlogs.recount(&bus).await;
        let watching = backlogs.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(COUNT_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => watching.recount(&bus).await,
                }
            }
        });
        backlogs
    }

    /// `tenant`'s waiting work.
    pub fn of(&self, tenant: &Tenant) -> Backlog {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut backlog = state.counted.get(tenant).copied().unwrap_or_default();
        if let Some(accepted) = state.accepted.get(tenant) {
            backlog.add(Queue::Intake, accepted.intake);
            backlog.add(Queue::Llm, accepted.llm);
        }
        backlog
    }

    /// Notes `n` pieces of `tenant`'s work this process just put in `queue`.
    pub fn accepted(&self, tenant: &Tenant, queue: Queue, n: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .accepted
            .entry(tenant.clone())
            .or_default()
            .add(queue, n);
    }

    /// Notes that this process took one of `tenant`'s submissions and queued its call: what it
    /// noted at intake moves to the llm stage, so the two are not counted twice.
    pub fn taken(&self, tenant: &Tenant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let accepted = state.accepted.entry(tenant.clone()).or_default();
        accepted.intake = accepted.intake.saturating_sub(1);
        accepted.llm += 1;
    }

    async fn recount(&self, bus: &Bus) {
        let prefix = bus.subjects.prefix();
        let streams = [
            (bus.subjects.stream("submit"), format!("{prefix}.submit.>")),
            (bus.subjects.stream("work"), format!("{prefix}.work.llm.>")),
        ];
        let mut counted: HashMap<Tenant, Backlog> = HashMap::new();
        for (stream, subjects) in streams {
            match count(bus, &stream, &subjects).await {
                Ok(counts) => {
                    for (subject, n) in counts {
                        if let Some((tenant, queue)) = bus.subjects.queued_work(&subject) {
                            counted.entry(tenant).or_default().add(queue, n);
                        }
                    }
                }
                // The last counts stand until the next try.
                Err(e) => {
                    tracing::warn!(%stream, error = %e, "cannot count the tenants' backlogs");
                    return;
                }
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.counted = counted;
        state.accepted.clear();
    }
}

/// The messages `stream` holds on each subject matching `subjects`.
pub(crate) async fn count(
    bus: &Bus,
    stream: &str,
    subjects: &str,
) -> Result<Vec<(String, u64)>, BusError> {
    let stream = bus
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| BusError::request("find a work stream", e))?;
    let mut info = stream
        .info_with_subjects(subjects)
        .await
        .map_err(|e| BusError::request("count a work stream's subjects", e))?;
    let mut counts = Vec::new();
    while let Some(entry) = info.next().await {
        let (subject, n) =
            entry.map_err(|e| BusError::request("count a work stream's subjects", e))?;
        counts.push((subject, n as u64));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_the_last_count_and_what_was_accepted_since() {
        let backlogs = Backlogs::default();
        let acme = Tenant::new("acme").expect("tenant");
        {
            let mut state = backlogs.state.lock().expect("state");
            state
                .counted
                .insert(acme.clone(), Backlog { intake: 10, llm: 5 });
        }
        backlogs.accepted(&acme, Queue::Intake, 3);
        backlogs.accepted(&acme, Queue::Llm, 1);
        assert_eq!(backlogs.of(&acme), Backlog { intake: 13, llm: 6 });
        assert_eq!(backlogs.of(&acme).total(), 19);
        backlogs.taken(&acme);
        assert_eq!(backlogs.of(&acme), Backlog { intake: 12, llm: 7 });
        let beta = Tenant::new("beta").expect("tenant");
        assert_eq!(backlogs.of(&beta), Backlog::default());
    }
}
