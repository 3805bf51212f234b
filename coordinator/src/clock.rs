//! The clock seam: the only place the coordinator reads wall-clock time.
//!
//! The leader reads it to stamp `now` into the commands it proposes; the edge reads it for
//! what is never replicated (whether a token has expired, when an audit record was made).
//! The simulator passes its own clock.

use std::fmt::Debug;

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug + 'static {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}
