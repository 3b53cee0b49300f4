//! `chorus config check`: the configuration as every command loads it (the file, then the
//! `CHORUS_…` variables over it), checked as start-up would check it but without connecting to
//! anything — values, routes and their API keys, the NATS credentials and TLS files, the database
//! password — and printed as TOML with any password in a URL replaced by `***`. Secrets are only
//! ever named by their variable or file, so the rest prints as it is.

use std::path::Path;

use chorus_core::config::Config;
use chorus_llm::Routes;

pub async fn run(config_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    let mut problems = Vec::new();
    if let Err(e) = Routes::new(&config.routes) {
        problems.push(format!("routes: {e}"));
    }
    if let Err(e) = chorus_bus::connect::connect_options(&config.nats).await {
        problems.push(e.to_string());
    }
    if let Err(e) = config.database.connect_url() {
        problems.push(e.to_string());
    }
    let mut shown = config;
    shown.database.url = shown.database.redacted_url();
    shown.nats.url = chorus_core::config::redact_url(&shown.nats.url);
    println!("{}", toml::to_string(&shown)?);
    if problems.is_empty() {
        eprintln!("the configuration is valid");
        Ok(())
    } else {
        anyhow::bail!(
            "the configuration cannot be used:\n  {}",
            problems.join("\n  ")
        )
    }
}
