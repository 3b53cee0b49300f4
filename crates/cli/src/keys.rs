//! `chorus keys create|list|revoke`: API keys, straight in the database.
//!
//! `create` prints the key on stdout, once: only its SHA-256 is stored, so it cannot be shown
//! again. Creating and revoking are written to the audit log as `--actor` (by default
//! `$USER@<hostname>`). A revoked key stops working on its next request, on every edge.
//!
//! `create --budget-usd` also gives the key a spend budget of its own, in the NATS budgets
//! bucket, as `chorus budgets set --key <id>` would (audited as `budget.set`). NATS is reached
//! before the key is created, so an unreachable NATS creates nothing; if the budget still cannot
//! be set once the key exists, the key is printed anyway and the error says how to set it.

use anyhow::Context as _;
use chorus_core::Tenant;
use chorus_core::auth::Scopes;
use chorus_core::budget::{Period, Scope};
use chorus_core::fair::Band;
use chorus_store::{AuditAction, KeyInfo, KeyLimits};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::budgets;
use crate::client::{self, or_dash};
use crate::dlq::default_actor;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Make a key for a tenant and print it (it is never shown again). With --budget-usd, the
    /// key also gets a spend budget of its own (see `chorus budgets`).
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
        /// A spend budget for this key: at most this many dollars per --budget-period on provider
        /// calls, set live in NATS right after the key is made (as `chorus budgets set --key
        /// <id> --usd <DOLLARS>` would; audited as budget.set). The tenant's budget, if any,
        /// still applies too.
        #[arg(long, value_name = "DOLLARS", value_parser = budgets::dollars, allow_negative_numbers = true)]
        budget_usd: Option<f64>,
        /// The key budget's period: `month` (the calendar month, UTC) or a length such as 30d,
        /// 7d, 12h [default: month]. Only with --budget-usd.
        #[arg(long, value_parser = Period::parse, requires = "budget_usd")]
        budget_period: Option<Period>,
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
            budget_usd,
            budget_period,
            actor,
            json,
        } => {
            anyhow::ensure!(rpm != Some(0), "--rpm: must be at least 1");
            anyhow::ensure!(
                budget_period.is_none() || budget_usd.is_some(),
                "--budget-period: only with --budget-usd"
            );
            let tenant = Tenant::new(tenant)?;
            // NATS first: when it cannot be reached, nothing is created.
            let budget_usd = match budget_usd {
                Some(usd) => Some((
                    budgets::open(&config, "chorus keys create")
                        .await
                        .context("cannot reach the budgets bucket; no key was created")?,
                    usd,
                )),
                None => None,
            };
            let limits = KeyLimits { rpm, max_band };
            let created = store.create_key(&tenant, &name, scopes, limits).await?;
            let detail = json!({"key": created.info});
            store
                .record_audit(
                    &actor.clone().unwrap_or_else(default_actor),
                    AuditAction::KeyCreate,
                    detail,
                )
                .await?;
            let id = &created.info.id;
            let budget = match &budget_usd {
                Some((ledgers, usd)) => {
                    let scope = Scope::Key(id.clone());
                    Some(
                        budgets::define(ledgers, &scope, *usd, budget_period)
                            .await
                            .map(|set| (scope, set)),
                    )
                }
                None => None,
            };
            let key = created.key.expose_secret();
            let set = match &budget {
                Some(Ok((scope, set))) => Some(set.ledger.statement(scope)),
                _ => None,
            };
            if json {
                let mut out = serde_json::to_value(&created.info)?;
                out["key"] = key.into();
                if budget.is_some() {
                    out["budget"] = serde_json::to_value(&set)?;
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                eprintln!(
                    "created key {id} for tenant {} ({}, at most {}); it is shown once:",
                    created.info.tenant, created.info.scopes, created.info.max_band
                );
                println!("{key}");
            }
            match budget {
                None => Ok(()),
                Some(Ok((_, set))) => {
                    budgets::audit(&store, actor, AuditAction::BudgetSet, set.detail).await?;
                    if !json {
                        eprintln!(
                            "key {id} has a budget of {}",
                            budgets::limit_text(&set.ledger.limit)
                        );
                    }
                    Ok(())
                }
                Some(Err(e)) => {
                    let usd = budget_usd.map_or(0.0, |(_, usd)| usd);
                    let period = budget_period.unwrap_or_default();
                    Err(anyhow::anyhow!(
                        "key {id} was created (printed above) but has NO budget, so its calls \
                         are not limited: cannot set the budget ({e}). Set it with: chorus \
                         budgets set --key {id} --usd {usd} --period {period}"
                    ))
                }
            }
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
