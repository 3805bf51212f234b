//! The Quartermaster coordinator.
//!
//! * [`state`]: the replicated core, a pure state machine — `apply(index, now, command)` in,
//!   `(response, effects)` out. No async, no I/O, no clock.
//!
//! The consensus layer (openraft + sled), the gRPC services and the admin HTTP port wrap
//! `state` and never reach into it except through `apply`, `snapshot` and `restore`.

pub mod state;
