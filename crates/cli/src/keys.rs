//! `chorus keys create|list|revoke`: API keys, straight in the database.
//!
//! `create` prints the key on stdout, once: only its SHA-256 is stored, so it cannot be shown
//! again. Creating and revoking are written to the audit log as `--actor` (by default
//! `$USER@<hostname>`). A revoked key stops working on its next request, on every edge.

use chorus_core::Tenant;
use chorus_core::auth::Scopes;
use chorus_core::fair::Band;
use chorus_store::{AuditAction, KeyInfo, KeyLimits};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::client::{self, or_dash};
use crate::dlq::default_actor;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Make a key for a tenant and print it (it is never shown again).
    Create {
        /// The tenant the key acts for: 1-64 characters of a-z, 0-9, '_' or '-'.
        #[arg(long)]
        tenant: String,
        /// A label for listings (who or what uses the key).
        #[arg(long, default_value = "")]
        name: String,
        /// Comma-separated: submit, read, admin.
        #[arg(long, default_value = "submit,read", value_parser = Scopes::parse)]
        scopes: Scopes,
        /// Requests per minute this key may make at each edge [default: edge.key_rpm].
        #[arg(long)]
        rpm: Option<u32>,
        /// The highest class of service the key's requests are served at: interactive,
        /// standard or batch. Anything it asks above that is served at this band.
        #[arg(long, default_value = "interactive")]
        max_band: Band,
        /// Who to record in the audit log [default: $USER@<hostname>].
        #[arg(long)]
        actor: Option<String>,
        /// Print the key and its details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keys without their secrets, oldest first.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key's id (the ID column of `list`).
        id: String,
        /// Who to record in the audit log [default: $USER@<hostname>].
        #[arg(long)]
        actor: Option<String>,
    },
}

pub async fn run(config_file: Option<&std::path::Path>, args: KeysArgs) -> anyhow::Result<()> {
    let config = chorus_app::load_config(config_file)?;
    let store = chorus_app::open_store(&config.database, false).await?;
    match args.command {
        KeysCommand::Create {
            tenant,
            name,
            scopes,
            rpm,
            max_band,
            actor,
            json,
        } => {
            anyhow::ensure!(rpm != Some(0), "--rpm: must be at least 1");
            let tenant = Tenant::new(tenant)?;
            let limits = KeyLimits { rpm, max_band };
            let created = store.create_key(&tenant, &name, scopes, limits).await?;
            let detail = json!({"key": created.info});
            store
                .record_audit(
                    &actor.unwrap_or_else(default_actor),
                    AuditAction::KeyCreate,
                    detail,
                )
                .await?;
            let key = created.key.expose_secret();
            if json {
                let mut out = serde_json::to_value(&created.info)?;
                out["key"] = key.into();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                eprintln!(
                    "created key {} for tenant {} ({}, at most {}); it is shown once:",
                    created.info.id,
                    created.info.tenant,
                    created.info.scopes,
                    created.info.max_band
                );
                println!("{key}");
            }
            Ok(())
        }
        KeysCommand::List { tenant, json } => {
            let tenant = tenant.map(Tenant::new).transpose()?;
            let keys = store.list_keys(tenant.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!("{}", list_text(&keys));
            }
            Ok(())
        }
        KeysCommand::Revoke { id, actor } => {
            let revoked = store
                .revoke_key(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no key `{id}`"))?;
            store
                .record_audit(
                    &actor.unwrap_or_else(default_actor),
                    AuditAction::KeyRevoke,
                    json!({"key": revoked}),
                )
                .await?;
            println!("revoked key {} of tenant {}", revoked.id, revoked.tenant);
            Ok(())
        }
    }
}

fn list_text(keys: &[KeyInfo]) -> String {
    if keys.is_empty() {
        return "no keys".into();
    }
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.tenant.to_string(),
                k.name.clone(),
                k.scopes.to_string(),
                or_dash(k.rpm),
                k.max_band.to_string(),
                time(&k.created_at),
                k.revoked_at.as_ref().map_or_else(|| "-".into(), time),
            ]
        })
        .collect();
    client::table(
        &[
            "ID", "TENANT", "NAME", "SCOPES", "RPM", "MAX BAND", "CREATED", "REVOKED",
        ],
        &rows,
    )
}
