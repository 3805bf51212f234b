//! Effective configuration: defaults, then a TOML file, then `QM_*` environment variables,
//! then flags; later sources win. Also `qm config show` (its arguments and handler), which
//! prints every key with its value and source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::reserve::emit;
use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every setting, its effective value and where it came from.
    Show,
}

/// `qm config …`.
pub fn dispatch(
    command: ConfigCommand,
    file: Option<&Path>,
    flags: &[(&'static str, Option<String>)],
    output: Output,
) -> Result<(), Failure> {
    match command {
        ConfigCommand::Show => {
            let config = Config::load(file, flags)?;
            let rows = config.show();
            let mut text = format!("{:<32} {:<40} {}\n", "KEY", "VALUE", "SOURCE");
            for r in &rows {
                text.push_str(&format!(
                    "{:<32} {:<40} {}\n",
                    r["key"].as_str().unwrap_or(""),
                    r["value"].as_str().unwrap_or(""),
                    r["source"].as_str().unwrap_or("")
                ));
            }
            emit(output, &serde_json::json!({ "keys": rows }), &text);
            Ok(())
        }
    }
}

/// Largest config file read.
const CONFIG_LEN_MAX_BYTES: u64 = 1024 * 1024;

/// One known key: its name in the file (`section.key`), its env variable and default.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const KEYS: &[Key] = &[
    Key {
        name: "endpoint",
        env: "QM_ENDPOINT",
        default: "127.0.0.1:7070",
        help: "comma-separated coordinator gRPC addresses the CLI talks to",
    },
    Key {
        name: "token",
        env: "QM_TOKEN",
        default: "",
        help: "bearer token the CLI sends (prefer token_file: values here show in process listings)",
    },
    Key {
        name: "token_file",
        env: "QM_TOKEN_FILE",
        default: "",
        help: "file holding the CLI's token; empty: ~/.config/qm/tokens/<host>_<port> of the first endpoint",
    },
    Key {
        name: "tls.ca",
        env: "QM_TLS_CA",
        default: "",
        help: "cluster CA (PEM): clients and peers trust only it; set to talk or serve TLS",
    },
    Key {
        name: "tls.cert",
        env: "QM_TLS_CERT",
        default: "",
        help: "certificate (PEM) to present: a coordinator's node certificate (qm cert node)",
    },
    Key { name: "tls.key", env: "QM_TLS_KEY", default: "", help: "the certificate's private key (PEM)" },
    Key {
        name: "insecure",
        env: "QM_INSECURE",
        default: "false",
        help: "allow plaintext to or on a non-loopback address (tokens cross the network in clear text)",
    },
    Key {
        name: "acl.initial_admin_token_file",
        env: "QM_ACL_INITIAL_ADMIN_TOKEN_FILE",
        default: "",
        help: "coordinator: a secret (32+ characters) that becomes the first admin token when the cluster is not yet bootstrapped",
    },
    Key { name: "node.id", env: "QM_NODE_ID", default: "1", help: "Raft node id of this coordinator (1 or more)" },
    Key {
        name: "node.listen",
        env: "QM_NODE_LISTEN",
        default: "127.0.0.1:7070",
        help: "gRPC listen address (client API, and Raft peers unless node.peer_listen is set)",
    },
    Key {
        name: "node.peer_listen",
        env: "QM_NODE_PEER_LISTEN",
        default: "",
        help: "peer port listen address: serves only Raft (mutual TLS under TLS) and the gRPC port then refuses Raft; empty: Raft on the gRPC port",
    },
    Key {
        name: "node.admin_listen",
        env: "QM_NODE_ADMIN_LISTEN",
        default: "127.0.0.1:7080",
        help: "admin HTTP listen address (/metrics, /livez, /readyz, /health); empty disables it",
    },
    Key {
        name: "node.advertise",
        env: "QM_NODE_ADVERTISE",
        default: "",
        help: "address peers and clients reach this node at; empty: http://<listen>",
    },
    Key {
        name: "node.data_dir",
        env: "QM_NODE_DATA_DIR",
        default: "./qm-data",
        help: "directory of the on-disk (sled) store",
    },
    Key {
        name: "node.peers",
        env: "QM_NODE_PEERS",
        default: "",
        help: "initial voters as id=address,... or id=address/peer_address,... (peer_address: the node's peer port); empty: a single-node cluster of this node, or --join",
    },
    Key { name: "raft.heartbeat_ms", env: "QM_RAFT_HEARTBEAT_MS", default: "100", help: "leader heartbeat period" },
    Key {
        name: "raft.election_timeout_min_ms",
        env: "QM_RAFT_ELECTION_TIMEOUT_MIN_MS",
        default: "150",
        help: "shortest election timeout",
    },
    Key {
        name: "raft.election_timeout_max_ms",
        env: "QM_RAFT_ELECTION_TIMEOUT_MAX_MS",
        default: "300",
        help: "longest election timeout (also the leader lease)",
    },
    Key {
        name: "raft.tick_ms",
        env: "QM_RAFT_TICK_MS",
        default: "200",
        help: "period of the leader's Tick (lease expiry resolution)",
    },
    Key {
        name: "raft.snapshot_logs",
        env: "QM_RAFT_SNAPSHOT_LOGS",
        default: "10000",
        help: "snapshot and purge the log every this many entries",
    },
    Key {
        name: "audit.bytes_max",
        env: "QM_AUDIT_BYTES_MAX",
        default: "16777216",
        help: "coordinator: bytes of audit records kept under <data_dir>/audit (65536..=268435456; the oldest go first)",
    },
    Key {
        name: "limits.write_rate_per_principal",
        env: "QM_LIMITS_WRITE_RATE_PER_PRINCIPAL",
        default: "0",
        help: "coordinator: calls needing a role that one principal may make on a node, N, N/s or N/m (0: no limit)",
    },
    Key {
        name: "limits.state_bytes_max",
        env: "QM_LIMITS_STATE_BYTES_MAX",
        default: "268435456",
        help: "coordinator: quota of the replicated state in encoded bytes; past it the NOSPACE alarm refuses growth",
    },
    Key {
        name: "jobs.classes",
        env: "QM_JOBS_CLASSES",
        default: "incident=1000,hotfix=900,security=800,feature=500,refactor=300,docs=100",
        help: "work-item class priorities as class=priority,... (1..=1000)",
    },
];

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Config {
    pub values: BTreeMap<&'static str, (String, Source)>,
}

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Flattens a TOML table into dotted keys.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&name, t, out),
            toml::Value::String(s) => out.push((name, s.clone())),
            toml::Value::Array(items) => out.push((
                name,
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            other => out.push((name, other.to_string())),
        }
    }
}

impl Config {
    /// Resolves the configuration. `file`: `--config` (or `QM_CONFIG`); `flags`: keys set on
    /// the command line.
    pub fn load(file: Option<&Path>, flags: &[(&'static str, Option<String>)]) -> Result<Config, Failure> {
        let mut c = Config::default();
        for k in KEYS {
            c.values.insert(k.name, (k.default.to_string(), Source::Default));
        }
        let file = file.map(Path::to_path_buf).or_else(|| std::env::var_os("QM_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            let name = path.display().to_string();
            let meta = std::fs::metadata(&path).map_err(|e| Failure::usage(format!("config {name}: {e}")))?;
            if meta.len() > CONFIG_LEN_MAX_BYTES {
                return Err(Failure::usage(format!(
                    "config {name}: is {} bytes, at most {CONFIG_LEN_MAX_BYTES} allowed",
                    meta.len()
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Failure::usage(format!("config {name}: {e}")))?;
            let table: toml::Table = text.parse().map_err(|e| Failure::usage(format!("config {name}: {e}")))?;
            let mut flat = Vec::new();
            flatten("", &table, &mut flat);
            for (k, v) in flat {
                let known = key(&k).ok_or_else(|| {
                    Failure::usage(format!(
                        "config {name}: unknown key {k:?}; known keys: {}",
                        KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                c.values.insert(known.name, (v, Source::File(path.clone())));
            }
        }
        for k in KEYS {
            if let Ok(v) = std::env::var(k.env) {
                c.values.insert(k.name, (v, Source::Env(k.env)));
            }
        }
        for (name, value) in flags {
            if let Some(v) = value {
                c.values.insert(name, (v.clone(), Source::Flag));
            }
        }
        Ok(c)
    }

    pub fn get(&self, name: &str) -> &str {
        &self.values.get(name).expect("a known key").0
    }

    /// The token the CLI sends: `token`, else the contents of `token_file`, else the
    /// per-endpoint file `qm dev` and `qm acl bootstrap --save` write (of the first endpoint
    /// in the list that has one), else none.
    pub fn token(&self) -> Result<String, Failure> {
        let token = self.get("token").trim();
        if !token.is_empty() {
            return Ok(token.to_string());
        }
        let file = self.get("token_file");
        if !file.is_empty() {
            return read_secret_file("token_file", Path::new(file));
        }
        // The first endpoint of the list that has a saved token.
        let saved = self.get("endpoint").split(',').filter_map(token_path).find(|path| path.exists());
        match saved {
            Some(path) => read_secret_file("token_file", &path),
            None => Ok(String::new()),
        }
    }

    /// `insecure`, as a flag.
    pub fn insecure(&self) -> Result<bool, Failure> {
        match self.get("insecure") {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            other => Err(Failure::usage(format!("insecure = {other:?}: not true or false"))),
        }
    }

    /// The CLI's TLS toward the coordinators, when `tls.ca` is set.
    pub fn client_tls(&self) -> Result<Option<qm_shared::client::ClientTls>, Failure> {
        let ca = self.get("tls.ca");
        if ca.is_empty() {
            return Ok(None);
        }
        let read =
            |key: &str, path: &str| std::fs::read(path).map_err(|e| Failure::usage(format!("{key} {path}: {e}")));
        let ca = read("tls.ca", ca)?;
        let (cert, key) = (self.get("tls.cert"), self.get("tls.key"));
        let identity = match (cert.is_empty(), key.is_empty()) {
            (true, true) => None,
            (false, false) => Some((read("tls.cert", cert)?, read("tls.key", key)?)),
            _ => return Err(Failure::usage("tls.cert and tls.key go together: give both or neither")),
        };
        Ok(Some(qm_shared::client::ClientTls::new(&ca, identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())))))
    }

    /// Refuses plaintext to a non-loopback endpoint unless `insecure` is set.
    pub fn check_plaintext_endpoints(&self) -> Result<(), Failure> {
        if self.insecure()? {
            return Ok(());
        }
        for e in self.get("endpoint").split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !is_loopback(e) {
                return Err(Failure::usage(format!(
                    "endpoint {e}: plaintext to a non-loopback address would send the token in clear text; \
                     set --tls-ca (QM_TLS_CA) for TLS, or --insecure to allow it"
                )));
            }
        }
        Ok(())
    }

    pub fn u64(&self, name: &str, min: u64, max: u64) -> Result<u64, Failure> {
        let (raw, source) = self.values.get(name).expect("a known key");
        let v: u64 =
            raw.parse().map_err(|_| Failure::usage(format!("{name} = {raw:?} (from {source}): not a whole number")))?;
        if v < min || v > max {
            return Err(Failure::usage(format!("{name} = {v} (from {source}): must be within {min}..={max}")));
        }
        Ok(v)
    }

    pub fn show(&self) -> Vec<serde_json::Value> {
        KEYS.iter()
            .map(|k| {
                let (v, s) = &self.values[k.name];
                // A secret is never printed, only whether it is set.
                let v = if k.name == "token" && !v.is_empty() { "(set, hidden)" } else { v.as_str() };
                serde_json::json!({ "key": k.name, "value": v, "source": s.to_string(), "env": k.env, "help": k.help })
            })
            .collect()
    }
}

/// Largest secret file read.
const SECRET_FILE_LEN_MAX_BYTES: u64 = 4 * 1024;

/// Reads a token or secret from a file (trimmed), naming `key` and the path on failure.
pub fn read_secret_file(key: &str, path: &Path) -> Result<String, Failure> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| Failure::usage(format!("{key} {shown}: {e}")))?;
    if meta.len() > SECRET_FILE_LEN_MAX_BYTES {
        return Err(Failure::usage(format!(
            "{key} {shown}: is {} bytes, at most {SECRET_FILE_LEN_MAX_BYTES} allowed",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{key} {shown}: {e}")))?;
    Ok(text.trim().to_string())
}

/// Where the CLI looks for the token of `endpoint` when none is configured:
/// `$XDG_CONFIG_HOME/qm/tokens/<host>_<port>` (or `~/.config/qm/tokens/...`).
pub fn token_path(endpoint: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    let bare = endpoint.trim().trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    if bare.is_empty() {
        return None;
    }
    let name: String =
        bare.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    Some(base.join("qm").join("tokens").join(name))
}

/// Writes `secret` to `path` readable by its owner only (0600), creating parent directories.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Whether `endpoint` (`host:port`, with or without a scheme) names a loopback host.
pub fn is_loopback(endpoint: &str) -> bool {
    let bare = endpoint.trim().trim_start_matches("http://").trim_start_matches("https://");
    let host = match bare.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => bare,
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qm config show`, the docs and a node built without flags (`qm dev`) agree on every
    /// default a coordinator has.
    #[test]
    fn coordinator_defaults_agree_with_the_node_config() {
        let node = qm_coordinator::node::NodeConfig::single(1, String::new(), None);
        let default = |name: &str| KEYS.iter().find(|k| k.name == name).expect(name).default;
        for (name, value) in [
            ("raft.heartbeat_ms", node.heartbeat_ms),
            ("raft.election_timeout_min_ms", node.election_timeout_min_ms),
            ("raft.election_timeout_max_ms", node.election_timeout_max_ms),
            ("raft.tick_ms", node.tick_ms),
            ("raft.snapshot_logs", node.snapshot_logs),
            ("audit.bytes_max", node.audit_bytes_max),
            ("limits.write_rate_per_principal", node.write_rate.map_or(0, |r| r.calls)),
            ("limits.state_bytes_max", node.state_bytes_max),
        ] {
            assert_eq!(default(name), value.to_string(), "{name}");
        }
    }
}
