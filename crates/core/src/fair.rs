//! Fair order: which waiting unit of work goes next, when several tenants and classes of service
//! wait for the same capacity.
//!
//! Two levels, decided each time a stage has room for one more unit:
//!
//! 1. **Between bands, strict priority with guaranteed shares.** The highest band with work
//!    waiting goes first ([`Band::Interactive`], then [`Band::Standard`], then [`Band::Batch`]),
//!    except that a lower band waiting behind it accrues `share` credit per decision and is served
//!    once its credit reaches one: with `batch = 0.1` a waiting batch band gets one decision in ten
//!    however much interactive work waits, so it never stops completely.
//! 2. **Inside a band, start-time fair queueing between tenants, by cost.** Each tenant (a flow)
//!    has a virtual finish tag; a unit of cost `c` from a tenant of weight `w` starts at
//!    `max(V, finish)` and finishes `c / w` later, and the unit with the smallest start goes
//!    first (`V`, the band's virtual time, is the start of the last unit served). The cost is the
//!    unit's estimated tokens, the same estimate a route's `tpm` limit reserves, so a tenant whose
//!    lines are ten times longer gets a tenth of the lines, and equal weights get equal tokens.
//!    A tenant that was idle starts at `V`: capacity it did not use is not banked, it was lent
//!    to the others at once (work-conserving).
//!
//! The scheduler keeps no queues: the caller says which flows have a unit waiting at their head
//! and what it costs, and applies the choice. So the same order is kept wherever the units
//! wait (a pull loop's windows, a test's vectors), and across processes each one applying the
//! same rule to the flows it sees gives every tenant its weighted share of the whole.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::Tenant;

/// A class of service. The order of the variants is the order of service: `Interactive` first.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// A caller waiting for the answer: `/v1/chat/completions`, a job created with `?wait`.
    Interactive,
    /// Other REST jobs.
    #[default]
    Standard,
    /// Batch lines, and JetStream submissions unless they ask for more.
    Batch,
}

impl Band {
    pub const ALL: [Band; 3] = [Band::Interactive, Band::Standard, Band::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Standard => "standard",
            Self::Batch => "batch",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|band| band.as_str() == text)
    }

    /// The band a message's `Chorus-Band` header names; the default for a message without one
    /// (published by a Chorus before bands).
    pub fn of_header(value: Option<&str>) -> Self {
        value.and_then(Self::parse).unwrap_or_default()
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The band a caller asking for `self` is served at when it may use at most `ceiling`: the
    /// lower of the two, so no caller can promote itself.
    pub fn capped(self, ceiling: Band) -> Band {
        self.max(ceiling)
    }
}

/// Why and where an unfinished job waits: the `waiting` of `GET /v1/jobs/{id}` and of its
/// `status` events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Waiting {
    /// `intake` (no orchestrator has taken the job yet), `route <name>: rate limit` (its call is
    /// next for the route's limits, or held at them), or `tenant share` (its call waits behind
    /// `position` calls of its own tenant and band, for its tenant's share).
    pub reason: String,
    pub band: Band,
    /// The route its call waits for; absent at intake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The jobs or calls of its tenant and band (and route) to be taken before it; null when
    /// more than Chorus looks through to place it.
    pub position: Option<u64>,
    /// All of them waiting, itself included.
    pub queued: u64,
}

/// A band name that is none of Chorus's.
#[derive(Debug, thiserror::Error)]
#[error("unknown band `{name}`: use interactive, standard or batch")]
pub struct UnknownBand {
    pub name: String,
}

impl std::str::FromStr for Band {
    type Err = UnknownBand;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or_else(|| UnknownBand {
            name: text.to_owned(),
        })
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How capacity is shared: the guaranteed shares of the lower bands, and tenants' weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The fraction of decisions the standard band gets while interactive work waits.
    pub standard_share: f64,
    /// The fraction of decisions the batch band gets while higher bands' work waits.
    pub batch_share: f64,
    /// Tenants' weights (default 1).
    pub weights: HashMap<Tenant, f64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            standard_share: 0.1,
            batch_share: 0.1,
            weights: HashMap::new(),
        }
    }
}

impl Policy {
    /// The fraction of decisions `band` keeps while higher bands' work waits (1 for the highest).
    pub fn share(&self, band: Band) -> f64 {
        match band {
            Band::Interactive => 1.0,
            Band::Standard => self.standard_share,
            Band::Batch => self.batch_share,
        }
    }

    pub fn weight(&self, tenant: &Tenant) -> f64 {
        self.weights
            .get(tenant)
            .copied()
            .filter(|w| *w > 0.0)
            .unwrap_or(1.0)
    }
}

/// A flow's unit waiting at its head: whose, at which band, costing what.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub band: Band,
    pub tenant: &'a Tenant,
    /// Estimated tokens (at least 1 is counted).
    pub cost: u32,
}

/// The scheduler's memory: virtual times and credits. One per place that orders work.
#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    bands: [Flows; 3],
    /// Credit of each band waiting behind a higher one.
    credit: [f64; 3],
}

#[derive(Debug, Default)]
struct Flows {
    /// The band's virtual time: the start tag of the last unit served.
    now: f64,
    /// Each tenant's finish tag, while it is ahead of `now`.
    finish: HashMap<Tenant, f64>,
}

impl Scheduler {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            bands: Default::default(),
            credit: [0.0; 3],
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Chooses the next unit among the flows' heads, and charges its tenant for it: the index
    /// of the chosen head, `None` when nothing waits.
    pub fn pick(&mut self, heads: &[Head<'_>]) -> Option<usize> {
        let band = self.band(heads)?;
        let flows = &mut self.bands[band.index()];
        let start = |head: &Head<'_>| {
            flows
                .finish
                .get(head.tenant)
                .map_or(flows.now, |f| f.max(flows.now))
        };
        let (index, chosen) = heads
            .iter()
            .enumerate()
            .filter(|(_, head)| head.band == band)
            .min_by(|(_, a), (_, b)| {
                start(a)
                    .total_cmp(&start(b))
                    .then_with(|| a.tenant.as_str().cmp(b.tenant.as_str()))
            })?;
        let begins = start(chosen);
        let weight = self.policy.weight(chosen.tenant);
        flows.now = begins;
        flows.finish.insert(
            chosen.tenant.clone(),
            begins + f64::from(chosen.cost.max(1)) / weight,
        );
        // A tenant whose finish the band's time has reached starts at `now` anyway.
        let now = flows.now;
        flows.finish.retain(|_, finish| *finish > now);
        Some(index)
    }

    /// The band served next: the highest with work waiting, unless a lower one waiting behind it
    /// has earned its share.
    fn band(&mut self, heads: &[Head<'_>]) -> Option<Band> {
        let waiting = |band: Band| heads.iter().any(|head| head.band == band);
        let top = Band::ALL.into_iter().find(|band| waiting(*band))?;
        let mut earned = None;
        for band in Band::ALL {
            if band <= top || !waiting(band) {
                self.credit[band.index()] = 0.0;
                continue;
            }
            let credit = &mut self.credit[band.index()];
            *credit += self.policy.share(band);
            if earned.is_none() && *credit >= 1.0 - 1e-9 {
                earned = Some(band);
            }
        }
        match earned {
            Some(band) => {
                self.credit[band.index()] -= 1.0;
                Some(band)
            }
            None => Some(top),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Tenant {
        Tenant::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Serves `rounds` units from flows that are always backlogged, each with the given unit
    /// cost; returns the tenants served, in order.
    fn serve(
        scheduler: &mut Scheduler,
        flows: &[(Band, &Tenant, u32)],
        rounds: usize,
    ) -> Vec<String> {
        let heads: Vec<Head<'_>> = flows
            .iter()
            .map(|(band, tenant, cost)| Head {
                band: *band,
                tenant,
                cost: *cost,
            })
            .collect();
        (0..rounds)
            .filter_map(|_| scheduler.pick(&heads))
            .map(|i| format!("{}:{}", heads[i].band, heads[i].tenant.as_str()))
            .collect()
    }

    #[test]
    fn bands_parse_print_and_cap() {
        for band in Band::ALL {
            assert_eq!(Band::parse(band.as_str()), Some(band));
        }
        assert_eq!(Band::parse("premium"), None);
        let unknown = "premium".parse::<Band>().map_err(|e| e.to_string());
        assert_eq!(
            unknown,
            Err("unknown band `premium`: use interactive, standard or batch".into())
        );
        assert_eq!(Band::Interactive.capped(Band::Standard), Band::Standard);
        assert_eq!(Band::Batch.capped(Band::Interactive), Band::Batch);
        assert!(Band::Interactive < Band::Batch);
    }

    #[test]
    fn equal_weights_alternate_units_of_equal_cost() {
        let (a, b) = (tenant("a"), tenant("b"));
        let mut scheduler = Scheduler::new(Policy::default());
        let order = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 100), (Band::Batch, &b, 100)],
            6,
        );
        assert_eq!(
            order,
            [
                "batch:a", "batch:b", "batch:a", "batch:b", "batch:a", "batch:b"
            ]
        );
    }

    #[test]
    fn shares_are_counted_in_tokens_not_units() {
        // a's units cost 4× b's: b gets four units for each of a's, and equal tokens.
        let (a, b) = (tenant("a"), tenant("b"));
        let mut scheduler = Scheduler::new(Policy::default());
        let order = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 400), (Band::Batch, &b, 100)],
            500,
        );
        let units = |who: &str| order.iter().filter(|o| o.ends_with(who)).count();
        assert_eq!(units(":a"), 100);
        assert_eq!(units(":b"), 400);
    }

    #[test]
    fn weights_divide_tokens_in_their_ratio() {
        let (a, b) = (tenant("a"), tenant("b"));
        let mut policy = Policy::default();
        policy.weights.insert(a.clone(), 2.0);
        let mut scheduler = Scheduler::new(policy);
        let order = serve(
            &mut scheduler,
            &[(Band::Standard, &a, 50), (Band::Standard, &b, 50)],
            300,
        );
        let a_units = order.iter().filter(|o| o.ends_with(":a")).count();
        assert_eq!(a_units, 200);
    }

    #[test]
    fn a_higher_band_goes_first_but_a_lower_keeps_its_share() {
        let (a, c) = (tenant("a"), tenant("c"));
        let mut scheduler = Scheduler::new(Policy::default());
        let order = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 10), (Band::Interactive, &c, 10)],
            100,
        );
        // Every tenth decision is the batch band's, the rest interactive.
        assert_eq!(order[0], "interactive:c");
        let batch: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, o)| o.starts_with("batch"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(batch, [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
    }

    #[test]
    fn a_share_of_zero_is_strict_priority() {
        let (a, c) = (tenant("a"), tenant("c"));
        let mut scheduler = Scheduler::new(Policy {
            batch_share: 0.0,
            ..Policy::default()
        });
        let order = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 10), (Band::Interactive, &c, 10)],
            50,
        );
        assert!(order.iter().all(|o| o == "interactive:c"));
    }

    #[test]
    fn a_unit_arriving_in_a_higher_band_is_next() {
        let (a, c) = (tenant("a"), tenant("c"));
        let mut scheduler = Scheduler::new(Policy::default());
        serve(&mut scheduler, &[(Band::Batch, &a, 10)], 1000);
        let next = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 10), (Band::Interactive, &c, 10)],
            1,
        );
        assert_eq!(next, ["interactive:c"]);
    }

    #[test]
    fn an_idle_tenant_banks_nothing_and_does_not_wait_behind_a_backlog() {
        // a alone for 1,000 units; then b arrives: b is served at once, and from then on they
        // alternate. Neither gets a burst for the time it was alone or away.
        let (a, b) = (tenant("a"), tenant("b"));
        let mut scheduler = Scheduler::new(Policy::default());
        serve(&mut scheduler, &[(Band::Batch, &a, 10)], 1000);
        let order = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 10), (Band::Batch, &b, 10)],
            6,
        );
        assert_eq!(order[..2].iter().filter(|o| o.ends_with(":b")).count(), 1);
        let b_units = order.iter().filter(|o| o.ends_with(":b")).count();
        assert_eq!(b_units, 3);
        // b leaves and comes back after a ran alone: again, no burst.
        serve(&mut scheduler, &[(Band::Batch, &a, 10)], 500);
        let order = serve(
            &mut scheduler,
            &[(Band::Batch, &a, 10), (Band::Batch, &b, 10)],
            4,
        );
        assert_eq!(order.iter().filter(|o| o.ends_with(":b")).count(), 2);
    }

    #[test]
    fn nothing_waiting_picks_nothing() {
        let mut scheduler = Scheduler::new(Policy::default());
        assert!(scheduler.pick(&[]).is_none());
    }
}
