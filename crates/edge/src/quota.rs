//! Backlog quotas at the edge: a submission that would take its tenant's waiting jobs and calls
//! past the tenant's quota is refused with `429` and `retry-after` before anything is published,
//! so one tenant cannot fill JetStream for everyone and nothing accepted is ever dropped.

use chorus_core::Tenant;
use chorus_core::subjects::Queue;

use crate::error::{ApiError, RETRY_QUEUED};
use crate::state::AppState;

/// Admits `adding` new jobs of `tenant` against its backlog quota, counting them as waiting.
pub fn admit(state: &AppState, tenant: &Tenant, adding: u64) -> Result<(), ApiError> {
    let quota = state.quotas.of(tenant);
    if adding > quota {
        return Err(ApiError::BadRequest {
            message: format!(
                "{adding} jobs at once are more than tenant {tenant}'s backlog quota of {quota}: \
                 split the batch"
            ),
            param: None,
            code: "over_quota",
        });
    }
    let queued = state.backlogs.of(tenant).total();
    if queued + adding > quota {
        metrics::counter!(chorus_telemetry::names::QUOTA_REFUSED, "via" => "edge")
            .increment(adding);
        return Err(ApiError::OverQuota {
            tenant: tenant.clone(),
            queued,
            adding,
            quota,
            retry_after: RETRY_QUEUED.as_secs(),
        });
    }
    state.backlogs.accepted(tenant, Queue::Intake, adding);
    Ok(())
}
