//! The JSON body extractor: size limit, content type, and errors that name the field.
//!
//! Syntax errors are 400 with line and column; a body that parses but does not fit the type
//! (wrong type, unknown or missing field) is 422 with the field's path, e.g. `personas[1].name`.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

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
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(value) => Ok(Self(value)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_data() {
                    let param = (path != ".").then_some(path);
                    let message = match &param {
                        Some(path) => format!("{path}: {inner}"),
                        None => inner.to_string(),
                    };
                    Err(ApiError::Invalid { message, param })
                } else {
                    Err(ApiError::BadRequest {
                        message: format!("malformed JSON: {inner}"),
                        param: None,
                        code: "invalid_json",
                    })
                }
            }
        }
    }
}
