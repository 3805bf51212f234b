//! The run's trace: every event with its simulated time, hashed as it is written.
//!
//! Two runs of one seed must produce the same hash; the determinism test compares them.
//! The last [`TRACE_TAIL_MAX`] lines are kept to print next to a failure.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};

/// Lines of the trace kept for a failure report.
pub const TRACE_TAIL_MAX: usize = 80;

#[derive(Debug)]
pub struct Trace {
    hasher: Sha256,
    tail: VecDeque<String>,
    lines: u64,
    /// Every line, when asked for (`--trace`); bounded by `keep_max`.
    all: Option<Vec<String>>,
    keep_max: usize,
}

impl Trace {
    pub fn new(keep_all: bool) -> Trace {
        Trace {
            hasher: Sha256::new(),
            tail: VecDeque::new(),
            lines: 0,
            all: keep_all.then(Vec::new),
            keep_max: 2_000_000,
        }
    }

    /// Records one event at simulated time `t_ms`.
    pub fn event(&mut self, t_ms: u64, what: &str, detail: std::fmt::Arguments<'_>) {
        let line = format!("{t_ms:>8} {what:<12} {detail}");
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.lines += 1;
        if self.tail.len() == TRACE_TAIL_MAX {
            self.tail.pop_front();
        }
        if let Some(all) = &mut self.all {
            if all.len() < self.keep_max {
                all.push(line.clone());
            }
        }
        self.tail.push_back(line);
    }

    /// The hash of everything so far, as 16 hex digits.
    pub fn hash(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }

    pub fn all(&self) -> Option<&[String]> {
        self.all.as_deref()
    }
}
