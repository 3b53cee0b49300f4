//! Spend budgets shared by every process: one [`Ledger`] per tenant or API key budget in the
//! `<prefix>_budgets` KV bucket, changed only by compare-and-set.
//!
//! Why NATS and not the database: every budgeted call writes its ledgers twice (reserve, then
//! settle), from every llm process at once. A KV compare-and-set is one round trip to the stream
//! leader, contended only by writers of the same budget, while SQLite has one writer for the
//! whole database (the persister's) and Postgres would take a row lock per call. And the llm role
//! already stops without NATS, so the ledger adds no new way to fail: when it cannot be read,
//! a budgeted call waits (fails closed) and is retried, and nothing is lost.
//!
//! A process batches its own calls' changes to a ledger: reserves, settlements and releases
//! that arrive while one compare-and-set is in flight are applied together by the next, so a
//! busy budget costs a round trip per batch, not per call, and compare-and-set conflicts happen
//! only between processes. Every write first brings the ledger to now
//! ([`Ledger::advance`]): a period that ended is closed, and holds past their time (their
//! process died) are counted as spent. [`Budgets::watch`] mirrors the bucket, so a process knows
//! without a round trip whether a call is budgeted at all, and the edge can refuse work of a
//! spent budget before it is queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use chorus_core::budget::{Ledger, Limit, Nanos, Refusal, Scope, Source};
use chorus_core::ids::{UnixMillis, now_millis};
use tokio::sync::oneshot;

use crate::mirror::{Mirror, mirror};
use crate::{Bus, BusError, BusErrorKind};

/// The budgets bucket.
#[derive(Clone)]
pub struct Budgets {
    bus: Bus,
    kv: Store,
    /// One writer per ledger at a time in this process.
    serial: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Calls' changes waiting for their ledger's next write, per ledger.
    batches: Arc<Mutex<HashMap<String, Arc<Mutex<Batch>>>>>,
}

/// One call's change to a ledger.
#[derive(Clone, Debug)]
enum Op {
    Reserve {
        id: String,
        want: Nanos,
        least: Nanos,
        until: UnixMillis,
    },
    Settle {
        id: String,
        actual: Nanos,
    },
    Release {
        id: String,
    },
}

/// The changes waiting for a ledger's next write, and whether a task is writing them.
#[derive(Default)]
struct Batch {
    waiting: Vec<(Op, oneshot::Sender<Result<Reserved, BusError>>)>,
    writing: bool,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("bucket", &self.kv.name)
            .finish()
    }
}

/// What asking a budget for a call's money came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// There is no such budget.
    Unbudgeted,
    /// This much is held for the call.
    Granted(Nanos),
    Refused(Refusal),
}

/// What a change to a ledger decided: write this ledger (or delete it), or leave it.
enum Change<T> {
    Write(Option<Ledger>, T),
    Keep(T),
}

impl Budgets {
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let kv = bus
            .js
            .get_key_value(bus.subjects.budgets_bucket())
            .await
            .map_err(|e| BusError::request("open the budgets bucket", e))?;
        Ok(Self {
            bus: bus.clone(),
            kv,
            serial: Arc::default(),
            batches: Arc::default(),
        })
    }

    /// Applies `change` to the ledger of `scope` with compare-and-set, reading again on conflict.
    /// `change` sees the ledger brought to now, or `None` when there is no such budget.
    async fn update<T>(
        &self,
        scope: &Scope,
        mut change: impl FnMut(Option<Ledger>, UnixMillis) -> Change<T>,
    ) -> Result<T, BusError> {
        let key = self.bus.subjects.budget_key(scope);
        let lock = {
            let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(serial.entry(key.clone()).or_default())
        };
        let _serial = lock.lock().await;
        loop {
            let entry = self
                .kv
                .entry(&key)
                .await
                .map_err(|e| BusError::request("read a budget", e))?;
            let (ledger, revision) = match entry {
                Some(e) if e.operation == Operation::Put => (Some(decode(&e.value)?), e.revision),
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            let now = now_millis();
            let mut advanced = ledger;
            let moved = advanced.as_mut().is_some_and(|l| l.advance(now));
            let (next, out) = match change(advanced.clone(), now) {
                Change::Write(next, out) => (next, out),
                Change::Keep(out) if moved => (advanced, out),
                Change::Keep(out) => return Ok(out),
            };
            let written = match (next, revision) {
                (Some(next), 0) => self
                    .kv
                    .create(&key, encode(&next)?)
                    .await
                    .map(drop)
                    .map_err(|e| match e.kind() {
                        CreateErrorKind::AlreadyExists => None,
                        _ => Some(BusError::request("write a budget", e)),
                    }),
                (Some(next), revision) => self
                    .kv
                    .update(&key, encode(&next)?, revision)
                    .await
                    .map(drop)
                    .map_err(|e| match e.kind() {
                        UpdateErrorKind::WrongLastRevision => None,
                        _ => Some(BusError::request("write a budget", e)),
                    }),
                (None, 0) => return Ok(out),
                (None, _) => self
                    .kv
                    .delete(&key)
                    .await
                    .map_err(|e| Some(BusError::request("delete a budget", e))),
            };
            match written {
                Ok(()) => return Ok(out),
                Err(None) => continue,
                Err(Some(e)) => return Err(e),
            }
        }
    }

    /// Sets the limit of `scope`'s budget, keeping what this period spent; the ledger after.
    pub async fn define(
        &self,
        scope: &Scope,
        limit: Limit,
        source: Source,
    ) -> Result<Ledger, BusError> {
        self.update(scope, |ledger, now| {
            let ledger = match ledger {
                Some(mut ledger) => {
                    ledger.redefine(limit, source, now);
                    ledger
                }
                None => Ledger::new(limit, source, now),
            };
            Change::Write(Some(ledger.clone()), ledger)
        })
        .await
    }

    /// The configuration's budgets: each written unless an operator set that budget since.
    pub async fn apply_config(&self, budgets: &[(Scope, Limit)]) -> Result<(), BusError> {
        for (scope, limit) in budgets {
            let applied = self
                .update(scope, |ledger, now| match ledger {
                    Some(ledger) if ledger.source == Source::Admin => Change::Keep(false),
                    Some(ledger) if ledger.limit == *limit => Change::Keep(true),
                    Some(mut ledger) => {
                        ledger.redefine(*limit, Source::Config, now);
                        Change::Write(Some(ledger), true)
                    }
                    None => Change::Write(Some(Ledger::new(*limit, Source::Config, now)), true),
                })
                .await?;
            if !applied {
                tracing::info!(%scope, "the budget was set by an operator; the configuration's is not applied");
            }
        }
        Ok(())
    }

    /// Removes `scope`'s budget: its calls are no longer limited. Whether there was one.
    pub async fn remove(&self, scope: &Scope) -> Result<Option<Ledger>, BusError> {
        self.update(scope, |ledger, _| match ledger {
            Some(ledger) => Change::Write(None, Some(ledger)),
            None => Change::Keep(None),
        })
        .await
    }

    /// `scope`'s ledger as of now (periods closed and holds expired as the next write would).
    pub async fn get(&self, scope: &Scope) -> Result<Option<Ledger>, BusError> {
        let key = self.bus.subjects.budget_key(scope);
        let entry = self
            .kv
            .entry(&key)
            .await
            .map_err(|e| BusError::request("read a budget", e))?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                let mut ledger = decode(&e.value)?;
                ledger.advance(now_millis());
                Ok(Some(ledger))
            }
            _ => Ok(None),
        }
    }

    /// Holds up to `want` for call `id` on `scope`'s budget until `until` (or as much as remains
    /// if at least `least`).
    pub async fn reserve(
        &self,
        scope: &Scope,
        id: &str,
        want: Nanos,
        least: Nanos,
        until: UnixMillis,
    ) -> Result<Reserved, BusError> {
        let op = Op::Reserve {
            id: id.to_owned(),
            want,
            least,
            until,
        };
        self.batched(scope, op).await
    }

    /// Call `id` cost `actual` (0 when it failed): its hold is settled, or its expiry reconciled.
    pub async fn settle(&self, scope: &Scope, id: &str, actual: Nanos) -> Result<(), BusError> {
        let op = Op::Settle {
            id: id.to_owned(),
            actual,
        };
        self.batched(scope, op).await.map(drop)
    }

    /// Call `id` was not sent after all: its hold is dropped, and it is not counted.
    pub async fn release(&self, scope: &Scope, id: &str) -> Result<(), BusError> {
        let op = Op::Release { id: id.to_owned() };
        self.batched(scope, op).await.map(drop)
    }

    /// Applies `op` to `scope`'s ledger in the next batch of this process's changes to it: the
    /// first change to arrive starts a task that writes whatever has gathered, and goes on
    /// until nothing waits. A task, so that a caller that gives up does not strand the others.
    async fn batched(&self, scope: &Scope, op: Op) -> Result<Reserved, BusError> {
        let key = self.bus.subjects.budget_key(scope);
        let batch = {
            let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(batches.entry(key).or_default())
        };
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut batch = batch.lock().unwrap_or_else(|p| p.into_inner());
            batch.waiting.push((op, answer));
            !std::mem::replace(&mut batch.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write_batches(scope.clone(), batch));
        }
        answered
            .await
            .map_err(|e| BusError::new("write a budget", BusErrorKind::Unavailable, e))?
    }

    /// Writes `batch`'s changes to `scope`'s ledger, one compare-and-set per batch, until no
    /// change waits.
    async fn write_batches(self, scope: Scope, batch: Arc<Mutex<Batch>>) {
        loop {
            let waiting = {
                let mut batch = batch.lock().unwrap_or_else(|p| p.into_inner());
                if batch.waiting.is_empty() {
                    batch.writing = false;
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            let (ops, answers): (Vec<Op>, Vec<_>) = waiting.into_iter().unzip();
            let written = self
                .update(&scope, |ledger, _| {
                    let Some(mut ledger) = ledger else {
                        return Change::Keep(vec![Reserved::Unbudgeted; ops.len()]);
                    };
                    let mut changed = false;
                    let outcomes = ops
                        .iter()
                        .map(|op| apply(&mut ledger, &scope, op, &mut changed))
                        .collect();
                    match changed {
                        true => Change::Write(Some(ledger), outcomes),
                        false => Change::Keep(outcomes),
                    }
                })
                .await;
            match written {
                Ok(outcomes) => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        let _ = answer.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let each = BusError::new("write a budget", e.kind(), e.to_string());
                        let _ = answer.send(Err(each));
                    }
                }
            }
        }
    }

    /// Brings `scope`'s ledger to now in the bucket: expired holds counted, an ended period
    /// closed.
    pub async fn sweep(&self, scope: &Scope) -> Result<(), BusError> {
        self.update(scope, |_, _| Change::Keep(())).await
    }

    /// Starts mirroring the bucket; returns once the budgets already set are loaded.
    pub async fn watch(&self) -> Result<BudgetView, BusError> {
        let ledgers: Arc<RwLock<HashMap<Scope, Ledger>>> = Arc::default();
        let live = Arc::clone(&ledgers);
        let subjects = self.bus.subjects.clone();
        let mirror = mirror(&self.bus, &self.kv, "budgets", move |entry| {
            let Some(scope) = subjects.budget_of_key(&entry.key) else {
                return;
            };
            let mut ledgers = live.write().unwrap_or_else(|p| p.into_inner());
            match entry.operation {
                Operation::Put => match decode(&entry.value) {
                    Ok(ledger) => {
                        ledgers.insert(scope, ledger);
                    }
                    Err(e) => tracing::warn!(%scope, error = %e, "unreadable budget"),
                },
                Operation::Delete | Operation::Purge => {
                    ledgers.remove(&scope);
                }
            }
        })
        .await?;
        Ok(BudgetView {
            ledgers,
            _mirror: Arc::new(mirror),
        })
    }
}

/// One call's change to `ledger`; what it came to (`Unbudgeted` for a settlement or release).
fn apply(ledger: &mut Ledger, scope: &Scope, op: &Op, changed: &mut bool) -> Reserved {
    match op {
        Op::Reserve {
            id,
            want,
            least,
            until,
        } => match ledger.reserve(scope, id, *want, *least, *until) {
            Ok(granted) => {
                *changed = true;
                Reserved::Granted(granted)
            }
            Err(refusal) => Reserved::Refused(refusal),
        },
        Op::Settle { id, actual } => {
            *changed |= ledger.settle(id, *actual);
            Reserved::Unbudgeted
        }
        Op::Release { id } => {
            *changed |= ledger.release(id);
            Reserved::Unbudgeted
        }
    }
}

fn encode(ledger: &Ledger) -> Result<bytes::Bytes, BusError> {
    serde_json::to_vec(ledger)
        .map(Into::into)
        .map_err(|e| BusError::new("encode a budget", BusErrorKind::Codec, e))
}

fn decode(value: &[u8]) -> Result<Ledger, BusError> {
    serde_json::from_slice(value)
        .map_err(|e| BusError::new("decode a budget", BusErrorKind::Codec, e))
}

/// The budgets as this process has seen them: current within milliseconds of each write.
#[derive(Clone)]
pub struct BudgetView {
    ledgers: Arc<RwLock<HashMap<Scope, Ledger>>>,
    _mirror: Arc<Mirror>,
}

impl std::fmt::Debug for BudgetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetView").finish_non_exhaustive()
    }
}

impl BudgetView {
    /// `scope`'s ledger as last written, brought to now.
    pub fn get(&self, scope: &Scope) -> Option<Ledger> {
        let ledgers = self.ledgers.read().unwrap_or_else(|p| p.into_inner());
        let mut ledger = ledgers.get(scope)?.clone();
        ledger.advance(now_millis());
        Some(ledger)
    }

    pub fn is_budgeted(&self, scope: &Scope) -> bool {
        let ledgers = self.ledgers.read().unwrap_or_else(|p| p.into_inner());
        !ledgers.is_empty() && ledgers.contains_key(scope)
    }

    /// Every budget, brought to now, by scope.
    pub fn all(&self) -> Vec<(Scope, Ledger)> {
        let now = now_millis();
        let ledgers = self.ledgers.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(Scope, Ledger)> = ledgers
            .iter()
            .map(|(scope, ledger)| {
                let mut ledger = ledger.clone();
                ledger.advance(now);
                (scope.clone(), ledger)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The first of `scopes` whose budget is spent: nothing more can be held on it.
    pub fn spent(&self, scopes: &[Scope]) -> Option<Refusal> {
        scopes.iter().find_map(|scope| {
            let mut ledger = self.get(scope)?;
            ledger.reserve(scope, "", 1, 1, 0).err()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chorus_core::Tenant;
    use chorus_core::budget::{Period, nanos};
    use chorus_testkit::nats::NatsServer;

    use super::*;
    use crate::definitions::Definitions;

    #[tokio::test]
    async fn processes_share_one_ledger_and_never_hold_past_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let server = NatsServer::start_new().await;
        let url = server.url();
        let connect = || Bus::connect(&url, "chorus", "test", Duration::from_secs(5));
        let bus = connect().await?;
        Definitions::builtin("chorus", 1)?.apply(&bus).await?;
        let scope = Scope::Tenant(Tenant::new("acme")?);
        let limit = Limit {
            usd: 1.0,
            period: Period::Month,
        };
        let one = Budgets::open(&bus).await?;
        let two = Budgets::open(&connect().await?).await?;
        let view = one.watch().await?;
        assert_eq!(
            one.reserve(&scope, "x", 1, 1, i64::MAX).await?,
            Reserved::Unbudgeted
        );
        one.define(&scope, limit, Source::Admin).await?;
        // 40 calls of 5 cents from two processes at once: exactly 20 fit.
        let until = now_millis() + 60_000;
        let calls = (0..40).map(|i| {
            let budgets = if i % 2 == 0 { &one } else { &two };
            let scope = &scope;
            async move {
                budgets
                    .reserve(scope, &format!("call-{i}"), nanos(0.05), nanos(0.05), until)
                    .await
            }
        });
        let answers = futures::future::try_join_all(calls).await?;
        let granted = answers
            .iter()
            .filter(|a| matches!(a, Reserved::Granted(_)))
            .count();
        assert_eq!(granted, 20);
        let ledger = one.get(&scope).await?.expect("the budget");
        assert_eq!((ledger.reserved(), ledger.calls), (nanos(1.0), 20));
        for (i, answer) in answers.iter().enumerate() {
            if matches!(answer, Reserved::Granted(_)) {
                two.settle(&scope, &format!("call-{i}"), nanos(0.01))
                    .await?;
            }
        }
        let ledger = one.get(&scope).await?.expect("the budget");
        assert_eq!((ledger.spent, ledger.reserved()), (nanos(0.2), 0));
        // The configuration does not undo an operator's budget.
        let config = Limit { usd: 9.0, ..limit };
        one.apply_config(&[(scope.clone(), config)]).await?;
        assert_eq!(one.get(&scope).await?.map(|l| l.limit.usd), Some(1.0));
        tokio::time::timeout(Duration::from_secs(5), async {
            while view.get(&scope).map(|l| l.spent) != Some(nanos(0.2)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;
        assert!(one.remove(&scope).await?.is_some());
        assert_eq!(one.get(&scope).await?, None);
        Ok(())
    }
}
