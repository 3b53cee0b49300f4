//! `/v1/admin/dlq`: list, show, replay and purge dead letters over HTTP.
//!
//! These are the operator's routes (the `admin` scope): dead letters of every tenant, through the
//! DLQ service ([`chorus_dlq::service`], which `chorus dlq` uses too). Every replay and purge that
//! is not a dry run is written to the audit log, with the caller recorded as
//! `key:<key id>@<tenant>` (`http:<peer address>` when authentication is off); dry runs change
//! nothing and are not audited. The database is checked before anything changes, so an
//! unaudited change is unlikely. A replay or purge runs in a task of its own, so a client that
//! disconnects mid-way (a paced replay can take a while) neither cuts it short nor skips its
//! audit row.

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use chorus_bus::dlq::{DlqError, DlqErrorKind, Filter};
use chorus_core::auth::Caller;
use chorus_dlq::report::ReplayOptions;
use chorus_dlq::select::{self, BadTime};
use chorus_dlq::service::{ChangeError, Dlq};
use chorus_dlq::view::Detail;
use chorus_store::StoreError;
use regex::Regex;
use serde::Deserialize;

use crate::error::{ApiError, Missing};
use crate::extract::{JsonBody, Path, Query};
use crate::openapi::{DeadLetterList, ErrorBody, PointInTime, PurgeAnswer, ReplayAnswer};
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;
/// The slowest and fastest replay paces a request may ask for, in replays per second.
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1_000.0;
/// The durations ago `since` and `until` are documented to take (`90s`, `2h`, `1h 30m`): whole
/// numbers with units up to weeks, at most four of them. `select::parse_time` takes every form
/// `humantime` reads; these are the ones the document promises.
pub const DURATION_AGO: &str = "^([0-9]{1,6} ?(nanos|nsec|ns|usec|us|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|w) ?){1,4}$";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// orchestrator, llm, evaluator or persister.
    #[param(value_type = Option<chorus_core::subjects::Stage>)]
    stage: Option<String>,
    /// The route of the failed call.
    route: Option<String>,
    /// The error kind (`max_deliveries`, `server_error`, …).
    kind: Option<String>,
    /// Failed at or after: RFC 3339, or a duration ago (`2h`).
    #[param(value_type = Option<PointInTime>)]
    since: Option<String>,
    /// Failed at or before: RFC 3339, or a duration ago.
    #[param(value_type = Option<PointInTime>)]
    until: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The body of `POST /v1/admin/dlq/replay` and `…/purge`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    stage: Option<String>,
    route: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Explicit DLQ sequences (the other criteria still apply).
    #[serde(default)]
    sequences: Vec<u64>,
    /// Required to select every entry (no criteria at all).
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
    /// Replays per second (replay only); `dlq.replay_rate` by default.
    rate: Option<f64>,
}

fn invalid(param: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(param, problem)
}

fn filter(
    stage: Option<&str>,
    route: Option<&str>,
    kind: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    sequences: Vec<u64>,
) -> Result<Filter, ApiError> {
    let time = |param: &str, text: Option<&str>| {
        text.map(|t| point_in_time(t).map_err(|e| invalid(param, e)))
            .transpose()
    };
    Ok(Filter {
        stage: stage
            .map(|s| select::parse_stage(s).map_err(|e| invalid("stage", e)))
            .transpose()?,
        route: route.map(str::to_owned),
        kind: kind.map(str::to_owned),
        since: time("since", since)?,
        until: time("until", until)?,
        sequences,
    })
}

fn dlq_error(e: DlqError) -> ApiError {
    match e.kind() {
        DlqErrorKind::Invalid => ApiError::Invalid {
            message: e.to_string(),
            param: None,
            code: "invalid_value",
        },
        DlqErrorKind::NotFound => match e {
            DlqError::NotADeadLetter { sequence, .. } => ApiError::NotFound {
                what: Missing::DeadLetter,
                id: sequence.to_string(),
            },
            e => ApiError::unavailable("NATS", e),
        },
        DlqErrorKind::Unavailable => ApiError::unavailable("NATS", e),
    }
}

/// `since` or `until`, in the forms the document promises ([`DURATION_AGO`]).
fn point_in_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, BadTime> {
    static DURATION: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(DURATION_AGO).ok());
    let documented = chrono::DateTime::parse_from_rfc3339(text).is_ok()
        || DURATION.as_ref().is_some_and(|d| d.is_match(text));
    if !documented {
        return Err(BadTime {
            input: text.to_owned(),
        });
    }
    select::parse_time(text)
}

/// Who the audit log names: the API key (`key:<id>@<tenant>`), or the peer address when
/// authentication is off.
pub(crate) fn actor(caller: &Caller, peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    match (&caller.key_id, peer) {
        (Some(key), _) => format!("key:{key}@{}", caller.tenant),
        (None, Some(Extension(ConnectInfo(addr)))) => format!("http:{addr}"),
        (None, None) => "http:unknown".into(),
    }
}

/// `GET /v1/admin/dlq`: entries oldest first, `limit` 1–1000 (default 100).
#[utoipa::path(
    get, path = "/v1/admin/dlq", operation_id = "listDeadLetters", tag = "admin", params(ListParams),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = DeadLetterList),
        (status = 422, description = "A bad filter or limit", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let filter = filter(
        params.stage.as_deref(),
        params.route.as_deref(),
        params.kind.as_deref(),
        params.since.as_deref(),
        params.until.as_deref(),
        Vec::new(),
    )?;
    let listing = Dlq::new(state.bus.clone())
        .list(&filter, limit)
        .await
        .map_err(dlq_error)?;
    Ok(Json(DeadLetterList {
        object: "list".into(),
        data: listing.entries,
        has_more: listing.more,
    }))
}

/// `GET /v1/admin/dlq/{seq}`: one entry with the original headers and body.
#[utoipa::path(
    get, path = "/v1/admin/dlq/{seq}", operation_id = "getDeadLetter", tag = "admin",
    params(("seq" = u64, Path, minimum = 1, description = "The entry's sequence in the DLQ stream")),
    responses(
        (status = 200, description = "The dead letter with the original headers and body", body = Detail),
        (status = 400, description = "Not a sequence number (a whole number from 1)", body = ErrorBody),
        (status = 404, description = "No dead letter there", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<Json<Detail>, ApiError> {
    let seq: u64 =
        seq.parse()
            .ok()
            .filter(|seq| *seq >= 1)
            .ok_or_else(|| ApiError::BadRequest {
                message: format!(
                    "seq: `{seq}` is not a DLQ sequence number (a whole number from 1)"
                ),
                param: Some("seq".into()),
                code: "invalid_value",
            })?;
    match Dlq::new(state.bus.clone()).show(seq).await {
        Ok(Some(detail)) => Ok(Json(detail)),
        Ok(None) => Err(ApiError::NotFound {
            what: Missing::DeadLetter,
            id: seq.to_string(),
        }),
        Err(e) => Err(dlq_error(e)),
    }
}

impl Selection {
    fn filter(&self) -> Result<Filter, ApiError> {
        let filter = filter(
            self.stage.as_deref(),
            self.route.as_deref(),
            self.kind.as_deref(),
            self.since.as_deref(),
            self.until.as_deref(),
            self.sequences.clone(),
        )?;
        if filter.is_everything() && !self.all {
            return Err(ApiError::Invalid {
                message: "select entries (stage, route, kind, since, until or sequences), or \
                          send `\"all\": true` to act on every entry"
                    .into(),
                param: None,
                code: "invalid_value",
            });
        }
        Ok(filter)
    }
}

/// A replay's or purge's error as an answer; a change done but not audited is logged loudly
/// with the row that could not be written.
fn change_error(actor: &str, e: ChangeError<StoreError>) -> ApiError {
    match e {
        ChangeError::Dlq(e) => dlq_error(e),
        e @ ChangeError::BadRate { .. } => ApiError::Invalid {
            message: e.to_string(),
            param: None,
            code: "invalid_value",
        },
        ChangeError::Unready(e) => ApiError::unavailable("the database (for the audit log)", e),
        ChangeError::Unrecorded {
            action,
            detail,
            source,
        } => {
            tracing::error!(%actor, action = action.as_str(), %detail, error = %source, "cannot write the audit log");
            ApiError::unavailable("the audit log", source)
        }
    }
}

/// `POST /v1/admin/dlq/replay`: republishes the selected entries, paced and within the replay
/// cap, and writes the audit log.
#[utoipa::path(
    post, path = "/v1/admin/dlq/replay", operation_id = "replayDeadLetters", tag = "admin", request_body = Selection,
    responses(
        (status = 200, description = "What was replayed, refused, failed or not attempted", body = ReplayAnswer),
        (status = 422, description = "A bad selection or rate", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    JsonBody(selection): JsonBody<Selection>,
) -> Result<Json<ReplayAnswer>, ApiError> {
    let filter = selection.filter()?;
    let options = ReplayOptions {
        max_replays: state.dlq.max_replays,
        rate: selection.rate.unwrap_or(state.dlq.replay_rate),
        dry_run: selection.dry_run,
    };
    if !(MIN_RATE..=MAX_RATE).contains(&options.rate) {
        return Err(invalid(
            "rate",
            format!("must be between {MIN_RATE} and {MAX_RATE} replays per second"),
        ));
    }
    let actor = actor(&caller, peer);
    let task = tokio::spawn(async move {
        let dlq = Dlq::new(state.bus.clone());
        let stop = std::future::pending();
        let done = dlq
            .replay(&state.store, &actor, &filter, options, stop)
            .await
            .map_err(|e| change_error(&actor, e))?;
        Ok(Json(ReplayAnswer {
            report: done.report,
            audit_id: done.audit_id,
        }))
    });
    task.await
        .map_err(|e| ApiError::unavailable("the replay", e))?
}

/// `POST /v1/admin/dlq/purge`: deletes the selected entries and writes the audit log.
#[utoipa::path(
    post, path = "/v1/admin/dlq/purge", operation_id = "purgeDeadLetters", tag = "admin", request_body = Selection,
    responses(
        (status = 200, description = "What was deleted or failed", body = PurgeAnswer),
        (status = 422, description = "A bad selection", body = ErrorBody),
    )
)]
pub async fn purge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    JsonBody(selection): JsonBody<Selection>,
) -> Result<Json<PurgeAnswer>, ApiError> {
    if selection.rate.is_some() {
        return Err(invalid("rate", "only replays are paced"));
    }
    let filter = selection.filter()?;
    let dry_run = selection.dry_run;
    let actor = actor(&caller, peer);
    let task = tokio::spawn(async move {
        let done = Dlq::new(state.bus.clone())
            .purge(&state.store, &actor, &filter, dry_run)
            .await
            .map_err(|e| change_error(&actor, e))?;
        Ok(Json(PurgeAnswer {
            report: done.report,
            audit_id: done.audit_id,
        }))
    });
    task.await
        .map_err(|e| ApiError::unavailable("the purge", e))?
}
