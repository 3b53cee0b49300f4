//! What every request handler shares.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::backlog::Backlogs;
use chorus_bus::budgets::{BudgetView, Budgets};
use chorus_bus::cancels::Cancels;
use chorus_bus::jobs::JobStore;
use chorus_core::Tenant;
use chorus_core::config::{DlqConfig, QueueQuotas};
use chorus_llm::Routes;
use chorus_store::Store;

use crate::auth::Auth;
use crate::probes::ProbeState;

#[derive(Clone)]
pub struct AppState {
    pub bus: Bus,
    pub jobs: JobStore,
    pub store: Store,
    pub routes: Arc<Routes>,
    /// Who may call what (API keys, scopes, per-key rates).
    pub auth: Arc<Auth>,
    pub body_limit: u64,
    /// Largest accepted batch input file, and most lines in one.
    pub file_limit: u64,
    pub batch_max_lines: usize,
    pub cancels: Cancels,
    pub max_wait: Duration,
    /// The replay cap and pace of `/v1/admin/dlq/replay`.
    pub dlq: DlqConfig,
    /// Tenants' waiting work, and how much each may have (`quota`).
    pub backlogs: Arc<Backlogs>,
    pub quotas: QueueQuotas,
    /// The tenants named in the configuration (for `chorus_tenant_inflight`).
    pub named: Arc<HashSet<Tenant>>,
    /// Spend budgets: the ledgers to change, and this process's mirror of them to read.
    pub budgets: Budgets,
    pub budget_view: BudgetView,
}

impl axum::extract::FromRef<AppState> for ProbeState {
    fn from_ref(state: &AppState) -> Self {
        ProbeState {
            bus: state.bus.clone(),
            store: Some(state.store.clone()),
            named: state.named.clone(),
        }
    }
}
