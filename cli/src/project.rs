//! `qm project apply|validate`: its arguments and handlers. `apply` registers a project
//! (its resources, providers and prices) on the coordinators; `validate` checks a project
//! file locally.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use qm_shared::workflow_file;
use serde_json::json;

use crate::reserve::emit;
use crate::{status_failure, workflow, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Register or update a project on the coordinators (declares its resources and its
    /// providers' concurrency as counted resources api:<provider>)
    Apply {
        /// The project file (TOML; docs/workflows.md has its format)
        file: Option<PathBuf>,
        /// The demo project (team platform)
        #[arg(long, conflicts_with = "file")]
        demo: bool,
    },
    /// Check a project file
    Validate {
        /// The project file (TOML)
        file: PathBuf,
    },
}

/// `qm project apply`: the project FILE, or the demo project with `demo`.
pub async fn apply(client: &Client, file: Option<PathBuf>, demo: bool, output: Output) -> Result<(), Failure> {
    if file.is_none() && !demo {
        return Err(Failure::usage("give a project FILE or --demo"));
    }
    let text = match &file {
        Some(p) => crate::job::read_file(p)?,
        None => workflow_file::DEMO_PROJECT.to_string(),
    };
    // Check locally first: errors name file and line.
    let name = file.as_ref().map_or("demo project".to_string(), |p| p.display().to_string());
    if let Err(errors) = workflow_file::parse_project(&text, &name) {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(Failure::usage(lines.join("\n")));
    }
    let resp = client.apply_project(pb::ApplyProjectRequest { project_toml: text }).await.map_err(status_failure)?;
    emit(
        output,
        &json!({"name": resp.name, "resources_declared": resp.resources_declared}),
        &format!("project {} applied: {} resources declared\n", resp.name, resp.resources_declared),
    );
    Ok(())
}

/// `qm project validate`: a project file's resources, providers and prices.
pub fn validate(path: &Path, output: Output) -> Result<(), Failure> {
    let file = path.display().to_string();
    let parsed = workflow::read(path).map_err(|e| vec![e]).and_then(|t| workflow_file::parse_project(&t, &file));
    match parsed {
        Ok(p) => {
            let text = format!(
                "ok {file}: project {} (team {}): {} resources, {} providers, {} prices\n",
                p.name,
                p.team,
                p.resources.len(),
                p.providers.len(),
                p.prices.len()
            );
            emit(output, &json!({"file": file, "project": p, "errors": []}), &text);
            Ok(())
        }
        Err(errors) => {
            emit(output, &json!({"file": file, "project": null, "errors": errors}), "");
            Err(workflow::report(&errors))
        }
    }
}
