//! The shared crate: what every Quartermaster crate speaks.
//!
//! * [`pb`]: the generated `qm.v1` protocol types and service stubs (compiled from
//!   `proto/qm/v1/*.proto` at build time with protox; no system `protoc`).
//! * [`resource`]: resource paths and lock modes, the lock table's vocabulary.
//! * [`limits`]: every bound, as named constants with units last.
//! * [`validate`]: the checks the edge and the core share, and the error naming field and bound.
//! * [`shell`]: [`shell::shell_quote`], the one way task data enters a command line.
//!
//! Domain types never mix with `pb::` types; conversions live beside the client library.

pub mod agent;
pub mod attempt;
pub mod client;
pub mod duration;
pub mod limits;
pub mod payload;
pub mod pb;
pub mod resource;
pub mod shell;
pub mod timestamp;
pub mod toml_place;
pub mod validate;
pub mod workflow;
pub mod workflow_file;

pub use agent::{Role, Tier};
pub use resource::{LockMode, Mode, ResourcePath, RowRange};
pub use validate::Invalid;
