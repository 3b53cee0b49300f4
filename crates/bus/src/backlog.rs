//! Tenants' backlogs — the jobs and calls each has waiting in JetStream — for backlog quotas.
//!
//! Every waiting submission and llm call is on a subject naming its tenant (a JetStream
//! submitter's `<prefix>.submit.<tenant>`, a flow's `….<band>.<tenant>`), and the work streams are
//! work queues, so what a stream holds on a tenant's subjects is exactly that tenant's waiting
//! work. [`Backlogs::watch`] counts it from the streams' per-subject counts every
//! [`COUNT_EVERY`], the same numbers every process sees; what this process accepted since the
//! last count is added to it, so a burst between two counts cannot overshoot a quota by more
//! than what other processes accept in one interval.
//!
//! JetStream counts messages per subject, not bytes, so a subject's bytes are estimated as its
//! count times the size of its last message: the work on one subject (a tenant's flow of one
//! band, or of one route) is of one kind, a batch's lines or one route's calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_core::Tenant;
use chorus_core::config::Quota;
use chorus_core::subjects::Queue;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError};

/// How often the backlogs are counted again.
pub const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Pieces of waiting work (jobs or calls) and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub lines: u64,
    pub bytes: u64,
}

impl Load {
    pub fn new(lines: u64, bytes: u64) -> Self {
        Self { lines, bytes }
    }

    fn add(&mut self, other: Load) {
        self.lines += other.lines;
        self.bytes += other.bytes;
    }

    fn sub(&mut self, other: Load) {
        self.lines = self.lines.saturating_sub(other.lines);
        self.bytes = self.bytes.saturating_sub(other.bytes);
    }

    /// What of `quota` adding `adding` to this would pass, if anything.
    pub fn over(self, adding: Load, quota: Quota) -> Option<Over> {
        if self.lines + adding.lines > quota.lines {
            return Some(Over::Lines {
                queued: self.lines,
                quota: quota.lines,
            });
        }
        (self.bytes + adding.bytes > quota.bytes).then_some(Over::Bytes {
            queued: self.bytes,
            quota: quota.bytes,
        })
    }
}

/// Which part of a tenant's backlog quota is used up, and how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    #[error("{queued} jobs and calls waiting and its backlog quota is {quota}")]
    Lines { queued: u64, quota: u64 },
    #[error("{queued} bytes of jobs and calls waiting and its backlog quota is {quota} bytes")]
    Bytes { queued: u64, quota: u64 },
}

/// One tenant's waiting work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Submissions not yet taken by an orchestrator.
    pub intake: Load,
    /// llm calls waiting in their flows (fetched by a process but not finished included).
    pub llm: Load,
}

impl Backlog {
    pub fn total(&self) -> Load {
        let mut total = self.intake;
        total.add(self.llm);
        total
    }

    fn add(&mut self, queue: Queue, load: Load) {
        match queue {
            Queue::Intake => self.intake.add(load),
            Queue::Llm => self.llm.add(load),
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

    /// Notes `load` of `tenant`'s work this process just put in `queue`.
    pub fn accepted(&self, tenant: &Tenant, queue: Queue, load: Load) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .accepted
            .entry(tenant.clone())
            .or_default()
            .add(queue, load);
    }

    /// Notes that this process took one of `tenant`'s submissions (of `bytes`) and queued its
    /// call: what it noted at intake moves to the llm stage, so the two are not counted twice.
    pub fn taken(&self, tenant: &Tenant, bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let accepted = state.accepted.entry(tenant.clone()).or_default();
        let one = Load::new(1, bytes);
        accepted.intake.sub(one);
        accepted.llm.add(one);
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
                            let bytes = n * last_size(bus, &stream, &subject).await;
                            counted
                                .entry(tenant)
                                .or_default()
                                .add(queue, Load::new(n, bytes));
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

/// The size of the last message `stream` holds on `subject` (headers and payload): what each of
/// its messages is taken to weigh. 0 when it cannot be read (gone meanwhile, or NATS busy): the
/// subject's bytes are counted again in a second.
async fn last_size(bus: &Bus, stream: &str, subject: &str) -> u64 {
    let Ok(stream) = bus.js.get_stream_no_info(stream).await else {
        return 0;
    };
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            crate::publish::header_bytes(&message.headers) + message.payload.len() as u64
        }
        Err(_) => 0,
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
            let counted = Backlog {
                intake: Load::new(10, 1000),
                llm: Load::new(5, 500),
            };
            state.counted.insert(acme.clone(), counted);
        }
        backlogs.accepted(&acme, Queue::Intake, Load::new(3, 300));
        backlogs.accepted(&acme, Queue::Llm, Load::new(1, 100));
        let backlog = |intake, llm| Backlog {
            intake: Load::new(intake, intake * 100),
            llm: Load::new(llm, llm * 100),
        };
        assert_eq!(backlogs.of(&acme), backlog(13, 6));
        assert_eq!(backlogs.of(&acme).total(), Load::new(19, 1900));
        backlogs.taken(&acme, 100);
        assert_eq!(backlogs.of(&acme), backlog(12, 7));
        let beta = Tenant::new("beta").expect("tenant");
        assert_eq!(backlogs.of(&beta), Backlog::default());
    }

    #[test]
    fn a_quota_is_over_by_lines_or_by_bytes() {
        let quota = Quota {
            lines: 10,
            bytes: 1000,
        };
        let queued = Load::new(9, 900);
        assert_eq!(queued.over(Load::new(1, 100), quota), None);
        assert_eq!(
            queued.over(Load::new(2, 10), quota),
            Some(Over::Lines {
                queued: 9,
                quota: 10
            })
        );
        assert_eq!(
            queued.over(Load::new(1, 101), quota),
            Some(Over::Bytes {
                queued: 900,
                quota: 1000
            })
        );
        assert_eq!(
            Over::Bytes {
                queued: 900,
                quota: 1000
            }
            .to_string(),
            "900 bytes of jobs and calls waiting and its backlog quota is 1000 bytes"
        );
    }
}
