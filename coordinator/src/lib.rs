//! The Quartermaster coordinator.
//!
//! * [`state`]: the replicated core, a pure state machine — `apply(index, now, command)` in,
//!   `(response, effects)` out. No async, no I/O, no clock.
//! * [`script`]: a small command language run against the pure core, printing a transcript
//!   (the scenario tests, and `qm script run`).
//!
//! The consensus layer (openraft + sled), the gRPC services and the admin HTTP port wrap
//! `state` and never reach into it except through `apply`, `snapshot` and `restore`.

pub mod admin;
pub mod api;
pub mod audit;
pub mod batcher;
pub mod clock;
pub mod error;
pub mod node;
pub mod raft;
pub mod script;
pub mod server;
pub mod state;
pub mod tls;
