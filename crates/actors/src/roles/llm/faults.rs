//! The llm worker's test-only fault hooks (`[faults]`, see `FaultConfig`): a panic or a process
//! abort on calls to a route, and step-result publishes that fail as if NATS had not answered.
//! Only in builds with the `faults` feature.

use std::sync::atomic::{AtomicU32, Ordering};

use chorus_bus::{BusError, BusErrorKind};
use chorus_core::config::FaultConfig;

/// The hooks, armed by the configuration.
#[derive(Default)]
pub struct Faults {
    route: Option<String>,
    remaining: Option<AtomicU32>,
    abort_route: Option<String>,
    publish_failures: AtomicU32,
}

impl Faults {
    pub fn new(config: &FaultConfig) -> Self {
        Self {
            route: config.llm_panic_route.clone(),
            remaining: (config.llm_panic_times > 0).then(|| AtomicU32::new(config.llm_panic_times)),
            abort_route: config.llm_abort_route.clone(),
            publish_failures: AtomicU32::new(config.llm_publish_failures),
        }
    }

    /// A step-result publish that fails as if NATS had not answered, while the fault lasts.
    pub(super) fn publish(&self) -> Result<(), BusError> {
        let fail = self
            .publish_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        match fail {
            true => Err(BusError::new(
                "publish a step result",
                BusErrorKind::Unavailable,
                "fault injection: the publish is not acknowledged",
            )),
            false => Ok(()),
        }
    }

    /// Before a call to `route`: aborts the process, or panics, if a hook is armed for it.
    pub(super) fn strike(&self, route: &str) {
        if self.abort_route.as_deref() == Some(route) {
            tracing::error!(%route, "fault injection: aborting the process on a call to this route");
            std::process::abort();
        }
        if self.route.as_deref() != Some(route) {
            return;
        }
        let armed = match &self.remaining {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok(),
        };
        if armed {
            panic!("fault injection: llm worker panics on a call to `{route}`");
        }
    }
}
