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
//! requests waiting on the job): a job reads as finished only once it is stored. A failed write
//! NAKs the whole batch with a growing delay; the events wait in JetStream until the database is
//! back.

use std::time::Duration;

use chorus_bus::{Bus, Delivery};
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
        match self.store.write_batch(states).await {
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
                tracing::error!(error = %e, events = deliveries.len(), ?delay, "cannot write a batch; redelivering");
                for delivery in deliveries {
                    let _ = delivery.nak(Some(delay)).await;
                }
            }
        }
    }
}
