//! Work items, workflows and projects: the domain types the coordinator's scheduler runs.
//!
//! A workflow is a small DAG of passes; a project declares the resources, providers and
//! prices a team works against. Both are written as TOML files (`docs/workflows.md`); this
//! module holds the parsed, validated forms, which is what travels in replicated commands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Mode, ResourcePath, Role, Tier};

/// Who reviews a pass's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reviewer {
    /// A pass of the review role runs the review.
    Agent,
    /// `qm gate approve|reject` decides.
    Human,
    /// The agent review first, then a human.
    Both,
}

impl Reviewer {
    pub fn as_str(self) -> &'static str {
        match self {
            Reviewer::Agent => "agent",
            Reviewer::Human => "human",
            Reviewer::Both => "both",
        }
    }
}

/// A work item's declared complexity: it moves every pass's starting tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Complexity {
    /// One tier down (never below cheap).
    Low,
    /// The tiers the workflow gives.
    #[default]
    Normal,
    /// One tier up (never above frontier).
    High,
}

impl Complexity {
    pub const NAMES: &'static str = "low, normal or high";

    /// `""` is normal.
    pub fn parse(text: &str) -> Option<Complexity> {
        Some(match text {
            "" | "normal" => Complexity::Normal,
            "low" => Complexity::Low,
            "high" => Complexity::High,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Complexity::Low => "low",
            Complexity::Normal => "normal",
            Complexity::High => "high",
        }
    }

    /// A pass's starting tier for a work item of this complexity.
    pub fn tier(self, written: crate::Tier) -> crate::Tier {
        match self {
            Complexity::Low => written.lowered(),
            Complexity::Normal => written,
            Complexity::High => written.escalated(),
        }
    }
}

/// What a failed gate does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFail {
    /// Run the pass again at the same tier.
    Retry,
    /// Run the pass again one model tier up.
    Escalate,
    /// Run again from an earlier pass (named); every pass after it runs again too.
    SendBack(String),
    /// The work item fails.
    Stop,
}

impl std::fmt::Display for OnFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnFail::Retry => f.write_str("retry"),
            OnFail::Escalate => f.write_str("escalate"),
            OnFail::SendBack(p) => write!(f, "send back to {p}"),
            OnFail::Stop => f.write_str("stop"),
        }
    }
}

/// A pass's gate: written criteria, a reviewer that is never the agent that did the pass,
/// and what happens on failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    pub criteria: String,
    pub reviewer: Reviewer,
    /// The role of the reviewing agent (agent and both); never the pass's own role.
    pub review_role: Role,
    pub on_fail: OnFail,
    /// Failed gates tolerated before the work item fails (each failure re-runs the pass).
    pub max_failures: u32,
    /// Executor payload of the review (JSON); empty: the job's default review payload.
    #[serde(with = "text_bytes")]
    pub run: Vec<u8>,
}

/// A resource a pass needs, and how.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Need {
    pub path: ResourcePath,
    pub mode: Mode,
    /// Slots of a counted resource (1 unless given).
    pub units: u32,
}

/// What a pass's agent slot must have beyond its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// A GPU on the worker's box.
    Gpu,
    /// A local model provider on the worker's box.
    LocalModel,
    /// The container engine (`qm worker run --engine container`).
    Container,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Gpu => "gpu",
            Capability::LocalModel => "local-model",
            Capability::Container => "container",
        }
    }
}

/// One pass of a workflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pass {
    /// Unique within the workflow.
    pub name: String,
    pub role: Role,
    /// `None`: the role's default tier.
    pub tier: Option<Tier>,
    /// Passes that must pass their gates first.
    pub after: Vec<String>,
    pub needs: Vec<Need>,
    pub requires: Vec<Capability>,
    /// Named inputs: work-item inputs or upstream passes' outputs.
    pub inputs: Vec<String>,
    /// Named output artifacts.
    pub outputs: Vec<String>,
    pub gate: Option<Gate>,
    /// One attempt's time limit; 0: none.
    pub timeout_ms: u64,
    /// Attempts after a failing one (not counting gate failures).
    pub retries: u32,
    /// Executor payload (JSON); empty: the job's default payload.
    #[serde(with = "text_bytes")]
    pub run: Vec<u8>,
}

impl Pass {
    /// The tier the pass starts at.
    pub fn start_tier(&self) -> Tier {
        self.tier.unwrap_or(self.role.default_tier())
    }
}

/// A DAG of passes, in a topological order (every pass after the passes it names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub name: String,
    pub description: String,
    pub passes: Vec<Pass>,
}

impl Workflow {
    pub fn pass(&self, name: &str) -> Option<(usize, &Pass)> {
        self.passes.iter().enumerate().find(|(_, p)| p.name == name)
    }
}

/// A model provider a project may route to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    pub name: String,
    /// `openai` (OpenAI-compatible) or `anthropic`.
    pub kind: String,
    pub endpoint: String,
    /// On a worker's own box: preferred when free, priced by the box's amortised cost.
    pub local: bool,
    /// Calls in flight at once: the counted resource `api:<name>` of this capacity.
    pub concurrency: u32,
    /// The model serving each tier.
    pub models: BTreeMap<Tier, String>,
    /// Local boxes: amortised cost per hour of wall time, in micro-dollars.
    pub hourly_micros: u64,
}

/// Price of a model per million tokens, in micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
    pub cached_per_mtok_micros: u64,
}

/// A declared resource of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectResource {
    pub path: ResourcePath,
    pub capacity: Option<u32>,
    /// `none`, `preempt` or `inherit`.
    pub policy: String,
    pub grace_ms: u64,
}

/// What a team works against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub team: String,
    pub resources: Vec<ProjectResource>,
    pub repos: Vec<String>,
    pub tools: Vec<String>,
    pub providers: Vec<Provider>,
    /// Model name to price.
    pub prices: BTreeMap<String, Price>,
}

impl Project {
    /// Whether `path` is a declared resource or lies under one.
    pub fn covers(&self, path: &ResourcePath) -> bool {
        (1..=path.depth()).any(|n| self.resources.iter().any(|r| r.path.as_str() == path.prefix(n)))
            || path.as_str().starts_with("api:")
                && self.providers.iter().any(|p| path.as_str() == format!("api:{}", p.name))
    }
}

/// Money as micro-dollars, printed as dollars.
pub fn dollars(micros: u64) -> String {
    // Integer arithmetic throughout, rounding half up: money is never a binary float.
    if micros < 10_000 && micros > 0 {
        format!("$0.{:04}", (micros + 50) / 100)
    } else {
        let cents = micros / 10_000 + u64::from(micros % 10_000 >= 5_000);
        format!("${}.{:02}", cents / 100, cents % 100)
    }
}

/// Parses `1.25`, `$1.25` or `0.0004` dollars into micro-dollars.
pub fn parse_dollars(field: &str, s: &str) -> Result<u64, crate::Invalid> {
    let t = s.trim().trim_start_matches('$');
    let bad = || crate::Invalid::new(field, format!("{s:?} is not an amount in dollars (e.g. 2.50)"));
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 6 {
        return Err(bad());
    }
    let w: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let f: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().map_err(|_| bad())? };
    let micros = w.checked_mul(1_000_000).and_then(|m| m.checked_add(f)).ok_or_else(bad)?;
    if micros > crate::limits::MONEY_MICROS_MAX {
        return Err(crate::Invalid::new(
            field,
            format!("{s} is above the maximum {}", dollars(crate::limits::MONEY_MICROS_MAX)),
        ));
    }
    Ok(micros)
}

/// Executor payloads are JSON text: serialized as a string, so `-o json` shows them readably.
mod text_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_prints_and_parses_exactly_in_integers() {
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(100), "$0.0001");
        assert_eq!(dollars(9_999), "$0.0100");
        assert_eq!(dollars(10_000), "$0.01");
        assert_eq!(dollars(1_234_999), "$1.23");
        assert_eq!(dollars(1_235_000), "$1.24", "half a cent rounds up");
        assert_eq!(dollars(crate::limits::MONEY_MICROS_MAX), "$1000000000.00");
        assert_eq!(parse_dollars("x", "0.1").unwrap(), 100_000);
        assert_eq!(parse_dollars("x", "$2.50").unwrap(), 2_500_000);
        assert_eq!(parse_dollars("x", "0.000001").unwrap(), 1);
        assert!(parse_dollars("x", "0.0000001").is_err(), "finer than a micro-dollar");
    }
}
