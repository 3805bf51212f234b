//! Worker node: agent specs, executors, and the agent runtime that runs tasks under leases.

pub mod agent;
pub mod executor;
pub mod gpu;
pub mod runtime;
pub mod spec;
pub mod supervisor;
