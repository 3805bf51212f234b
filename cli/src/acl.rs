//! `qm acl bootstrap` and `qm token create|list|revoke|whoami`: their arguments and handlers.
//!
//! Secrets are printed once (or saved to a 0600 file) and never again: the cluster keeps
//! only their hashes.

use clap::Subcommand;
use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;
use serde_json::{json, Value};

use crate::config::{read_secret_file, token_path, write_secret_file};
use crate::reserve::emit;
use crate::{status_failure, Failure, Output};

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Create the first admin token of a fresh cluster (once; later calls are refused) and
    /// print it. Keep it safe: it can do everything, and it is shown only now.
    #[command(
        after_help = "Examples:\n  qm acl bootstrap --save          # also writes ~/.config/qm/tokens/<host>_<port> (0600)\n  \
        qm acl bootstrap --secret-file admin.secret\nThen: qm token create --name ci --role submitter --team platform"
    )]
    Bootstrap {
        /// Save the token where this CLI looks for the endpoint's token.
        #[arg(long)]
        save: bool,
        /// Use the secret in this file (32+ characters) instead of a random one.
        #[arg(long)]
        secret_file: Option<std::path::PathBuf>,
        /// How long to wait for a cluster that is still starting (nothing listening yet, no
        /// leader elected) before giving up
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    #[command(after_help = "Examples:\n  \
        qm token create --name ci --role submitter --team platform --path-prefix repo:web --priority-max 500\n  \
        qm token create --name gpu-box-1 --role worker --node gpu-box-1 --path-prefix '*'\n  \
        qm token create --name alice --role approver --ttl 30d")]
    Create {
        /// Unique name; also the principal's name in sessions and gate decisions.
        #[arg(long)]
        name: String,
        /// admin, operator, submitter, worker, approver or reader (repeatable). Every role reads.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A team the token may submit and cancel work for (repeatable); `*` is every team.
        #[arg(long = "team")]
        teams: Vec<String>,
        /// A resource path prefix the token may acquire under (repeatable); `*` is every path.
        #[arg(long = "path-prefix")]
        path_prefixes: Vec<String>,
        /// Highest priority the token may ask for (0..=1000).
        #[arg(long, default_value_t = qm_shared::limits::PRIORITY_DEFAULT)]
        priority_max: u32,
        /// A worker node id the token may connect as (repeatable); `*` is any.
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Lifetime, e.g. 12h or 30d; none: never expires.
        #[arg(long)]
        ttl: Option<String>,
        /// Save the secret to this file (0600) instead of printing it.
        #[arg(long)]
        save_to: Option<std::path::PathBuf>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name: calls carrying it are refused from now on.
    Revoke {
        /// The token's name (qm token list)
        name: String,
    },
    /// The principal this CLI's token names, and what it may do.
    Whoami,
}

/// `qm acl …`.
pub async fn dispatch_acl(command: AclCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        AclCommand::Bootstrap { save, secret_file, timeout_ms } => {
            let secret = match secret_file {
                Some(path) => read_secret_file("--secret-file", &path)?,
                None => String::new(),
            };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
            let created = crate::cluster::while_starting(deadline, || client.bootstrap(&secret)).await?;
            // Saved for every endpoint the CLI was given, so that any of them, alone or first
            // in a list, finds it (the node that answered may be any of them).
            let saved = if save {
                let mut first = None;
                for endpoint in client.endpoints() {
                    let path = token_path(&endpoint)
                        .ok_or_else(|| Failure::error("--save: neither XDG_CONFIG_HOME nor HOME is set"))?;
                    write_secret_file(&path, &created.secret)
                        .map_err(|e| Failure::error(format!("--save {}: {e}", path.display())))?;
                    first.get_or_insert(path);
                }
                first
            } else {
                None
            };
            print_created(&created, saved.as_deref(), output);
            Ok(())
        }
    }
}

/// `qm token …`.
pub async fn dispatch_token(command: TokenCommand, client: &Client, output: Output) -> Result<(), Failure> {
    match command {
        TokenCommand::Create { name, roles, teams, path_prefixes, priority_max, nodes, ttl, save_to } => {
            let roles = roles.iter().map(|r| role_from_text(r)).collect::<Result<Vec<_>, _>>()?;
            let ttl_ms = match ttl {
                Some(t) => qm_shared::duration::parse_duration_ms(&t)
                    .map_err(|e| Failure::usage(format!("--ttl {t:?}: {e}")))?,
                None => 0,
            };
            let token = pb::TokenInfo { name, roles, teams, path_prefixes, priority_max, nodes, ..Default::default() };
            let req = pb::CreateTokenRequest { token: Some(token), ttl_ms, secret: String::new() };
            let created = client.create_token(req).await.map_err(status_failure)?;
            if let Some(path) = &save_to {
                write_secret_file(path, &created.secret)
                    .map_err(|e| Failure::error(format!("--save-to {}: {e}", path.display())))?;
            }
            print_created(&created, save_to.as_deref(), output);
            Ok(())
        }
        TokenCommand::List => {
            let tokens = client.list_tokens().await.map_err(status_failure)?.tokens;
            let mut text =
                format!("{:<24} {:<28} {:<12} {:<24} {}\n", "NAME", "ROLES", "PRIORITY≤", "EXPIRES", "GRANTS");
            for t in &tokens {
                text.push_str(&format!(
                    "{:<24} {:<28} {:<12} {:<24} {}\n",
                    t.name,
                    roles_text(t),
                    t.priority_max,
                    if t.expires_at_ms == 0 { "never".to_string() } else { format!("{} ms", t.expires_at_ms) },
                    grants_text(t)
                ));
            }
            emit(output, &serde_json::json!({ "tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }), &text);
            Ok(())
        }
        TokenCommand::Revoke { name } => {
            let r = client.revoke_token(&name).await.map_err(status_failure)?;
            emit(output, &json!({"revoked": r.name}), &format!("token {:?} revoked\n", r.name));
            Ok(())
        }
        TokenCommand::Whoami => {
            let t = client.who_am_i().await.map_err(status_failure)?;
            let text = format!("{}\n  roles: {}\n  {}\n", t.name, roles_text(&t), grants_text(&t));
            emit(output, &token_json(&t), &text);
            Ok(())
        }
    }
}

fn role_from_text(r: &str) -> Result<i32, Failure> {
    let role = match r {
        "admin" => pb::AclRole::Admin,
        "operator" => pb::AclRole::Operator,
        "submitter" => pb::AclRole::Submitter,
        "worker" => pb::AclRole::Worker,
        "approver" => pb::AclRole::Approver,
        "reader" => pb::AclRole::Reader,
        _ => {
            return Err(Failure::usage(format!(
                "--role {r:?}: not one of admin, operator, submitter, worker, approver, reader"
            )))
        }
    };
    Ok(role as i32)
}

fn role_name(r: i32) -> &'static str {
    match pb::AclRole::try_from(r) {
        Ok(pb::AclRole::Admin) => "admin",
        Ok(pb::AclRole::Operator) => "operator",
        Ok(pb::AclRole::Submitter) => "submitter",
        Ok(pb::AclRole::Worker) => "worker",
        Ok(pb::AclRole::Approver) => "approver",
        Ok(pb::AclRole::Reader) => "reader",
        _ => "?",
    }
}

fn roles_text(t: &pb::TokenInfo) -> String {
    t.roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>().join(",")
}

fn grants_text(t: &pb::TokenInfo) -> String {
    format!("teams=[{}] paths=[{}] nodes=[{}]", t.teams.join(","), t.path_prefixes.join(","), t.nodes.join(","))
}

fn token_json(t: &pb::TokenInfo) -> Value {
    json!({"name": t.name, "roles": t.roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>(),
        "teams": t.teams, "path_prefixes": t.path_prefixes, "priority_max": t.priority_max,
        "nodes": t.nodes, "expires_at_ms": t.expires_at_ms, "created_at_ms": t.created_at_ms})
}

fn print_created(created: &pb::TokenCreated, saved: Option<&std::path::Path>, output: Output) {
    let t = created.token.clone().unwrap_or_default();
    let mut value = token_json(&t);
    let text = match saved {
        Some(path) => {
            value["saved_to"] = json!(path.display().to_string());
            format!("token {:?} ({}) created; its secret is in {} (0600)\n", t.name, roles_text(&t), path.display())
        }
        None => {
            value["secret"] = json!(created.secret);
            format!(
                "token {:?} ({}) created. Its secret, shown only now:\n\n  {}\n\nUse it with: export QM_TOKEN=<secret>  (or put it in a file and set QM_TOKEN_FILE)\n",
                t.name,
                roles_text(&t),
                created.secret
            )
        }
    };
    emit(output, &value, &text);
}
