//! The persister role: mirrors job states into the database in batches.
//!
//! It consumes the jobs bucket's stream, where every state version of every job is a complete
//! snapshot (a consumer that falls behind simply finds only the latest version of each job), and
//! `<prefix>.work.persister`, where snapshots replayed from the DLQ arrive. It stores a job's first
//! version (so it is listed at once) and its final one; the versions between are progress the
//! bucket itself serves to readers, and writing each would multiply the database work of a job by
//! its number of steps.
//!
//! Deliveries are buffered and written when the worker's queue runs dry or the batch is full, one
//! transaction per batch, then acknowledged together. Only after a job's final snapshot is
//! committed does the persister announce it on `<prefix>.notify.<tenant>.<job>` (core NATS, for
//! requests waiting on the job): a job reads as finished only once it is stored. A job that is a
//! batch line also gets its result line published on `<prefix>.results.<tenant>.<batch>` (for
//! JetStream submitters) before its snapshot is acknowledged.
//!
//! Failures follow the failure policy. While the database is unavailable the batch is retried in
//! place, its messages kept alive, for as long as the outage lasts. A batch the database refuses
//! is split in halves until the refused snapshot is found; its neighbours are committed, and the
//! refused job alone is stored as failed (`storage_rejected`, with the database's reason), its
//! snapshot filed in the DLQ, from where a replay after the cause is fixed stores it in full.

use std::collections::HashMap;

use chorus_bus::publish::Outgoing;
use chorus_bus::{Bus, BusError, Delivery};
use chorus_core::JobId;
use chorus_core::codec::{self, headers};
use chorus_core::job::JobState;
use chorus_core::subjects::Stage;
use chorus_store::{Committed, Store, StoreError};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::dlq::{Failure, dead_letter};
use crate::policy::{self, Classified, GaveUp, Verdict};
use crate::stage::{Handler, Next};

pub struct Persister {
    bus: Bus,
    store: Store,
    batch_size: usize,
    buffer: Vec<(Delivery, JobState)>,
    stop: CancellationToken,
}

impl Persister {
    pub fn new(bus: Bus, store: Store, batch_size: usize, stop: CancellationToken) -> Self {
        Self {
            bus,
            store,
            batch_size,
            buffer: Vec::with_capacity(batch_size),
            stop,
        }
    }
}

/// A job's first stored version (nothing settled yet) or its last.
fn is_milestone(state: &JobState) -> bool {
    state.status.is_terminal() || !state.steps.iter().any(|s| s.status.is_settled())
}

const STAGE: &str = "persister";

impl Handler for Persister {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        match codec::decode::<JobState>(delivery.header(headers::TYPE), delivery.payload()) {
            Ok(state) if !is_milestone(&state) => {
                let _ = delivery.ack().await;
                return Next::Done;
            }
            Ok(state) => self.buffer.push((delivery, state)),
            Err(e) => {
                let failure = Failure::undecodable(e);
                dead_letter(&self.bus, Stage::Persister, delivery, failure, &self.stop).await;
                return Next::Done;
            }
        }
        if self.buffer.len() >= self.batch_size {
            self.flush().await;
            Next::Done
        } else {
            Next::FlushSoon
        }
    }

    async fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.buffer);
        self.write(batch).await;
    }
}

impl Persister {
    /// Writes `batch` and settles its deliveries: see the module docs.
    fn write(&self, batch: Vec<(Delivery, JobState)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (deliveries, states): (Vec<Delivery>, Vec<JobState>) = batch.into_iter().unzip();
            let held: Vec<&Delivery> = deliveries.iter().collect();
            let what = format!("store a batch of {} job snapshots", states.len());
            let written = policy::persist(STAGE, &what, &held, &self.stop, || {
                self.store.write_batch(states.clone())
            })
            .await;
            let error = match written {
                Ok(committed) => {
                    let results = self.result_lines(&states);
                    self.settle(deliveries, results, committed).await;
                    return;
                }
                Err(GaveUp {
                    verdict: Verdict::Redeliver(delay),
                    ..
                }) => {
                    for delivery in deliveries {
                        let _ = delivery.nak(Some(delay)).await;
                    }
                    return;
                }
                Err(GaveUp { error, .. }) => error,
            };
            let mut batch: Vec<(Delivery, JobState)> = deliveries.into_iter().zip(states).collect();
            if batch.len() > 1 {
                tracing::info!(snapshots = batch.len(), %error, "the database refused a batch; splitting it to find the snapshot it refuses");
                let second = batch.split_off(batch.len() / 2);
                self.write(batch).await;
                self.write(second).await;
            } else if let Some((delivery, state)) = batch.pop() {
                self.reject(delivery, state, error).await;
            }
        })
    }

    /// Stores the job of a snapshot the database refuses as failed with the reason, announces
    /// it, and files the snapshot in the DLQ — the job's final one: an earlier snapshot is
    /// superseded by it (and the final one is refused too, or it replaces the failure).
    async fn reject(&self, delivery: Delivery, state: JobState, error: StoreError) {
        let reason = format!("the database refused to store the job: {error}");
        tracing::warn!(job = %state.id, %reason, "storing the job as failed");
        let what = format!("store job {} as refused", state.id);
        let stored = policy::persist(STAGE, &what, &[&delivery], &self.stop, || {
            self.store.write_rejected(&state, &reason)
        })
        .await;
        match stored {
            Ok(committed) => {
                // A batch line's result goes out once, with the job's final snapshot.
                let results = state
                    .origin
                    .as_ref()
                    .filter(|_| state.status.is_terminal())
                    .map(|origin| {
                        let line = chorus_store::results::error_line(
                            &origin.custom_id,
                            error.failure_kind(),
                            &reason,
                        );
                        self.result_message(&state, &origin.batch, &origin.custom_id, line)
                    })
                    .into_iter()
                    .collect();
                if let Err(delay) = self.publish_results(&[&delivery], results).await {
                    let _ = delivery.nak(Some(delay)).await;
                    return;
                }
                self.notify(&[committed]).await;
            }
            Err(GaveUp {
                verdict: Verdict::Redeliver(delay),
                ..
            }) => {
                let _ = delivery.nak(Some(delay)).await;
                return;
            }
            // Not even the failure can be stored: the snapshot goes to the DLQ all the same.
            Err(GaveUp { error, .. }) => {
                tracing::error!(job = %state.id, %error, "cannot store the job as failed either");
            }
        }
        if !state.status.is_terminal() {
            let _ = delivery.ack().await;
            return;
        }
        let failure = Failure::of(&error);
        dead_letter(&self.bus, Stage::Persister, delivery, failure, &self.stop).await;
    }

    /// Publishes the committed batch's result lines, announces its finished jobs, and
    /// acknowledges its snapshots.
    async fn settle(
        &self,
        deliveries: Vec<Delivery>,
        results: Vec<Outgoing>,
        done: Vec<Committed>,
    ) {
        let held: Vec<&Delivery> = deliveries.iter().collect();
        if let Err(delay) = self.publish_results(&held, results).await {
            for delivery in deliveries {
                let _ = delivery.nak(Some(delay)).await;
            }
            return;
        }
        self.notify(&done).await;
        for delivery in deliveries {
            let _ = delivery.ack().await;
        }
    }

    /// Publishes result lines under the failure policy. A line too large for the bus is
    /// replaced by an error line saying where the result is. `Err` is the delay after which the
    /// snapshots should come back (the process is draining).
    async fn publish_results(
        &self,
        held: &[&Delivery],
        results: Vec<Outgoing>,
    ) -> Result<(), std::time::Duration> {
        if results.is_empty() {
            return Ok(());
        }
        let bus = &self.bus;
        let what = "publish result lines";
        let published = policy::persist(STAGE, what, held, &self.stop, || {
            bus.publish_all(results.clone())
        })
        .await;
        match published {
            Ok(()) => Ok(()),
            Err(GaveUp {
                verdict: Verdict::Redeliver(delay),
                ..
            }) => Err(delay),
            // One line at a time, each too large one as an error line instead.
            Err(GaveUp { .. }) => {
                for message in results {
                    let single = policy::persist(STAGE, what, held, &self.stop, || {
                        bus.publish_all(vec![message.clone()])
                    })
                    .await;
                    match single {
                        Ok(()) => {}
                        Err(GaveUp {
                            verdict: Verdict::Redeliver(delay),
                            ..
                        }) => return Err(delay),
                        Err(GaveUp { error, .. }) => {
                            let replaced = too_large_line(message, &error);
                            let retried = policy::persist(STAGE, what, held, &self.stop, || {
                                bus.publish_all(vec![replaced.clone()])
                            })
                            .await;
                            if let Err(GaveUp { error, .. }) = retried {
                                tracing::error!(%error, "a result line cannot be published");
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Announces jobs whose final state is committed, to requests waiting on them.
    async fn notify(&self, done: &[Committed]) {
        for job in done {
            let subject = self.bus.subjects.notify(&job.tenant, job.job_id);
            let _ = self
                .bus
                .client
                .publish(subject, job.status.as_str().into())
                .await;
        }
    }

    /// The result lines of the batch lines among `states` that are final.
    fn result_lines(&self, states: &[JobState]) -> Vec<Outgoing> {
        let mut latest: HashMap<JobId, &JobState> = HashMap::new();
        for state in states.iter().filter(|s| s.status.is_terminal()) {
            let entry = latest.entry(state.id).or_insert(state);
            if entry.version < state.version {
                *entry = state;
            }
        }
        latest
            .into_values()
            .filter_map(|state| {
                let origin = state.origin.as_ref()?;
                let line = chorus_store::results::result_line(state)?;
                Some(self.result_message(state, &origin.batch, &origin.custom_id, line.json))
            })
            .collect()
    }

    fn result_message(
        &self,
        state: &JobState,
        batch: &str,
        custom_id: &str,
        line: String,
    ) -> Outgoing {
        let subject = self.bus.subjects.results(&state.tenant, batch);
        // Per version: a job reopened by a DLQ replay gets its new result out too.
        let id = format!("result:{}:{}", state.id, state.version);
        Outgoing::json(subject, &id, line.into_bytes())
            .header(headers::CUSTOM_ID, custom_id)
            .for_job(state.id, &state.tenant)
    }
}

/// The error line that stands for a result line too large for the bus.
fn too_large_line(message: Outgoing, error: &BusError) -> Outgoing {
    let custom_id = message
        .headers
        .get(headers::CUSTOM_ID)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let job = message
        .headers
        .get(headers::JOB)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let line = chorus_store::results::error_line(
        &custom_id,
        "result_too_large",
        &format!(
            "the result is stored, but too large to publish here ({error}): GET /v1/jobs/{job}"
        ),
    );
    Outgoing {
        payload: line.into_bytes().into(),
        ..message
    }
}
