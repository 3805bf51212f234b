//! Pinned regression seeds: every seed that once found a bug, run by `sim/tests/cluster.rs`.
//!
//! | seed | nodes | what it found | fixed by |
//! |---|---|---|---|

/// `(seed, nodes)` pairs that must stay clean.
pub const SEEDS: &[(u64, u64)] = &[];
