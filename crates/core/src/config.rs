//! Typed configuration: an optional TOML file, then `CHORUS_<SECTION>_<KEY>` environment
//! variables over it (`CHORUS_NATS_URL`, `CHORUS_DATABASE_URL`, `CHORUS_EDGE_LISTEN`, …).
//!
//! Every section denies unknown keys and [`Config::validate`] checks values, so a typo in the
//! file or in a variable name stops start-up with the key's name instead of being ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};

use crate::Tenant;
use crate::budget::{Limit, Period, Scope};
use crate::fair::{Band, Policy};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub database: DatabaseConfig,
    pub edge: EdgeConfig,
    pub probes: ProbesConfig,
    pub orchestrator: OrchestratorConfig,
    pub llm: LlmConfig,
    pub evaluator: EvaluatorConfig,
    pub persister: PersisterConfig,
    pub supervision: SupervisionConfig,
    pub log: LogConfig,
    #[cfg(feature = "faults")]
    pub faults: FaultConfig,
    /// A build without the `faults` feature has no fault hooks: a `[faults]` section (or a
    /// `CHORUS_FAULTS_…` variable) is read only for [`Config::validate`] to refuse it by name.
    #[cfg(not(feature = "faults"))]
    #[serde(skip_serializing)]
    faults: Option<serde::de::IgnoredAny>,
    pub dlq: DlqConfig,
    pub scheduling: SchedulingConfig,
    pub budgets: BudgetsConfig,
    /// Tenants' shares and limits, by tenant name (`[tenants.acme]`).
    pub tenants: BTreeMap<String, TenantConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The server, or a comma-separated list of a cluster's servers (`nats://a:4222,nats://b:4222`):
    /// the client connects to any of them and reconnects through them and the servers the
    /// cluster announces.
    pub url: String,
    /// Prefix of every subject; stream names use it upper-cased, the jobs bucket as `<prefix>_jobs`.
    pub prefix: String,
    /// Replicas of every stream (1 on one server, 3 on a JetStream cluster).
    pub replicas: usize,
    /// A directory of stream and consumer definitions to use instead of the built-in ones.
    pub definitions: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long the edge keeps retrying a publish a client waits on — through a stream leader's
    /// election, a reconnect to another server, a lost quorum — before it answers `503`. Every
    /// retry carries the same `Nats-Msg-Id`, so the stream keeps one copy.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// How to authenticate: at most one of a credentials file (JWT and nkey seed, as `nsc`
    /// writes it), an nkey seed file, a user (with a password), or a token. Secrets come from a
    /// variable (`*_env`, its name) or a file (`*_file`), never from this file.
    pub credentials_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// TLS: the CA that signed the server's certificate, and a client certificate and key for
    /// servers that verify clients. `tls_required` refuses a plain connection.
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "chorus".into(),
            replicas: 1,
            definitions: None,
            connect_timeout: Duration::from_secs(5),
            retry_window: Duration::from_secs(30),
            credentials_file: None,
            nkey_seed_file: None,
            user: None,
            password_env: None,
            password_file: None,
            token_env: None,
            token_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }
}

impl DatabaseConfig {
    /// The URL to connect with: `url`, with the password of `password_env` / `password_file`
    /// put in. The error names what is wrong, never a password.
    pub fn connect_url(&self) -> Result<SecretString, DatabaseUrlError> {
        let password = load_secret(self.password_env.as_deref(), self.password_file.as_deref())
            .map_err(|source| DatabaseUrlError::Password { source })?;
        let Some(password) = password else {
            return Ok(SecretString::from(self.url.clone()));
        };
        let mut url =
            url::Url::parse(&self.url).map_err(|source| DatabaseUrlError::Url { source })?;
        if url.password().is_some() {
            return Err(DatabaseUrlError::TwoPasswords);
        }
        url.set_password(Some(password.expose_secret()))
            .map_err(|()| DatabaseUrlError::NoPasswordHere)?;
        Ok(SecretString::from(url.to_string()))
    }

    /// `url` with any password in it replaced by `***`, for showing.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// A URL, or a comma-separated list of them, with every password in it replaced by `***`.
pub fn redact_url(text: &str) -> String {
    text.split(',')
        .map(|part| match url::Url::parse(part.trim()) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why [`DatabaseConfig::connect_url`] cannot make the URL to connect with.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("database password: {source}")]
    Password {
        #[source]
        source: SecretError,
    },
    #[error("database.url: {source}")]
    Url {
        #[source]
        source: url::ParseError,
    },
    #[error(
        "database.url has a password and database.password_env / password_file give another: keep one"
    )]
    TwoPasswords,
    #[error("database.url: this URL cannot carry a password")]
    NoPasswordHere,
}

/// Why a secret named by configuration cannot be read. It names the variable or the file, never
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("give a variable or a file, not both")]
    Both,
    #[error("the variable `{var}` is not set")]
    NotSet { var: String },
    #[error("the variable `{var}` is not valid UTF-8")]
    NotUnicode { var: String },
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is empty")]
    Empty { what: String },
}

/// A secret named by configuration: the value of the variable `env`, or the content of `file`
/// (trimmed; a mounted Kubernetes secret ends in a newline). `Ok(None)` when neither is given.
pub fn load_secret(
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<SecretString>, SecretError> {
    let (value, source) = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(SecretError::Both),
        (Some(var), None) => {
            let value = std::env::var(var).map_err(|e| match e {
                std::env::VarError::NotPresent => SecretError::NotSet { var: var.into() },
                std::env::VarError::NotUnicode(_) => SecretError::NotUnicode { var: var.into() },
            })?;
            (value, format!("the variable `{var}`"))
        }
        (None, Some(path)) => {
            let value =
                std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
                    path: path.to_owned(),
                    source,
                })?;
            (value, path.display().to_string())
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(SecretError::Empty { what: source });
    }
    Ok(Some(SecretString::from(value.to_owned())))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub url: String,
    /// The Postgres password, from a variable (its name) or a file, put into `url` to connect, so
    /// the URL itself can be shown and logged.
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub max_connections: u32,
    /// Run pending migrations at start-up (turn off where a separate migration job runs them).
    pub auto_migrate: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://.chorus/chorus.db?mode=rwc".into(),
            password_env: None,
            password_file: None,
            max_connections: 8,
            auto_migrate: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub body_limit: ByteSize,
    /// Largest accepted batch input file (`POST /v1/files`).
    pub file_limit: ByteSize,
    /// Most lines in one batch input file.
    pub batch_max_lines: usize,
    /// Longest `?wait=` a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Require an API key (`Authorization: Bearer`) on every `/v1` route. Off, every request
    /// acts for `tenant` with every scope, and start-up warns about it.
    pub auth: bool,
    /// Tenant of every request when `auth` is off.
    pub tenant: String,
    /// Requests per minute one API key may make at one edge process, for keys without a rate of
    /// their own; none: unlimited.
    pub key_rpm: Option<u32>,
    /// While the database cannot be reached, a key this edge process verified within this long
    /// is still accepted (keys cannot be revoked while the database is down either); 0 turns it
    /// off, and every request is then refused with 503 during an outage.
    #[serde(with = "humantime_serde")]
    pub key_outage_grace: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: ByteSize::mib(1),
            file_limit: ByteSize::mib(100),
            batch_max_lines: 50_000,
            max_wait: Duration::from_secs(300),
            auth: true,
            tenant: "default".into(),
            key_rpm: None,
            key_outage_grace: Duration::from_secs(600),
        }
    }
}

/// The probe port of a process that runs no edge: `/health`, `/ready` and `/metrics` (a process
/// with the edge serves them on the edge's port).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    pub listen: SocketAddr,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Worker actors; events for one job always go to the same worker.
    pub workers: usize,
    /// Messages pulled but not yet settled, across all workers. What is handed to a worker waits
    /// in its mailbox in arrival order, past the fair order: a few per worker keep the workers
    /// busy, more only lengthen the queue an interactive job waits in.
    pub max_in_flight: usize,
    /// Job states (with their KV revision) each worker keeps to skip a read before a write.
    pub cache_per_worker: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            workers: 32,
            max_in_flight: 256,
            cache_per_worker: 4096,
        }
    }
}

/// How work waiting for the same capacity is shared between classes of service
/// (`crate::fair`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// The fraction of a stage's (or a limited route's) dispatches the `standard` band keeps
    /// while `interactive` work waits.
    pub standard_share: f64,
    /// The fraction the `batch` band keeps while higher bands' work waits.
    pub batch_share: f64,
    /// Messages each flow (band × tenant) holds per process while they wait to be dispatched;
    /// a job's `priority` orders the calls a process holds of its tenant's flow.
    pub window: usize,
    /// A tenant's backlog quota, unless `[tenants.<name>] max_queued` says otherwise: the jobs
    /// and calls it may have waiting in JetStream (at the orchestrator's intake and at the llm
    /// stage). Work over it is refused (`429`, or an error line for a JetStream submission).
    pub max_queued: u64,
    /// A tenant's backlog quota in bytes, unless `[tenants.<name>] max_queued_bytes` says
    /// otherwise: the size of the jobs and calls it may have waiting, as [`Self::max_queued`].
    pub max_queued_bytes: ByteSize,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            standard_share: 0.1,
            batch_share: 0.1,
            window: 32,
            max_queued: 200_000,
            max_queued_bytes: ByteSize::mib(256),
        }
    }
}

/// The jobs and calls each tenant may have waiting in JetStream, and their bytes (see
/// [`SchedulingConfig::max_queued`]).
#[derive(Clone, Debug, Default)]
pub struct QueueQuotas {
    default: Quota,
    tenants: HashMap<Tenant, Quota>,
}

/// One tenant's backlog quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Jobs and calls waiting.
    pub lines: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl QueueQuotas {
    pub fn of(&self, tenant: &Tenant) -> Quota {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// One tenant's share and limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Its share of a band's capacity relative to other tenants' (default 1), in tokens.
    pub weight: f64,
    /// Calls of one route (per band) it may have fetched at a time, across every process:
    /// waiting at the route's limits or running. None: no cap of its own.
    pub max_inflight: Option<u32>,
    /// The highest band its JetStream submissions may ask for (`service_tier`); REST callers
    /// are capped by their API key's `max_band` instead.
    pub max_band: Band,
    /// Its backlog quota; None: `scheduling.max_queued`.
    pub max_queued: Option<u64>,
    /// Its backlog quota in bytes; None: `scheduling.max_queued_bytes`.
    pub max_queued_bytes: Option<ByteSize>,
    /// What it may spend per `budget_period` on provider calls, in US dollars; None: no budget
    /// (unless one is set with `chorus budgets set`).
    pub budget_usd: Option<f64>,
    /// `month` (the calendar month, UTC) or a length such as `30d`.
    pub budget_period: Period,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            max_inflight: None,
            max_band: Band::Standard,
            max_queued: None,
            max_queued_bytes: None,
            budget_usd: None,
            budget_period: Period::Month,
        }
    }
}

/// How spend budgets are enforced (`crate::budget`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// The completion allowance of a budgeted call whose job and route set no `max_tokens`: it
    /// is reserved, and sent as the call's `max_tokens`, so the reservation bounds the call.
    pub max_tokens: u32,
    /// The price of a budgeted call on a route without `price`. None: such calls are refused
    /// (`budget_exceeded`), and a configuration with a tenant budget and an unpriced route is
    /// refused at start-up.
    pub default_price: Option<Price>,
    /// How long a call's hold outlives its route's timeout before it is presumed orphaned (its
    /// process died) and counted as spent at its reserved cost.
    #[serde(with = "humantime_serde")]
    pub hold_grace: Duration,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            default_price: None,
            hold_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Concurrent calls per process (one worker actor each).
    pub workers: usize,
    /// Provider calls per delivery of a message, first try included.
    pub retry_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// First redelivery delay once in-process retries are spent; doubles per delivery.
    #[serde(with = "humantime_serde")]
    pub nak_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub nak_max_delay: Duration,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            workers: 512,
            retry_attempts: 3,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            nak_delay: Duration::from_secs(1),
            nak_max_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluatorConfig {
    pub workers: usize,
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self { workers: 8 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersisterConfig {
    /// Most events written in one transaction.
    pub batch_size: usize,
}

impl Default for PersisterConfig {
    fn default() -> Self {
        Self { batch_size: 512 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restarts a role supervisor allows within `window` before it gives up and the process exits.
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long shutdown waits for in-flight messages before NAKing them.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            window: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `chorus=debug,async_nats=warn`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Replaying dead letters (`chorus dlq replay`, `POST /v1/admin/dlq/replay`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// How often one message may be replayed from the DLQ; an entry at the cap is refused.
    pub max_replays: u32,
    /// Replayed messages per second.
    pub replay_rate: f64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_replays: 3,
            replay_rate: 50.0,
        }
    }
}

/// Fault injection for tests: an llm worker panics on calls to `llm_panic_route`, or aborts its
/// whole process on calls to `llm_abort_route` (as a native crash or an OOM kill would), or fails
/// its first `llm_publish_failures` step-result publishes as if NATS had not answered; the
/// persister's store refuses, as `StoreErrorKind::Rejected`, any job snapshot whose
/// `spec.metadata` has the key `store_reject_metadata`, as if the database had rejected it. Off
/// unless set; start-up logs a warning whenever it is on. No request can trigger any of them
/// otherwise.
///
/// Only in builds with the `faults` feature, which the tests turn on (the root package's
/// dev-dependencies ask for it); a release build has neither the hooks nor this section.
#[cfg(feature = "faults")]
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    pub llm_panic_route: Option<String>,
    /// Panics at most this many times per process (0: on every matching call).
    pub llm_panic_times: u32,
    pub llm_abort_route: Option<String>,
    pub llm_publish_failures: u32,
    pub store_reject_metadata: Option<String>,
}

#[cfg(feature = "faults")]
impl FaultConfig {
    pub fn is_enabled(&self) -> bool {
        self.llm_panic_route.is_some()
            || self.llm_abort_route.is_some()
            || self.llm_publish_failures > 0
            || self.store_reject_metadata.is_some()
    }
}

/// A named way to call a model: a provider, its endpoint and credentials, and the limits, timeouts,
/// prices and fallbacks that apply to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// `sim`, `openai` (any OpenAI-compatible server), `anthropic` or `ollama`.
    pub provider: String,
    pub model: String,
    /// The provider's base URL (`https://api.openai.com/v1`, an Azure deployment URL, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The environment variable holding the API key. Keys never go in the file itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// A file holding the API key (a mounted secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Azure OpenAI's `api-version` (selects Azure's URL and `api-key` header), or Anthropic's
    /// `anthropic-version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Bound on each attempt, connection included.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Routes tried in order when this one fails permanently or runs out of retries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Requests per minute, across every process serving the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute, across every process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Calls in flight at once, across every process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// `max_tokens` sent when a job sets none (Anthropic requires one); also the completion part
    /// of the token estimate a `tpm` limit reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

/// US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl RouteConfig {
    /// A route with defaults for everything but what names it.
    pub fn new(
        name: impl Into<String>,
        provider: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            provider: provider.into(),
            model: model.into(),
            base_url: None,
            api_key_env: None,
            api_key_file: None,
            api_version: None,
            timeout: default_route_timeout(),
            connect_timeout: default_connect_timeout(),
            fallbacks: Vec::new(),
            rpm: None,
            tpm: None,
            max_concurrency: None,
            max_tokens: None,
            price: None,
        }
    }
}

fn default_route_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(#[source] Box<figment::Error>),
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Section names, longest first, for splitting `CHORUS_<SECTION>_<KEY>`.
const SECTIONS: [&str; 14] = [
    "orchestrator",
    "budgets",
    "supervision",
    "scheduling",
    "evaluator",
    "persister",
    "database",
    "faults",
    "probes",
    "nats",
    "edge",
    "dlq",
    "llm",
    "log",
];

/// Variables read by the command line rather than the configuration: `CHORUS_CONFIG`, and the
/// REST clients' `CHORUS_URL` and `CHORUS_API_KEY` (which `chorus dev` tells a user to export).
const NOT_CONFIG: [&str; 3] = ["CONFIG", "URL", "API_KEY"];

/// Maps `NATS_URL` to `nats.url`; an unknown section is left whole so deserialization names it.
fn env_key(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    SECTIONS
        .iter()
        .find_map(|section| {
            lower
                .strip_prefix(section)
                .and_then(|rest| rest.strip_prefix('_'))
                .map(|rest| format!("{section}.{rest}"))
        })
        .unwrap_or(lower)
}

impl Config {
    /// File (if any) first, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("CHORUS_")
            .filter(|key| {
                !NOT_CONFIG
                    .iter()
                    .any(|n| key.as_str().eq_ignore_ascii_case(n))
            })
            .map(|key| env_key(key.as_str()).into());
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The fair scheduler's policy: the bands' shares and the tenants' weights.
    pub fn fair_policy(&self) -> Policy {
        Policy {
            standard_share: self.scheduling.standard_share,
            batch_share: self.scheduling.batch_share,
            weights: self
                .tenants()
                .map(|(tenant, config)| (tenant, config.weight))
                .collect(),
        }
    }

    /// Tenants' caps on calls fetched at a time per route and band.
    pub fn inflight_caps(&self) -> HashMap<Tenant, u32> {
        self.tenants()
            .filter_map(|(tenant, config)| Some((tenant, config.max_inflight?)))
            .collect()
    }

    /// The band a tenant's JetStream submission asking for `asked` is served at.
    pub fn jetstream_band(&self, tenant: &Tenant, asked: Option<Band>) -> Band {
        let ceiling = self
            .tenants
            .get(tenant.as_str())
            .map_or(TenantConfig::default().max_band, |t| t.max_band);
        asked.unwrap_or(Band::Batch).capped(ceiling)
    }

    /// The budgets `[tenants.<name>] budget_usd` sets.
    pub fn tenant_budgets(&self) -> Vec<(Scope, Limit)> {
        self.tenants()
            .filter_map(|(tenant, config)| {
                let limit = Limit {
                    usd: config.budget_usd?,
                    period: config.budget_period,
                };
                Some((Scope::Tenant(tenant), limit))
            })
            .collect()
    }

    /// The tenants `[tenants.<name>]` names.
    pub fn named_tenants(&self) -> HashSet<Tenant> {
        self.tenants().map(|(tenant, _)| tenant).collect()
    }

    /// Tenants' backlog quotas.
    pub fn queue_quotas(&self) -> QueueQuotas {
        let default = Quota {
            lines: self.scheduling.max_queued,
            bytes: self.scheduling.max_queued_bytes.as_u64(),
        };
        QueueQuotas {
            default,
            tenants: self
                .tenants()
                .filter(|(_, config)| {
                    config.max_queued.is_some() || config.max_queued_bytes.is_some()
                })
                .map(|(tenant, config)| {
                    let quota = Quota {
                        lines: config.max_queued.unwrap_or(default.lines),
                        bytes: config
                            .max_queued_bytes
                            .map_or(default.bytes, |b| b.as_u64()),
                    };
                    (tenant, quota)
                })
                .collect(),
        }
    }

    fn tenants(&self) -> impl Iterator<Item = (Tenant, &TenantConfig)> {
        self.tenants
            .iter()
            .filter_map(|(name, config)| Some((Tenant::new(name.clone()).ok()?, config)))
    }

    /// Checks values the types cannot; every problem names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = crate::subjects::check_prefix(&self.nats.prefix) {
            problems.push(e.to_string());
        }
        let mut require = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        require(self.nats.replicas >= 1, "nats.replicas: must be at least 1");
        require(
            self.nats
                .url
                .split(',')
                .all(|server| !server.trim().is_empty()),
            "nats.url: a server, or a comma-separated list of servers, with none empty",
        );
        #[cfg(not(feature = "faults"))]
        require(
            self.faults.is_none(),
            "faults: this build has no fault injection (only test builds do, with the `faults` \
             feature): remove the [faults] section and any CHORUS_FAULTS_… variable",
        );
        let nats = &self.nats;
        let methods = [
            nats.credentials_file.is_some(),
            nats.nkey_seed_file.is_some(),
            nats.user.is_some(),
            nats.token_env.is_some() || nats.token_file.is_some(),
        ];
        require(
            methods.iter().filter(|m| **m).count() <= 1,
            "nats: authenticate one way: credentials_file, nkey_seed_file, user, or a token",
        );
        require(
            nats.user.is_some() || (nats.password_env.is_none() && nats.password_file.is_none()),
            "nats.password_env / nats.password_file: only with nats.user",
        );
        require(
            nats.tls_cert_file.is_some() == nats.tls_key_file.is_some(),
            "nats.tls_cert_file and nats.tls_key_file: give both or neither",
        );
        require(
            crate::Tenant::new(self.edge.tenant.clone()).is_ok(),
            "edge.tenant: use 1-64 characters of a-z, 0-9, '_' or '-'",
        );
        require(
            self.edge.key_rpm != Some(0),
            "edge.key_rpm: must be at least 1 (leave it out for no limit)",
        );
        require(
            self.edge.body_limit.as_u64() >= 1024,
            "edge.body_limit: must be at least 1KiB",
        );
        require(
            self.orchestrator.workers >= 1,
            "orchestrator.workers: must be at least 1",
        );
        require(
            self.orchestrator.max_in_flight >= self.orchestrator.workers,
            "orchestrator.max_in_flight: must be at least orchestrator.workers",
        );
        require(self.llm.workers >= 1, "llm.workers: must be at least 1");
        require(
            self.llm.retry_attempts >= 1,
            "llm.retry_attempts: must be at least 1",
        );
        require(
            self.llm.retry_min_delay <= self.llm.retry_max_delay,
            "llm.retry_min_delay: must not exceed llm.retry_max_delay",
        );
        require(
            self.evaluator.workers >= 1,
            "evaluator.workers: must be at least 1",
        );
        require(
            self.persister.batch_size >= 1,
            "persister.batch_size: must be at least 1",
        );
        require(
            self.dlq.replay_rate.is_finite() && self.dlq.replay_rate > 0.0,
            "dlq.replay_rate: must be a number of messages per second above 0",
        );
        require(
            self.database.max_connections >= 1,
            "database.max_connections: must be at least 1",
        );
        let db = &self.database.url;
        require(
            db.starts_with("sqlite:")
                || db.starts_with("postgres://")
                || db.starts_with("postgresql://"),
            "database.url: must start with sqlite:, postgres:// or postgresql://",
        );
        let share = |s: f64| s.is_finite() && (0.0..1.0).contains(&s);
        require(
            share(self.scheduling.standard_share),
            "scheduling.standard_share: must be a fraction from 0 up to (not including) 1",
        );
        require(
            share(self.scheduling.batch_share),
            "scheduling.batch_share: must be a fraction from 0 up to (not including) 1",
        );
        require(
            self.scheduling.window >= 1,
            "scheduling.window: must be at least 1",
        );
        require(
            self.scheduling.max_queued >= 1,
            "scheduling.max_queued: must be at least 1",
        );
        require(
            self.scheduling.max_queued_bytes.as_u64() >= 1,
            "scheduling.max_queued_bytes: must be at least 1 byte",
        );
        require(
            self.budgets.max_tokens >= 1,
            "budgets.max_tokens: must be at least 1",
        );
        if let Some(price) = self.budgets.default_price
            && !(price.input_per_mtok >= 0.0 && price.output_per_mtok >= 0.0)
        {
            problems.push("budgets.default_price: prices must be numbers >= 0".into());
        }
        for (name, tenant) in &self.tenants {
            if let Some(usd) = tenant.budget_usd
                && !(usd.is_finite() && usd >= 0.0)
            {
                problems.push(format!(
                    "tenants.{name}.budget_usd: must be a number of dollars >= 0"
                ));
            }
            if crate::Tenant::new(name.clone()).is_err() {
                problems.push(format!(
                    "tenants.{name}: a tenant name is 1-64 characters of a-z, 0-9, '_' or '-'"
                ));
            }
            if !(tenant.weight.is_finite() && tenant.weight > 0.0) {
                problems.push(format!("tenants.{name}.weight: must be a number above 0"));
            }
            if tenant.max_inflight == Some(0) {
                problems.push(format!(
                    "tenants.{name}.max_inflight: must be at least 1 (leave it out for no cap)"
                ));
            }
            if tenant.max_queued == Some(0) {
                problems.push(format!(
                    "tenants.{name}.max_queued: must be at least 1 (leave it out for \
                     scheduling.max_queued)"
                ));
            }
            if tenant.max_queued_bytes.is_some_and(|b| b.as_u64() == 0) {
                problems.push(format!(
                    "tenants.{name}.max_queued_bytes: must be at least 1 byte (leave it out for \
                     scheduling.max_queued_bytes)"
                ));
            }
        }
        let budgeted: Vec<&str> = self
            .tenants
            .iter()
            .filter(|(_, t)| t.budget_usd.is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        if !budgeted.is_empty() && self.budgets.default_price.is_none() {
            let unpriced: Vec<&str> = self
                .routes
                .iter()
                .filter(|r| r.price.is_none())
                .map(|r| r.name.as_str())
                .collect();
            if !unpriced.is_empty() {
                problems.push(format!(
                    "routes {} have no price, so calls on them under the budgets of tenants {} \
                     could not be counted: give each route a `price`, or set \
                     budgets.default_price",
                    unpriced.join(", "),
                    budgeted.join(", ")
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            if route.name.is_empty() || route.name.chars().any(char::is_whitespace) {
                problems.push(format!(
                    "routes[{i}].name: must be non-empty without whitespace"
                ));
            }
            if !names.insert(route.name.as_str()) {
                problems.push(format!(
                    "routes[{i}].name: `{}` is defined twice",
                    route.name
                ));
            }
            if route.timeout.is_zero() || route.connect_timeout.is_zero() {
                problems.push(format!("routes[{i}]: timeouts must be more than zero"));
            }
            for (key, value) in [
                ("rpm", route.rpm),
                ("tpm", route.tpm),
                ("max_concurrency", route.max_concurrency),
            ] {
                if value == Some(0) {
                    problems.push(format!(
                        "routes[{i}].{key}: must be at least 1 (leave it out for no limit)"
                    ));
                }
            }
            if route.api_key_env.is_some() && route.api_key_file.is_some() {
                problems.push(format!(
                    "routes[{i}]: give api_key_env or api_key_file, not both"
                ));
            }
            if let Some(price) = route.price
                && !(price.input_per_mtok >= 0.0 && price.output_per_mtok >= 0.0)
            {
                problems.push(format!("routes[{i}].price: prices must be numbers >= 0"));
            }
            for fallback in &route.fallbacks {
                if fallback == &route.name {
                    problems.push(format!(
                        "routes[{i}].fallbacks: `{fallback}` is the route itself"
                    ));
                } else if !self.routes.iter().any(|r| &r.name == fallback) {
                    problems.push(format!(
                        "routes[{i}].fallbacks: no route is named `{fallback}`"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        let sections = serde_json::to_value(Config::default()).unwrap_or_default();
        let sections = sections.as_object().cloned().unwrap_or_default();
        assert!(sections.len() > 10);
        // Routes and tenants are tables of named entries: the file configures them.
        for section in sections
            .keys()
            .filter(|s| !["routes", "tenants"].contains(&s.as_str()))
        {
            assert!(
                SECTIONS.contains(&section.as_str()),
                "CHORUS_{}_… would not reach [{section}]: add it to SECTIONS",
                section.to_uppercase()
            );
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "chorus.toml",
                r#"
                [nats]
                url = "nats://file:4222"
                [database]
                auto_migrate = false
                [[routes]]
                name = "fast"
                provider = "sim"
                model = "echo"
                timeout = "2s"
                "#,
            )?;
            jail.set_env("CHORUS_NATS_URL", "nats://env:4222");
            // The REST clients' variables are not configuration.
            jail.set_env("CHORUS_URL", "http://127.0.0.1:8080");
            jail.set_env("CHORUS_API_KEY", "chorus_0123456789abcdef_x");
            jail.set_env("CHORUS_EDGE_BODY_LIMIT", "2MiB");
            jail.set_env("CHORUS_LLM_RETRY_MIN_DELAY", "50ms");
            jail.set_env("CHORUS_CONFIG", "ignored.toml");
            let config = Config::load(Some(Path::new("chorus.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.nats.url, "nats://env:4222");
            assert!(!config.database.auto_migrate);
            assert_eq!(config.edge.body_limit, ByteSize::mib(2));
            assert_eq!(config.llm.retry_min_delay, Duration::from_millis(50));
            assert_eq!(config.routes[0].timeout, Duration::from_secs(2));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        Jail::expect_with(|jail| {
            jail.set_env("CHORUS_NATS_URLL", "x");
            let err = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("urll"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("CHORUS_LLM_WORKERS", "many");
            let err = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.to_lowercase().contains("llm.workers"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[edge]\nlisten = \"nowhere\"\n")?;
            let err = Config::load(Some(Path::new("c.toml")))
                .err()
                .map(|e| e.to_string());
            assert!(err.unwrap_or_default().contains("listen"));
            jail.set_env("CHORUS_LLM_WORKERS", "0");
            let err = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("llm.workers"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_tenant_budget_needs_every_route_priced() {
        let file = "[tenants.acme]\nbudget_usd = 50\nbudget_period = \"30d\"\n\n\
                    [[routes]]\nname = \"cheap\"\nprovider = \"openai\"\nmodel = \"m\"\n\
                    price = { input_per_mtok = 0.15, output_per_mtok = 0.6 }\n\n\
                    [[routes]]\nname = \"free\"\nprovider = \"openai\"\nmodel = \"m\"\n";
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", file)?;
            let err = Config::load(Some(Path::new("c.toml")))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("routes free have no price") && err.contains("tenants acme"),
                "{err}"
            );
            jail.set_env(
                "CHORUS_BUDGETS_DEFAULT_PRICE",
                "{input_per_mtok=1,output_per_mtok=2}",
            );
            let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            let [(scope, limit)] = config.tenant_budgets().try_into().unwrap();
            assert_eq!(scope.to_string(), "tenant acme");
            assert_eq!(limit.usd, 50.0);
            assert_eq!(limit.period, Period::parse("30d").unwrap());
            Ok(())
        });
    }

    #[test]
    fn a_cluster_is_a_list_of_servers() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "CHORUS_NATS_URL",
                "nats://n1:4222,nats://user:pw@n2:4222, nats://n3:4222",
            );
            jail.set_env("CHORUS_NATS_RETRY_WINDOW", "20s");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.nats.retry_window, Duration::from_secs(20));
            assert_eq!(
                redact_url(&config.nats.url),
                "nats://n1:4222,nats://user:***@n2:4222, nats://n3:4222"
            );
            jail.set_env("CHORUS_NATS_URL", "nats://n1:4222,,nats://n3:4222");
            let err = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("nats.url: "), "{err}");
            Ok(())
        });
    }

    #[cfg(feature = "faults")]
    #[test]
    fn a_test_build_reads_its_fault_hooks() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[faults]\nllm_panic_route = \"crash\"\n")?;
            jail.set_env("CHORUS_FAULTS_STORE_REJECT_METADATA", "poison");
            let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.faults.llm_panic_route.as_deref(), Some("crash"));
            assert_eq!(
                config.faults.store_reject_metadata.as_deref(),
                Some("poison")
            );
            assert!(config.faults.is_enabled());
            Ok(())
        });
    }

    #[cfg(not(feature = "faults"))]
    #[test]
    fn a_build_without_fault_hooks_refuses_them_by_name() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[faults]\nllm_panic_route = \"crash\"\n")?;
            let err = Config::load(Some(Path::new("c.toml")))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("faults: this build has no fault injection"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("CHORUS_FAULTS_LLM_PUBLISH_FAILURES", "3");
            let err = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("faults: this build has no fault injection"),
                "{err}"
            );
            Ok(())
        });
        // Nor does it print one (`chorus config check`).
        let shown = serde_json::to_value(Config::default()).unwrap_or_default();
        assert!(shown.get("faults").is_none(), "{shown}");
    }

    #[test]
    fn dlq_settings_come_from_the_environment_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("CHORUS_DLQ_MAX_REPLAYS", "5");
            jail.set_env("CHORUS_DLQ_REPLAY_RATE", "2.5");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.dlq.max_replays, 5);
            assert_eq!(config.dlq.replay_rate, 2.5);
            jail.set_env("CHORUS_DLQ_REPLAY_RATE", "0");
            let err = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("dlq.replay_rate"), "{err}");
            Ok(())
        });
    }
}
