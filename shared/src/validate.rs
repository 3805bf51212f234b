//! Validation errors and the checks shared by the edge and the pure core.
//!
//! Every check names the field and the bound it broke, so a user reading
//! `INVALID_ARGUMENT: lease_ms: 10 is below the minimum 1000` knows what to change.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits;

/// A request field that broke a rule. Maps to `INVALID_ARGUMENT` at the gRPC edge and to exit
/// code 2 in the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid { field: field.into(), message: message.into() }
    }

    /// The same error, reported for a field nested under `prefix` (`resources[2]`).
    pub fn within(mut self, prefix: &str) -> Invalid {
        if !prefix.is_empty() {
            self.field = format!("{prefix}.{}", self.field);
        }
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// `value` must lie in `min..=max`.
pub fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if value < min {
        return Err(Invalid::new(field, format!("{value} is below the minimum {min}")));
    }
    if value > max {
        return Err(Invalid::new(field, format!("{value} is above the maximum {max}")));
    }
    Ok(())
}

/// A non-empty printable name of at most `max` bytes.
pub fn check_name(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Invalid::new(field, format!("is {} bytes, at most {max} allowed", value.len())));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

pub fn check_owner(owner: &str) -> Result<(), Invalid> {
    check_name("owner", owner, limits::OWNER_LEN_MAX_BYTES)
}

pub fn check_priority(priority: u32) -> Result<(), Invalid> {
    check_range("priority", priority.into(), 0, limits::PRIORITY_MAX.into())
}

pub fn check_lease_ms(lease_ms: u64) -> Result<(), Invalid> {
    check_range("lease_ms", lease_ms, limits::LEASE_MS_MIN, limits::LEASE_MS_MAX)
}

pub fn check_session_ttl_ms(ttl_ms: u64) -> Result<(), Invalid> {
    check_range("ttl_ms", ttl_ms, limits::SESSION_TTL_MS_MIN, limits::SESSION_TTL_MS_MAX)
}

pub fn check_wait_timeout_ms(timeout_ms: u64) -> Result<(), Invalid> {
    check_range("wait_timeout_ms", timeout_ms, 0, limits::WAIT_TIMEOUT_MS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_field_and_bound() {
        assert_eq!(check_lease_ms(10).unwrap_err().to_string(), "lease_ms: 10 is below the minimum 1000");
        assert_eq!(check_priority(5000).unwrap_err().to_string(), "priority: 5000 is above the maximum 1000");
        assert!(check_owner(&"a".repeat(200)).unwrap_err().to_string().contains("at most 128"));
        assert_eq!(Invalid::new("mode", "bad").within("resources[2]").field, "resources[2].mode");
    }
}
