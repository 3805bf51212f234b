//! `qm workflow list|show|validate`: its arguments and handlers. Workflow files are checked
//! locally (no coordinator needed); the file reading and error report here also serve
//! `qm project validate`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use qm_shared::limits::WORKFLOW_FILE_BYTES_MAX;
use qm_shared::workflow::{Pass, Project, Workflow};
use qm_shared::workflow_file::{self, FileError, BUILTIN_WORKFLOWS};
use serde_json::json;

use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// The built-in workflows
    List,
    /// A workflow's passes in order (a built-in name or a file)
    Show {
        /// A built-in workflow's name (qm workflow list) or a workflow file
        workflow: String,
    },
    /// Check workflow files (cycles, unknown roles, unknown resources with --project); the
    /// built-ins when none are given
    Validate {
        /// Workflow files, or directories of them
        paths: Vec<PathBuf>,
        /// Check resources against this project file
        #[arg(long)]
        project: Option<PathBuf>,
    },
}

/// `qm workflow …`.
pub fn dispatch(command: WorkflowCommand, output: Output) -> Result<(), Failure> {
    match command {
        WorkflowCommand::List => list(output),
        WorkflowCommand::Show { workflow } => show(&workflow, output),
        WorkflowCommand::Validate { paths, project } => validate(&paths, project.as_deref(), output),
    }
}

/// `qm workflow list`: the built-in workflows.
fn list(output: Output) -> Result<(), Failure> {
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for (name, text) in BUILTIN_WORKFLOWS {
        let w = workflow_file::parse_workflow(text, name).map_err(|e| report(&e))?;
        rows.push(vec![w.name.clone(), w.passes.len().to_string(), w.description.clone()]);
        values.push(json!({"name": w.name, "passes": w.passes.len(), "description": w.description}));
    }
    let text = table(&["NAME", "PASSES", "DESCRIPTION"], &rows);
    crate::reserve::emit(output, &json!({ "workflows": values }), &text);
    Ok(())
}

/// `qm workflow show`: a workflow's passes in the order they run. `name_or_path` is a file
/// when it is one or ends in `.toml`, else a built-in name.
fn show(name_or_path: &str, output: Output) -> Result<(), Failure> {
    let path = Path::new(name_or_path);
    let (w, source) = if path.is_file() || name_or_path.ends_with(".toml") {
        let text = read(path).map_err(|e| report(&[e]))?;
        let w = workflow_file::parse_workflow(&text, name_or_path).map_err(|e| report(&e))?;
        (w, name_or_path.to_string())
    } else {
        let w = workflow_file::builtin_workflow(name_or_path).ok_or_else(|| {
            let names: Vec<&str> = BUILTIN_WORKFLOWS.iter().map(|(n, _)| *n).collect();
            Failure::usage(format!(
                "{name_or_path:?} is neither a file nor a built-in workflow (built-ins: {})",
                names.join(", ")
            ))
        })?;
        (w, "built-in".to_string())
    };
    let value = serde_json::to_value(&w).map_err(|e| Failure::error(format!("workflow as JSON: {e}")))?;
    crate::reserve::emit(output, &value, &describe(&w, &source));
    Ok(())
}

/// The text form of `qm workflow show`.
fn describe(w: &Workflow, source: &str) -> String {
    let mut text = format!("workflow {} ({source}): {}\n", w.name, crate::count(w.passes.len(), "pass"));
    if !w.description.is_empty() {
        text.push_str(&format!("{}\n", w.description));
    }
    text.push('\n');
    let rows: Vec<Vec<String>> = w.passes.iter().enumerate().map(|(i, p)| pass_row(i, p)).collect();
    text.push_str(&table(&["#", "PASS", "ROLE", "TIER", "AFTER", "NEEDS", "GATE"], &rows));
    text
}

fn pass_row(i: usize, p: &Pass) -> Vec<String> {
    let tier = match p.tier {
        Some(t) => t.to_string(),
        None => format!("{} (default)", p.start_tier()),
    };
    let needs: Vec<String> = p
        .needs
        .iter()
        .map(|n| {
            if n.units == 1 {
                format!("{} {}", n.path, n.mode)
            } else {
                format!("{} {}×{}", n.path, n.mode, n.units)
            }
        })
        .collect();
    let gate = match &p.gate {
        None => "-".to_string(),
        Some(g) if g.reviewer == qm_shared::workflow::Reviewer::Human => format!("human, on fail {}", g.on_fail),
        Some(g) => format!("{} ({}), on fail {}", g.reviewer.as_str(), g.review_role, g.on_fail),
    };
    vec![
        (i + 1).to_string(),
        p.name.clone(),
        p.role.to_string(),
        tier,
        dash(&p.after.join(",")),
        dash(&needs.join(", ")),
        gate,
    ]
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    [&header]
        .into_iter()
        .chain(rows)
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// `qm workflow validate`: each file (a directory contributes its `*.toml` files; the
/// built-ins when no path is given), and with `--project` every resource a pass needs is
/// checked against the project's declarations. Any error fails the command (exit 2).
fn validate(paths: &[PathBuf], project: Option<&Path>, output: Output) -> Result<(), Failure> {
    let mut errors: Vec<FileError> = Vec::new();
    let project: Option<Project> = match project {
        Some(p) => {
            let name = p.display().to_string();
            match read(p).map_err(|e| vec![e]).and_then(|text| workflow_file::parse_project(&text, &name)) {
                Ok(project) => Some(project),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            }
        }
        None => None,
    };

    let mut sources: Vec<(String, Result<String, FileError>)> = Vec::new();
    if paths.is_empty() {
        for (name, text) in BUILTIN_WORKFLOWS {
            sources.push((format!("built-in {name}"), Ok(text.to_string())));
        }
    }
    for p in paths {
        if p.is_dir() {
            match toml_files(p) {
                Ok(files) => sources.extend(files.into_iter().map(|f| (f.display().to_string(), read(&f)))),
                Err(e) => errors.push(e),
            }
        } else {
            sources.push((p.display().to_string(), read(p)));
        }
    }

    let mut valid = Vec::new();
    let mut text = String::new();
    for (file, source) in sources {
        let parsed = source.map_err(|e| vec![e]).and_then(|t| workflow_file::parse_workflow(&t, &file));
        match parsed {
            Ok(w) => {
                let found = project.as_ref().map(|p| workflow_file::check_against_project(&w, p, &file));
                match found {
                    Some(e) if !e.is_empty() => errors.extend(e),
                    _ => {
                        text.push_str(&format!("ok {file}: {}\n", crate::count(w.passes.len(), "pass")));
                        valid.push(json!({"file": file, "name": w.name, "passes": w.passes.len()}));
                    }
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    let value = json!({
        "project": project.as_ref().map(|p| p.name.clone()),
        "valid": valid,
        "errors": errors,
    });
    crate::reserve::emit(output, &value, &text);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(report(&errors))
    }
}

/// A file's text, within the size bound.
pub fn read(path: &Path) -> Result<String, FileError> {
    let fail =
        |message: String| FileError { file: path.display().to_string(), line: None, field: String::new(), message };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > WORKFLOW_FILE_BYTES_MAX as u64 {
        return Err(fail(format!("the file is {} bytes, at most {WORKFLOW_FILE_BYTES_MAX} allowed", meta.len())));
    }
    std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))
}

/// The `*.toml` files directly in `dir`, sorted.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let fail =
        |message: String| FileError { file: dir.display().to_string(), line: None, field: String::new(), message };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Errors on stderr, one per line; the command fails as a usage error (exit 2).
pub fn report(errors: &[FileError]) -> Failure {
    for e in errors {
        eprintln!("error: {e}");
    }
    Failure::usage(format!("{} error(s)", errors.len()))
}
