//! Access-control vocabulary: roles and the tokens that carry them.
//!
//! A token is stored by the SHA-256 hash of its secret (64 lowercase hex characters); the
//! secret itself never enters the log. What a role allows is decided at the edge
//! (`api/auth.rs`); the core only keeps the table and refuses malformed or duplicate
//! entries.

use std::collections::BTreeSet;

use qm_shared::Invalid;
use serde::{Deserialize, Serialize};

use super::Millis;

/// What a principal may do. Every role may also read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclRole {
    Admin,
    Operator,
    Submitter,
    Worker,
    Approver,
    Reader,
}

impl AclRole {
    pub const ALL: [AclRole; 6] =
        [AclRole::Admin, AclRole::Operator, AclRole::Submitter, AclRole::Worker, AclRole::Approver, AclRole::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            AclRole::Admin => "admin",
            AclRole::Operator => "operator",
            AclRole::Submitter => "submitter",
            AclRole::Worker => "worker",
            AclRole::Approver => "approver",
            AclRole::Reader => "reader",
        }
    }
}

impl std::str::FromStr for AclRole {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<AclRole, Invalid> {
        AclRole::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            Invalid::new("roles", format!("{s:?} is not one of admin, operator, submitter, worker, approver, reader"))
        })
    }
}

impl std::fmt::Display for AclRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// Unique; the principal's name wherever it is recorded.
    pub name: String,
    /// SHA-256 of the secret, lowercase hex.
    pub hash: String,
    pub roles: BTreeSet<AclRole>,
    /// Work-item teams a submitter may act in; `*` is every team.
    pub teams: BTreeSet<String>,
    /// Resource path prefixes the principal may acquire; `*` is every path.
    pub path_prefixes: BTreeSet<String>,
    /// Highest priority the principal may ask for.
    pub priority_max: u32,
    /// Worker node ids the principal may connect as; `*` is any.
    pub nodes: BTreeSet<String>,
    /// `None`: never expires.
    pub expires_at: Option<Millis>,
    /// Set by `apply` from the log's clock.
    pub created_at: Millis,
}

/// The wildcard in `teams`, `path_prefixes` and `nodes`.
pub const ACL_ANY: &str = "*";

impl TokenSpec {
    /// Whether the token has `role` (an admin has every role).
    pub fn has(&self, role: AclRole) -> bool {
        self.roles.contains(&AclRole::Admin) || self.roles.contains(&role)
    }

    /// Whether the token is past its expiry at `now`.
    pub fn expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    /// Whether `value` is granted by `set` (exactly, or by the wildcard).
    pub fn grants(set: &BTreeSet<String>, value: &str) -> bool {
        set.contains(ACL_ANY) || set.contains(value)
    }

    /// Whether `path` (canonical text) is under one of the token's prefixes. A prefix matches
    /// at a path-segment boundary: `pg:staging` covers `pg:staging/table:orders`, not
    /// `pg:staging2`.
    pub fn may_acquire(&self, path: &str) -> bool {
        self.path_prefixes.iter().any(|p| {
            p == ACL_ANY
                || path == p
                || (path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), Some(b'/') | Some(b'[')))
        })
    }
}
