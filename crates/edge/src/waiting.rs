//! The `waiting` of a live job: why and where it waits, looked up in its flows when it is read.
//!
//! A job not yet taken by an orchestrator waits at intake, in its band's flow of its tenant's
//! submissions (or, from a JetStream submitter, on its tenant's submit subject). A job whose
//! call is dispatched waits in its route's flow of its tenant and band: for the route's limits
//! when it is next (or already held at them), else behind its own tenant's earlier calls — its
//! tenant's share. `position` counts the calls ahead of it in its flow, those a process holds
//! at the route's gate or runs included. A call a worker runs on a route without limits, and a
//! job between steps, do not wait. A job whose tenant's or key's budget is spent waits for the
//! budget (`budget: tenant acme is spent`): its next call will not be made.

use chorus_core::budget::Scope;
use chorus_core::fair::Waiting;
use chorus_core::job::{JobState, JobStatus, StepStatus};
use chorus_core::subjects::{Flow, FlowSubjects, token};

use crate::state::AppState;

/// Why and where `live` waits, if it does; `None` too when the flows cannot be read (the rest
/// of the job is still answered).
pub async fn of(state: &AppState, live: &JobState) -> Option<Waiting> {
    let mut waiting = place(state, live).await?;
    let key = live.key.clone().map(Scope::Key);
    let scopes: Vec<Scope> = [Some(Scope::Tenant(live.tenant.clone())), key]
        .into_iter()
        .flatten()
        .collect();
    if let Some(refusal) = state.budget_view.spent(&scopes) {
        waiting.reason = format!("budget: {} is spent", refusal.scope);
    }
    Some(waiting)
}

/// Where `live` waits in its flows, and for what.
async fn place(state: &AppState, live: &JobState) -> Option<Waiting> {
    let subjects = &state.bus.subjects;
    let flow = |lane: Option<String>| Flow {
        lane,
        band: live.band,
        tenant: live.tenant.clone(),
    };
    if live.status == JobStatus::Queued
        && live.steps.iter().all(|s| s.status == StepStatus::Pending)
    {
        let submit = subjects.submit_flows();
        let plain = (
            subjects.submit(&live.tenant),
            "orchestrator-submit".to_owned(),
        );
        let places = [flow_of(&submit, &flow(None)), plain];
        let (place, _) = locate(state, "submit", &places, live).await?;
        return Some(Waiting {
            reason: "intake".into(),
            band: live.band,
            route: None,
            position: place.position,
            queued: place.queued,
        });
    }
    let step = live
        .steps
        .iter()
        .find(|s| s.status == StepStatus::Dispatched)?;
    let limited = flow_of(&subjects.limited_llm_flows(&step.route), &flow(None));
    let unlimited = flow_of(&subjects.llm_flows(), &flow(Some(token(&step.route))));
    let (place, at) = locate(state, "work", &[limited, unlimited], live).await?;
    let is_limited = at == 0;
    let reason = match (is_limited, place.taken, place.position) {
        // Held at the route's gate, or next for it.
        (true, true, _) | (true, false, Some(0)) => format!("route {}: rate limit", step.route),
        // Taken on a route without limits: a worker runs it.
        (false, true, _) => return None,
        _ => "tenant share".into(),
    };
    Some(Waiting {
        reason,
        band: live.band,
        route: Some(step.route.clone()),
        position: place.position,
        queued: place.queued,
    })
}

/// A flow's subject and the durable consumer pulling it.
fn flow_of(flows: &FlowSubjects, flow: &Flow) -> (String, String) {
    (flows.filter(flow), flows.consumer(flow))
}

/// The first of `places` (subject, consumer) on `stream` holding `live`'s message, and which.
async fn locate(
    state: &AppState,
    stream: &str,
    places: &[(String, String)],
    live: &JobState,
) -> Option<(chorus_bus::waiting::Place, usize)> {
    let stream = state.bus.subjects.stream(stream);
    for (at, (subject, consumer)) in places.iter().enumerate() {
        match state.bus.place(&stream, subject, consumer, live.id).await {
            Ok(Some(place)) => return Some((place, at)),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, job = %live.id, "cannot place a waiting job");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::fair::Band;

    #[test]
    fn a_waiting_job_reads_as_documented() {
        let waiting = Waiting {
            reason: "route gpt: rate limit".into(),
            band: Band::Batch,
            route: Some("gpt".into()),
            position: Some(0),
            queued: 12,
        };
        assert_eq!(
            serde_json::to_value(&waiting).expect("json"),
            serde_json::json!({"reason": "route gpt: rate limit", "band": "batch",
                               "route": "gpt", "position": 0, "queued": 12})
        );
    }
}
