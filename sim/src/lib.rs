//! Simulator.

pub mod cluster;
