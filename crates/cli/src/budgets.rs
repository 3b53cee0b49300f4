//! `chorus budgets list|show|set|remove`: spend budgets of tenants and API keys, for operators.
//!
//! A budget caps what a tenant, or one API key, may spend on provider calls per period. Its
//! ledger lives in the NATS budgets bucket ([`chorus_bus::budgets`]), which every process
//! watches: a budget set or removed here holds at once, on every edge and llm process, without
//! a restart. This module reads and changes that bucket (creating it with the NATS definitions
//! when it does not exist yet, as `chorus nats apply` would), and opens the database only to
//! write the audit log: `set` and `remove` are recorded as `budget.set` and `budget.remove` under
//! `--actor` (by default `$USER@<hostname>`). The database is opened and checked before anything
//! changes.
//!
//! A budget set here is the operator's (`source: admin`): a `[tenants.<name>] budget_usd` in the
//! configuration no longer replaces it at start-up. `chorus keys create --budget-usd` uses
//! [`open`], [`define`] and [`audit`] to give a new key its budget.

use anyhow::Context as _;
use chorus_app as app;
use chorus_bus::BusErrorKind;
use chorus_bus::budgets::Budgets;
use chorus_core::Tenant;
use chorus_core::budget::{Ledger, Limit, Period, Scope, Source, Statement, nanos, show, time};
use chorus_core::config::Config;
use chorus_store::{AuditAction, Store};
use serde_json::{Value, json};

use crate::client;
use crate::dlq::default_actor;

#[derive(Debug, clap::Args)]
pub struct BudgetsArgs {
    #[command(subcommand)]
    command: BudgetsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BudgetsCommand {
    /// Every budget: its limit and period, what it spent, holds and has left, tenants first.
    List {
        /// Print JSON (the shape of `GET /v1/admin/budgets`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One budget in detail: this period, the holds in flight, the holds that expired, the
    /// previous period.
    Show {
        #[command(flatten)]
        target: Target,
        /// Print JSON (the shape of `GET /v1/admin/budgets/{scope}/{id}`).
        #[arg(long)]
        json: bool,
    },
    /// Set a budget, live: what this period already spent counts against the new limit.
    Set {
        #[command(flatten)]
        target: Target,
        /// Dollars per period, at least 0 (0 refuses every call).
        #[arg(long, value_name = "DOLLARS", value_parser = dollars, allow_negative_numbers = true)]
        usd: f64,
        /// `month` (the calendar month, UTC) or a length such as 30d, 7d, 12h [default: the
        /// budget's current period, else month].
        #[arg(long, value_parser = Period::parse)]
        period: Option<Period>,
        /// Who to record in the audit log [default: $USER@<hostname>].
        #[arg(long)]
        actor: Option<String>,
        /// Print the budget as it now is as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a budget: its calls are no longer limited.
    Remove {
        #[command(flatten)]
        target: Target,
        /// Who to record in the audit log [default: $USER@<hostname>].
        #[arg(long)]
        actor: Option<String>,
        /// Print the budget as it was as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Whose budget: a tenant's or one API key's.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A tenant's budget (all its keys' calls together).
    #[arg(long)]
    tenant: Option<String>,
    /// An API key's budget, by the key's id (the ID column of `chorus keys list`).
    #[arg(long, value_name = "ID")]
    key: Option<String>,
}

impl Target {
    fn scope(&self) -> anyhow::Result<Scope> {
        match (&self.tenant, &self.key) {
            (Some(tenant), _) => Ok(Scope::Tenant(
                Tenant::new(tenant.as_str()).context("--tenant")?,
            )),
            (None, Some(id)) => Scope::parse("key", id).map_err(|e| anyhow::anyhow!("--key: {e}")),
            (None, None) => anyhow::bail!("name the budget: --tenant <TENANT> or --key <ID>"),
        }
    }
}

/// Why a `--usd` value is not an amount a budget can have.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadDollars {
    #[error("`{text}` is not a number of dollars: {source}")]
    NotANumber {
        text: String,
        #[source]
        source: std::num::ParseFloatError,
    },
    #[error("must be a number of dollars >= 0, not `{usd}`")]
    OutOfRange { usd: f64 },
}

/// A `--usd` value: a finite number of dollars, at least 0.
pub(crate) fn dollars(text: &str) -> Result<f64, BadDollars> {
    let usd: f64 = text
        .trim()
        .parse()
        .map_err(|source| BadDollars::NotANumber {
            text: text.to_owned(),
            source,
        })?;
    if usd.is_finite() && usd >= 0.0 {
        Ok(usd)
    } else {
        Err(BadDollars::OutOfRange { usd })
    }
}

pub async fn run(config_file: Option<&std::path::Path>, args: BudgetsArgs) -> anyhow::Result<()> {
    let config = app::load_config(config_file)?;
    match args.command {
        BudgetsCommand::List { json } => {
            let budgets = open(&config, "chorus budgets list").await?;
            let all = budgets.watch().await?.all();
            if json {
                let data: Vec<Statement> = all.iter().map(|(s, l)| l.statement(s)).collect();
                let body = json!({"object": "list", "data": data});
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                println!("{}", list_text(&all));
            }
        }
        BudgetsCommand::Show { target, json } => {
            let scope = target.scope()?;
            let budgets = open(&config, "chorus budgets show").await?;
            let ledger = budgets
                .get(&scope)
                .await?
                .with_context(|| format!("{scope} has no budget"))?;
            print_budget(&scope, &ledger, json)?;
        }
        BudgetsCommand::Set {
            target,
            usd,
            period,
            actor,
            json,
        } => {
            let scope = target.scope()?;
            let store = app::open_store(&config.database, false).await?;
            check_key(&store, &scope).await?;
            let budgets = open(&config, "chorus budgets set").await?;
            let set = define(&budgets, &scope, usd, period).await?;
            audit(&store, actor, AuditAction::BudgetSet, set.detail).await?;
            if !json {
                println!(
                    "set the budget of {scope} to {} (before: {})",
                    limit_text(&set.ledger.limit),
                    set.before
                        .as_ref()
                        .map_or_else(|| "none".into(), limit_text)
                );
            }
            print_budget(&scope, &set.ledger, json)?;
        }
        BudgetsCommand::Remove {
            target,
            actor,
            json,
        } => {
            let scope = target.scope()?;
            let store = app::open_store(&config.database, false).await?;
            let budgets = open(&config, "chorus budgets remove").await?;
            let removed = budgets
                .remove(&scope)
                .await?
                .with_context(|| format!("{scope} has no budget; nothing was removed"))?;
            let detail = json!({"scope": scope, "limit": removed.limit});
            audit(&store, actor, AuditAction::BudgetRemove, detail).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&removed.statement(&scope))?
                );
            } else {
                println!(
                    "removed the budget of {scope} ({}; {} spent this period): its calls are no \
                     longer limited",
                    limit_text(&removed.limit),
                    show(removed.spent)
                );
                if removed.source == Source::Config {
                    println!(
                        "note: it came from the configuration ([tenants.{}] budget_usd), which sets \
                         it again at the next start-up unless it is removed there too",
                        scope.id()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Connects to NATS as the configuration says and opens the budgets bucket, applying the NATS
/// definitions first (idempotent, as `chorus nats apply`) when the bucket does not exist yet.
pub(crate) async fn open(config: &Config, name: &str) -> anyhow::Result<Budgets> {
    let bus = app::connect(config, name).await?;
    match Budgets::open(&bus).await {
        Ok(budgets) => Ok(budgets),
        Err(e) if e.kind() == BusErrorKind::NotFound => {
            eprintln!(
                "the budgets bucket does not exist yet: applying the NATS definitions (as \
                 `chorus nats apply` does)"
            );
            app::apply_definitions(config, &bus).await.context(
                "cannot create the budgets bucket; run `chorus nats apply` (or start `chorus \
                 serve`) as a NATS user allowed to create streams",
            )?;
            Ok(Budgets::open(&bus).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A budget as set by [`define`], with the audit detail that records it.
pub(crate) struct Defined {
    pub ledger: Ledger,
    pub before: Option<Limit>,
    pub detail: Value,
}

/// Sets `scope`'s budget to `usd` per `period` (by default the budget's current period, else
/// `month`) as an operator's; nothing is audited yet.
pub(crate) async fn define(
    budgets: &Budgets,
    scope: &Scope,
    usd: f64,
    period: Option<Period>,
) -> Result<Defined, chorus_bus::BusError> {
    let before = budgets.get(scope).await?.map(|l| l.limit);
    let limit = Limit {
        usd,
        period: period.unwrap_or_else(|| before.map_or(Period::Month, |l| l.period)),
    };
    let ledger = budgets.define(scope, limit, Source::Admin).await?;
    let detail = json!({"scope": scope, "limit": limit, "before": before});
    Ok(Defined {
        ledger,
        before,
        detail,
    })
}

/// Writes a budget change to the audit log; a change the log could not take is reported with the
/// row it would have been.
pub(crate) async fn audit(
    store: &Store,
    actor: Option<String>,
    action: AuditAction,
    detail: Value,
) -> anyhow::Result<()> {
    let actor = actor.unwrap_or_else(default_actor);
    match store.record_audit(&actor, action, detail.clone()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("the audit row that could not be written: {detail}");
            Err(anyhow::Error::new(e).context(format!(
                "the budget was changed, but the change is not in the audit log ({})",
                action.as_str()
            )))
        }
    }
}

/// Refuses a budget for a key the database does not know (a typo); warns for a revoked one.
async fn check_key(store: &Store, scope: &Scope) -> anyhow::Result<()> {
    let Scope::Key(id) = scope else {
        return Ok(());
    };
    let keys = store.list_keys(None).await?;
    let key = keys
        .iter()
        .find(|k| &k.id == id)
        .with_context(|| format!("--key: no key `{id}` (see `chorus keys list`)"))?;
    if key.revoked_at.is_some() {
        eprintln!("warning: key {id} is revoked: it makes no calls, so its budget limits nothing");
    }
    Ok(())
}

/// `$50.00 per month`.
pub(crate) fn limit_text(limit: &Limit) -> String {
    format!("{} per {}", show(nanos(limit.usd)), limit.period)
}

fn time_text(ms: i64) -> String {
    time(ms).format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn print_budget(scope: &Scope, ledger: &Ledger, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&ledger.statement(scope))?
        );
    } else {
        println!("{}", detail_text(scope, ledger));
    }
    Ok(())
}

fn list_text(all: &[(Scope, Ledger)]) -> String {
    if all.is_empty() {
        return "no budgets".into();
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(scope, ledger)| {
            vec![
                scope.kind().to_owned(),
                scope.id().to_owned(),
                show(ledger.limit_nanos()),
                ledger.limit.period.to_string(),
                show(ledger.spent),
                show(ledger.reserved()),
                show(ledger.remaining()),
                ledger.calls.to_string(),
                time_text(ledger.end),
                ledger.source.as_str().to_owned(),
            ]
        })
        .collect();
    client::table(
        &[
            "SCOPE",
            "ID",
            "LIMIT",
            "PERIOD",
            "SPENT",
            "HELD",
            "REMAINING",
            "CALLS",
            "PERIOD ENDS (UTC)",
            "SOURCE",
        ],
        &rows,
    )
}

/// How many expired holds `show` lists (the JSON has every one the ledger keeps).
const EXPIRED_SHOWN: usize = 10;

fn detail_text(scope: &Scope, ledger: &Ledger) -> String {
    let source = match ledger.source {
        Source::Admin => "admin (set live; the configuration does not replace it)".to_owned(),
        Source::Config => format!(
            "config ([tenants.{}] budget_usd, applied at each start-up)",
            scope.id()
        ),
    };
    let expired_nanos: u64 = ledger.expired.iter().map(|e| e.nanos).sum();
    let expired = match ledger.expired.len() {
        0 => "none".to_owned(),
        n => format!(
            "{n} hold(s) whose process stopped, counted as spent at their reserved cost: {}",
            show(expired_nanos)
        ),
    };
    let previous = ledger.previous.map_or_else(
        || "-".to_owned(),
        |p| {
            format!(
                "{} over {} calls, {} to {}",
                show(p.spent),
                p.calls,
                time_text(p.start),
                time_text(p.end)
            )
        },
    );
    let mut out = String::new();
    for (name, value) in [
        ("budget", scope.to_string()),
        ("limit", limit_text(&ledger.limit)),
        ("source", source),
        (
            "period",
            format!(
                "{} to {} (UTC)",
                time_text(ledger.start),
                time_text(ledger.end)
            ),
        ),
        ("spent", show(ledger.spent)),
        (
            "held",
            format!(
                "{} for {} call(s) in flight",
                show(ledger.reserved()),
                ledger.holds.len()
            ),
        ),
        ("remaining", show(ledger.remaining())),
        ("calls", format!("{} admitted this period", ledger.calls)),
        ("expired", expired),
        ("previous", previous),
    ] {
        out.push_str(&format!("{name:>9}: {value}\n"));
    }
    for e in ledger.expired.iter().rev().take(EXPIRED_SHOWN) {
        out.push_str(&format!(
            "           {}  {}  expired {}\n",
            e.id,
            show(e.nanos),
            time_text(e.at)
        ));
    }
    if ledger.expired.len() > EXPIRED_SHOWN {
        out.push_str(&format!(
            "           … and {} older (see --json)\n",
            ledger.expired.len() - EXPIRED_SHOWN
        ));
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_core::budget::{Closed, Expired, Hold};

    use super::*;

    fn ledger() -> Ledger {
        let limit = Limit {
            usd: 50.0,
            period: Period::Every(Duration::from_secs(30 * 86_400)),
        };
        // 2026-05-01T00:00:00Z.
        let mut ledger = Ledger::new(limit, Source::Admin, 1_777_593_600_000);
        ledger.spent = nanos(1.25);
        ledger.calls = 7;
        ledger.holds.insert(
            "call-1".into(),
            Hold {
                nanos: nanos(0.5),
                until: i64::MAX,
            },
        );
        ledger.expired.push(Expired {
            id: "call-0".into(),
            nanos: nanos(0.25),
            at: 1_777_600_000_000,
        });
        ledger.previous = Some(Closed {
            start: 0,
            end: 1_000,
            spent: nanos(9.0),
            calls: 90,
        });
        ledger
    }

    #[test]
    fn dollars_refuse_negative_and_nan() {
        assert_eq!(dollars("50").unwrap(), 50.0);
        assert_eq!(dollars(" 0.5 ").unwrap(), 0.5);
        let refused = |text: &str| dollars(text).unwrap_err().to_string();
        assert_eq!(refused("-1"), "must be a number of dollars >= 0, not `-1`");
        assert_eq!(
            refused("NaN"),
            "must be a number of dollars >= 0, not `NaN`"
        );
        assert_eq!(
            refused("inf"),
            "must be a number of dollars >= 0, not `inf`"
        );
        assert!(refused("lots").starts_with("`lots` is not a number of dollars"));
    }

    #[test]
    fn a_budget_reads_as_a_row_and_in_detail() {
        let scope = Scope::Tenant(Tenant::new("acme").unwrap());
        let listed = list_text(&[(scope.clone(), ledger())]);
        let lines: Vec<&str> = listed.lines().collect();
        assert!(
            lines[0].starts_with("SCOPE   ID    LIMIT   PERIOD  "),
            "{listed}"
        );
        assert!(
            lines[1].starts_with("tenant  acme  $50.00  30days  $1.25  $0.50  $48.25     7"),
            "{listed}"
        );
        assert!(
            lines[1].ends_with("2026-05-31 00:00:00Z  admin"),
            "{listed}"
        );
        assert_eq!(list_text(&[]), "no budgets");

        let detail = detail_text(&scope, &ledger());
        for expected in [
            "   budget: tenant acme",
            "    limit: $50.00 per 30days",
            "     held: $0.50 for 1 call(s) in flight",
            "remaining: $48.25",
            "  expired: 1 hold(s) whose process stopped, counted as spent at their reserved \
             cost: $0.25",
            " previous: $9.00 over 90 calls",
            "call-0  $0.25  expired 2026-05-01",
        ] {
            assert!(detail.contains(expected), "{expected:?} in\n{detail}");
        }
        let view = serde_json::to_value(ledger().statement(&scope)).unwrap();
        assert_eq!(view["scope"], "tenant");
        assert_eq!(view["remaining_usd"], 48.25);
        assert_eq!(view["calls_in_flight"], 1);
        assert_eq!(view["expired"][0]["usd"], 0.25);
        assert_eq!(view["previous"]["calls"], 90);
    }
}
