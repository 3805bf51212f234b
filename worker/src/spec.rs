//! Agent specs: markdown with YAML front matter.
//!
//! ```text
//! ---
//! name: implementer              # required, [a-z0-9-], ≤ 64 bytes
//! description: Writes the code   # required
//! tools: Read, Edit, Bash        # a comma-separated string or a list
//! model: sonnet                  # as in .claude/agents: sonnet | opus | haiku | inherit | a model id
//! role: implementer              # a built-in role, or one this spec declares ([a-z][a-z0-9-]*);
//!                                #   absent: the name if it is a built-in role, else not hosted
//! slots: 2                       # agents of the role a worker hosts at once (unless --slots)
//! tier: standard                 # cheap | standard | frontier (default: from model, else the role's)
//! capabilities: [shell, gpu]     # what a worker slot must offer
//! context_scopes: ["src/**"]     # what the agent may read into its context
//! resources:                     # what it may reserve, and how
//!   - { path: "pg:staging", mode: exclusive }
//! escalation: { max_tier: frontier, after_failed_gates: 1 }
//! budget: { usd_per_task: 2.5, tokens_per_task: 400000 }
//! ---
//! The system prompt, in markdown.
//! ```
//!
//! The fields of `.claude/agents/*.md` (`name`, `description`, `tools`, `model`) mean what
//! they mean there, so those files load unchanged; other keys there (`color`) are accepted and
//! ignored. Any other unknown key is an error, so a typo never silently drops a limit. Every
//! error names the file, the line and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use qm_shared::limits::{
    AGENT_DESCRIPTION_LEN_MAX_BYTES, AGENT_ITEM_LEN_MAX_BYTES, AGENT_LIST_LEN_MAX, AGENT_NAME_LEN_MAX_BYTES,
    AGENT_SPECS_MAX, AGENT_SPEC_BYTES_MAX, AGENT_TASK_MONEY_MICROS_MAX, AGENT_TASK_TOKENS_MAX,
    WORKER_SLOTS_PER_ROLE_MAX,
};
use qm_shared::workflow::{dollars, parse_dollars};
use qm_shared::{Mode, ResourcePath, Role, Tier};
use serde::{Deserialize, Serialize};

/// A validated agent spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSpec {
    pub name: String,
    pub description: String,
    pub tools: Vec<String>,
    /// The `.claude/agents` model field, verbatim.
    pub model: Option<String>,
    pub role: Option<Role>,
    /// Agents of the role a worker hosts at once, unless its `--slots` says.
    pub slots: Option<u32>,
    /// The tier used unless a pass overrides it.
    pub tier: Tier,
    pub capabilities: Vec<String>,
    pub context_scopes: Vec<String>,
    pub resources: Vec<ResourceAccess>,
    pub escalation: Escalation,
    pub budget: Budget,
    /// The prompt: the markdown after the front matter.
    pub prompt: String,
    /// Where it was read from.
    pub source: PathBuf,
    /// The first 12 hex digits of a 64-bit FNV-1a digest of the file's text: which edition of
    /// the spec did an attempt (the ledger records it beside the name).
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceAccess {
    pub path: ResourcePath,
    pub mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Escalation {
    /// The highest tier a failed gate may escalate this agent to.
    pub max_tier: Tier,
    /// Failed gates before escalating one tier.
    pub after_failed_gates: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Budget {
    /// The per-task money ceiling, in micro-dollars (`usd_per_task` in the file).
    pub money_per_task_micros: Option<u64>,
    pub tokens_per_task: Option<u64>,
}

/// A spec that could not be loaded: the file, the 1-based line (when known), the field (when
/// known) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Keys of `.claude/agents` files that mean nothing here; accepted and ignored.
const CLAUDE_ONLY_KEYS: [&str; 1] = ["color"];

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_list(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    path: String,
    mode: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    max_tier: Option<String>,
    after_failed_gates: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    usd_per_task: Option<Dollars>,
    tokens_per_task: Option<u64>,
}

/// An amount of dollars as written (`2.5`, `"2.50"`, `3`), kept as text so that it becomes
/// integer micro-dollars exactly, never through a binary float.
struct Dollars(String);

impl<'de> Deserialize<'de> for Dollars {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dollars, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Dollars;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an amount in dollars, such as 2.50")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dollars, E> {
                Ok(Dollars(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dollars, E> {
                Ok(Dollars(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dollars, E> {
                Ok(Dollars(v.to_string()))
            }
            // The shortest text that reads back as the same number: what the file says.
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dollars, E> {
                Ok(Dollars(v.to_string()))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
struct Raw {
    name: Option<String>,
    description: Option<String>,
    tools: Option<StringOrList>,
    model: Option<String>,
    role: Option<String>,
    slots: Option<u32>,
    tier: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    context_scopes: Vec<String>,
    #[serde(default)]
    resources: Vec<RawResource>,
    escalation: Option<RawEscalation>,
    budget: Option<RawBudget>,
}

const KNOWN_KEYS: [&str; 12] = [
    "name",
    "description",
    "tools",
    "model",
    "role",
    "slots",
    "tier",
    "capabilities",
    "context_scopes",
    "resources",
    "escalation",
    "budget",
];

/// A short digest of a spec's text (FNV-1a, 64 bits; 12 hex digits): stable across runs,
/// builds and machines.
pub fn version_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")[..12].to_string()
}

/// Parses one spec from its text; `file` only names it in errors. Every field is checked,
/// so the error list holds every mistake in the front matter, not only the first.
pub fn parse(file: &Path, text: &str) -> Result<AgentSpec, Vec<SpecError>> {
    let err = |line: Option<usize>, message: String| SpecError { file: file.to_path_buf(), line, field: None, message };
    if text.len() > AGENT_SPEC_BYTES_MAX {
        return Err(vec![err(None, format!("{} bytes is over the limit of {AGENT_SPEC_BYTES_MAX}", text.len()))]);
    }
    let (yaml, prompt) = split_front_matter(text).ok_or_else(|| {
        vec![err(Some(1), "no front matter: the file must start with a `---` line and close it with another".into())]
    })?;
    let front = FrontMatter { file, yaml };
    let raw = front.raw().map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut check = |r: Result<(), SpecError>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    let (mut name, mut description) = (String::new(), String::new());
    check(front.name(raw.name).map(|v| name = v));
    check(front.description(raw.description).map(|v| description = v));
    let (mut tools, mut capabilities, mut context_scopes) = (Vec::new(), Vec::new(), Vec::new());
    check(front.list("tools", raw.tools.map(StringOrList::into_list).unwrap_or_default()).map(|v| tools = v));
    check(front.list("capabilities", raw.capabilities).map(|v| capabilities = v));
    check(front.list("context_scopes", raw.context_scopes).map(|v| context_scopes = v));
    let mut role = None;
    if let Some(r) = raw.role {
        check(r.parse::<Role>().map_err(|e| front.at("role", "role", e.to_string())).and_then(|v| {
            v.check_not_misspelt().map_err(|m| front.at("role", "role", m))?;
            role = Some(v);
            Ok(())
        }));
    } else {
        role = Role::ALL.into_iter().find(|r| r.as_str() == name);
    }
    if let Some(n) = raw.slots {
        if !(1..=WORKER_SLOTS_PER_ROLE_MAX).contains(&n) {
            check(Err(front.at("slots", "slots", format!("{n} is outside 1..={WORKER_SLOTS_PER_ROLE_MAX}"))));
        } else if role.is_none() {
            check(Err(front.at("slots", "slots", "needs a role: add `role:` naming what these agents do".into())));
        }
    }
    let mut tier =
        raw.model.as_deref().and_then(claude_model_tier).or(role.map(Role::default_tier)).unwrap_or(Tier::Standard);
    if let Some(t) = raw.tier {
        check(t.parse::<Tier>().map(|v| tier = v).map_err(|e| front.at("tier", "tier", e.to_string())));
    }
    let mut resources = Vec::new();
    check(front.resources(raw.resources).map(|v| resources = v));
    let mut escalation = Escalation { max_tier: Tier::Frontier, after_failed_gates: 1 };
    check(front.escalation(raw.escalation.unwrap_or_default(), tier).map(|v| escalation = v));
    let mut budget = Budget::default();
    check(front.budget(raw.budget.unwrap_or_default()).map(|v| budget = v));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AgentSpec {
        name,
        description,
        tools,
        model: raw.model,
        role,
        slots: raw.slots,
        tier,
        capabilities,
        context_scopes,
        resources,
        escalation,
        budget,
        prompt: prompt.trim().to_string(),
        version: version_of(text),
        source: file.to_path_buf(),
    })
}

/// A spec's front matter being checked: each check's error names the file, the line of the
/// key it is about and the field.
struct FrontMatter<'a> {
    file: &'a Path,
    yaml: &'a str,
}

impl FrontMatter<'_> {
    fn err(&self, line: Option<usize>, field: Option<&str>, message: String) -> SpecError {
        SpecError { file: self.file.to_path_buf(), line, field: field.map(String::from), message }
    }

    /// An error about `field`, placed at the line of the top-level `key` it is under.
    fn at(&self, key: &str, field: &str, message: String) -> SpecError {
        // Front matter starts on line 2 of the file.
        self.err(top_level_key_line(self.yaml, key).map(|l| l + 1), Some(field), message)
    }

    /// The front matter's fields, unchecked; an unknown key is an error.
    fn raw(&self) -> Result<Raw, SpecError> {
        for key in top_level_keys(self.yaml) {
            if !KNOWN_KEYS.contains(&key.0.as_str()) && !CLAUDE_ONLY_KEYS.contains(&key.0.as_str()) {
                return Err(self.err(
                    Some(key.1 + 1),
                    Some(&key.0),
                    format!("unknown field; known fields: {}", KNOWN_KEYS.join(", ")),
                ));
            }
        }
        serde_saphyr::from_str(self.yaml).map_err(|e| {
            let line = e.location().map(|l| l.line() as usize);
            let message = without_yaml_position(&first_line(&e.to_string()));
            let field = line.and_then(|l| field_at_line(self.yaml, l)).or_else(|| backticked(&message));
            self.err(line.map(|l| l + 1), field.as_deref(), message)
        })
    }

    /// `name`: required, a-z, 0-9 and - only, at most [`AGENT_NAME_LEN_MAX_BYTES`] bytes.
    fn name(&self, name: Option<String>) -> Result<String, SpecError> {
        let name = name.ok_or_else(|| self.err(None, Some("name"), "required".into()))?;
        let bad_name = name.is_empty()
            || name.len() > AGENT_NAME_LEN_MAX_BYTES
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if bad_name {
            return Err(self.at(
                "name",
                "name",
                format!("{name:?} must be 1..={AGENT_NAME_LEN_MAX_BYTES} bytes of a-z, 0-9 and -"),
            ));
        }
        Ok(name)
    }

    /// `description`: required, not blank, bounded.
    fn description(&self, description: Option<String>) -> Result<String, SpecError> {
        let description = description.ok_or_else(|| self.err(None, Some("description"), "required".into()))?;
        if description.trim().is_empty() || description.len() > AGENT_DESCRIPTION_LEN_MAX_BYTES {
            return Err(self.at(
                "description",
                "description",
                format!("must be 1..={AGENT_DESCRIPTION_LEN_MAX_BYTES} bytes, not {}", description.len()),
            ));
        }
        Ok(description)
    }

    /// A list field: bounded in length, every entry non-blank and bounded.
    fn list(&self, field: &str, items: Vec<String>) -> Result<Vec<String>, SpecError> {
        if items.len() > AGENT_LIST_LEN_MAX {
            return Err(self.at(
                field,
                field,
                format!("{} entries is over the limit of {AGENT_LIST_LEN_MAX}", items.len()),
            ));
        }
        if let Some(i) = items.iter().position(|s| s.trim().is_empty() || s.len() > AGENT_ITEM_LEN_MAX_BYTES) {
            return Err(self.at(
                field,
                &format!("{field}[{i}]"),
                format!("entries must be 1..={AGENT_ITEM_LEN_MAX_BYTES} bytes"),
            ));
        }
        Ok(items)
    }

    /// `resources`: bounded, each a resource path and a lock mode.
    fn resources(&self, raw: Vec<RawResource>) -> Result<Vec<ResourceAccess>, SpecError> {
        if raw.len() > AGENT_LIST_LEN_MAX {
            return Err(self.at(
                "resources",
                "resources",
                format!("{} entries is over the limit of {AGENT_LIST_LEN_MAX}", raw.len()),
            ));
        }
        let mut resources = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let path = ResourcePath::parse(&r.path)
                .map_err(|e| self.at("resources", &format!("resources[{i}].path"), e.message))?;
            let mode =
                r.mode.parse::<Mode>().map_err(|e| self.at("resources", &format!("resources[{i}].mode"), e.message))?;
            resources.push(ResourceAccess { path, mode });
        }
        Ok(resources)
    }

    /// `escalation`: a ceiling not below the agent's own `tier` (default frontier), after
    /// 1..=10 failed gates (default 1).
    fn escalation(&self, esc: RawEscalation, tier: Tier) -> Result<Escalation, SpecError> {
        let max_tier = match esc.max_tier {
            Some(t) => t.parse::<Tier>().map_err(|e| self.at("escalation", "escalation.max_tier", e.to_string()))?,
            None => Tier::Frontier,
        };
        if max_tier < tier {
            return Err(self.at(
                "escalation",
                "escalation.max_tier",
                format!("{max_tier} is below the agent's own tier {tier}"),
            ));
        }
        let after_failed_gates = esc.after_failed_gates.unwrap_or(1);
        if !(1..=10).contains(&after_failed_gates) {
            return Err(self.at(
                "escalation",
                "escalation.after_failed_gates",
                format!("{after_failed_gates} is outside 1..=10"),
            ));
        }
        Ok(Escalation { max_tier, after_failed_gates })
    }

    /// `budget`: optional per-task dollar and token ceilings, each within its bound.
    fn budget(&self, b: RawBudget) -> Result<Budget, SpecError> {
        let money = match b.usd_per_task {
            Some(Dollars(text)) => {
                let field = "budget.usd_per_task";
                // The line that sets it (front matter starts on line 2), else the budget's.
                let line = self.yaml.lines().position(|l| l.contains("usd_per_task")).map(|l| l + 2);
                let at = |message: String| match line {
                    Some(line) => self.err(Some(line), Some(field), message),
                    None => self.at("budget", field, message),
                };
                let micros = parse_dollars(field, &text).map_err(|e| at(e.message))?;
                if !(1..=AGENT_TASK_MONEY_MICROS_MAX).contains(&micros) {
                    let max = dollars(AGENT_TASK_MONEY_MICROS_MAX);
                    return Err(at(format!("{text} is outside (0, {max}]")));
                }
                Some(micros)
            }
            None => None,
        };
        if let Some(tokens) = b.tokens_per_task {
            if !(1..=AGENT_TASK_TOKENS_MAX).contains(&tokens) {
                return Err(self.at(
                    "budget",
                    "budget.tokens_per_task",
                    format!("{tokens} is outside 1..={AGENT_TASK_TOKENS_MAX}"),
                ));
            }
        }
        Ok(Budget { money_per_task_micros: money, tokens_per_task: b.tokens_per_task })
    }
}

/// The shipped specs (`agents/*.md`), built into the binary: what is read when no directory
/// is given and there is no `./agents` where `qm` runs.
pub const BUILT_IN: [(&str, &str); 9] = [
    ("analyst.md", include_str!("../../agents/analyst.md")),
    ("architect.md", include_str!("../../agents/architect.md")),
    ("deployer.md", include_str!("../../agents/deployer.md")),
    ("diagnostician.md", include_str!("../../agents/diagnostician.md")),
    ("documenter.md", include_str!("../../agents/documenter.md")),
    ("implementer.md", include_str!("../../agents/implementer.md")),
    ("monitor.md", include_str!("../../agents/monitor.md")),
    ("specifier.md", include_str!("../../agents/specifier.md")),
    ("verifier.md", include_str!("../../agents/verifier.md")),
];

/// Where a built-in spec says it comes from.
pub const BUILT_IN_DIR: &str = "(built in)/agents";

/// The built-in specs, parsed.
pub fn built_in() -> (Vec<AgentSpec>, Vec<SpecError>) {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in BUILT_IN {
        match parse(&Path::new(BUILT_IN_DIR).join(name), text) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e),
        }
    }
    (specs, errors)
}

/// Reads and parses one spec file: the spec, or every error in it.
pub fn load_file(path: &Path) -> Result<AgentSpec, Vec<SpecError>> {
    let io = |message: String| vec![SpecError { file: path.to_path_buf(), line: None, field: None, message }];
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    if meta.len() > AGENT_SPEC_BYTES_MAX as u64 {
        return Err(io(format!("{} bytes is over the limit of {AGENT_SPEC_BYTES_MAX}", meta.len())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| io(e.to_string()))?;
    parse(path, &text)
}

/// Every `*.md` spec in `dir` (not recursive), in file-name order, with every error found
/// (not only the first). Two specs with one name are an error on the second.
pub fn load_dir(dir: &Path) -> (Vec<AgentSpec>, Vec<SpecError>) {
    let io = |message: String| SpecError { file: dir.to_path_buf(), line: None, field: None, message };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return (Vec::new(), vec![io(e.to_string())]),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md") && p.is_file())
        .collect();
    files.sort();
    if files.len() > AGENT_SPECS_MAX {
        return (Vec::new(), vec![io(format!("{} specs is over the limit of {AGENT_SPECS_MAX}", files.len()))]);
    }
    let mut specs: Vec<AgentSpec> = Vec::new();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in files {
        match load_file(&f) {
            Ok(spec) => {
                if let Some(first) = seen.get(&spec.name) {
                    errors.push(SpecError {
                        file: f.clone(),
                        line: None,
                        field: Some("name".into()),
                        message: format!("{:?} is already defined in {}", spec.name, first.display()),
                    });
                    continue;
                }
                seen.insert(spec.name.clone(), f);
                specs.push(spec);
            }
            Err(e) => errors.extend(e),
        }
    }
    (specs, errors)
}

/// `.claude/agents` model aliases as tiers.
fn claude_model_tier(model: &str) -> Option<Tier> {
    match model {
        "haiku" => Some(Tier::Cheap),
        "sonnet" => Some(Tier::Standard),
        "opus" => Some(Tier::Frontier),
        _ => None,
    }
}

/// The YAML between an opening `---` line and the next `---` line, and the rest.
fn split_front_matter(text: &str) -> Option<(&str, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&rest[..offset], &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    None
}

/// Top-level keys of a YAML mapping with their 1-based lines (a light scan: keys at column 0).
fn top_level_keys(yaml: &str) -> Vec<(String, usize)> {
    yaml.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with([' ', '\t', '#', '-']) && !l.trim().is_empty())
        .filter_map(|(i, l)| l.split_once(':').map(|(k, _)| (k.trim().trim_matches(['"', '\'']).to_string(), i + 1)))
        .collect()
}

fn top_level_key_line(yaml: &str, key: &str) -> Option<usize> {
    top_level_keys(yaml).into_iter().find(|(k, _)| k == key).map(|(_, l)| l)
}

/// The key whose value covers `line` (1-based): the nearest key at or above it, at its
/// indentation or less, joined with the top-level key above it when nested.
fn field_at_line(yaml: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut path: Vec<String> = Vec::new();
    let mut indent = usize::MAX;
    for l in lines.iter().take(line).rev() {
        let trimmed = l.trim_start();
        let this = l.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') || this >= indent {
            continue;
        }
        let body = trimmed.trim_start_matches("- ");
        if let Some((k, _)) = body.split_once(':') {
            if !k.contains(['{', '[', ' ']) {
                path.push(k.trim().to_string());
            }
        }
        indent = this;
        if this == 0 {
            break;
        }
    }
    if path.is_empty() {
        return None;
    }
    path.reverse();
    Some(path.join("."))
}

/// The parser's message without its own positions, which count lines of the front matter,
/// not of the file (the error carries the file's line).
fn without_yaml_position(message: &str) -> String {
    let mut m = message.trim_start_matches("error: ");
    if let Some(rest) = m.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(": ") {
            m = after;
        }
    }
    let m = match m.rfind(" at line ") {
        Some(i) => &m[..i],
        None => m,
    };
    m.to_string()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// A field named in a serde message (``missing field `name` ``).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_built_in_specs_are_the_shipped_agents_folder_and_all_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents");
        let mut shipped: Vec<String> = std::fs::read_dir(&dir)
            .expect("agents/")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".md"))
            .collect();
        shipped.sort();
        let names: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, shipped, "every file in agents/ is built in, and nothing else");
        let (specs, errors) = built_in();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(specs.len(), BUILT_IN.len());
    }

    use super::*;

    /// The spec, or its first error.
    fn p(text: &str) -> Result<AgentSpec, SpecError> {
        parse(Path::new("agents/x.md"), text).map_err(|mut e| e.remove(0))
    }

    #[test]
    fn every_error_in_a_spec_is_reported_not_only_the_first() {
        let text =
            "---\nname: A b\ndescription: d\ntier: fronteir\nrole: Reviewer\nbudget:\n  usd_per_task: lots\n---\n";
        let errors = parse(Path::new("agents/x.md"), text).unwrap_err();
        let fields: Vec<&str> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
        assert_eq!(fields.len(), 4, "{errors:?}");
        for field in ["name", "tier", "role"] {
            assert!(fields.contains(&field), "{field}: {errors:?}");
        }
        assert!(fields.iter().any(|f| f.starts_with("budget")), "{errors:?}");
    }

    #[test]
    fn a_spec_may_declare_a_role_of_its_own_with_its_slots() {
        let spec = p("---\nname: sec\ndescription: d\nrole: security-reviewer\nslots: 3\n---\nbody").expect("loads");
        assert_eq!(spec.role.map(|r| r.to_string()).as_deref(), Some("security-reviewer"));
        assert_eq!(spec.slots, Some(3));
        // A built-in role's name is its role; any other name hosts nothing.
        assert_eq!(p("---\nname: verifier\ndescription: d\n---\n").unwrap().role, Some(Role::Verifier));
        let e = p("---\nname: helper\ndescription: d\nslots: 2\n---\n").unwrap_err();
        assert_eq!((e.field.as_deref(), e.line), (Some("slots"), Some(4)), "{e}");
        assert!(e.to_string().contains("needs a role"), "{e}");
        let e = p("---\nname: x\ndescription: d\nrole: implementor\n---\n").unwrap_err();
        assert!(e.to_string().contains("did you mean implementer?"), "{e}");
        let e = p("---\nname: sec\ndescription: d\nrole: sec\nslots: 0\n---\n").unwrap_err();
        assert!(e.to_string().contains("0 is outside 1..=256"), "{e}");
    }

    #[test]
    fn a_claude_code_agent_file_loads_unchanged() {
        let text = "---\nname: code-reviewer\ndescription: Reviews code for quality. Use after changes.\n\
                    tools: Read, Grep, Glob, Bash\nmodel: opus\ncolor: blue\n---\n\nYou are a senior reviewer.\n";
        let spec = p(text).expect("loads");
        assert_eq!(spec.name, "code-reviewer");
        assert_eq!(spec.tools, ["Read", "Grep", "Glob", "Bash"]);
        assert_eq!(spec.model.as_deref(), Some("opus"));
        assert_eq!(spec.tier, Tier::Frontier);
        assert_eq!(spec.role, None);
        assert_eq!(spec.prompt, "You are a senior reviewer.");
    }

    #[test]
    fn the_extended_fields_parse() {
        let text = "---\nname: impl\ndescription: d\ntools: [Read, Edit]\nrole: implementer\ntier: cheap\n\
                    capabilities: [shell]\ncontext_scopes: [\"src/**\"]\nresources:\n  - { path: \"pg:staging\", mode: exclusive }\n\
                    escalation: { max_tier: standard, after_failed_gates: 2 }\nbudget: { usd_per_task: 1.5, tokens_per_task: 1000 }\n---\nbody";
        let spec = p(text).expect("loads");
        assert_eq!(spec.role, Some(Role::Implementer));
        assert_eq!(spec.tier, Tier::Cheap);
        assert_eq!(spec.resources[0].mode, Mode::Exclusive);
        assert_eq!(spec.resources[0].path.to_string(), "pg:staging");
        assert_eq!(spec.escalation, Escalation { max_tier: Tier::Standard, after_failed_gates: 2 });
        assert_eq!(spec.budget.tokens_per_task, Some(1000));
        assert_eq!(spec.slots, None);
        assert_eq!(spec.budget.money_per_task_micros, Some(1_500_000), "$1.5 exactly");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = p("---\nname: a\ndescription: d\ntier: fronteir\n---\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("tier")), "{e}");
        assert!(e.to_string().starts_with("agents/x.md:4: field `tier`: unknown tier \"fronteir\""), "{e}");

        let e = p("---\nname: a\ndescription: d\nteir: cheap\n---\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("teir")), "{e}");

        let e = p("---\ndescription: d\n---\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"), "{e}");

        let e = p("---\nname: A b\ndescription: d\n---\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("name")), "{e}");

        let e =
            p("---\nname: a\ndescription: d\nresources:\n  - { path: \"pg:\", mode: exclusive }\n---\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("resources[0].path"), "{e}");

        let e = p("---\nname: a\ndescription: d\nbudget:\n  usd_per_task: lots\n---\n").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.to_string().ends_with("field `budget.usd_per_task`: \"lots\" is not an amount in dollars (e.g. 2.50)"),
            "{e}"
        );
        assert_eq!(e.field.as_deref(), Some("budget.usd_per_task"), "{e}");

        let e = p("---\nname: a\ndescription: d\nbudget:\n  usd_per_task: 20000\n---\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(5), Some("budget.usd_per_task")), "{e}");
        assert!(e.message.contains("20000 is outside (0, $10000.00]"), "{e}");
        let tenth = p("---\nname: a\ndescription: d\nbudget: { usd_per_task: 0.1 }\n---\n").unwrap();
        assert_eq!(tenth.budget.money_per_task_micros, Some(100_000), "a tenth of a dollar, exactly");

        let e = p("no front matter").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }
}
