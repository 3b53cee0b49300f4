//! Backlog quotas and spent budgets at the edge: a submission that would take its tenant's
//! waiting jobs and calls (or their bytes) past the tenant's quota is refused with `429` and
//! `retry-after` before anything is published, so one tenant cannot fill JetStream for everyone
//! and nothing accepted is ever dropped; one whose tenant's or key's budget is spent is refused
//! with `429` `budget_exceeded`, since none of its calls could be made.

use chorus_bus::backlog::{Load, Over};
use chorus_core::Tenant;
use chorus_core::auth::Caller;
use chorus_core::budget::Scope;
use chorus_core::subjects::Queue;

use crate::error::{ApiError, RETRY_QUEUED};
use crate::state::AppState;

/// Admits `adding` (new jobs and their bytes) of `tenant` against its backlog quota, counting
/// them as waiting.
pub fn admit(state: &AppState, tenant: &Tenant, adding: Load) -> Result<(), ApiError> {
    let quota = state.quotas.of(tenant);
    if let Some(over) = Load::default().over(adding, quota) {
        let what = match over {
            Over::Lines { quota, .. } => format!(
                "{} jobs at once are more than its quota of {quota}",
                adding.lines
            ),
            Over::Bytes { quota, .. } => format!(
                "{} bytes of jobs at once are more than its quota of {quota} bytes",
                adding.bytes
            ),
        };
        return Err(ApiError::BadRequest {
            message: format!("tenant {tenant}'s backlog quota: {what}: split the batch"),
            param: None,
            code: "over_quota",
        });
    }
    let queued = state.backlogs.of(tenant).total();
    if let Some(over) = queued.over(adding, quota) {
        metrics::counter!(chorus_telemetry::names::QUOTA_REFUSED, "via" => "edge")
            .increment(adding.lines);
        return Err(ApiError::OverQuota {
            tenant: tenant.clone(),
            over,
            adding: adding.lines,
            retry_after: RETRY_QUEUED.as_secs(),
        });
    }
    state.backlogs.accepted(tenant, Queue::Intake, adding);
    Ok(())
}

/// The budgets `caller`'s work is charged to: its tenant's, and its key's.
pub fn scopes(caller: &Caller) -> Vec<Scope> {
    let key = caller.key_id.clone().map(Scope::Key);
    [Some(Scope::Tenant(caller.tenant.clone())), key]
        .into_iter()
        .flatten()
        .collect()
}

/// Refuses work of `caller` when a budget it is charged to is spent (as this process last saw
/// it; the llm stage holds each call against the ledger itself).
pub fn within_budget(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    match state.budget_view.spent(&scopes(caller)) {
        Some(refusal) => {
            metrics::counter!(chorus_telemetry::names::BUDGET_REFUSED, "scope" => refusal.scope.kind())
                .increment(1);
            Err(ApiError::BudgetExceeded(Box::new(refusal)))
        }
        None => Ok(()),
    }
}
