//! The simulator.
//!
//! * [`study`] (level A): contention studies — a scenario's workload against the real
//!   replicated core with modelled agents, in simulated time (`qm sim run`, `qm sim compare`).

pub mod study;
