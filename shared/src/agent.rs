//! Agent roles and model tiers: the vocabulary of workers, workflows and the scheduler.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an agent does. The orchestrator is the coordinator itself and never a worker role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

impl Role {
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

    pub fn as_str(self) -> &'static str {
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
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    fn from_str(s: &str) -> Result<Role, UnknownName> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownName {
            what: "role",
            given: s.to_string(),
            expected: Role::ALL.map(Role::as_str).join(", "),
        })
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
        let e = "orchestrator".parse::<Role>().unwrap_err();
        assert!(e.to_string().contains("analyst, architect"), "{e}");
        assert_eq!(Tier::Cheap.escalated().escalated().escalated(), Tier::Frontier);
        assert_eq!(owner_task(&task_owner(42)), Some(42));
        assert_eq!(owner_task("implementer/WI-1"), None);
    }
}
