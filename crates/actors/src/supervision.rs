//! Restart policy: how often a supervisor may restart children before it gives up.
//!
//! ractor restarts nothing by itself; each supervisor here keeps an [`Intensity`] (at most
//! `max_restarts` within `window`, Erlang/OTP style). Past the limit the supervisor fails, the root
//! sees it, and the process exits non-zero so its own supervisor (Kubernetes, systemd) takes over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chorus_core::config::SupervisionConfig;

#[derive(Debug)]
pub struct Intensity {
    max_restarts: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl Intensity {
    pub fn new(config: &SupervisionConfig) -> Self {
        Self {
            max_restarts: config.max_restarts,
            window: config.window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false once the restarts within the window exceed the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= self.max_restarts as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_bursts_up_to_the_limit_within_the_window() {
        let mut intensity = Intensity::new(&SupervisionConfig {
            max_restarts: 2,
            window: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        assert!(intensity.allow(t0));
        assert!(intensity.allow(t0 + Duration::from_secs(1)));
        assert!(!intensity.allow(t0 + Duration::from_secs(2)));
        // Old restarts age out of the window.
        assert!(intensity.allow(t0 + Duration::from_secs(30)));
    }
}
