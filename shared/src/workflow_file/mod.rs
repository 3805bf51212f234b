//! Workflow and project files: TOML text parsed and validated into [`Workflow`] and
//! [`Project`]. The formats are documented in `docs/workflows.md`.
//!
//! Every error names the file, the 1-based line, the field path (`pass[2].gate.on_fail`, pass
//! indexes counting from 0 in file order) and the bound or the accepted choices, and a file's
//! errors are reported all at once rather than one per attempt.

mod document;
mod project;
#[cfg(test)]
mod tests;
mod workflow;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::workflow::Workflow;

pub use project::{check_against_project, parse_project};
pub use workflow::parse_workflow;

/// One thing wrong with a workflow or project file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    pub file: String,
    /// 1-based line, when the error has a place in the text.
    pub line: Option<usize>,
    /// Path of the field (`pass[2].gate.on_fail`); empty for TOML syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FileError {}

/// Work-item classes and their default priorities (the coordinator's `jobs.classes` config
/// may change them): `incident > hotfix > security > feature > refactor > docs`.
pub const CLASSES: [(&str, u32); 6] =
    [("incident", 1000), ("hotfix", 900), ("security", 800), ("feature", 500), ("refactor", 300), ("docs", 100)];

/// The default priority of a work-item class.
pub fn class_priority(class: &str) -> Option<u32> {
    CLASSES.iter().find(|(c, _)| *c == class).map(|(_, p)| *p)
}

/// The built-in workflows: name and file text.
pub const BUILTIN_WORKFLOWS: [(&str, &str); 6] = [
    ("new-feature", include_str!("../../../workflows/new-feature.toml")),
    ("production-bug", include_str!("../../../workflows/production-bug.toml")),
    ("security-incident", include_str!("../../../workflows/security-incident.toml")),
    ("refactor", include_str!("../../../workflows/refactor.toml")),
    ("docs", include_str!("../../../workflows/docs.toml")),
    ("ticket", include_str!("../../../workflows/ticket.toml")),
];

/// The demo project's file text (team `platform`).
pub const DEMO_PROJECT: &str = include_str!("../../../projects/demo.toml");

/// A built-in workflow, parsed.
pub fn builtin_workflow(name: &str) -> Option<Workflow> {
    let (name, text) = BUILTIN_WORKFLOWS.iter().find(|(n, _)| *n == name)?;
    parse_workflow(text, &format!("workflows/{name}.toml")).ok()
}
