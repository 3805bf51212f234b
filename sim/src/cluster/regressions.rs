//! Pinned regression seeds: every seed that once failed stays in this table and is run by
//! `sim/tests/cluster.rs` (and by `qm sim cluster --seed N --nodes M --chaos-ms C`).
//!
//! | seed | nodes | chaos ms | what it found | resolution |
//! |---|---|---|---|---|
//! | 7 | 3 | 10000 | "two leaders in term 4" (n1 and n2) after n3 had been cut off: n3 granted T4-N1, then T4-N2 | not a bug: openraft's default mode orders votes by `LeaderId` = (term, node), so two leaders per term are legal; the election-safety checker now checks what openraft relies on (persisted votes never go backwards, one leader per `LeaderId`) |

/// `(seed, nodes, chaos_ms)` runs that must stay clean.
pub const SEEDS: &[(u64, u64, u64)] = &[(7, 3, 10_000)];
