//! `qm agent list|validate`: its arguments and handlers; agent specs on disk.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use qm_worker::spec::{self, AgentSpec, SpecError};
use serde_json::json;

use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// List the specs found: name, role, tier, resources and file.
    #[command(
        after_help = "Examples:\n  qm agent list                  # ./agents\n  qm agent list .claude/agents -o json"
    )]
    List {
        /// Spec files or directories of `*.md` specs [default: ./agents, else the built-in specs]
        paths: Vec<PathBuf>,
    },
    /// Check specs; every error names the file, line and field. Exit 1 if any is invalid.
    #[command(after_help = "Examples:\n  qm agent validate\n  qm agent validate agents/implementer.md .claude/agents")]
    Validate {
        /// Spec files or directories of `*.md` specs [default: ./agents, else the built-in specs]
        paths: Vec<PathBuf>,
    },
}

/// `qm agent …`.
pub fn dispatch(command: AgentCommand, output: Output) -> Result<(), Failure> {
    match command {
        AgentCommand::List { paths } => list(&paths, output),
        AgentCommand::Validate { paths } => validate(&paths, output),
    }
}

/// Specs from each path: a directory contributes its `*.md` files, a file itself. With no
/// path: `./agents`, or the built-in specs when there is none here (said on stderr). A path
/// that does not exist is a usage error naming it.
fn load(paths: &[PathBuf]) -> Result<(Vec<AgentSpec>, Vec<SpecError>), Failure> {
    let local = Path::new("agents");
    if paths.is_empty() && !local.is_dir() {
        eprintln!("no ./agents here: the built-in specs (give a file or directory to read others)");
        return Ok(spec::built_in());
    }
    let defaults = [local.to_path_buf()];
    let paths = if paths.is_empty() { &defaults[..] } else { paths };
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        return Err(Failure::usage(format!("{}: no such file or directory", missing.display())));
    }
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            let (s, e) = spec::load_dir(p);
            specs.extend(s);
            errors.extend(e);
        } else {
            match spec::load_file(p) {
                Ok(s) => specs.push(s),
                Err(e) => errors.extend(e),
            }
        }
    }
    Ok((specs, errors))
}

fn error_json(e: &SpecError) -> serde_json::Value {
    json!({"file": e.file, "line": e.line, "field": e.field, "message": e.message})
}

fn list(paths: &[PathBuf], output: Output) -> Result<(), Failure> {
    let (specs, errors) = load(paths)?;
    let rows: Vec<[String; 5]> = specs
        .iter()
        .map(|s| {
            let resources: Vec<String> = s.resources.iter().map(|r| format!("{}:{}", r.path, mode(r.mode))).collect();
            [
                s.name.clone(),
                s.role.map_or("-".to_string(), |r| r.to_string()),
                s.tier.to_string(),
                if resources.is_empty() { "-".to_string() } else { resources.join(",") },
                s.source.display().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "ROLE", "TIER", "RESOURCES", "FILE"].map(String::from);
    let widths: Vec<usize> =
        (0..5).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let text: String = [&header]
        .into_iter()
        .chain(&rows)
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect();
    let value = json!({"agents": specs, "errors": errors.iter().map(error_json).collect::<Vec<_>>()});
    crate::reserve::emit(output, &value, &text);
    report(&errors)
}

fn validate(paths: &[PathBuf], output: Output) -> Result<(), Failure> {
    let (specs, errors) = load(paths)?;
    let mut text = String::new();
    for s in &specs {
        let note = if s.role.is_none() { " (no role: no worker hosts it until one is set)" } else { "" };
        text.push_str(&format!("ok    {} ({}){note}\n", s.source.display(), s.name));
    }
    let value = json!({
        "valid": specs.iter().map(|s| json!({"file": s.source, "name": s.name})).collect::<Vec<_>>(),
        "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
    });
    crate::reserve::emit(output, &value, &text);
    report(&errors)
}

fn mode(m: qm_shared::Mode) -> &'static str {
    match m {
        qm_shared::Mode::Shared => "shared",
        qm_shared::Mode::Exclusive => "exclusive",
    }
}

/// Errors go to stderr, one per line; any error fails the command (exit 1).
fn report(errors: &[SpecError]) -> Result<(), Failure> {
    if errors.is_empty() {
        return Ok(());
    }
    for e in errors {
        eprintln!("error: {e}");
    }
    Err(Failure::error(format!("{} invalid", crate::count(errors.len(), "agent spec"))))
}
