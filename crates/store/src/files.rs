//! Uploaded files (`/v1/files`), kept whole in the database beside their metadata: a batch's
//! input must outlive the upload request and be readable by any pod, and the database is the one
//! store every pod shares. Metadata reads never load the content.
//!
//! The files a batch produces (`<batch id>-output`, `<batch id>-errors`) are not stored here;
//! they are assembled from the batch's jobs on request ([`Store::batch_output`]).

use chorus_core::ids::Tenant;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, DerivePartialModel, EntityTrait, QueryFilter};
use sea_orm::{IntoActiveModel, QuerySelect};
use serde::Serialize;
use uuid::Uuid;

use crate::entity::files;
use crate::lossless::StoredText;
use crate::{Store, StoreError};

/// A file to store.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// OpenAI's `purpose` (`batch` for batch input).
    pub purpose: String,
    pub filename: String,
    pub content: Vec<u8>,
    /// Requests in the file, as the uploader counted them (0 when not counted).
    pub line_count: u64,
}

/// A file as OpenAI's API shows it: `{"id", "object": "file", "bytes", "created_at",
/// "filename", "purpose"}` (`created_at` in Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    pub object: &'static str,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    /// Requests in the file, as the uploader counted them; not part of the JSON.
    #[serde(skip)]
    pub line_count: u64,
}

impl FileObject {
    /// A file object for content kept elsewhere (a batch's output file); `line_count` is 0.
    pub fn new(
        id: impl Into<String>,
        bytes: u64,
        created_at: i64,
        filename: impl Into<String>,
        purpose: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            object: "file",
            bytes,
            created_at,
            filename: filename.into(),
            purpose: purpose.into(),
            line_count: 0,
        }
    }
}

impl Store {
    /// Stores a file for `tenant` under a new id, `file-<uuid>`.
    #[tracing::instrument(name = "store.create_file", skip_all, fields(bytes = file.content.len()))]
    pub async fn create_file(
        &self,
        tenant: &Tenant,
        file: NewFile,
    ) -> Result<FileObject, StoreError> {
        let row = files::Model {
            id: format!("file-{}", Uuid::now_v7().simple()).into(),
            tenant: tenant.to_string(),
            purpose: file.purpose,
            filename: file.filename.into(),
            bytes: i64::try_from(file.content.len()).unwrap_or(i64::MAX),
            line_count: i64::try_from(file.line_count).unwrap_or(i64::MAX),
            content: file.content,
            created_at: Utc::now().trunc_subsecs(3),
        };
        let row = row.into_active_model().insert(&self.db).await?;
        file_object(FileRow {
            id: row.id,
            purpose: row.purpose,
            filename: row.filename,
            bytes: row.bytes,
            line_count: row.line_count,
            created_at: row.created_at,
        })
    }

    /// A file's metadata, if it exists for this tenant.
    pub async fn get_file(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Option<FileObject>, StoreError> {
        files::Entity::find_by_id(id)
            .filter(files::Column::Tenant.eq(tenant.as_str()))
            .into_partial_model::<FileRow>()
            .one(&self.db)
            .await?
            .map(file_object)
            .transpose()
    }

    /// A file's content, if it exists for this tenant.
    pub async fn file_content(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(files::Entity::find_by_id(id)
            .filter(files::Column::Tenant.eq(tenant.as_str()))
            .select_only()
            .column(files::Column::Content)
            .into_tuple::<Vec<u8>>()
            .one(&self.db)
            .await?)
    }
}

/// Every column but the content.
#[derive(DerivePartialModel)]
#[sea_orm(entity = "files::Entity")]
struct FileRow {
    id: StoredText,
    purpose: String,
    filename: StoredText,
    bytes: i64,
    line_count: i64,
    created_at: DateTime<Utc>,
}

fn file_object(row: FileRow) -> Result<FileObject, StoreError> {
    let count = |value: i64, what: &'static str| {
        u64::try_from(value).map_err(|_| StoreError::OutOfRange {
            what,
            value: value.into(),
        })
    };
    Ok(FileObject {
        line_count: count(row.line_count, "line count")?,
        ..FileObject::new(
            row.id,
            count(row.bytes, "size")?,
            row.created_at.timestamp(),
            row.filename,
            row.purpose,
        )
    })
}
