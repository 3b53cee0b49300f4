//! The process wiring: a Chorus process built from its configuration — the configuration loaded,
//! NATS connected and its definitions applied, the database opened (and migrated), and the roles
//! asked for started under one supervision tree ([`start`], [`serve`]).
//!
//! The composition root: the only crate that knows every role. The `chorus` command line calls
//! it, and so do the tests that run Chorus in-process.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chorus_actors::http::HttpRole;
use chorus_actors::roles::{self, ActorsError, Context};
use chorus_actors::{Role, Runtime, RuntimeError};
use chorus_bus::backlog::Backlogs;
use chorus_bus::budgets::Budgets;
use chorus_bus::cancels::Cancels;
use chorus_bus::definitions::{Applied, DefinitionError, Definitions, SingleReplica};
use chorus_bus::jobs::JobStore;
use chorus_bus::{Bus, BusError};
use chorus_core::Tenant;
use chorus_core::config::{Config, ConfigError, DatabaseConfig, DatabaseUrlError, EdgeConfig};
use chorus_core::ids::InvalidTenant;
use chorus_edge::AppState;
use chorus_edge::auth::{Auth, AuthMode};
use chorus_edge::probes::ProbeState;
use chorus_llm::{Routes, RoutesError};
use chorus_store::{Store, StoreError};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why roles could not be started, or stopped the process.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error("routes: {0}")]
    Routes(#[source] RoutesError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// A role needs the database and it was not opened (a bug in choosing which roles need it).
    #[error("the database is not open")]
    NoDatabase,
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Listen {
        addr: SocketAddr,
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tenant(#[from] InvalidTenant),
    #[error(transparent)]
    Role(#[from] ActorsError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Why the database could not be opened for a role.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error(transparent)]
    Url(#[from] DatabaseUrlError),
    #[error("cannot open the database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot migrate the database: {source}")]
    Migrate {
        #[source]
        source: StoreError,
    },
    #[error("cannot read the database's migrations: {source}")]
    Migrations {
        #[source]
        source: StoreError,
    },
    #[error(
        "the database {url} lacks {} migration(s) of this version ({}): run `chorus migrate` \
         first, or set database.auto_migrate = true",
        pending.len(),
        pending.join(", ")
    )]
    NotMigrated { url: String, pending: Vec<String> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    Edge,
    Orchestrator,
    Llm,
    Evaluator,
    Persister,
}

impl RoleName {
    pub const ALL: [RoleName; 5] = [
        Self::Edge,
        Self::Orchestrator,
        Self::Llm,
        Self::Evaluator,
        Self::Persister,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Orchestrator => "orchestrator",
            Self::Llm => "llm",
            Self::Evaluator => "evaluator",
            Self::Persister => "persister",
        }
    }
}

/// A `--roles` entry that names no role.
#[derive(Debug, thiserror::Error)]
#[error("unknown role `{name}`; roles are {}", RoleName::ALL.map(RoleName::as_str).join(", "))]
pub struct UnknownRole {
    pub name: String,
}

impl FromStr for RoleName {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| UnknownRole { name: s.into() })
    }
}

pub fn load_config(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let config = Config::load(file)?;
    chorus_telemetry::init(&config.log);
    #[cfg(feature = "faults")]
    if config.faults.is_enabled() {
        tracing::warn!(faults = ?config.faults, "FAULT INJECTION IS ON: this configuration is for tests only");
    }
    Ok(config)
}

pub async fn connect(config: &Config, name: &str) -> Result<Bus, BusError> {
    Bus::connect_config(&config.nats, name).await
}

/// Creates or updates the configured streams and consumers, as every process does at start-up:
/// streams of one replica on a clustered server are applied with a warning.
pub async fn apply_definitions(
    config: &Config,
    bus: &Bus,
) -> Result<Vec<Applied>, DefinitionError> {
    apply_definitions_with(config, bus, SingleReplica::Warn).await
}

/// [`apply_definitions`], with `single` deciding about streams of one replica on a clustered
/// server (`chorus nats apply` refuses them unless told otherwise).
pub async fn apply_definitions_with(
    config: &Config,
    bus: &Bus,
    single: SingleReplica,
) -> Result<Vec<Applied>, DefinitionError> {
    Definitions::configured(&config.nats)?
        .apply_with(bus, single)
        .await
}

/// Opens the database and migrates it; with `migrate` false, checks instead that every migration
/// of this version is applied, so a role never runs against a schema it does not know.
pub async fn open_store(config: &DatabaseConfig, migrate: bool) -> Result<Store, DatabaseError> {
    let url = config.connect_url()?;
    let store = Store::connect(url.expose_secret(), config.max_connections)
        .await
        .map_err(|source| DatabaseError::Open {
            url: config.redacted_url(),
            source,
        })?;
    if migrate {
        store
            .migrate()
            .await
            .map_err(|source| DatabaseError::Migrate { source })?;
    } else {
        let pending = store
            .pending_migrations()
            .await
            .map_err(|source| DatabaseError::Migrations { source })?;
        if !pending.is_empty() {
            return Err(DatabaseError::NotMigrated {
                url: config.redacted_url(),
                pending,
            });
        }
    }
    Ok(store)
}

/// Runs `roles` until SIGTERM or ctrl-c. `listener` is the edge's, bound by the caller when it
/// wants to know the port before start-up; otherwise `edge.listen` is bound here.
pub async fn serve(
    config: Config,
    roles: &[RoleName],
    listener: Option<TcpListener>,
) -> Result<(), StartError> {
    let stop = shutdown_signal();
    let runtime = start(config, roles, listener).await?;
    Ok(runtime.run_until(stop).await?)
}

/// Connects, prepares NATS and the database, and starts the roles (downstream first).
pub async fn start(
    config: Config,
    roles: &[RoleName],
    mut listener: Option<TcpListener>,
) -> Result<Runtime, StartError> {
    chorus_telemetry::metrics_handle();
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let bus = connect(&config, &format!("chorus {}", names.join(","))).await?;
    for applied in apply_definitions(&config, &bus).await? {
        tracing::debug!(%applied, "definition");
    }
    // Only the llm role calls providers: the others start where no API key is mounted.
    let routes = match roles.contains(&RoleName::Llm) {
        true => Routes::new(&config.routes),
        false => Routes::without_credentials(&config.routes),
    };
    let routes = Arc::new(routes.map_err(StartError::Routes)?);
    let budgets = Budgets::open(&bus).await?;
    budgets.apply_config(&config.tenant_budgets()).await?;
    let needs_db = roles
        .iter()
        .any(|r| matches!(r, RoleName::Edge | RoleName::Persister));
    let store = match needs_db {
        true => Some(open_store(&config.database, config.database.auto_migrate).await?),
        false => None,
    };
    let config = Arc::new(config);
    // Tenants' backlogs, for the quotas the edge and the orchestrator's intake hold them to;
    // counted until the runtime ends (or start-up fails: the guard drops).
    let counting = CancellationToken::new();
    let backlogs = match roles
        .iter()
        .any(|r| matches!(r, RoleName::Edge | RoleName::Orchestrator))
    {
        true => Backlogs::watch(bus.clone(), counting.clone()).await,
        false => Arc::default(),
    };
    let counting = counting.drop_guard();
    let named = Arc::new(config.named_tenants());
    let ctx = Context {
        config: config.clone(),
        bus: bus.clone(),
        routes: routes.clone(),
        backlogs: backlogs.clone(),
    };
    // Refusals over backlog quotas are counted from 0, so their rate reads 0 rather than nothing.
    for (role, via) in [
        (RoleName::Edge, "edge"),
        (RoleName::Orchestrator, "jetstream"),
    ] {
        if roles.contains(&role) {
            metrics::counter!(chorus_telemetry::names::QUOTA_REFUSED, "via" => via).increment(0);
        }
    }
    // And refusals over budgets, where they happen: at the edge and at each call.
    if roles
        .iter()
        .any(|r| matches!(r, RoleName::Edge | RoleName::Llm))
    {
        for scope in ["tenant", "key"] {
            metrics::counter!(chorus_telemetry::names::BUDGET_REFUSED, "scope" => scope)
                .increment(0);
        }
    }
    // And the edge's publishes JetStream could not take at once (elections, a stalled stream).
    if roles.contains(&RoleName::Edge) {
        for outcome in ["retried", "gave_up"] {
            metrics::counter!(chorus_telemetry::names::PUBLISH_RETRIES, "outcome" => outcome)
                .increment(0);
        }
    }
    let mut started: Vec<Box<dyn Role>> = Vec::new();
    for role in [
        RoleName::Persister,
        RoleName::Evaluator,
        RoleName::Llm,
        RoleName::Orchestrator,
        RoleName::Edge,
    ] {
        if !roles.contains(&role) {
            continue;
        }
        let store = || store.clone().ok_or(StartError::NoDatabase);
        started.push(match role {
            RoleName::Persister => {
                let store = store()?;
                #[cfg(feature = "faults")]
                let store = store.with_faults(&config.faults);
                Box::new(roles::persister(&ctx, store))
            }
            RoleName::Evaluator => Box::new(roles::evaluator(&ctx)?),
            RoleName::Llm => Box::new(roles::llm(&ctx).await?),
            RoleName::Orchestrator => Box::new(roles::orchestrator(&ctx).await?),
            RoleName::Edge => {
                let listener = match listener.take() {
                    Some(listener) => listener,
                    None => TcpListener::bind(config.edge.listen)
                        .await
                        .map_err(|source| StartError::Listen {
                            addr: config.edge.listen,
                            setting: "edge.listen",
                            source,
                        })?,
                };
                // It commits waiting clients' jobs when the persister is behind: the same
                // database, refusing the same snapshots.
                let store = store()?;
                #[cfg(feature = "faults")]
                let store = store.with_faults(&config.faults);
                Box::new(HttpRole::new(
                    "edge",
                    listener,
                    chorus_edge::router(AppState {
                        bus: bus.clone(),
                        jobs: JobStore::open(&bus).await?,
                        store,
                        routes: routes.clone(),
                        auth: Arc::new(edge_auth(&config.edge)?),
                        body_limit: config.edge.body_limit.as_u64(),
                        file_limit: config.edge.file_limit.as_u64(),
                        batch_max_lines: config.edge.batch_max_lines,
                        cancels: Cancels::open(&bus).await?,
                        max_wait: config.edge.max_wait,
                        dlq: config.dlq.clone(),
                        backlogs: backlogs.clone(),
                        quotas: config.queue_quotas(),
                        named: named.clone(),
                        budget_view: budgets.watch().await?,
                        budgets: budgets.clone(),
                    }),
                    config.supervision.drain_timeout,
                ))
            }
        });
    }
    // Dead letters from MAX_DELIVERIES advisories: the DLQ watcher runs beside the orchestrator.
    if roles.contains(&RoleName::Orchestrator) {
        started.push(Box::new(roles::dlq_watcher(&ctx)));
    }
    // Without the edge, the probes get a port of their own.
    if !roles.contains(&RoleName::Edge) {
        let listen = config.probes.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: listen,
                setting: "probes.listen",
                source,
            })?;
        let probes = ProbeState {
            bus: bus.clone(),
            store: store.clone(),
            named: named.clone(),
        };
        started.push(Box::new(HttpRole::new(
            "probes",
            listener,
            chorus_edge::probes::probe_router(probes),
            config.supervision.drain_timeout,
        )));
    }
    let runtime = Runtime::start(started).await?.finally(Box::pin(async move {
        drop(counting);
        bus.flush_on_exit(Duration::from_secs(5)).await;
    }));
    tracing::info!(roles = %names.join(","), "chorus is running");
    Ok(runtime)
}

/// The edge's authentication; without it, every request acts for `edge.tenant`, loudly.
fn edge_auth(config: &EdgeConfig) -> Result<Auth, InvalidTenant> {
    let mode = if config.auth {
        AuthMode::Keys
    } else {
        let tenant = Tenant::new(config.tenant.clone())?;
        tracing::warn!(
            %tenant,
            "AUTHENTICATION IS OFF (edge.auth = false): every request acts for this tenant with every scope"
        );
        AuthMode::Off(tenant)
    };
    Ok(Auth::new(mode, config.key_rpm, config.key_outage_grace))
}

/// Resolves on SIGTERM or ctrl-c (SIGINT). The handlers are installed when this is called, not
/// when the future is first polled: call it before starting anything, so a signal that comes
/// during start-up is kept for the drain (with the default action it would kill the process).
/// Must be called inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = signal(SignalKind::terminate()).and_then(|term| {
            let interrupt = signal(SignalKind::interrupt())?;
            Ok((term, interrupt))
        });
        async move {
            match signals {
                Ok((mut term, mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot handle SIGTERM; stop with SIGKILL");
                    std::future::pending().await
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let ctrl_c = tokio::signal::ctrl_c();
        async move {
            let _ = ctrl_c.await;
        }
    }
}
