//! Where a job's waiting message stands in its flow, for the `waiting` of job reads.
//!
//! A flow is a work-queue subject served in order, so the messages ahead of a job's are those of
//! its subject with a lower sequence. JetStream counts a subject's messages but cannot count
//! them below a sequence, so the place is found by walking the subject from its head, one
//! message get per step, at most [`SCAN`] steps: a position past that is reported as unknown
//! (the flow's length still says how much waits).

use async_nats::jetstream::stream::RawMessageErrorKind;
use chorus_core::codec::headers;
use chorus_core::ids::JobId;

use crate::{Bus, BusError};

/// The most messages looked at to place one job.
pub const SCAN: usize = 256;

/// Where a job's message stands in its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The flow's messages ahead of it (taken by a process or not); `None` past [`SCAN`].
    pub position: Option<u64>,
    /// The flow's messages not yet taken by any process.
    pub queued: u64,
    /// A process has taken it (it waits at its route's gate, or runs).
    pub taken: bool,
}

impl Bus {
    /// The place of `job`'s first message on `subject` (a flow of `stream`, pulled by the
    /// durable `consumer`); `None` when it has no message there (none yet, or already done).
    pub async fn place(
        &self,
        stream: &str,
        subject: &str,
        consumer: &str,
        job: JobId,
    ) -> Result<Option<Place>, BusError> {
        let name = stream;
        let stream = self
            .js
            .get_stream_no_info(name)
            .await
            .map_err(|e| BusError::request("find a flow's stream", e))?;
        // Taken: every message up to the consumer's last delivery (none without a consumer).
        let (delivered, queued) = match stream.consumer_info(consumer).await {
            Ok(info) => (info.delivered.stream_sequence, info.num_pending),
            Err(_) => {
                let counts = crate::backlog::count(self, name, subject).await?;
                (0, counts.iter().map(|(_, n)| n).sum())
            }
        };
        let job = job.to_string();
        let mut next = 1;
        for ahead in 0..SCAN as u64 {
            let message = match stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.to_owned())
                .send()
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
                Err(e) => return Err(BusError::request("read a flow's message", e)),
            };
            let taken = message.sequence <= delivered;
            if message.headers.get(headers::JOB).map(|v| v.as_str()) == Some(job.as_str()) {
                return Ok(Some(Place {
                    position: Some(ahead),
                    queued,
                    taken,
                }));
            }
            next = message.sequence + 1;
        }
        Ok(Some(Place {
            position: None,
            queued,
            taken: false,
        }))
    }
}
