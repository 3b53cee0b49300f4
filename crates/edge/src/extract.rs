//! The extractors of every handler, each refusing a request in the API's error shape with the
//! parameter it is about, never with axum's plain-text rejections.
//!
//! - [`JsonBody`]: size limit and content type; syntax errors are 400 with line and column; a
//!   body that parses but does not fit the type (wrong type, unknown or missing field) is 422
//!   with the field's path, e.g. `personas[1].name`. A whole number written with a fraction
//!   (`2.0`) is an integer, as JSON Schema counts it (so `2.0` in `input` reads as `2`).
//! - [`Query`]: a query string that does not fit its type (wrong type, unknown parameter) is 400
//!   naming the parameter.
//! - [`Path`]: a path segment that is not UTF-8 once percent-decoded is 400 naming the parameter.
//! - [`Form`]: a `multipart/form-data` body without a boundary is 400.

use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use crate::error::ApiError;
use crate::state::AppState;

pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/json") {
            return Err(ApiError::BadRequest {
                message: format!("expected `Content-Type: application/json`, got `{content_type}`"),
                param: None,
                code: "unsupported_content_type",
            });
        }
        let limit = state.body_limit;
        let bytes = axum::body::to_bytes(request.into_body(), limit as usize)
            .await
            .map_err(|_| ApiError::TooLarge { limit })?;
        let mut value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
                message: format!("malformed JSON: {e}"),
                param: None,
                code: "invalid_json",
            })?;
        whole_numbers_as_integers(&mut value);
        serde_path_to_error::deserialize(value)
            .map(Self)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let param = (path != ".").then_some(path);
                let message = match &param {
                    Some(path) => format!("{path}: {inner}"),
                    None => inner.to_string(),
                };
                ApiError::Invalid {
                    message,
                    param,
                    code: "invalid_value",
                }
            })
    }
}

/// Rewrites every number that is whole but written with a fraction (`2.0`) as an integer, so
/// integer fields take it as JSON Schema says they should.
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                // Exactly representable in an i64 or a u64, else left as it is.
                let whole = if f < 0.0 {
                    Some(f as i64).filter(|i| *i as f64 == f).map(Number::from)
                } else {
                    Some(f as u64)
                        .filter(|u| f < 18_446_744_073_709_551_616.0 && *u as f64 == f)
                        .map(Number::from)
                };
                if let Some(whole) = whole {
                    *n = whole;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// The query string as `T`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Self).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let param = (path != ".").then_some(path);
            let message = match &param {
                Some(path) => format!("{path}: {inner}"),
                None => format!("the query string: {inner}"),
            };
            ApiError::BadRequest {
                message,
                param,
                code: "invalid_value",
            }
        })
    }
}

/// The path's parameters as `T`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let param = match &rejection {
                    PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                        ErrorKind::ParseErrorAtKey { key, .. }
                        | ErrorKind::InvalidUtf8InPathParam { key }
                        | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                Err(ApiError::BadRequest {
                    message: rejection.body_text(),
                    param,
                    code: "invalid_value",
                })
            }
        }
    }
}

/// A `multipart/form-data` body.
pub struct Form(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Multipart::from_request(request, state)
            .await
            .map(Self)
            .map_err(|rejection| ApiError::BadRequest {
                message: format!(
                    "expected a `multipart/form-data` body with a boundary: {}",
                    rejection.body_text()
                ),
                param: None,
                code: "invalid_multipart",
            })
    }
}
