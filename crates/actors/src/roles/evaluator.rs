//! The evaluator role: scores answers against a job's assertions and publishes the evaluation.

use chorus_bus::{Bus, Delivery};
use chorus_core::codec::{self, headers};
use chorus_core::ids::{msg_id, now_millis};
use chorus_core::messages::EvalRequest;
use chorus_core::subjects::{EventKind, Stage};
use chorus_eval::Evaluator;

use crate::dlq::{Failure, dead_letter};
use crate::stage::{Handler, Next};

/// Compiled assertions each worker keeps.
const CACHE: usize = 1024;

pub struct EvalWorker {
    bus: Bus,
    evaluator: Evaluator,
}

impl EvalWorker {
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            evaluator: Evaluator::new(CACHE),
        }
    }
}

impl Handler for EvalWorker {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        let request: EvalRequest =
            match codec::decode(delivery.header(headers::TYPE), delivery.payload()) {
                Ok(request) => request,
                Err(e) => {
                    let failure = Failure::undecodable(e);
                    dead_letter(&self.bus, Stage::Evaluator, delivery, failure).await;
                    return Next::Done;
                }
            };
        let result = self.evaluator.evaluate(&request, now_millis());
        let id = msg_id::evaluation(request.job_id);
        let published = super::publish_event(
            &self.bus,
            &delivery,
            request.job_id,
            &request.tenant,
            EventKind::Evaluated,
            &id,
            &result,
        )
        .await;
        match published {
            Ok(()) => {
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, job = %request.job_id, "cannot publish an evaluation; retrying");
                let _ = delivery.nak(Some(std::time::Duration::from_secs(1))).await;
            }
        }
        Next::Done
    }
}
