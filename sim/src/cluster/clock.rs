//! Simulated wall clocks: the coordinator's [`Clock`] seam driven by simulated time, with the
//! skew and jumps the nemesis controls.
//!
//! ```text
//!   reading(t) = anchor_reading + (t − anchor_t) · (1 + rate_ppm / 10⁶) + offset
//!   t = turmoil's simulated time since the start (the same on every host, across restarts)
//! ```
//!
//! A rate change re-anchors, so readings stay continuous; a jump moves `offset` (either way:
//! the core's `max(now, last_now)` is what keeps replicated time monotonic).

use std::sync::{Arc, Mutex};

use qm_coordinator::clock::Clock;

/// 2026-01-01T00:00:00Z: every simulated clock starts here (plus its own offset).
pub const EPOCH_MS: u64 = 1_767_225_600_000;

#[derive(Debug, Default)]
struct Ctl {
    anchor_t_ms: u64,
    anchor_reading_ms: i64,
    rate_ppm: i64,
    offset_ms: i64,
    /// The last simulated time the main loop published (used outside a host).
    last_t_ms: u64,
}

/// One node's wall clock. Clones share the controls.
#[derive(Clone, Debug)]
pub struct SimClock {
    ctl: Arc<Mutex<Ctl>>,
}

impl SimClock {
    pub fn new(offset_ms: i64) -> SimClock {
        SimClock { ctl: Arc::new(Mutex::new(Ctl { anchor_reading_ms: EPOCH_MS as i64, offset_ms, ..Ctl::default() })) }
    }

    fn sim_ms(&self) -> u64 {
        match turmoil::sim_elapsed() {
            Some(d) => d.as_millis() as u64,
            None => self.ctl.lock().expect("clock lock").last_t_ms,
        }
    }

    /// The reading at simulated time `t_ms`.
    pub fn reading_at(&self, t_ms: u64) -> u64 {
        let c = self.ctl.lock().expect("clock lock");
        let dt = t_ms.saturating_sub(c.anchor_t_ms) as i64;
        let v = c.anchor_reading_ms + dt + dt * c.rate_ppm / 1_000_000 + c.offset_ms;
        v.max(0) as u64
    }

    /// Publishes the main loop's simulated time (for readings taken outside a host).
    pub fn set_now(&self, t_ms: u64) {
        self.ctl.lock().expect("clock lock").last_t_ms = t_ms;
    }

    /// Runs `rate_ppm` parts per million fast (negative: slow) from `t_ms` on.
    pub fn set_rate(&self, t_ms: u64, rate_ppm: i64) {
        let reading = self.reading_at(t_ms) as i64;
        let mut c = self.ctl.lock().expect("clock lock");
        c.anchor_reading_ms = reading - c.offset_ms;
        c.anchor_t_ms = t_ms;
        c.rate_ppm = rate_ppm;
    }

    /// Steps the clock by `delta_ms` (either way).
    pub fn jump(&self, delta_ms: i64) {
        self.ctl.lock().expect("clock lock").offset_ms += delta_ms;
    }

    pub fn rate_ppm(&self) -> i64 {
        self.ctl.lock().expect("clock lock").rate_ppm
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.reading_at(self.sim_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_jump_keep_readings_continuous() {
        let c = SimClock::new(0);
        assert_eq!(c.reading_at(1_000), EPOCH_MS + 1_000);
        c.set_rate(1_000, 100_000);
        assert_eq!(c.reading_at(1_000), EPOCH_MS + 1_000);
        assert_eq!(c.reading_at(2_000), EPOCH_MS + 2_100);
        c.jump(-500);
        assert_eq!(c.reading_at(2_000), EPOCH_MS + 1_600);
        c.set_rate(2_000, 0);
        assert_eq!(c.reading_at(3_000), EPOCH_MS + 2_600);
    }
}
