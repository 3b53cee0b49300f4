//! The llm role's side of spend budgets: before an attempt goes out, its worst-case cost is held
//! on every budget it is charged to (its tenant's, then its key's); after, the hold is settled at
//! what the provider reported, or released when the attempt failed.
//!
//! The worst case is the prompt's tokens (tiktoken's estimate) at the route's input price plus
//! the completion allowance — the job's `max_tokens`, else the route's, else
//! `budgets.max_tokens` — at its output price, and the attempt is sent with that allowance as
//! its `max_tokens`, so the hold bounds what the call can cost. A streamed attempt that the
//! budget cannot cover whole, but can cover for its prompt and [`LEAST_STREAMED`] tokens, holds
//! what remains and is cut there. A route without a price is counted at
//! `budgets.default_price`, or, without one, refused: a budgeted call is never free by accident.
//!
//! A hold lasts the route's timeout plus `budgets.hold_grace`: one its process never settled
//! (the process died) is then counted as spent at its reserved cost by whoever touches the
//! ledger next, and reconciled if its settlement comes after all.

use std::time::Duration;

use chorus_bus::budgets::{BudgetView, Budgets, Reserved};
use chorus_core::budget::{Nanos, Scope, nanos};
use chorus_core::config::{BudgetsConfig, Price};
use chorus_core::ids::now_millis;
use chorus_core::messages::{LlmCall, Usage};
use chorus_llm::retry::Grant;
use chorus_llm::{CompletionRequest, ErrorKind, LlmError, Route, tokens};
use chorus_telemetry::names;

/// The fewest completion tokens a cut stream is worth starting with.
pub const LEAST_STREAMED: u32 = 16;

/// How often the budgets are swept and their gauges set.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Budgets as the llm role uses them.
#[derive(Clone, Debug)]
pub struct Spend {
    budgets: Budgets,
    view: BudgetView,
    config: BudgetsConfig,
}

/// What one attempt holds, to settle after it.
#[derive(Clone, Debug)]
pub struct Held {
    id: String,
    scopes: Vec<Scope>,
    price: Price,
}

impl Spend {
    pub fn new(budgets: Budgets, view: BudgetView, config: BudgetsConfig) -> Self {
        Self {
            budgets,
            view,
            config,
        }
    }

    /// The budgets `call` is charged to that exist.
    fn scopes(&self, call: &LlmCall) -> Vec<Scope> {
        let tenant = Scope::Tenant(call.tenant.clone());
        let key = call.key.clone().map(Scope::Key);
        [Some(tenant), key]
            .into_iter()
            .flatten()
            .filter(|scope| self.view.is_budgeted(scope))
            .collect()
    }

    /// Holds the worst-case cost of sending `request` to `route` for `call` on each of its
    /// budgets; `None` (and a default grant) when it has none.
    pub async fn reserve(
        &self,
        call: &LlmCall,
        route: &Route,
        request: &CompletionRequest,
    ) -> Result<(Grant, Option<Held>), LlmError> {
        let scopes = self.scopes(call);
        if scopes.is_empty() {
            return Ok((Grant::default(), None));
        }
        let price = route.price.or(self.config.default_price).ok_or_else(|| {
            LlmError::new(
                ErrorKind::BudgetExceeded,
                format!(
                    "route {} has no price, so a call under the budget of {} cannot be counted; \
                     give the route a `price`, or set budgets.default_price",
                    route.name, scopes[0]
                ),
            )
        })?;
        let prompt = tokens::prompt(&request.messages);
        let allowance = request
            .params
            .max_tokens
            .or(route.max_tokens)
            .unwrap_or(self.config.max_tokens);
        let want = cost(&price, prompt, allowance);
        let least = match request.stream_to() {
            Some(_) => cost(&price, prompt, LEAST_STREAMED.min(allowance)),
            None => want,
        };
        let id = format!(
            "{}.{}.{}.{:016x}",
            call.job_id.as_uuid().simple(),
            call.step,
            chorus_core::subjects::token(&route.name),
            request.seed_key
        );
        let until = now_millis()
            + i64::try_from((route.timeout + self.config.hold_grace).as_millis())
                .unwrap_or(i64::MAX);
        let mut held = Held {
            id,
            scopes: Vec::with_capacity(scopes.len()),
            price,
        };
        let mut granted = want;
        let mut limiting = None;
        for scope in scopes {
            let reserved = self
                .budgets
                .reserve(&scope, &held.id, granted, least, until)
                .await;
            match reserved {
                Ok(Reserved::Granted(amount)) => {
                    if amount < granted {
                        granted = amount;
                        limiting = Some(scope.clone());
                    }
                    held.scopes.push(scope);
                }
                Ok(Reserved::Unbudgeted) => {}
                Ok(Reserved::Refused(refusal)) => {
                    metrics::counter!(names::BUDGET_REFUSED, "scope" => scope.kind()).increment(1);
                    self.release(&held).await;
                    return Err(LlmError::new(
                        ErrorKind::BudgetExceeded,
                        refusal.to_string(),
                    ));
                }
                Err(e) => {
                    self.release(&held).await;
                    return Err(LlmError::new(
                        ErrorKind::BudgetUnavailable,
                        format!("the budget of {scope} cannot be checked: {e}"),
                    ));
                }
            }
        }
        let grant = if granted >= want {
            Grant {
                max_tokens: Some(allowance),
                cut: None,
            }
        } else {
            let prompt_cost = cost(&price, prompt, 0);
            let per_token = cost(&price, 0, 1).max(1);
            let tokens =
                (granted.saturating_sub(prompt_cost) / per_token).min(u64::from(allowance));
            Grant {
                max_tokens: Some(u32::try_from(tokens).unwrap_or(allowance)),
                cut: Some(format!(
                    "the budget of {} could cover only {tokens} of the {allowance} completion \
                     tokens asked for",
                    limiting.map_or_else(String::new, |scope| scope.to_string())
                )),
            }
        };
        Ok((grant, (!held.scopes.is_empty()).then_some(held)))
    }

    /// The attempt `held` was for cost `usage` (none: it failed, and cost nothing).
    pub async fn settled(&self, held: &Held, usage: Option<&Usage>) {
        let actual = usage.map_or(0, |u| {
            cost(&held.price, u.prompt_tokens, u.completion_tokens)
        });
        self.settle(held, actual).await;
    }

    async fn settle(&self, held: &Held, actual: Nanos) {
        for scope in &held.scopes {
            if let Err(e) = self.budgets.settle(scope, &held.id, actual).await {
                // The hold expires and is counted at its reserved cost: never less than spent.
                tracing::warn!(%scope, hold = %held.id, error = %e, "could not settle a budget hold");
            }
        }
    }

    /// Drops the holds of an attempt that was not sent after all.
    async fn release(&self, held: &Held) {
        for scope in &held.scopes {
            if let Err(e) = self.budgets.release(scope, &held.id).await {
                tracing::warn!(%scope, hold = %held.id, error = %e, "could not release a budget hold");
            }
        }
    }

    /// Until `stop`: every few seconds, brings each budget's ledger to now (orphaned holds
    /// counted, ended periods closed) and sets its gauges.
    pub async fn sweep(self, stop: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let now = now_millis();
            for (scope, ledger) in self.view.all() {
                let due = ledger.holds.values().any(|h| h.until <= now);
                if due && let Err(e) = self.budgets.sweep(&scope).await {
                    tracing::debug!(%scope, error = %e, "could not sweep a budget");
                }
                let labels = [
                    ("scope", scope.kind().to_owned()),
                    ("id", scope.id().to_owned()),
                ];
                let usd = chorus_core::budget::usd;
                metrics::gauge!(names::BUDGET_LIMIT, &labels).set(ledger.limit.usd);
                metrics::gauge!(names::BUDGET_SPENT, &labels).set(usd(ledger.spent));
                metrics::gauge!(names::BUDGET_RESERVED, &labels).set(usd(ledger.reserved()));
                metrics::gauge!(names::BUDGET_REMAINING, &labels).set(usd(ledger.remaining()));
            }
        }
    }
}

/// What `prompt` and `completion` tokens cost at `price`, in nanodollars.
fn cost(price: &Price, prompt: u32, completion: u32) -> Nanos {
    let per_mtok =
        f64::from(prompt) * price.input_per_mtok + f64::from(completion) * price.output_per_mtok;
    nanos(per_mtok / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_to_the_token() {
        let price = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
        };
        assert_eq!(cost(&price, 1_000_000, 0), nanos(0.15));
        assert_eq!(cost(&price, 0, 1), 600);
        assert_eq!(cost(&price, 10, 100), 1_500 + 60_000);
    }
}
