//! The persister role: mirrors job states into the database in batches.
//!
//! It consumes the jobs bucket's stream, where every state version of every job is a complete
//! snapshot (a consumer that falls behind simply finds only the latest version of each job). It
//! stores a job's first version (so it is listed at once) and its final one; the versions between
//! are progress the bucket itself serves to readers, and writing each would multiply the database
//! work of a job by its number of steps.
//! Deliveries are buffered and written when the worker's queue runs dry or the batch is full, one
//! transaction per batch, then acknowledged together. Only after a job's final snapshot is
//! committed does the persister announce it on `<prefix>.notify.<tenant>.<job>` (core NATS, for
//! requests waiting on the job): a job reads as finished only once it is stored. A job that is a
//! batch line also gets its result line published on `<prefix>.results.<tenant>.<batch>` (for
//! JetStream submitters) before its snapshot is acknowledged. A failed write
//! NAKs the whole batch with a growing delay; the events wait in JetStream until the database is
//! back.

use std::collections::HashMap;
use std::time::Duration;

use chorus_bus::publish::Outgoing;
use chorus_bus::{Bus, Delivery};
use chorus_core::JobId;
use chorus_core::codec::{self, headers};
use chorus_core::job::JobState;
use chorus_core::subjects::Stage;
use chorus_store::Store;

use crate::dlq::{Failure, dead_letter};
use crate::stage::{Handler, Next};

pub struct Persister {
    bus: Bus,
    store: Store,
    batch_size: usize,
    buffer: Vec<(Delivery, JobState)>,
    /// Consecutive failed writes, for the redelivery delay.
    failures: u32,
}

impl Persister {
    pub fn new(bus: Bus, store: Store, batch_size: usize) -> Self {
        Self {
            bus,
            store,
            batch_size,
            buffer: Vec::with_capacity(batch_size),
            failures: 0,
        }
    }
}

/// A job's first stored version (nothing settled yet) or its last.
fn is_milestone(state: &JobState) -> bool {
    state.status.is_terminal() || !state.steps.iter().any(|s| s.status.is_settled())
}

impl Persister {
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
                let subject = self.bus.subjects.results(&state.tenant, &origin.batch);
                // Per version: a job reopened by a DLQ replay gets its new result out too.
                let id = format!("result:{}:{}", state.id, state.version);
                Some(
                    Outgoing::json(subject, &id, line.json.into_bytes())
                        .header(headers::CUSTOM_ID, &origin.custom_id)
                        .for_job(state.id, &state.tenant),
                )
            })
            .collect()
    }
}

impl Handler for Persister {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        match codec::decode::<JobState>(delivery.header(headers::TYPE), delivery.payload()) {
            Ok(state) if !is_milestone(&state) => {
                let _ = delivery.ack().await;
                return Next::Done;
            }
            Ok(state) => self.buffer.push((delivery, state)),
            Err(e) => {
                dead_letter(
                    &self.bus,
                    Stage::Persister,
                    delivery,
                    Failure::undecodable(e),
                )
                .await;
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
        let (deliveries, states): (Vec<Delivery>, Vec<JobState>) = self.buffer.drain(..).unzip();
        let results = self.result_lines(&states);
        let written = match self.store.write_batch(states).await {
            Ok(committed) => match self.bus.publish_all(results).await {
                Ok(()) => Ok(committed),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(committed) => {
                self.failures = 0;
                for job in committed {
                    let subject = self.bus.subjects.notify(&job.tenant, job.job_id);
                    let _ = self
                        .bus
                        .client
                        .publish(subject, job.status.as_str().into())
                        .await;
                }
                for delivery in deliveries {
                    let _ = delivery.ack().await;
                }
            }
            Err(e) => {
                self.failures += 1;
                let delay = Duration::from_millis(500 * 2u64.pow(self.failures.min(6)))
                    .min(Duration::from_secs(30));
                tracing::error!(error = %e, events = deliveries.len(), ?delay, "cannot store a batch; redelivering");
                for delivery in deliveries {
                    let _ = delivery.nak(Some(delay)).await;
                }
            }
        }
    }
}
