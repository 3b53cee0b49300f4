//! `/v1/usage` and `/v1/admin/usage`: steps, tokens and cost over a time window, per day, API
//! key, route, model or (the operator's view) tenant, from the database ([`chorus_store::usage`]).
//!
//! `/v1/usage` (the `read` scope) is the caller's tenant's own usage; `/v1/admin/usage` (the
//! `admin` scope) is every tenant's, or one's. A step counts in the window it finished in, so a
//! job still running counts the calls it has made so far. Grouping by model maps each route to
//! the model it calls, as this installation's routes say now (a route no longer configured
//! counts under its own name), and sums the routes that call the same one.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use chorus_core::Tenant;
use chorus_core::auth::Caller;
use chorus_llm::Routes;
use chorus_llm::routes::SIM_PREFIX;
use chorus_store::view::rfc3339;
use chorus_store::{UsageGroup, UsageRow};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::error::ApiError;
use crate::extract::Query;
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// The window when a request names no `since`: the last 30 days.
const DEFAULT_DAYS: i64 = 30;
/// A tenant's name, as `Tenant::new` takes it.
const TENANT_PATTERN: &str = "^[a-z0-9_-]{1,64}$";

/// What usage is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroupBy {
    /// The UTC date the step finished (`YYYY-MM-DD`).
    Day,
    /// The id of the API key that submitted the job.
    Key,
    /// The route that answered (a fallback, when one did).
    Route,
    /// The model the route calls.
    Model,
    /// The tenant (`/v1/admin/usage` only).
    Tenant,
}

impl UsageGroupBy {
    /// What `/v1/usage` groups by.
    const OWN: [UsageGroupBy; 4] = [Self::Day, Self::Key, Self::Route, Self::Model];
    /// What `/v1/admin/usage` groups by.
    const ADMIN: [UsageGroupBy; 5] = [Self::Day, Self::Key, Self::Route, Self::Model, Self::Tenant];

    fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Key => "key",
            Self::Route => "route",
            Self::Model => "model",
            Self::Tenant => "tenant",
        }
    }

    /// `group_by` as one of `allowed`; `day` when absent.
    fn parse(text: Option<&str>, allowed: &[UsageGroupBy]) -> Result<Self, ApiError> {
        let Some(text) = text else {
            return Ok(Self::Day);
        };
        allowed
            .iter()
            .copied()
            .find(|g| g.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|g| g.as_str()).collect();
                ApiError::invalid(
                    "group_by",
                    format!("`{text}` is not one of {}", names.join(", ")),
                )
            })
    }

    /// How the store groups for it: a model's rows are its routes', summed here.
    fn store_group(self) -> UsageGroup {
        match self {
            Self::Day => UsageGroup::Day,
            Self::Key => UsageGroup::Key,
            Self::Route | Self::Model => UsageGroup::Route,
            Self::Tenant => UsageGroup::Tenant,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// `day` (the default), `key`, `route` or `model`.
    #[param(value_type = Option<OwnGroupBy>, inline)]
    group_by: Option<String>,
    /// The window's start (inclusive): an RFC 3339 time, or a date (`YYYY-MM-DD`, from its
    /// start in UTC). By default 30 days ago.
    #[param(value_type = Option<UsageTime>, inline)]
    since: Option<String>,
    /// The window's end (exclusive): an RFC 3339 time, or a date (`YYYY-MM-DD`, that whole day
    /// included). By default now.
    #[param(value_type = Option<UsageTime>, inline)]
    until: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminUsageParams {
    /// `day` (the default), `key`, `route`, `model` or `tenant`.
    #[param(value_type = Option<UsageGroupBy>)]
    group_by: Option<String>,
    /// The window's start (inclusive): an RFC 3339 time, or a date (`YYYY-MM-DD`, from its
    /// start in UTC). By default 30 days ago.
    #[param(value_type = Option<UsageTime>, inline)]
    since: Option<String>,
    /// The window's end (exclusive): an RFC 3339 time, or a date (`YYYY-MM-DD`, that whole day
    /// included). By default now.
    #[param(value_type = Option<UsageTime>, inline)]
    until: Option<String>,
    /// Only this tenant's usage.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    tenant: Option<String>,
}

/// `/v1/usage`'s `group_by` in the document: every grouping but `tenant`.
pub struct OwnGroupBy;

impl PartialSchema for OwnGroupBy {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(UsageGroupBy::OWN.map(UsageGroupBy::as_str)))
            .into()
    }
}

impl ToSchema for OwnGroupBy {}

/// `since` and `until` in the document: an RFC 3339 time, or a date.
pub struct UsageTime;

impl PartialSchema for UsageTime {
    fn schema() -> RefOr<Schema> {
        let string = |format| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
        };
        AnyOfBuilder::new()
            .item(string(KnownFormat::DateTime))
            .item(string(KnownFormat::Date))
            .into()
    }
}

impl ToSchema for UsageTime {}

/// Usage over a window, grouped.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// `usage`.
    pub object: &'static str,
    pub group_by: UsageGroupBy,
    /// The window as applied: from `since` (inclusive, RFC 3339)…
    pub since: String,
    /// …to `until` (exclusive), or up to now (null).
    pub until: Option<String>,
    /// One entry per group, sorted by group (jobs without a key first).
    pub data: Vec<UsageEntry>,
    /// Every group together.
    pub total: UsageFigures,
}

/// One group's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageEntry {
    /// The day (`YYYY-MM-DD`, UTC), key id, route, model or tenant; null for jobs submitted
    /// without a key (through JetStream, or with authentication off).
    pub group: Option<String>,
    #[serde(flatten)]
    pub usage: UsageFigures,
}

/// Steps, tokens and cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageFigures {
    /// Succeeded steps (calls answered).
    pub steps: u64,
    pub failed_steps: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The cost of the steps on priced routes, in US dollars.
    pub cost_usd: f64,
    /// Succeeded steps on routes without a price: their cost is not in `cost_usd`.
    pub unpriced_steps: u64,
}

impl From<&UsageRow> for UsageFigures {
    fn from(row: &UsageRow) -> Self {
        Self {
            steps: row.steps,
            failed_steps: row.failed_steps,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
            cost_usd: row.cost_usd,
            unpriced_steps: row.unpriced_steps,
        }
    }
}

/// The caller's tenant's usage over a window (by default the last 30 days): succeeded and
/// failed steps, tokens and cost, per UTC day, API key, route or model.
#[utoipa::path(
    get, path = "/v1/usage", operation_id = "getUsage", tag = "usage", params(UsageParams),
    responses(
        (status = 200, description = "The tenant's usage in the window, grouped", body = UsageReport),
        (status = 422, description = "A bad `group_by`, `since` or `until` (`param` names it)", body = ErrorBody),
    )
)]
pub async fn own(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let group_by = UsageGroupBy::parse(params.group_by.as_deref(), &UsageGroupBy::OWN)?;
    let window = Window::parse(params.since.as_deref(), params.until.as_deref())?;
    report(&state, Some(&caller.tenant), group_by, window)
        .await
        .map(Json)
}

/// Usage across tenants (or one's, with `tenant`) over a window: per UTC day, API key, route,
/// model or tenant.
#[utoipa::path(
    get, path = "/v1/admin/usage", operation_id = "getAdminUsage", tag = "admin", params(AdminUsageParams),
    responses(
        (status = 200, description = "Usage in the window across tenants, grouped", body = UsageReport),
        (status = 422, description = "A bad `group_by`, `since`, `until` or `tenant` (`param` names it)", body = ErrorBody),
    )
)]
pub async fn admin(
    State(state): State<AppState>,
    Query(params): Query<AdminUsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let group_by = UsageGroupBy::parse(params.group_by.as_deref(), &UsageGroupBy::ADMIN)?;
    let window = Window::parse(params.since.as_deref(), params.until.as_deref())?;
    let tenant = params
        .tenant
        .map(|t| {
            Tenant::new(t).map_err(|e| {
                ApiError::invalid("tenant", format!("{e}; it matches {TENANT_PATTERN}"))
            })
        })
        .transpose()?;
    report(&state, tenant.as_ref(), group_by, window)
        .await
        .map(Json)
}

/// The time window of a request.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
}

impl Window {
    fn parse(since: Option<&str>, until: Option<&str>) -> Result<Self, ApiError> {
        let since = match since {
            Some(text) => point("since", text, false)?,
            None => Utc::now() - TimeDelta::days(DEFAULT_DAYS),
        };
        let until = until.map(|text| point("until", text, true)).transpose()?;
        Ok(Self { since, until })
    }
}

/// `since` or `until`: an RFC 3339 time, or a date (`YYYY-MM-DD`) standing for its start in
/// UTC, or for an `end` the start of the day after (so the day is included). Kept within the
/// years 0000-9999, which both databases compare correctly.
fn point(param: &str, text: &str, end: bool) -> Result<DateTime<Utc>, ApiError> {
    let parsed = match DateTime::parse_from_rfc3339(text) {
        Ok(time) => Some(time.with_timezone(&Utc)),
        Err(_) => date(text)
            .and_then(|day| if end { day.succ_opt() } else { Some(day) })
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map(|start| start.and_utc()),
    };
    let earliest = NaiveDate::from_ymd_opt(0, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    let latest = NaiveDate::from_ymd_opt(9999, 12, 31).and_then(|d| d.and_hms_opt(23, 59, 59));
    match (parsed, earliest, latest) {
        (Some(time), Some(earliest), Some(latest)) => {
            Ok(time.clamp(earliest.and_utc(), latest.and_utc()))
        }
        _ => Err(ApiError::invalid(
            param,
            format!("`{text}` is neither an RFC 3339 time nor a date (YYYY-MM-DD)"),
        )),
    }
}

/// A date written exactly `YYYY-MM-DD`.
fn date(text: &str) -> Option<NaiveDate> {
    let digits = |range: std::ops::Range<usize>| {
        text.get(range)
            .is_some_and(|part| part.bytes().all(|b| b.is_ascii_digit()))
    };
    let shaped = text.len() == 10
        && digits(0..4)
        && text.get(4..5) == Some("-")
        && digits(5..7)
        && text.get(7..8) == Some("-")
        && digits(8..10);
    shaped
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
}

async fn report(
    state: &AppState,
    tenant: Option<&Tenant>,
    group_by: UsageGroupBy,
    window: Window,
) -> Result<UsageReport, ApiError> {
    let rows = state
        .store
        .usage(tenant, group_by.store_group(), window.since, window.until)
        .await
        .map_err(|e| ApiError::unavailable("the database", e))?;
    let rows = match group_by {
        UsageGroupBy::Model => by_model(&state.routes, rows),
        _ => rows,
    };
    let mut total = UsageRow::default();
    for row in &rows {
        total.add(row);
    }
    Ok(UsageReport {
        object: "usage",
        group_by,
        since: rfc3339(window.since.timestamp_millis()),
        until: window.until.map(|u| rfc3339(u.timestamp_millis())),
        data: rows
            .iter()
            .map(|row| UsageEntry {
                group: row.group.clone(),
                usage: row.into(),
            })
            .collect(),
        total: (&total).into(),
    })
}

/// Rows per route summed per model, sorted by model.
fn by_model(routes: &Routes, rows: Vec<UsageRow>) -> Vec<UsageRow> {
    let mut models: BTreeMap<Option<String>, UsageRow> = BTreeMap::new();
    for row in rows {
        let model = row.group.as_deref().map(|route| model_of(routes, route));
        let sum = models.entry(model.clone()).or_insert_with(|| UsageRow {
            group: model,
            ..UsageRow::default()
        });
        sum.add(&row);
    }
    models.into_values().collect()
}

/// The model `route` calls: its configured model, the simulator's kind for an ad-hoc `sim:`
/// route (without its options), or the route's own name when it no longer resolves.
fn model_of(routes: &Routes, route: &str) -> String {
    match routes.resolve(route) {
        Ok(resolved) if route.starts_with(SIM_PREFIX) => resolved
            .model
            .split_once('?')
            .map_or(resolved.model.clone(), |(kind, _)| kind.to_owned()),
        Ok(resolved) => resolved.model,
        Err(_) => route.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates() {
        let t = |text: &str, end: bool| point("since", text, end).map(|t| t.to_rfc3339()).ok();
        assert_eq!(
            t("2024-03-01T10:00:00+02:00", false).as_deref(),
            Some("2024-03-01T08:00:00+00:00")
        );
        assert_eq!(
            t("2024-03-01", false).as_deref(),
            Some("2024-03-01T00:00:00+00:00")
        );
        assert_eq!(
            t("2024-02-29", true).as_deref(),
            Some("2024-03-01T00:00:00+00:00"),
            "an `until` date includes its day"
        );
        // Every form of RFC 3339 the document's `date-time` allows.
        for good in [
            "2024-03-01t10:00:00z",
            "2016-12-31T23:59:60Z",
            "2024-03-01T10:00:00.123456789123-00:00",
            "0000-01-01T00:00:00+23:59",
        ] {
            assert!(t(good, false).is_some(), "{good}");
        }
        for bad in [
            "yesterday",
            "2024-3-1",
            "2024-02-30",
            "+12024-01-01",
            "2024-03-01T10:00",
            "",
        ] {
            assert_eq!(t(bad, false), None, "{bad}");
        }
        assert_eq!(
            t("9999-12-31", true).as_deref(),
            Some("9999-12-31T23:59:59+00:00"),
            "kept within the years both databases compare"
        );
    }

    #[test]
    fn group_by_is_one_of_those_allowed() {
        assert_eq!(
            UsageGroupBy::parse(None, &UsageGroupBy::OWN).ok(),
            Some(UsageGroupBy::Day)
        );
        assert_eq!(
            UsageGroupBy::parse(Some("model"), &UsageGroupBy::OWN).ok(),
            Some(UsageGroupBy::Model)
        );
        assert!(UsageGroupBy::parse(Some("tenant"), &UsageGroupBy::OWN).is_err());
        assert_eq!(
            UsageGroupBy::parse(Some("tenant"), &UsageGroupBy::ADMIN).ok(),
            Some(UsageGroupBy::Tenant)
        );
    }

    #[test]
    fn routes_are_summed_per_model() {
        let config = chorus_core::config::RouteConfig::new("fast", "sim", "echo");
        let routes = Routes::new(&[config]).expect("routes");
        let row = |group: &str, steps: u64, cost: f64| UsageRow {
            group: Some(group.to_owned()),
            steps,
            cost_usd: cost,
            ..UsageRow::default()
        };
        let summed = by_model(
            &routes,
            vec![
                row("fast", 1, 0.5),
                row("gone", 2, 0.0),
                row("sim:echo", 3, 0.25),
                row("sim:echo?latency=5ms", 4, 0.0),
                row("sim:lorem", 5, 0.0),
            ],
        );
        let summary: Vec<(Option<&str>, u64, f64)> = summed
            .iter()
            .map(|r| (r.group.as_deref(), r.steps, r.cost_usd))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("echo"), 8, 0.75),
                (Some("gone"), 2, 0.0),
                (Some("lorem"), 5, 0.0)
            ]
        );
    }
}
