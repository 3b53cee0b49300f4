//! Route names → provider, model, timeout, fallbacks and prices.
//!
//! A job names a route: one configured under `[[routes]]` (provider `sim`, `openai`, `anthropic`
//! or `ollama`), or `sim:<model>` ad hoc, which is always available so demos and tests need no
//! configuration. Everything is checked when [`Routes`] is built — providers, base URLs, API keys,
//! fallbacks — so a bad route stops start-up instead of failing jobs. Each configured route builds
//! its provider (and so its HTTP client) once; ad-hoc `sim:` routes share one simulator.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::config::{Price, RouteConfig};
use chorus_core::messages::Usage;
use chorus_core::spec::{ChatMessage, Params};

use crate::error::{ErrorKind, LlmError};
use crate::provider::{CompletionRequest, Provider};
use crate::providers::{self, Credentials, ProviderError};
use crate::sim::{self, SimModel, SimModelError, SimProvider};

/// Prefix of ad-hoc simulator routes (`sim:echo?latency=50ms`).
pub const SIM_PREFIX: &str = "sim:";
/// Timeout of ad-hoc routes, which have no configuration of their own.
pub const DEFAULT_ADHOC_TIMEOUT: Duration = Duration::from_secs(60);

/// A resolved route: everything needed to make one call.
#[derive(Clone)]
pub struct Route {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
    /// Bound on each attempt.
    pub timeout: Duration,
    /// Routes tried in order when this one fails permanently or runs out of retries.
    pub fallbacks: Vec<String>,
    pub price: Option<Price>,
    /// Sent when a job sets no `max_tokens`; the completion part of a token estimate.
    pub max_tokens: Option<u32>,
}

impl Route {
    /// A route without fallbacks, prices or `max_tokens`.
    pub fn new(
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
        model: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            provider,
            model: model.into(),
            timeout,
            fallbacks: Vec::new(),
            price: None,
            max_tokens: None,
        }
    }

    /// A request for this route's model; `seed_key` is the base key of the call.
    pub fn request(
        &self,
        messages: Vec<ChatMessage>,
        params: Params,
        seed_key: u64,
    ) -> CompletionRequest {
        CompletionRequest {
            model: self.model.clone(),
            messages,
            params,
            seed_key,
            deltas: None,
        }
    }

    /// What `usage` cost in US dollars at this route's prices, when it has them.
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        self.price.map(|price| {
            (f64::from(usage.prompt_tokens) * price.input_per_mtok
                + f64::from(usage.completion_tokens) * price.output_per_mtok)
                / 1_000_000.0
        })
    }

    /// The route's name as a metric label. Ad-hoc `sim:` names carry client-chosen options, so
    /// they are cut to their kind (`sim:echo`) to keep label cardinality low.
    pub fn label(&self) -> &str {
        match self.name.split_once('?') {
            Some((kind, _)) if self.name.starts_with(SIM_PREFIX) => kind,
            _ => &self.name,
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("provider", &self.provider.name())
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("fallbacks", &self.fallbacks)
            .field("price", &self.price)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

#[derive(Clone)]
pub struct Routes {
    configured: BTreeMap<String, Route>,
    sim: Arc<dyn Provider>,
    adhoc_timeout: Duration,
}

impl Routes {
    /// Builds every configured route, API keys read; the error lists every bad one.
    pub fn new(configs: &[RouteConfig]) -> Result<Self, RoutesError> {
        Self::build(configs, Credentials::Load)
    }

    /// [`Routes::new`] for a process that never calls a provider: no API key is read.
    pub fn without_credentials(configs: &[RouteConfig]) -> Result<Self, RoutesError> {
        Self::build(configs, Credentials::Skip)
    }

    fn build(configs: &[RouteConfig], credentials: Credentials) -> Result<Self, RoutesError> {
        let sim: Arc<dyn Provider> = Arc::new(SimProvider);
        let mut configured = BTreeMap::new();
        let mut problems = Vec::new();
        for config in configs {
            let name = &config.name;
            if name.starts_with(SIM_PREFIX) {
                problems.push(RouteError::Reserved {
                    route: name.clone(),
                });
            } else if config.timeout.is_zero() {
                problems.push(RouteError::NoTimeout {
                    route: name.clone(),
                });
            } else if configured.contains_key(name) {
                problems.push(RouteError::Twice {
                    route: name.clone(),
                });
            } else {
                match provider_for(config, &sim, credentials) {
                    Ok(provider) => {
                        let route = Route {
                            fallbacks: config.fallbacks.clone(),
                            price: config.price,
                            max_tokens: config.max_tokens,
                            ..Route::new(name, provider, &config.model, config.timeout)
                        };
                        configured.insert(name.clone(), route);
                    }
                    Err(problem) => problems.push(problem),
                }
            }
        }
        for config in configs {
            for fallback in &config.fallbacks {
                let known = configured.contains_key(fallback)
                    || fallback
                        .strip_prefix(SIM_PREFIX)
                        .is_some_and(|model| SimModel::parse(model).is_ok());
                if fallback == &config.name {
                    problems.push(RouteError::OwnFallback {
                        route: config.name.clone(),
                    });
                } else if !known {
                    problems.push(RouteError::UnknownFallback {
                        route: config.name.clone(),
                        fallback: fallback.clone(),
                    });
                }
            }
        }
        if !problems.is_empty() {
            return Err(RoutesError { problems });
        }
        Ok(Self {
            configured,
            sim,
            adhoc_timeout: DEFAULT_ADHOC_TIMEOUT,
        })
    }

    pub fn with_adhoc_timeout(mut self, timeout: Duration) -> Self {
        self.adhoc_timeout = timeout;
        self
    }

    /// A configured route by name, else an ad-hoc `sim:<model>`.
    pub fn resolve(&self, name: &str) -> Result<Route, UnknownRoute> {
        if let Some(route) = self.configured.get(name) {
            return Ok(route.clone());
        }
        let unknown = |problem| UnknownRoute {
            name: name.to_owned(),
            known: self.names().map(str::to_owned).collect(),
            problem,
        };
        let model = name.strip_prefix(SIM_PREFIX).ok_or_else(|| unknown(None))?;
        SimModel::parse(model).map_err(|e| unknown(Some(e)))?;
        Ok(Route::new(
            name,
            Arc::clone(&self.sim),
            model,
            self.adhoc_timeout,
        ))
    }

    /// The completion allowance of a token estimate for calls of `name`: its `max_tokens`,
    /// else [`crate::tokens::DEFAULT_COMPLETION`].
    pub fn completion_allowance(&self, name: &str) -> u32 {
        self.configured
            .get(name)
            .and_then(|route| route.max_tokens)
            .unwrap_or(crate::tokens::DEFAULT_COMPLETION)
    }

    /// For validating a job at the edge: is `model` a route this process can call?
    pub fn check(&self, model: &str) -> Result<(), UnknownRoute> {
        self.resolve(model).map(drop)
    }

    /// Configured route names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.configured.keys().map(String::as_str)
    }
}

impl chorus_core::spec::RouteCheck for Routes {
    type Error = UnknownRoute;

    fn check_route(&self, model: &str) -> Result<(), UnknownRoute> {
        self.check(model)
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field("configured", &self.configured.values().collect::<Vec<_>>())
            .field("adhoc_timeout", &self.adhoc_timeout)
            .finish()
    }
}

fn provider_for(
    config: &RouteConfig,
    sim: &Arc<dyn Provider>,
    credentials: Credentials,
) -> Result<Arc<dyn Provider>, RouteError> {
    if config.provider == sim::PROVIDER_NAME {
        return SimModel::parse(&config.model)
            .map(|_| Arc::clone(sim))
            .map_err(|source| RouteError::Sim {
                route: config.name.clone(),
                source,
            });
    }
    providers::build(config, credentials)
}

/// The configured routes that cannot be used, every one of them (the message joins them with
/// `; `).
#[derive(Debug, thiserror::Error)]
#[error("{}", join(problems))]
pub struct RoutesError {
    pub problems: Vec<RouteError>,
}

fn join(problems: &[RouteError]) -> String {
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    messages.join("; ")
}

/// Why one configured route cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route name `{route}` is reserved: `sim:<model>` always names the simulator")]
    Reserved { route: String },
    #[error("route `{route}`: timeout must be more than zero")]
    NoTimeout { route: String },
    #[error("route `{route}` is defined twice")]
    Twice { route: String },
    #[error(
        "unknown provider `{provider}` in route `{route}`: supported providers are {}",
        supported()
    )]
    UnknownProvider { route: String, provider: String },
    #[error("route `{route}`: {source}")]
    Sim {
        route: String,
        #[source]
        source: SimModelError,
    },
    #[error("route `{route}`: {source}")]
    Provider {
        route: String,
        #[source]
        source: ProviderError,
    },
    #[error("route `{route}` lists itself as a fallback")]
    OwnFallback { route: String },
    #[error(
        "route `{route}`: fallback `{fallback}` is not a configured route or a valid `sim:` route"
    )]
    UnknownFallback { route: String, fallback: String },
}

fn supported() -> String {
    let names: Vec<String> = providers::SUPPORTED
        .iter()
        .map(|p| format!("`{p}`"))
        .collect();
    names.join(", ")
}

/// A job named a route that does not exist here (or a `sim:` model that does not parse).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownRoute {
    pub name: String,
    /// The configured route names.
    pub known: Vec<String>,
    /// Why an ad-hoc `sim:` route was refused.
    pub problem: Option<SimModelError>,
}

impl fmt::Display for UnknownRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(problem) = &self.problem {
            return write!(f, "route `{}`: {problem}", self.name);
        }
        write!(f, "unknown route `{}`: ", self.name)?;
        if self.known.is_empty() {
            f.write_str("no routes are configured")?;
        } else {
            let known: Vec<String> = self.known.iter().map(|n| format!("`{n}`")).collect();
            write!(f, "configured routes are {}", known.join(", "))?;
        }
        f.write_str("; `sim:<model>` (e.g. `sim:echo`) is always available")
    }
}

impl std::error::Error for UnknownRoute {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.problem
            .as_ref()
            .map(|problem| problem as &(dyn std::error::Error + 'static))
    }
}

/// A route that disappeared between submission and call fails the step permanently.
impl From<UnknownRoute> for LlmError {
    fn from(error: UnknownRoute) -> Self {
        LlmError::new(ErrorKind::NotFound, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, provider: &str, model: &str) -> RouteConfig {
        RouteConfig {
            timeout: Duration::from_secs(5),
            ..RouteConfig::new(name, provider, model)
        }
    }

    #[test]
    fn resolves_configured_and_adhoc_sim_routes() {
        let routes = Routes::new(&[config("fast", "sim", "echo?latency=5ms")]).unwrap();
        let fast = routes.resolve("fast").unwrap();
        assert_eq!(
            (fast.model.as_str(), fast.timeout),
            ("echo?latency=5ms", Duration::from_secs(5))
        );
        assert_eq!(fast.provider.name(), "sim");
        let adhoc = routes.resolve("sim:json?fail=0.1").unwrap();
        assert_eq!(
            (adhoc.name.as_str(), adhoc.model.as_str()),
            ("sim:json?fail=0.1", "json?fail=0.1")
        );
        assert_eq!(adhoc.timeout, DEFAULT_ADHOC_TIMEOUT);
        assert_eq!((adhoc.label(), fast.label()), ("sim:json", "fast"));
        let routes = routes.with_adhoc_timeout(Duration::from_secs(1));
        assert_eq!(
            routes.resolve("sim:echo").unwrap().timeout,
            Duration::from_secs(1)
        );
        assert!(routes.check("sim:lorem").is_ok());
    }

    #[test]
    fn unknown_routes_list_what_exists() {
        let routes =
            Routes::new(&[config("b", "sim", "echo"), config("a", "sim", "json")]).unwrap();
        assert_eq!(
            routes.check("gpt").unwrap_err().to_string(),
            "unknown route `gpt`: configured routes are `a`, `b`; `sim:<model>` (e.g. `sim:echo`) is always available"
        );
        assert_eq!(
            Routes::new(&[])
                .unwrap()
                .check("openai:gpt-4o")
                .unwrap_err()
                .to_string(),
            "unknown route `openai:gpt-4o`: no routes are configured; `sim:<model>` (e.g. `sim:echo`) is always available"
        );
        let sim = routes.check("sim:chat").unwrap_err();
        assert_eq!(
            sim.to_string(),
            "route `sim:chat`: unknown sim kind `chat`: use `echo`, `json` or `lorem`"
        );
        assert_eq!(
            sim.problem,
            Some(SimModelError::UnknownKind {
                kind: "chat".into()
            })
        );
        let error = LlmError::from(routes.resolve("gpt").unwrap_err());
        assert_eq!(
            (error.kind, error.is_retryable()),
            (ErrorKind::NotFound, false)
        );
    }

    #[test]
    fn bad_configuration_is_refused_with_every_problem() {
        let err = Routes::new(&[
            config("x", "gemini", "gemini-2.0"),
            config("y", "sim", "echo?fail=2"),
            config("sim:z", "sim", "echo"),
            config("w", "sim", "echo"),
            config("w", "sim", "json"),
        ])
        .unwrap_err();
        assert!(matches!(
            err.problems.as_slice(),
            [
                RouteError::UnknownProvider { .. },
                RouteError::Sim { .. },
                RouteError::Reserved { .. },
                RouteError::Twice { .. }
            ]
        ));
        assert_eq!(
            err.to_string(),
            "unknown provider `gemini` in route `x`: supported providers are `sim`, `openai`, `anthropic`, `ollama`; \
             route `y`: bad value `2` for sim option `fail`: expected a probability from 0 to 1, like `0.5`; \
             route name `sim:z` is reserved: `sim:<model>` always names the simulator; \
             route `w` is defined twice"
        );
        let mut zero = config("t", "sim", "echo");
        zero.timeout = Duration::ZERO;
        assert_eq!(
            Routes::new(&[zero]).unwrap_err().to_string(),
            "route `t`: timeout must be more than zero"
        );
    }

    #[test]
    fn builds_http_routes_with_their_settings() {
        let mut openai = config("gpt", "openai", "gpt-4o-mini");
        openai.fallbacks = vec!["local".into(), "sim:echo".into()];
        openai.max_tokens = Some(256);
        openai.price = Some(Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
        });
        let local = config("local", "ollama", "llama3.2");
        let routes = Routes::new(&[openai, local]).unwrap();
        let gpt = routes.resolve("gpt").unwrap();
        assert_eq!(gpt.provider.name(), "openai");
        assert_eq!(gpt.fallbacks, ["local", "sim:echo"]);
        assert_eq!(gpt.max_tokens, Some(256));
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        };
        let cost = gpt.cost(&usage).unwrap();
        assert!((cost - 0.45).abs() < 1e-9, "{cost}");
        let local = routes.resolve("local").unwrap();
        assert_eq!(
            (local.provider.name(), local.cost(&usage)),
            ("ollama", None)
        );
        assert_eq!(routes.names().collect::<Vec<_>>(), ["gpt", "local"]);
    }

    #[test]
    fn refuses_bad_fallbacks_keys_and_urls() {
        let mut a = config("a", "sim", "echo");
        a.fallbacks = vec!["a".into(), "nope".into(), "sim:chat".into()];
        let mut claude = config("claude", "anthropic", "claude-3-5-haiku-latest");
        let no_key = Routes::new(&[claude.clone()]).unwrap_err();
        assert!(matches!(
            no_key.problems.as_slice(),
            [RouteError::Provider {
                source: ProviderError::NoKey { .. },
                ..
            }]
        ));
        assert_eq!(
            no_key.to_string(),
            "route `claude`: anthropic needs an API key: set `api_key_env` or `api_key_file`"
        );
        claude.api_key_env = Some("CHORUS_TEST_UNSET_ANTHROPIC_KEY".into());
        let mut bad_url = config("u", "openai", "m");
        bad_url.base_url = Some("localhost:8000".into());
        let err = Routes::new(&[a, claude, bad_url]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "route `claude`: the API key: the variable `CHORUS_TEST_UNSET_ANTHROPIC_KEY` is not set; \
             route `u`: bad base_url `localhost:8000`: scheme `localhost` is not http or https; \
             route `a` lists itself as a fallback; \
             route `a`: fallback `nope` is not a configured route or a valid `sim:` route; \
             route `a`: fallback `sim:chat` is not a configured route or a valid `sim:` route"
        );
    }

    #[test]
    fn a_process_without_the_llm_role_reads_no_api_key() {
        let mut claude = config("claude", "anthropic", "claude-3-5-haiku-latest");
        claude.api_key_file = Some("/run/secrets/not-mounted-here".into());
        let mut gpt = config("gpt", "openai", "gpt-4o-mini");
        gpt.api_key_env = Some("CHORUS_TEST_UNSET_OPENAI_KEY".into());
        let unkeyed = config("plain", "anthropic", "claude-3-5-haiku-latest");
        let configs = [claude, gpt, unkeyed];
        assert_eq!(Routes::new(&configs).unwrap_err().problems.len(), 3);

        let routes = Routes::without_credentials(&configs).unwrap();
        assert_eq!(
            routes.names().collect::<Vec<_>>(),
            ["claude", "gpt", "plain"]
        );
        assert_eq!(routes.resolve("gpt").unwrap().model, "gpt-4o-mini");
        // What is wrong without a key is still refused.
        let mut bad_url = config("u", "openai", "m");
        bad_url.base_url = Some("localhost:8000".into());
        assert!(Routes::without_credentials(&[bad_url]).is_err());
    }
}
