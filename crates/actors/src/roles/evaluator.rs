//! The evaluator role: scores answers against a job's assertions and publishes the evaluation.
//!
//! Publishing is retried in place while NATS is unavailable (the failure policy); an evaluation
//! that can never be published (larger than the bus carries) fails its job with the reason.

use chorus_bus::{Bus, Delivery};
use chorus_core::codec::{self, headers};
use chorus_core::ids::{msg_id, now_millis};
use chorus_core::messages::EvalRequest;
use chorus_core::subjects::{EventKind, Stage};
use chorus_eval::Evaluator;
use tokio_util::sync::CancellationToken;

use crate::dlq::{Failure, dead_letter};

use crate::stage::{Handler, Next};

/// Compiled assertions each worker keeps.
const CACHE: usize = 1024;

pub struct EvalWorker {
    bus: Bus,
    evaluator: Evaluator,
    stop: CancellationToken,
}

impl EvalWorker {
    pub fn new(bus: Bus, stop: CancellationToken) -> Self {
        Self {
            bus,
            evaluator: Evaluator::new(CACHE),
            stop,
        }
    }
}

impl Handler for EvalWorker {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        let (bus, stop) = (&self.bus, &self.stop);
        let request: EvalRequest =
            match codec::decode(delivery.header(headers::TYPE), delivery.payload()) {
                Ok(request) => request,
                Err(e) => {
                    let failure = Failure::undecodable(e);
                    dead_letter(bus, Stage::Evaluator, delivery, failure, stop).await;
                    return Next::Done;
                }
            };
        let result = self.evaluator.evaluate(&request, now_millis());
        let id = msg_id::evaluation(request.job_id);
        let (job, tenant) = (request.job_id, &request.tenant);
        let published = super::publish_event(
            bus,
            Stage::Evaluator,
            stop,
            &delivery,
            job,
            tenant,
            EventKind::Evaluated,
            &id,
            &result,
        )
        .await;
        match published {
            Ok(()) => {
                let _ = delivery.ack().await;
            }
            Err(gave_up) => {
                if let Some((delivery, error)) = gave_up.give_back(delivery).await {
                    let at = (job, tenant, None);
                    super::abort_job(bus, Stage::Evaluator, stop, delivery, at, &error).await;
                }
            }
        }
        Next::Done
    }
}
