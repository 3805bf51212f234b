//! How an attempt ended and what it used: the words the coordinator and the worker share.

use serde::{Deserialize, Serialize};

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped after a preemption notice; resumes from its checkpoint.
    Preempted,
    TimedOut,
}

/// Token usage; `estimated` when a provider reported none and it was counted locally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub estimated: bool,
    /// Money the tool that did the work reported itself, in micro-dollars (a coding-agent
    /// CLI's own cost figure); when set, the ledger charges it instead of pricing the tokens.
    pub reported_micros: Option<u64>,
}

impl Usage {
    /// Adds `other`, saturating.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.estimated |= other.estimated;
        self.reported_micros = match (self.reported_micros, other.reported_micros) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
    }
}
