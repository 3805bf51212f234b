//! Protocol ↔ domain conversions for the client API, one file per service area; what several
//! share (modes, paths, resource items, tiers) is here. Validation of wire input happens here,
//! at the edge: every error names the wire field and the bound.

mod audit;
mod jobs;
mod reservations;
mod tasks;
mod worker;

pub use audit::*;
pub use jobs::*;
pub use reservations::*;
pub use tasks::*;
pub use worker::*;

use qm_shared::pb::v1 as pb;
use qm_shared::{Invalid, Mode, ResourcePath};

use crate::state::Item;

pub fn mode_from_pb(field: &str, mode: i32) -> Result<Mode, Invalid> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Shared) => Ok(Mode::Shared),
        Ok(pb::Mode::Exclusive) => Ok(Mode::Exclusive),
        _ => Err(Invalid::new(field, format!("{mode} is not a mode; use MODE_SHARED (1) or MODE_EXCLUSIVE (2)"))),
    }
}

pub fn mode_to_pb(mode: Mode) -> i32 {
    match mode {
        Mode::Shared => pb::Mode::Shared as i32,
        Mode::Exclusive => pb::Mode::Exclusive as i32,
    }
}

pub fn path(field: &str, text: &str) -> Result<ResourcePath, Invalid> {
    ResourcePath::parse(text).map_err(|e| Invalid::new(field, e.message))
}

/// The optional resource-prefix filter of List, Watch and Graph.
pub fn prefix(field: &str, text: &str) -> Result<Option<ResourcePath>, Invalid> {
    if text.is_empty() {
        return Ok(None);
    }
    path(field, text).map(Some)
}

/// Resource requests as core items, each field checked and named.
pub fn items_from_pb(resources: Vec<pb::ResourceRequest>) -> Result<Vec<Item>, Invalid> {
    if resources.len() > qm_shared::limits::SET_SIZE_MAX {
        return Err(Invalid::new(
            "resources",
            format!("has {} entries, at most {}", resources.len(), qm_shared::limits::SET_SIZE_MAX),
        ));
    }
    let mut items = Vec::with_capacity(resources.len());
    for (i, r) in resources.into_iter().enumerate() {
        let path = path(&format!("resources[{i}].path"), &r.path)?;
        let mode = mode_from_pb(&format!("resources[{i}].mode"), r.mode)?;
        items.push(Item { path, mode, units: r.units.max(1) });
    }
    Ok(items)
}

pub fn items_to_pb(items: &[Item]) -> Vec<pb::ResourceRequest> {
    items
        .iter()
        .map(|i| pb::ResourceRequest { path: i.path.to_string(), mode: mode_to_pb(i.mode), units: i.units })
        .collect()
}

pub fn tier_to_pb(t: qm_shared::Tier) -> pb::ModelTier {
    match t {
        qm_shared::Tier::Cheap => pb::ModelTier::Cheap,
        qm_shared::Tier::Standard => pb::ModelTier::Standard,
        qm_shared::Tier::Frontier => pb::ModelTier::Frontier,
    }
}
