//! Worker node: agent specs, executors, and the agent runtime that runs tasks under leases.

pub mod spec;
pub mod executor;
pub mod agent;
