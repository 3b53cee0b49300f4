//! Spend budgets, pure: what a budget is, its ledger, and the arithmetic of reserving, settling
//! and expiring the money held for calls in flight.
//!
//! A budget covers a tenant or one API key ([`Scope`]) for a [`Period`] (a fixed length from
//! the budget's anchor, or the calendar month in UTC). Its [`Ledger`] holds what this period
//! spent (settled calls, at the provider's reported usage) and a [`Hold`] per call in flight (its
//! worst-case cost, reserved before the call went out). A call is admitted only if every hold and
//! all that was spent still fit under the limit, so concurrent calls cannot slip past it.
//!
//! A hold ends in one of three ways: settled at what the call cost, released (the call failed
//! and cost nothing), or — when its holder stopped renewing it, because the process died —
//! expired: counted as spent at its reserved cost, never silently freed, and remembered (the
//! newest [`EXPIRED_KEPT`]) so a late settlement reconciles it to what the call really cost.
//!
//! Money is counted in nanodollars ([`Nanos`]): a price per million tokens is exact to the
//! token, and sums never drift as floats do.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{InvalidTenant, Tenant, UnixMillis};

/// Billionths of a US dollar.
pub type Nanos = u64;

/// `usd` in nanodollars (negative and NaN as 0).
pub fn nanos(usd: f64) -> Nanos {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as Nanos
    } else {
        0
    }
}

/// `nanos` in dollars.
pub fn usd(nanos: Nanos) -> f64 {
    nanos as f64 / 1e9
}

/// Dollars as people read them: cents, or more digits below a cent.
pub fn show(nanos: Nanos) -> String {
    let dollars = usd(nanos);
    if nanos == 0 || dollars >= 0.01 {
        format!("${dollars:.2}")
    } else {
        format!("${dollars:.6}")
    }
}

/// How many expired holds a ledger remembers for reconciliation.
pub const EXPIRED_KEPT: usize = 256;

/// A budget's scope or period that does not read as one.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("`{kind}` (of `{id}`) is not a budget scope; use tenant or key")]
    Scope { kind: String, id: String },
    /// An id that is not a tenant's name or a key's id.
    #[error(transparent)]
    Id(#[from] InvalidTenant),
    #[error("`{text}` is neither `month` nor a length such as 30d: {source}")]
    Period {
        text: String,
        #[source]
        source: humantime_serde::re::humantime::DurationError,
    },
    #[error("`{text}` ({length:?}): a period lasts at least 1s")]
    ShortPeriod { text: String, length: Duration },
}

/// What a budget covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "id", rename_all = "snake_case")]
pub enum Scope {
    Tenant(Tenant),
    /// An API key, by its id.
    Key(String),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tenant(_) => "tenant",
            Self::Key(_) => "key",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Tenant(tenant) => tenant.as_str(),
            Self::Key(id) => id,
        }
    }

    /// `tenant` or `key`, then the id (a key's id is hex; any token a tenant name could be is
    /// taken, so a budget can be set for a key about to be made).
    pub fn parse(kind: &str, id: &str) -> Result<Self, BudgetError> {
        let token = Tenant::new(id)?;
        match kind {
            "tenant" => Ok(Self::Tenant(token)),
            "key" => Ok(Self::Key(token.as_str().to_owned())),
            other => Err(BudgetError::Scope {
                kind: other.to_owned(),
                id: id.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())
    }
}

/// How long a budget's period lasts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Period {
    /// A fixed length, periods following each other from the budget's anchor.
    Every(Duration),
    /// The calendar month, in UTC.
    #[default]
    Month,
}

impl Period {
    /// `month`, or a length such as `30d`, `7d`, `12h` (humantime's units).
    pub fn parse(text: &str) -> Result<Self, BudgetError> {
        let text = text.trim();
        if text == "month" {
            return Ok(Self::Month);
        }
        let length = humantime_serde::re::humantime::parse_duration(text).map_err(|source| {
            BudgetError::Period {
                text: text.to_owned(),
                source,
            }
        })?;
        if length < Duration::from_secs(1) {
            return Err(BudgetError::ShortPeriod {
                text: text.to_owned(),
                length,
            });
        }
        Ok(Self::Every(length))
    }

    /// The period holding `now`: its start and end, in milliseconds.
    pub fn window(self, anchor: UnixMillis, now: UnixMillis) -> (UnixMillis, UnixMillis) {
        match self {
            Self::Every(length) => {
                let length = i64::try_from(length.as_millis()).unwrap_or(i64::MAX).max(1);
                let start = anchor + (now - anchor).div_euclid(length) * length;
                (start, start.saturating_add(length))
            }
            Self::Month => {
                let at = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
                let first = |year: i32, month: u32| {
                    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
                        .single()
                        .map_or(0, |d| d.timestamp_millis())
                };
                let (year, month) = (at.year(), at.month());
                let next = if month == 12 {
                    first(year + 1, 1)
                } else {
                    first(year, month + 1)
                };
                (first(year, month), next)
            }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Month => f.write_str("month"),
            Self::Every(length) => {
                write!(
                    f,
                    "{}",
                    humantime_serde::re::humantime::format_duration(*length)
                )
            }
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Who set a budget: the configuration file (re-applied at each start-up) or an operator
/// (`chorus budgets set`, the admin API), which the file then leaves alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Source {
    #[default]
    Config,
    Admin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Admin => "admin",
        }
    }
}

/// What a budget allows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    pub usd: f64,
    pub period: Period,
}

/// Money held for one call in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub nanos: Nanos,
    /// Past this the holder is presumed dead and the hold is counted as spent.
    pub until: UnixMillis,
}

/// A hold that expired: counted as spent at its reserved cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    pub id: String,
    pub nanos: Nanos,
    pub at: UnixMillis,
}

/// What one finished period spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub start: UnixMillis,
    pub end: UnixMillis,
    pub spent: Nanos,
    pub calls: u64,
}

/// One budget: its definition and this period's money.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub limit: Limit,
    pub source: Source,
    /// Where fixed-length periods count from (when the budget was first set).
    pub anchor: UnixMillis,
    /// The current period.
    pub start: UnixMillis,
    pub end: UnixMillis,
    /// Settled this period, expired holds included.
    pub spent: Nanos,
    /// Calls admitted this period (each a provider request).
    pub calls: u64,
    #[serde(default)]
    pub holds: BTreeMap<String, Hold>,
    /// The newest holds that expired this period, for a late settlement to reconcile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<Expired>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Closed>,
}

/// A budget as people read it (the API's and the command line's JSON): dollars and times.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Statement {
    /// `tenant` or `key`.
    pub scope: &'static str,
    /// The tenant, or the key's id.
    pub id: String,
    pub limit_usd: f64,
    /// `month` (calendar, UTC) or a length (`30days`).
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Settled this period, with holds of dead processes counted at their reserved cost.
    pub spent_usd: f64,
    /// Held for calls in flight.
    pub reserved_usd: f64,
    /// What new calls may still hold.
    pub remaining_usd: f64,
    /// Provider calls admitted this period.
    pub calls: u64,
    pub calls_in_flight: usize,
    /// Holds whose process died, counted as spent at their reserved cost (the newest kept).
    pub expired: Vec<ExpiredHold>,
    /// `config` (from `[tenants.<name>]`) or `admin` (set live).
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousPeriod>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExpiredHold {
    pub id: String,
    pub usd: f64,
    pub at: DateTime<Utc>,
}

/// What the period before spent.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreviousPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub spent_usd: f64,
    pub calls: u64,
}

/// A time in milliseconds as a UTC date-time.
pub fn time(ms: UnixMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Why a call was not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub scope: Scope,
    pub limit: Nanos,
    pub spent: Nanos,
    pub reserved: Nanos,
    /// The least the call needs.
    pub needed: Nanos,
    pub period: Period,
    /// When the period ends and the budget is whole again.
    pub end: UnixMillis,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = DateTime::<Utc>::from_timestamp_millis(self.end)
            .map_or_else(|| self.end.to_string(), |d| d.to_rfc3339());
        write!(
            f,
            "the budget of {} ({} per {}) ",
            self.scope,
            show(self.limit),
            self.period
        )?;
        let used = self.spent.saturating_add(self.reserved);
        if used >= self.limit {
            f.write_str("is spent")?;
        } else {
            write!(
                f,
                "cannot cover this call (it needs up to {})",
                show(self.needed)
            )?;
        }
        write!(
            f,
            ": {} spent and {} held for calls in flight; it renews at {end}",
            show(self.spent),
            show(self.reserved),
        )
    }
}

impl Ledger {
    pub fn new(limit: Limit, source: Source, now: UnixMillis) -> Self {
        let (start, end) = limit.period.window(now, now);
        Self {
            limit,
            source,
            anchor: now,
            start,
            end,
            spent: 0,
            calls: 0,
            holds: BTreeMap::new(),
            expired: Vec::new(),
            previous: None,
        }
    }

    /// A new limit or period; this period's money stays (a period change starts a new window
    /// from now only if the current one would no longer hold it).
    pub fn redefine(&mut self, limit: Limit, source: Source, now: UnixMillis) {
        if limit.period != self.limit.period {
            self.anchor = now;
            let (start, end) = limit.period.window(self.anchor, now);
            self.start = start;
            self.end = end;
        }
        self.limit = limit;
        self.source = source;
    }

    /// This ledger as `scope`'s statement.
    pub fn statement(&self, scope: &Scope) -> Statement {
        Statement {
            scope: scope.kind(),
            id: scope.id().to_owned(),
            limit_usd: self.limit.usd,
            period: self.limit.period.to_string(),
            period_start: time(self.start),
            period_end: time(self.end),
            spent_usd: usd(self.spent),
            reserved_usd: usd(self.reserved()),
            remaining_usd: usd(self.remaining()),
            calls: self.calls,
            calls_in_flight: self.holds.len(),
            expired: self
                .expired
                .iter()
                .map(|e| ExpiredHold {
                    id: e.id.clone(),
                    usd: usd(e.nanos),
                    at: time(e.at),
                })
                .collect(),
            source: self.source,
            previous: self.previous.map(|p| PreviousPeriod {
                start: time(p.start),
                end: time(p.end),
                spent_usd: usd(p.spent),
                calls: p.calls,
            }),
        }
    }

    pub fn limit_nanos(&self) -> Nanos {
        nanos(self.limit.usd)
    }

    /// Held for calls in flight.
    pub fn reserved(&self) -> Nanos {
        self.holds.values().map(|h| h.nanos).sum()
    }

    /// What new calls may still hold.
    pub fn remaining(&self) -> Nanos {
        self.limit_nanos()
            .saturating_sub(self.spent.saturating_add(self.reserved()))
    }

    /// Brings the ledger to `now`: a period that ended is closed (holds carry over, to settle in
    /// the new one), and holds past their time expire. Whether anything changed.
    pub fn advance(&mut self, now: UnixMillis) -> bool {
        let mut changed = false;
        if now >= self.end {
            self.previous = Some(Closed {
                start: self.start,
                end: self.end,
                spent: self.spent,
                calls: self.calls,
            });
            let (start, end) = self.limit.period.window(self.anchor, now);
            (self.start, self.end) = (start, end);
            self.spent = 0;
            self.calls = 0;
            self.expired.clear();
            changed = true;
        }
        let gone: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, hold)| hold.until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let Some(hold) = self.holds.remove(&id) else {
                continue;
            };
            self.spent = self.spent.saturating_add(hold.nanos);
            self.expired.push(Expired {
                id,
                nanos: hold.nanos,
                at: now,
            });
            changed = true;
        }
        let excess = self.expired.len().saturating_sub(EXPIRED_KEPT);
        self.expired.drain(..excess);
        changed
    }

    /// Holds up to `want` for call `id` until `until`, or as much as remains if that is at
    /// least `least`; what is held. Asking again for a call already held answers its hold.
    pub fn reserve(
        &mut self,
        scope: &Scope,
        id: &str,
        want: Nanos,
        least: Nanos,
        until: UnixMillis,
    ) -> Result<Nanos, Refusal> {
        if let Some(hold) = self.holds.get(id) {
            return Ok(hold.nanos);
        }
        let remaining = self.remaining();
        let granted = want.min(remaining);
        if granted < least.min(want) || (want > 0 && granted == 0) {
            return Err(Refusal {
                scope: scope.clone(),
                limit: self.limit_nanos(),
                spent: self.spent,
                reserved: self.reserved(),
                needed: least.min(want),
                period: self.limit.period,
                end: self.end,
            });
        }
        self.holds.insert(
            id.to_owned(),
            Hold {
                nanos: granted,
                until,
            },
        );
        self.calls += 1;
        Ok(granted)
    }

    /// The call `id` cost `actual`: its hold (or, if it expired, what the expiry counted) is
    /// replaced by that. Whether there was anything to settle: settling twice changes nothing.
    pub fn settle(&mut self, id: &str, actual: Nanos) -> bool {
        if self.holds.remove(id).is_some() {
            self.spent = self.spent.saturating_add(actual);
            return true;
        }
        if let Some(at) = self.expired.iter().position(|e| e.id == id) {
            let expired = self.expired.remove(at);
            self.spent = self
                .spent
                .saturating_sub(expired.nanos)
                .saturating_add(actual);
            return true;
        }
        false
    }

    /// Call `id` was not sent after all (another budget refused it): its hold is dropped and it
    /// is not counted as a call. Whether there was a hold.
    pub fn release(&mut self, id: &str) -> bool {
        let released = self.holds.remove(id).is_some();
        if released {
            self.calls = self.calls.saturating_sub(1);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn scope() -> Scope {
        Scope::Tenant(Tenant::new("acme").unwrap())
    }

    fn ledger(usd: f64) -> Ledger {
        let limit = Limit {
            usd,
            period: Period::Every(Duration::from_secs(86_400)),
        };
        Ledger::new(limit, Source::Config, 10 * DAY)
    }

    #[test]
    fn periods_parse_and_follow_each_other() {
        assert_eq!(Period::parse("month").ok(), Some(Period::Month));
        assert_eq!(
            Period::parse("30d").ok(),
            Some(Period::Every(Duration::from_secs(30 * 86_400)))
        );
        assert!(
            Period::parse("soon")
                .unwrap_err()
                .to_string()
                .contains("`soon`")
        );
        assert!(
            Period::parse("10ms")
                .unwrap_err()
                .to_string()
                .contains("at least 1s")
        );
        let day = Period::Every(Duration::from_secs(86_400));
        assert_eq!(day.window(5, 5), (5, 5 + DAY));
        assert_eq!(day.window(5, 5 + DAY), (5 + DAY, 5 + 2 * DAY));
        assert_eq!(day.window(5, 4), (5 - DAY, 5));
        assert_eq!(day.to_string(), "1day");
        // 2026-12-07 → December, then 2027-01.
        let now = Utc
            .with_ymd_and_hms(2026, 12, 7, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        let (start, end) = Period::Month.window(0, now);
        let at = |ms| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339()
        };
        assert_eq!(at(start), "2026-12-01T00:00:00+00:00");
        assert_eq!(at(end), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn holds_fit_under_the_limit_together() {
        let mut l = ledger(1.0);
        let until = 11 * DAY;
        assert_eq!(
            l.reserve(&scope(), "a", nanos(0.6), nanos(0.6), until),
            Ok(nanos(0.6))
        );
        // Asking again for the same call holds nothing more.
        assert_eq!(
            l.reserve(&scope(), "a", nanos(0.6), nanos(0.6), until),
            Ok(nanos(0.6))
        );
        let refused = l
            .reserve(&scope(), "b", nanos(0.6), nanos(0.6), until)
            .unwrap_err();
        assert_eq!((refused.reserved, refused.needed), (nanos(0.6), nanos(0.6)));
        assert!(refused.to_string().starts_with(
            "the budget of tenant acme ($1.00 per 1day) cannot cover this call (it needs up to \
             $0.60): $0.00 spent and $0.60 held for calls in flight; it renews at 1970-01-12"
        ));
        // A call that accepts less (a stream that is cut) gets what remains.
        assert_eq!(
            l.reserve(&scope(), "c", nanos(0.6), nanos(0.1), until),
            Ok(nanos(0.4))
        );
        assert_eq!(l.remaining(), 0);
        let spent = l
            .reserve(&scope(), "d", 1, 1, until)
            .unwrap_err()
            .to_string();
        assert!(
            spent.contains("($1.00 per 1day) is spent: $0.00 spent and $1.00 held"),
            "{spent}"
        );
        assert!(l.settle("a", nanos(0.25)));
        assert!(!l.settle("a", nanos(0.25)), "settled once");
        assert_eq!(
            (l.spent, l.remaining(), l.calls),
            (nanos(0.25), nanos(0.35), 2)
        );
    }

    #[test]
    fn expired_holds_count_as_spent_until_settled() {
        let mut l = ledger(1.0);
        l.reserve(&scope(), "a", nanos(0.5), nanos(0.5), 10 * DAY + 1_000)
            .unwrap();
        assert!(!l.advance(10 * DAY + 999));
        assert!(l.advance(10 * DAY + 1_000));
        assert_eq!((l.spent, l.reserved()), (nanos(0.5), 0));
        assert_eq!(l.expired[0].id, "a");
        // The holder was only slow: its settlement reconciles.
        assert!(l.settle("a", nanos(0.1)));
        assert_eq!((l.spent, l.expired.len()), (nanos(0.1), 0));
    }

    #[test]
    fn a_new_period_starts_empty_and_keeps_the_last() {
        let mut l = ledger(1.0);
        l.reserve(&scope(), "a", nanos(0.5), nanos(0.5), 12 * DAY)
            .unwrap();
        l.settle("a", nanos(0.5));
        l.reserve(&scope(), "b", nanos(0.2), nanos(0.2), 12 * DAY)
            .unwrap();
        assert!(l.advance(11 * DAY + 5));
        assert_eq!(
            (l.start, l.end, l.spent, l.calls),
            (11 * DAY, 12 * DAY, 0, 0)
        );
        assert_eq!(
            l.previous.map(|p| (p.spent, p.calls)),
            Some((nanos(0.5), 2))
        );
        // The hold in flight settles in the period it ends in.
        assert_eq!(l.reserved(), nanos(0.2));
        l.settle("b", nanos(0.1));
        assert_eq!(l.remaining(), nanos(0.9));
    }

    #[test]
    fn dollars_read_well_and_money_never_goes_negative() {
        assert_eq!(show(nanos(12.345)), "$12.35");
        assert_eq!(show(nanos(0.000_15)), "$0.000150");
        assert_eq!(nanos(-1.0), 0);
        assert_eq!(nanos(f64::NAN), 0);
        assert_eq!(
            Scope::parse("key", "abcd").ok(),
            Some(Scope::Key("abcd".into()))
        );
        assert!(Scope::parse("team", "x").is_err());
        assert!(Scope::parse("key", "A B").is_err());
    }
}
