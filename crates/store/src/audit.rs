//! The audit log: who changed dead letters (replayed or purged them) or API keys (created or
//! revoked them), when, and what exactly.
//!
//! Rows are only ever inserted. The detail is free-form JSON written by the caller (the filters,
//! the counts and the affected entries), so the log can grow new kinds of actions without a
//! migration.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use sea_orm::{QuerySelect, prelude::Json};
use serde::{Deserialize, Serialize};

use crate::entity::audit_log;
use crate::{Store, StoreError};

/// What an audited action did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    #[serde(rename = "dlq.replay")]
    DlqReplay,
    #[serde(rename = "dlq.purge")]
    DlqPurge,
    #[serde(rename = "key.create")]
    KeyCreate,
    #[serde(rename = "key.revoke")]
    KeyRevoke,
    #[serde(rename = "budget.set")]
    BudgetSet,
    #[serde(rename = "budget.remove")]
    BudgetRemove,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DlqReplay => "dlq.replay",
            Self::DlqPurge => "dlq.purge",
            Self::KeyCreate => "key.create",
            Self::KeyRevoke => "key.revoke",
            Self::BudgetSet => "budget.set",
            Self::BudgetRemove => "budget.remove",
        }
    }
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `user@host` for the command line, `key:<id>@<tenant>` (or `http:<peer address>` without
    /// authentication) for the admin API.
    pub actor: String,
    pub action: String,
    pub detail: Json,
}

impl From<audit_log::Model> for AuditRecord {
    fn from(row: audit_log::Model) -> Self {
        Self {
            id: row.id,
            at: row.at,
            actor: row.actor.into(),
            action: row.action,
            detail: row.detail.into(),
        }
    }
}

impl Store {
    /// Appends one action to the audit log and returns the stored row.
    #[tracing::instrument(name = "store.record_audit", skip_all, fields(action = action.as_str()))]
    pub async fn record_audit(
        &self,
        actor: &str,
        action: AuditAction,
        detail: Json,
    ) -> Result<AuditRecord, StoreError> {
        let row = audit_log::ActiveModel {
            id: ActiveValue::NotSet,
            // Milliseconds: what both backends store exactly.
            at: ActiveValue::Set(Utc::now().trunc_subsecs(3)),
            actor: ActiveValue::Set(actor.into()),
            action: ActiveValue::Set(action.as_str().to_owned()),
            detail: ActiveValue::Set(detail.into()),
        };
        Ok(row.insert(&self.db).await?.into())
    }

    /// The newest `limit` rows, optionally of one action, newest first.
    pub async fn audit_entries(
        &self,
        action: Option<AuditAction>,
        limit: u64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut query = audit_log::Entity::find();
        if let Some(action) = action {
            query = query.filter(audit_log::Column::Action.eq(action.as_str()));
        }
        let rows = query
            .order_by_desc(audit_log::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(AuditRecord::from).collect())
    }
}
