//! Backlog quotas at the edge: a submission that would take its tenant's waiting jobs and calls
//! (or their bytes) past the tenant's quota is refused with `429` and `retry-after` before
//! anything is published, so one tenant cannot fill JetStream for everyone and nothing accepted
//! is ever dropped.

use chorus_bus::backlog::{Load, Over};
use chorus_core::Tenant;
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
