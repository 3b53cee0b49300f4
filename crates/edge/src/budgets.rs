//! Spend budgets over HTTP: `GET /v1/budgets` shows a caller the budgets its work is charged to
//! (its tenant's and its key's); `/v1/admin/budgets` lists every budget and sets or removes one
//! live (every process watches the ledger bucket, so a change holds at once), each change written
//! to the audit log.

use std::net::SocketAddr;

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use chorus_bus::BusError;
use chorus_core::auth::Caller;
use chorus_core::budget::{Limit, Period, Scope, Source, Statement};
use chorus_store::AuditAction;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::admin::actor;
use crate::error::{ApiError, Missing};
use crate::extract::{JsonBody, Path};
use crate::openapi::ErrorBody;
use crate::quota::scopes;
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetList {
    pub object: &'static str,
    pub data: Vec<Statement>,
}

/// The body of `PUT /v1/admin/budgets/{scope}/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Dollars per period.
    #[schema(minimum = 0)]
    pub usd: f64,
    /// `month` (the calendar month, UTC) or a length of whole units from seconds to weeks
    /// (`30d`, `12h`, `1w 2d`); default: the budget's current period, else `month`.
    #[schema(
        pattern = r"^(month|([1-9][0-9]{0,5} ?(s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?|w|weeks?) ?){1,4})$"
    )]
    pub period: Option<String>,
}

/// What a budget covers, in a path.
#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Tenant,
    Key,
}

fn unavailable(e: BusError) -> ApiError {
    ApiError::unavailable("the budgets bucket", e)
}

/// `GET /v1/budgets`: the budgets the caller's work is charged to, read from the ledger.
#[utoipa::path(
    get, path = "/v1/budgets", operation_id = "listOwnBudgets", tag = "budgets",
    responses((status = 200, description = "The caller's tenant's budget and its key's, those that exist", body = BudgetList))
)]
pub async fn own(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<BudgetList>, ApiError> {
    let mut data = Vec::new();
    for scope in scopes(&caller) {
        if let Some(ledger) = state.budgets.get(&scope).await.map_err(unavailable)? {
            data.push(ledger.statement(&scope));
        }
    }
    Ok(Json(BudgetList {
        object: "list",
        data,
    }))
}

/// `GET /v1/admin/budgets`: every budget.
#[utoipa::path(
    get, path = "/v1/admin/budgets", operation_id = "listBudgets", tag = "admin",
    responses((status = 200, description = "Every budget, tenants' then keys'", body = BudgetList))
)]
pub async fn list(State(state): State<AppState>) -> Json<BudgetList> {
    let data = state
        .budget_view
        .all()
        .iter()
        .map(|(scope, ledger)| ledger.statement(scope))
        .collect();
    Json(BudgetList {
        object: "list",
        data,
    })
}

fn scope_of(kind: ScopeKind, id: &str) -> Result<Scope, ApiError> {
    let kind = match kind {
        ScopeKind::Tenant => "tenant",
        ScopeKind::Key => "key",
    };
    Scope::parse(kind, id).map_err(|e| ApiError::invalid("id", e))
}

/// `GET /v1/admin/budgets/{scope}/{id}`: one budget, read from the ledger.
#[utoipa::path(
    get, path = "/v1/admin/budgets/{scope}/{id}", operation_id = "getBudget", tag = "admin",
    params(
        ("scope" = inline(ScopeKind), Path, description = "`tenant` or `key`"),
        ("id" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The tenant, or the key's id"),
    ),
    responses(
        (status = 200, description = "The budget", body = Statement),
        (status = 404, description = "No such budget", body = ErrorBody),
        (status = 422, description = "An id that is not a tenant's name or a key's id", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Path((kind, id)): Path<(ScopeKind, String)>,
) -> Result<Json<Statement>, ApiError> {
    let scope = scope_of(kind, &id)?;
    let ledger = state.budgets.get(&scope).await.map_err(unavailable)?;
    ledger
        .map(|ledger| Json(ledger.statement(&scope)))
        .ok_or_else(|| no_budget(&scope))
}

fn no_budget(scope: &Scope) -> ApiError {
    ApiError::NotFound {
        what: Missing::Budget,
        id: scope.to_string(),
    }
}

/// `PUT /v1/admin/budgets/{scope}/{id}`: sets a budget's limit (and period), keeping what its
/// period spent; audited as `budget.set`.
#[utoipa::path(
    put, path = "/v1/admin/budgets/{scope}/{id}", operation_id = "setBudget", tag = "admin",
    params(
        ("scope" = inline(ScopeKind), Path, description = "`tenant` or `key`"),
        ("id" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The tenant, or the key's id"),
    ),
    request_body = SetBudget,
    responses(
        (status = 200, description = "The budget as it now is", body = Statement),
        (status = 422, description = "An id, amount or period of the wrong form", body = ErrorBody),
    )
)]
pub async fn set(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((kind, id)): Path<(ScopeKind, String)>,
    JsonBody(body): JsonBody<SetBudget>,
) -> Result<Json<Statement>, ApiError> {
    let scope = scope_of(kind, &id)?;
    if !(body.usd.is_finite() && body.usd >= 0.0) {
        return Err(ApiError::invalid("usd", "must be a number of dollars >= 0"));
    }
    let before = state.budgets.get(&scope).await.map_err(unavailable)?;
    let period = match body.period.as_deref() {
        Some(text) => Period::parse(text).map_err(|e| ApiError::invalid("period", e))?,
        None => before.as_ref().map_or(Period::Month, |l| l.limit.period),
    };
    let limit = Limit {
        usd: body.usd,
        period,
    };
    let ledger = state
        .budgets
        .define(&scope, limit, Source::Admin)
        .await
        .map_err(unavailable)?;
    let detail = json!({"scope": scope, "limit": limit, "before": before.map(|l| l.limit)});
    audit(
        &state,
        &actor(&caller, peer),
        AuditAction::BudgetSet,
        detail,
    )
    .await?;
    Ok(Json(ledger.statement(&scope)))
}

/// `DELETE /v1/admin/budgets/{scope}/{id}`: removes a budget (its calls are no longer limited);
/// audited as `budget.remove`.
#[utoipa::path(
    delete, path = "/v1/admin/budgets/{scope}/{id}", operation_id = "removeBudget", tag = "admin",
    params(
        ("scope" = inline(ScopeKind), Path, description = "`tenant` or `key`"),
        ("id" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The tenant, or the key's id"),
    ),
    responses(
        (status = 200, description = "The budget as it was", body = Statement),
        (status = 404, description = "No such budget", body = ErrorBody),
        (status = 422, description = "An id that is not a tenant's name or a key's id", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((kind, id)): Path<(ScopeKind, String)>,
) -> Result<Json<Statement>, ApiError> {
    let scope = scope_of(kind, &id)?;
    let removed = state
        .budgets
        .remove(&scope)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| no_budget(&scope))?;
    let detail = json!({"scope": scope, "limit": removed.limit});
    audit(
        &state,
        &actor(&caller, peer),
        AuditAction::BudgetRemove,
        detail,
    )
    .await?;
    Ok(Json(removed.statement(&scope)))
}

/// Writes a change to the audit log; a change the log cannot take is reported, not hidden.
async fn audit(
    state: &AppState,
    actor: &str,
    action: AuditAction,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    state
        .store
        .record_audit(actor, action, detail)
        .await
        .map(drop)
        .map_err(|e| {
            tracing::error!(%actor, action = action.as_str(), error = %e, "a budget change is not in the audit log");
            ApiError::unavailable("the database (the budget changed, but its audit row was not written)", e)
        })
}
