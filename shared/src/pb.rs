//! Generated protocol types for package `qm.v1`: messages, enums, gRPC clients and servers.
//!
//! The code is generated at build time from `proto/qm/v1/*.proto` by `build.rs` (protox +
//! tonic-prost-build; no system `protoc`). Services:
//!
//! * [`v1::sessions_client`] / [`v1::sessions_server`]: sessions and keepalives.
//! * [`v1::reservations_client`] / [`v1::reservations_server`]: the reservation lock table.
//! * [`v1::cluster_client`] / [`v1::cluster_server`]: cluster status and membership.
//! * [`v1::worker_gateway_client`] / [`v1::worker_gateway_server`]: the worker stream.
//! * [`v1::raft_peer_client`] / [`v1::raft_peer_server`]: Raft transport between
//!   coordinators.
//!
//! Conversions between these wire types and the domain types live elsewhere in this crate;
//! this module holds generated code only.

/// Package `qm.v1`.
// Generated code: workspace and clippy lints are not ours to satisfy here.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/qm.v1.rs"));
}

pub use v1::*;

/// Encoded `google.protobuf.FileDescriptorSet` of all `qm.v1` files (imports and source
/// info included), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qm_v1_descriptor.bin"));
