//! Agent roles and model tiers: the vocabulary of workers, workflows and the scheduler.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::ROLE_NAME_LEN_MAX_BYTES;

/// What an agent does: one of the nine built-in roles, or a role an agent spec declares
/// (`role: security-reviewer`), which workflows may name once a worker offers it. The
/// orchestrator is the coordinator itself and never a worker role.
///
/// A role is `Copy`: a declared role's name is kept inline, bounded by
/// [`ROLE_NAME_LEN_MAX_BYTES`]. Roles order by their names' bytes after the built-in ones, and
/// serialize as their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Analyst,
    Architect,
    Specifier,
    Implementer,
    Verifier,
    Deployer,
    Monitor,
    Documenter,
    Diagnostician,
    /// A role declared by an agent spec.
    Declared(RoleName),
}

/// The name of a declared role: `[a-z][a-z0-9-]*`, at most [`ROLE_NAME_LEN_MAX_BYTES`]
/// bytes, not a built-in role's name and not `orchestrator`. Zero-padded, so the derived
/// order is the order of the names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName([u8; ROLE_NAME_LEN_MAX_BYTES]);

impl RoleName {
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(ROLE_NAME_LEN_MAX_BYTES);
        // Only ASCII is ever stored (checked in `Role::from_str`).
        std::str::from_utf8(&self.0[..len]).unwrap_or("")
    }
}

impl fmt::Debug for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Role {
    /// The built-in roles.
    pub const ALL: [Role; 9] = [
        Role::Analyst,
        Role::Architect,
        Role::Specifier,
        Role::Implementer,
        Role::Verifier,
        Role::Deployer,
        Role::Monitor,
        Role::Documenter,
        Role::Diagnostician,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Role::Analyst => "analyst",
            Role::Architect => "architect",
            Role::Specifier => "specifier",
            Role::Implementer => "implementer",
            Role::Verifier => "verifier",
            Role::Deployer => "deployer",
            Role::Monitor => "monitor",
            Role::Documenter => "documenter",
            Role::Diagnostician => "diagnostician",
            Role::Declared(name) => name.as_str(),
        }
    }

    /// The tier a role uses unless its spec or a pass says otherwise.
    pub fn default_tier(self) -> Tier {
        match self {
            Role::Architect | Role::Diagnostician => Tier::Frontier,
            Role::Monitor | Role::Documenter => Tier::Cheap,
            _ => Tier::Standard,
        }
    }

    /// Whether this is one of the nine built-in roles.
    pub fn is_built_in(self) -> bool {
        !matches!(self, Role::Declared(_))
    }

    /// A declared role two edits or fewer from a built-in one is a typo far more often than a
    /// new role: refused, naming the built-in one. Files that name roles (specs, workflows,
    /// scenarios) check with it.
    pub fn check_not_misspelt(self) -> Result<Role, String> {
        if self.is_built_in() {
            return Ok(self);
        }
        let given = self.as_str();
        match Role::ALL.into_iter().find(|b| edit_distance(given, b.as_str()) <= 2) {
            Some(b) => Err(format!(
                "unknown role {given:?}: did you mean {b}? (a role of your own must differ from every built-in \
                 role's name by more than two letters)"
            )),
            None => Ok(self),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Levenshtein distance of two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// An unknown role or tier name, with the accepted ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: String,
}

impl FromStr for Role {
    type Err = UnknownName;
    /// A built-in role by name, else a declared one if the name is well formed.
    fn from_str(s: &str) -> Result<Role, UnknownName> {
        if let Some(r) = Role::ALL.into_iter().find(|r| r.as_str() == s) {
            return Ok(r);
        }
        let well_formed = s.len() <= ROLE_NAME_LEN_MAX_BYTES
            && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s != "orchestrator";
        if !well_formed {
            return Err(UnknownName {
                what: "role",
                given: s.to_string(),
                expected: format!(
                    "{}, or a role an agent spec declares ([a-z][a-z0-9-]*, at most {ROLE_NAME_LEN_MAX_BYTES} bytes)",
                    Role::ALL.map(|r| r.as_str().to_string()).join(", ")
                ),
            });
        }
        let mut name = [0u8; ROLE_NAME_LEN_MAX_BYTES];
        name[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Role::Declared(RoleName(name)))
    }
}

/// Model capability (and price) class; each maps to concrete models per provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Cheap,
    Standard,
    Frontier,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Cheap, Tier::Standard, Tier::Frontier];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Cheap => "cheap",
            Tier::Standard => "standard",
            Tier::Frontier => "frontier",
        }
    }

    /// One tier down (a work item of low complexity); the bottom tier stays.
    pub fn lowered(self) -> Tier {
        match self {
            Tier::Frontier => Tier::Standard,
            Tier::Standard | Tier::Cheap => Tier::Cheap,
        }
    }

    /// One tier up (a failed gate escalates); the top tier stays.
    pub fn escalated(self) -> Tier {
        match self {
            Tier::Cheap => Tier::Standard,
            Tier::Standard | Tier::Frontier => Tier::Frontier,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Tier, UnknownName> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownName {
            what: "tier",
            given: s.to_string(),
            expected: Tier::ALL.map(Tier::as_str).join(", "),
        })
    }
}

/// The owner name an agent acquires a task's resources under: `task-<id>`. Preemption
/// notices for a reservation find their task through it.
pub fn task_owner(task: u64) -> String {
    format!("task-{task}")
}

/// The task an owner name belongs to, if it is a task owner.
pub fn owner_task(owner: &str) -> Option<u64> {
    owner.strip_prefix("task-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
        }
        for bad in ["orchestrator", "", "Reviewer", "9lives", "a b", &"x".repeat(ROLE_NAME_LEN_MAX_BYTES + 1)] {
            let e = bad.parse::<Role>().unwrap_err();
            assert!(e.to_string().contains("analyst, architect"), "{e}");
        }
        assert_eq!(edit_distance("verifyer", "verifier"), 1);
        let typo: Role = "specifer".parse().unwrap();
        assert!(typo.check_not_misspelt().unwrap_err().contains("did you mean specifier?"));
        let declared: Role = "security-reviewer".parse().unwrap();
        assert_eq!(declared.check_not_misspelt(), Ok(declared));
        assert!(!declared.is_built_in());
        assert_eq!(declared.as_str(), "security-reviewer");
        assert_eq!(declared.default_tier(), Tier::Standard);
        let longest = "y".repeat(ROLE_NAME_LEN_MAX_BYTES);
        assert_eq!(longest.parse::<Role>().unwrap().as_str(), longest);
        // Declared roles follow the built-in ones and order by name; the name is what goes
        // on the wire and into snapshots.
        let (a, b): (Role, Role) = ("aa".parse().unwrap(), "ab".parse().unwrap());
        assert!(Role::Diagnostician < a && a < b);
        assert_eq!(serde_json::to_string(&declared).unwrap(), "\"security-reviewer\"");
        assert_eq!(serde_json::from_str::<Role>("\"verifier\"").unwrap(), Role::Verifier);
        assert!(serde_json::from_str::<Role>("\"Bad Name\"").is_err());
        assert_eq!(Tier::Cheap.escalated().escalated().escalated(), Tier::Frontier);
        assert_eq!(owner_task(&task_owner(42)), Some(42));
        assert_eq!(owner_task("implementer/WI-1"), None);
    }
}
