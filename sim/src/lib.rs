//! The simulator.
//!
//! * [`study`] (level A): contention studies — a scenario's workload against the real
//!   replicated core with modelled agents, in simulated time (`qm sim run`, `qm sim compare`).
//! * [`cluster`] (level B): the real coordinator and worker code under turmoil, with a
//!   nemesis and invariant checkers (`qm sim cluster`).

pub mod cluster;
pub mod study;
