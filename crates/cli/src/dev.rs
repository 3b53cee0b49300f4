//! `chorus dev`: one command, no configuration. A nats-server child with its store in `.chorus/`,
//! SQLite in `.chorus/`, every role in this process, and a first job to paste. Providers whose
//! credentials are in the environment (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `OLLAMA_HOST`) get a
//! route of their name unless the configuration already has one; `sim:` routes are always there.
//! API keys are on, as everywhere: dev makes an admin key for `edge.tenant`, keeps it in
//! `.chorus/dev-api-key` for the next run, and prints it. One `chorus dev` per folder: a second
//! one in the same folder refuses (a lock on `.chorus/dev.lock`), and the nats-server child dies
//! with its parent, even a killed one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chorus_core::Tenant;
use chorus_core::auth::Scopes;
use chorus_core::config::RouteConfig;
use chorus_store::{KeyLimits, Store};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use chorus_app::{self, RoleName};
use chorus_bus::natsd::NatsProcess;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the embedded NATS store and the SQLite database live.
    #[arg(long, default_value = ".chorus")]
    dir: PathBuf,
}

const EXAMPLE: &str = r#"{
  "model": "sim:echo",
  "prompt": "Review this proposal in three sentences, from your role: {{ proposal }}",
  "input": {"proposal": "Move support triage to an LLM that drafts replies for agents; 40k EUR a year; two phases over six months."},
  "personas": [
    {"name": "cfo", "system": "You are the CFO. You care about cost, payback and risk."},
    {"name": "support-lead", "system": "You lead 30 support agents. You care about workload and quality."},
    {"name": "security-officer", "system": "You are the security officer. You care about data protection."}
  ],
  "synthesis": {"prompt": "Summarise where the reviewers agree and disagree, then recommend go / no-go.{% for a in answers %}\n[{{ a.persona }}] {{ a.text }}{% endfor %}"},
  "evaluate": {"threshold": 0.5, "assertions": [
    {"type": "length", "min": 40, "metric": "substance"},
    {"type": "icontains", "value": "go", "metric": "decision"}
  ]}
}"#;

pub async fn run(config_file: Option<&Path>, args: DevArgs) -> anyhow::Result<()> {
    let stop = chorus_app::shutdown_signal();
    let mut config = chorus_app::load_config(config_file)?;
    let providers = env_routes(&mut config.routes, |name| std::env::var(name).ok());
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let _lock = lock(&args.dir)?;
    let external_nats = std::env::var_os("CHORUS_NATS_URL").is_some()
        || config.nats.url != chorus_core::config::NatsConfig::default().url;
    let child = match external_nats {
        true => None,
        false => {
            let child = NatsProcess::start(&args.dir.join("nats"), "", Vec::new())
                .await
                .context("or set CHORUS_NATS_URL to use a running server")?;
            config.nats.url = child.url();
            Some(child)
        }
    };
    if config.database.url == chorus_core::config::DatabaseConfig::default().url {
        config.database.url = format!("sqlite://{}?mode=rwc", args.dir.join("chorus.db").display());
    }
    let listener = TcpListener::bind(config.edge.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; set CHORUS_EDGE_LISTEN to another address",
                config.edge.listen
            )
        })?;
    let url = format!("http://{}", listener.local_addr()?);
    let nats_url = config.nats.url.clone();
    let database = config.database.redacted_url();
    let database_config = config.database.clone();
    let edge = config.edge.clone();
    let result = async {
        let runtime = chorus_app::start(config, &RoleName::ALL, Some(listener)).await?;
        let key = match edge.auth {
            true => {
                let store = chorus_app::open_store(&database_config, false).await?;
                Some(dev_key(&store, &edge.tenant, &args.dir.join(KEY_FILE)).await?)
            }
            false => None,
        };
        println!("\nChorus is running (all roles).");
        println!("  API:      {url}");
        println!(
            "  NATS:     {nats_url}{}",
            if external_nats {
                ""
            } else {
                " (child process)"
            }
        );
        println!("  database: {database}");
        println!("  routes:   `sim:<model>` (the simulated provider, always)");
        for line in &providers {
            println!("            {line}");
        }
        let auth_header = match &key {
            Some(key) => {
                println!(
                    "  API key:  {} (tenant {}, every scope; kept in {})",
                    key.expose_secret(),
                    edge.tenant,
                    args.dir.join(KEY_FILE).display()
                );
                println!("\nFor `chorus job` and `chorus batch`:\n");
                println!("export CHORUS_URL={url} CHORUS_API_KEY={}", key.expose_secret());
                " -H \"Authorization: Bearer $CHORUS_API_KEY\"".to_owned()
            }
            None => {
                println!("  API key:  none needed (edge.auth = false)");
                String::new()
            }
        };
        println!("\nSubmit a persona-roundtable job and wait for its result:\n");
        println!(
            "curl -s '{url}/v1/jobs?wait=30'{auth_header} -H 'Content-Type: application/json' -d '{EXAMPLE}'\n"
        );
        println!("Press ctrl-c to stop.");
        Ok(runtime.run_until(stop).await?)
    }
    .await;
    if let Some(mut child) = child {
        child.stop().await;
    }
    result
}

/// The file in the dev directory that makes it one `chorus dev`'s while it runs.
const LOCK_FILE: &str = "dev.lock";

/// Locks `dir` for this process, or says which `chorus dev` has it: two would share one NATS
/// store and one SQLite file. The operating system drops the lock when the process ends, however
/// it ends, so a killed `chorus dev` never leaves its folder locked; the file keeps the holder's
/// pid for the message.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another `chorus dev` (pid {}) is already running in {}; stop it first, or give \
                 this one a folder of its own with --dir",
                holder.trim(),
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The file in the dev directory that keeps the dev API key between runs.
const KEY_FILE: &str = "dev-api-key";

/// The dev API key: the one kept in `path` while it still works, else a new key with every
/// scope for `tenant`, written there (readable by the owner only).
async fn dev_key(store: &Store, tenant: &str, path: &Path) -> anyhow::Result<SecretString> {
    if let Ok(kept) = std::fs::read_to_string(path) {
        let kept = SecretString::from(kept.trim().to_owned());
        if store.authenticate(&kept).await?.is_some() {
            return Ok(kept);
        }
    }
    let tenant = Tenant::new(tenant.to_owned())?;
    let created = store
        .create_key(&tenant, "chorus dev", Scopes::EVERY, KeyLimits::default())
        .await?;
    write_private(path, created.key.expose_secret())
        .with_context(|| format!("cannot keep the dev API key in {}", path.display()))?;
    Ok(created.key)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

/// Providers `chorus dev` finds in the environment: route name (also the provider), the variable
/// that reveals it, and the model the route asks.
const ENV_PROVIDERS: [(&str, &str, &str); 3] = [
    ("openai", "OPENAI_API_KEY", "gpt-4o-mini"),
    ("anthropic", "ANTHROPIC_API_KEY", "claude-3-5-haiku-latest"),
    ("ollama", "OLLAMA_HOST", "llama3.2"),
];

/// Adds a route for each provider whose variable `var` finds, unless a route of that name is
/// configured; returns a line per provider saying what was found. Keys stay in their variables:
/// the routes name them (`api_key_env`), so no key is copied or printed.
fn env_routes(routes: &mut Vec<RouteConfig>, var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    ENV_PROVIDERS
        .iter()
        .map(|&(name, variable, model)| {
            let value = var(variable).filter(|v| !v.trim().is_empty());
            if routes.iter().any(|r| r.name == name) {
                return format!("`{name}`: configured (the environment is not consulted)");
            }
            let Some(value) = value else {
                return format!("`{name}`: not added ({variable} is not set)");
            };
            let mut route = RouteConfig::new(name, name, model);
            let line = if name == "ollama" {
                let base_url = ollama_base_url(&value);
                let line = format!("`{name}`: {model} at {base_url} (from {variable})");
                route.base_url = Some(base_url);
                line
            } else {
                route.api_key_env = Some(variable.to_owned());
                format!("`{name}`: {model} (key from {variable})")
            };
            routes.push(route);
            line
        })
        .collect()
}

/// `OLLAMA_HOST` as Ollama reads it: `host[:port]` or a URL; no scheme means `http` and port 11434.
fn ollama_base_url(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") {
        return host.to_owned();
    }
    let has_port = host.rsplit_once(':').is_some_and(|(name, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!name.contains(':') || name.ends_with(']'))
    });
    match has_port {
        true => format!("http://{host}"),
        false => format!("http://{host}:11434"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_routes_for_providers_found_in_the_environment() {
        let mut routes = vec![RouteConfig::new("anthropic", "sim", "echo")];
        let env = |name: &str| match name {
            "OPENAI_API_KEY" => Some("sk-live-123".to_owned()),
            "ANTHROPIC_API_KEY" => Some("sk-ant".to_owned()),
            _ => None,
        };
        let lines = env_routes(&mut routes, env);
        assert_eq!(
            lines,
            [
                "`openai`: gpt-4o-mini (key from OPENAI_API_KEY)",
                "`anthropic`: configured (the environment is not consulted)",
                "`ollama`: not added (OLLAMA_HOST is not set)",
            ]
        );
        assert_eq!(routes.len(), 2);
        let openai = &routes[1];
        assert_eq!(
            (openai.provider.as_str(), openai.model.as_str()),
            ("openai", "gpt-4o-mini")
        );
        assert_eq!(openai.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert!(!lines.concat().contains("sk-live"));

        let mut routes = Vec::new();
        let lines = env_routes(&mut routes, |name| {
            (name == "OLLAMA_HOST").then(|| "0.0.0.0".to_owned())
        });
        assert_eq!(
            lines[2],
            "`ollama`: llama3.2 at http://0.0.0.0:11434 (from OLLAMA_HOST)"
        );
        assert_eq!(routes[0].base_url.as_deref(), Some("http://0.0.0.0:11434"));
    }

    #[test]
    fn reads_ollama_host_like_ollama() {
        for (host, url) in [
            ("127.0.0.1:11434", "http://127.0.0.1:11434"),
            ("gpu-box", "http://gpu-box:11434"),
            ("gpu-box:8080/", "http://gpu-box:8080"),
            ("[::1]:9000", "http://[::1]:9000"),
            ("[::1]", "http://[::1]:11434"),
            ("https://ollama.example.com", "https://ollama.example.com"),
        ] {
            assert_eq!(ollama_base_url(host), url, "{host}");
        }
    }
}
