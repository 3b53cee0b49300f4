//! `/v1/files`: batch input files in, batch output and error files out (OpenAI's Files API).
//!
//! An upload is `multipart/form-data` with `purpose=batch` and a `file` field holding JSONL, at
//! most `edge.file_limit` bytes and `edge.batch_max_lines` requests. Every line is checked (its
//! shape, its body, its routes, templates and assertions) before the file is stored; a file with
//! any bad line is refused whole, with the bad lines listed by number. A batch's output and error
//! files (`<batch>-output`, `<batch>-errors`) are not stored as files: they are read from the
//! batch's stored results in line order.

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chorus_core::auth::Caller;
use chorus_core::batch::file;
use chorus_eval::SpecValidator;
use chorus_store::{FileObject, NewFile};

use crate::error::{ApiError, Missing};
use crate::extract::{Form, Path};
use crate::openapi::{ErrorBody, FileUpload};
use crate::state::AppState;

/// Suffixes of the virtual files of a batch's results.
const OUTPUT: &str = "-output";
const ERRORS: &str = "-errors";

/// Upload a batch input file. Every line is checked before it is stored; a file with bad lines
/// is refused whole, each bad line listed by number.
#[utoipa::path(
    post, path = "/v1/files", operation_id = "createFile", tag = "files",
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The file object", body = FileObject),
        (status = 400, description = "A bad purpose, a missing or unknown part, or a file whose lines are not requests this installation takes (`invalid_file`, each line in `error.lines`)", body = ErrorBody),
        (status = 413, description = "Larger than edge.file_limit", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Form(mut multipart): Form,
) -> Result<Json<FileObject>, ApiError> {
    let mut purpose = None;
    let mut file: Option<(String, Vec<u8>)> = None;
    let limit = state.file_limit;
    while let Some(mut field) = multipart.next_field().await.map_err(bad_multipart)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(bad_multipart)?),
            Some("file") => {
                let filename = field.file_name().unwrap_or("input.jsonl").to_owned();
                let mut content = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                    if (content.len() + chunk.len()) as u64 > limit {
                        return Err(ApiError::TooLarge { limit });
                    }
                    content.extend_from_slice(&chunk);
                }
                file = Some((filename, content));
            }
            Some(other) => {
                return Err(ApiError::BadRequest {
                    message: format!("unknown form field `{other}`; send `purpose` and `file`"),
                    param: Some(other.to_owned()),
                    code: "invalid_value",
                });
            }
            None => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::BadRequest {
                message: format!("purpose: `{other}` is not supported; use `batch`"),
                param: Some("purpose".into()),
                code: "invalid_value",
            });
        }
        None => return Err(missing("purpose")),
    }
    let (filename, content) = file.ok_or_else(|| missing("file"))?;
    let validator = SpecValidator::new(&*state.routes);
    let lines = file::parse_file(&content, state.batch_max_lines, &validator)
        .map_err(ApiError::refused_file)?;
    let new = NewFile {
        purpose: "batch".into(),
        filename,
        line_count: lines.len() as u64,
        content,
    };
    let file = state
        .store
        .create_file(&caller.tenant, new)
        .await
        .map_err(|e| ApiError::unavailable("the database", e))?;
    Ok(Json(file))
}

/// A file object: an upload, or a batch's output (`<batch>-output`) or error file
/// (`<batch>-errors`).
#[utoipa::path(
    get, path = "/v1/files/{id}", operation_id = "retrieveFile", tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file object", body = FileObject),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    if let Some((batch, ok)) = result_file(&id) {
        let content = result_content(&state, &caller, &id, batch, ok).await?;
        let created_at = state
            .store
            .get_batch(&caller.tenant, batch)
            .await
            .map_err(|e| ApiError::unavailable("the database", e))?
            .map_or(0, |b| b.created_at);
        return Ok(Json(FileObject::new(
            id.clone(),
            content.len() as u64,
            created_at,
            format!("{id}.jsonl"),
            "batch_output",
        )));
    }
    state
        .store
        .get_file(&caller.tenant, &id)
        .await
        .map_err(|e| ApiError::unavailable("the database", e))?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// A file's content: JSONL.
#[utoipa::path(
    get, path = "/v1/files/{id}/content", operation_id = "downloadFile", tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "One JSON object per line", body = String, content_type = "application/jsonl"),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    )
)]
pub async fn content(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let content = match result_file(&id) {
        Some((batch, ok)) => result_content(&state, &caller, &id, batch, ok).await?,
        None => state
            .store
            .file_content(&caller.tenant, &id)
            .await
            .map_err(|e| ApiError::unavailable("the database", e))?
            .ok_or_else(|| not_found(&id))?,
    };
    Ok((
        [(header::CONTENT_TYPE, "application/jsonl")],
        Body::from(content),
    )
        .into_response())
}

/// `(batch, ok)` for the id of a batch's output (`ok`) or error file.
fn result_file(id: &str) -> Option<(&str, bool)> {
    if let Some(batch) = id.strip_suffix(OUTPUT) {
        return Some((batch, true));
    }
    id.strip_suffix(ERRORS).map(|batch| (batch, false))
}

/// The id of a batch's output or error file.
pub fn result_file_id(batch: &str, ok: bool) -> String {
    format!("{batch}{}", if ok { OUTPUT } else { ERRORS })
}

async fn result_content(
    state: &AppState,
    caller: &Caller,
    id: &str,
    batch: &str,
    ok: bool,
) -> Result<Vec<u8>, ApiError> {
    state
        .store
        .batch_output(&caller.tenant, batch, ok)
        .await
        .map_err(|e| ApiError::unavailable("the database", e))?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        what: Missing::File,
        id: id.to_owned(),
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::BadRequest {
        message: format!("{field}: required form field"),
        param: Some(field.into()),
        code: "missing_required_parameter",
    }
}

fn bad_multipart(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::BadRequest {
        message: format!("malformed multipart body: {}", e.body_text()),
        param: None,
        code: "invalid_multipart",
    }
}
