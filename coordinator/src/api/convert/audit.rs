//! The audit log on the wire: a request's salient fields as one bounded line of text, a
//! listing's filters checked, records as clients see them.
//!
//! A summary names what a call asked for (`name="ci" roles=[submitter] secret=generated`) and
//! never carries a secret, the `authorization` header or a payload body: a caller-chosen
//! secret is said to be given, a payload or file by its size (and a project file by its
//! SHA-256, to match it to the file applied), and free text is cut short.

use std::fmt::Display;

use qm_shared::limits::{AUDIT_LIST_DEFAULT, AUDIT_LIST_MAX, AUDIT_METHOD_LEN_MAX_BYTES, TOKEN_NAME_LEN_MAX_BYTES};
use qm_shared::pb::v1 as pb;
use qm_shared::validate::{check_name, check_range};
use qm_shared::Invalid;
use sha2::{Digest, Sha256};

use crate::audit::{bounded, Listing, Query, Record};

/// Longest piece of free text (a title, a note, an address) quoted in a summary.
const FIELD_LEN_MAX_BYTES: usize = 96;

/// `key=value` pairs; text is cut short and quoted with its control characters escaped.
#[derive(Debug, Default)]
struct Fields(Vec<String>);

impl Fields {
    fn num(mut self, key: &str, value: impl Display) -> Fields {
        self.0.push(format!("{key}={value}"));
        self
    }

    fn text(mut self, key: &str, value: &str) -> Fields {
        self.0.push(format!("{key}={:?}", bounded(value, FIELD_LEN_MAX_BYTES)));
        self
    }

    fn list<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, key: &str, values: I) -> Fields {
        let items: Vec<String> =
            values.into_iter().map(|v| format!("{:?}", bounded(v.as_ref(), FIELD_LEN_MAX_BYTES))).collect();
        self.0.push(format!("{key}=[{}]", items.join(", ")));
        self
    }

    /// A secret: whether the caller chose it, never what it is.
    fn secret(self, secret: &str) -> Fields {
        self.num("secret", if secret.is_empty() { "generated" } else { "given" })
    }

    /// Bytes that are not recorded: their size only.
    fn size(self, key: &str, len: usize) -> Fields {
        self.num(key, format_args!("<{len} bytes>"))
    }

    fn resources(self, resources: &[pb::ResourceRequest]) -> Fields {
        let mode = |m: i32| match pb::Mode::try_from(m) {
            Ok(pb::Mode::Shared) => "shared",
            Ok(pb::Mode::Exclusive) => "exclusive",
            _ => "?",
        };
        let items = resources.iter().map(|r| format!("{} {} {}", r.path, mode(r.mode), r.units.max(1)));
        self.list("resources", items)
    }

    fn done(self) -> String {
        self.0.join(" ")
    }
}

/// An enum value's name without its prefix, in lower case (`ACL_ROLE_ADMIN` → `admin`).
fn short_name<E>(name: Result<&str, E>, prefix: &str) -> String {
    name.map_or("?".to_string(), |n| n.trim_start_matches(prefix).to_lowercase())
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// The salient fields of a request to `method` whose message is `bytes` (the protobuf
/// encoding); empty for a method that has none worth recording.
pub fn request_summary(method: &str, bytes: &[u8]) -> String {
    let Some((service, name)) = method.strip_prefix("/qm.v1.").and_then(|m| m.split_once('/')) else {
        return String::new();
    };
    let fields = match service {
        "Acl" => acl_fields(name, bytes),
        "Cluster" => cluster_fields(name, bytes),
        "Jobs" => jobs_fields(name, bytes),
        "Reservations" | "Sessions" => holder_fields(name, bytes),
        "Tasks" => tasks_fields(name, bytes),
        "Audit" => decode::<pb::ListAuditRequest>(bytes).map(|r| {
            Fields::default()
                .num("since_ms", r.since_ms)
                .num("since_seq", r.since_seq)
                .text("principal", &r.principal)
                .text("method", &r.method)
                .num("denied_only", r.denied_only)
                .num("limit", r.limit)
        }),
        _ => Some(Fields::default()),
    };
    fields.map_or_else(|| "(the request does not decode)".to_string(), Fields::done)
}

fn acl_fields(name: &str, bytes: &[u8]) -> Option<Fields> {
    Some(match name {
        "Bootstrap" => Fields::default().secret(&decode::<pb::BootstrapRequest>(bytes)?.secret),
        "CreateToken" => {
            let r = decode::<pb::CreateTokenRequest>(bytes)?;
            let t = r.token.unwrap_or_default();
            let roles =
                t.roles.iter().map(|r| short_name(pb::AclRole::try_from(*r).map(|r| r.as_str_name()), "ACL_ROLE_"));
            Fields::default()
                .text("name", &t.name)
                .list("roles", roles)
                .list("teams", &t.teams)
                .list("path_prefixes", &t.path_prefixes)
                .num("priority_max", t.priority_max)
                .list("nodes", &t.nodes)
                .num("ttl_ms", r.ttl_ms)
                .secret(&r.secret)
        }
        "RevokeToken" => Fields::default().text("name", &decode::<pb::RevokeTokenRequest>(bytes)?.name),
        _ => Fields::default(),
    })
}

fn cluster_fields(name: &str, bytes: &[u8]) -> Option<Fields> {
    Some(match name {
        "AddLearner" => {
            let r = decode::<pb::AddLearnerRequest>(bytes)?;
            Fields::default()
                .num("node_id", r.node_id)
                .text("address", &r.address)
                .num("wait_caught_up", r.wait_caught_up)
        }
        "Promote" => Fields::default().num("node_id", decode::<pb::PromoteRequest>(bytes)?.node_id),
        "Remove" => Fields::default().num("node_id", decode::<pb::RemoveRequest>(bytes)?.node_id),
        "TransferLeader" => {
            let to = decode::<pb::TransferLeaderRequest>(bytes)?.to_node_id;
            Fields::default().num("to_node_id", to.map_or("any".to_string(), |t| t.to_string()))
        }
        "SnapshotNow" => Fields::default().num("wait", decode::<pb::SnapshotNowRequest>(bytes)?.wait),
        _ => Fields::default(),
    })
}

fn jobs_fields(name: &str, bytes: &[u8]) -> Option<Fields> {
    Some(match name {
        "Submit" => {
            let r = decode::<pb::SubmitJobRequest>(bytes)?;
            Fields::default()
                .text("title", &r.title)
                .text("class", &r.class)
                .text("team", &r.team)
                .text("project", &r.project)
                .text("workflow", &r.workflow)
                .num("priority", r.priority)
                .list("inputs", r.inputs.keys())
                .size("workflow_toml", r.workflow_toml.len())
                .size("run", r.run.len())
        }
        "Cancel" | "Retry" => Fields::default().num("job_id", decode::<pb::JobRef>(bytes)?.job_id),
        "DecideGate" => {
            let r = decode::<pb::DecideGateRequest>(bytes)?;
            Fields::default()
                .num("job_id", r.job_id)
                .text("pass", &r.pass)
                .num("approve", r.approve)
                .text("by", &r.by)
                .text("note", &r.note)
        }
        "SetBudget" => {
            let r = decode::<pb::SetBudgetRequest>(bytes)?;
            Fields::default()
                .text("scope", &r.scope)
                .text("name", &r.name)
                .num("limit_micros", r.limit_micros)
                .text("period", &r.period)
        }
        "ApplyProject" => {
            let toml = decode::<pb::ApplyProjectRequest>(bytes)?.project_toml;
            let digest: String = Sha256::digest(toml.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
            Fields::default().size("project_toml", toml.len()).num("sha256", digest)
        }
        "SetScheduler" => scheduler_fields(decode::<pb::SchedulerConfig>(bytes)?),
        _ => Fields::default(),
    })
}

fn scheduler_fields(c: pb::SchedulerConfig) -> Fields {
    Fields::default()
        .num("aging_interval_ms", c.aging_interval_ms)
        .num("aging_step", c.aging_step)
        .num("fair_share_points", c.fair_share_points)
        .num("set_fair_share", c.set_fair_share)
        .num("high_priority_min", c.high_priority_min)
        .num("budget_approaching_pct", c.budget_approaching_pct)
        .num("budget_at_pct", c.budget_at_pct)
        .num("high_cost_micros", c.high_cost_micros)
        .num("preempt_gap", c.preempt_gap)
        .num("docs_aging_bound_ms", c.docs_aging_bound_ms)
}

/// Sessions and reservations: recorded when denied, and resource declarations.
fn holder_fields(name: &str, bytes: &[u8]) -> Option<Fields> {
    Some(match name {
        "OpenSession" => {
            let r = decode::<pb::OpenSessionRequest>(bytes)?;
            Fields::default().text("owner", &r.owner).num("ttl_ms", r.ttl_ms)
        }
        "CloseSession" => Fields::default().num("session_id", decode::<pb::CloseSessionRequest>(bytes)?.session_id),
        "Acquire" => {
            let r = decode::<pb::AcquireRequest>(bytes)?;
            Fields::default()
                .num("session_id", r.session_id)
                .text("owner", &r.owner)
                .resources(&r.resources)
                .num("priority", r.priority)
        }
        "Extend" => {
            let r = decode::<pb::ExtendRequest>(bytes)?;
            Fields::default()
                .num("session_id", r.session_id)
                .num("reservation_id", r.reservation_id)
                .num("lease_ms", r.lease_ms)
        }
        "Release" => {
            let r = decode::<pb::ReleaseRequest>(bytes)?;
            let target = match r.target {
                Some(pb::release_request::Target::ReservationId(id)) => format!("reservation {id}"),
                Some(pb::release_request::Target::RequestId(id)) => format!("request {id}"),
                None => "none".into(),
            };
            Fields::default().num("session_id", r.session_id).text("target", &target)
        }
        "DeclareResource" => {
            let r = decode::<pb::DeclareResourceRequest>(bytes)?;
            let policy =
                short_name(pb::ResourcePolicy::try_from(r.policy).map(|p| p.as_str_name()), "RESOURCE_POLICY_");
            Fields::default()
                .text("path", &r.path)
                .num("capacity", r.capacity.map_or("none".to_string(), |c| c.to_string()))
                .num("policy", policy)
                .num("grace_ms", r.grace_ms)
        }
        _ => Fields::default(),
    })
}

fn tasks_fields(name: &str, bytes: &[u8]) -> Option<Fields> {
    Some(match name {
        "Submit" => {
            let r = decode::<pb::SubmitTaskRequest>(bytes)?;
            Fields::default()
                .text("role", &r.role)
                .resources(&r.resources)
                .num("priority", r.priority)
                .text("work_item_id", &r.work_item_id)
                .size("payload", r.payload.len())
        }
        "Cancel" => Fields::default().num("task_id", decode::<pb::CancelTaskRequest>(bytes)?.task_id),
        _ => Fields::default(),
    })
}

/// A listing's filters, each checked against its bound.
pub fn audit_query(req: &pb::ListAuditRequest) -> Result<Query, Invalid> {
    check_range("limit", req.limit.into(), 0, AUDIT_LIST_MAX.into())?;
    let text = |field: &str, value: &str, max: usize| -> Result<Option<String>, Invalid> {
        if value.is_empty() {
            return Ok(None);
        }
        check_name(field, value, max)?;
        Ok(Some(value.to_string()))
    };
    Ok(Query {
        since_ms: req.since_ms,
        since_seq: req.since_seq,
        principal: text("principal", &req.principal, TOKEN_NAME_LEN_MAX_BYTES)?,
        method: text("method", &req.method, AUDIT_METHOD_LEN_MAX_BYTES)?,
        denied_only: req.denied_only,
        limit: if req.limit == 0 { AUDIT_LIST_DEFAULT } else { req.limit } as usize,
    })
}

/// The name of a gRPC status code, as the gRPC specification spells it.
pub fn code_name(code: i32) -> &'static str {
    use tonic::Code::*;
    match tonic::Code::from_i32(code) {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pub fn audit_record(r: Record) -> pb::AuditRecord {
    let c = r.call;
    pb::AuditRecord {
        seq: r.seq,
        at_ms: r.at_ms,
        node_id: r.node_id,
        outcome: code_name(c.code).to_string(),
        principal: c.principal,
        peer: c.peer,
        method: c.method,
        request: c.request,
        code: c.code,
        message: c.message,
    }
}

pub fn audit_listing(node_id: u64, l: Listing) -> pb::ListAuditResponse {
    pb::ListAuditResponse {
        node_id,
        records: l.records.into_iter().map(audit_record).collect(),
        matched: l.matched,
        oldest_seq: l.oldest_seq,
        next_seq: l.next_seq,
        durable_seq: l.durable_seq,
        dropped: l.dropped,
        persistent: l.persistent,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    const SECRET: &str = "qm_5ecret5ecret5ecret5ecret5ecret5ecret";

    fn summary(method: &str, m: &impl Message) -> String {
        request_summary(method, &m.encode_to_vec())
    }

    #[test]
    fn secrets_and_payloads_are_never_in_a_summary() {
        let token = pb::TokenInfo {
            name: "ci".into(),
            roles: vec![pb::AclRole::Submitter as i32],
            teams: vec!["platform".into()],
            priority_max: 500,
            ..Default::default()
        };
        let create = pb::CreateTokenRequest { token: Some(token), ttl_ms: 60_000, secret: SECRET.into() };
        let s = summary("/qm.v1.Acl/CreateToken", &create);
        assert_eq!(
            s,
            "name=\"ci\" roles=[\"submitter\"] teams=[\"platform\"] path_prefixes=[] priority_max=500 nodes=[] ttl_ms=60000 secret=given"
        );
        let boot = summary("/qm.v1.Acl/Bootstrap", &pb::BootstrapRequest { secret: SECRET.into() });
        assert_eq!(boot, "secret=given");
        assert_eq!(summary("/qm.v1.Acl/Bootstrap", &pb::BootstrapRequest::default()), "secret=generated");

        let payload = format!(r#"{{"executor":"command","cmd":"echo {SECRET}"}}"#);
        let task =
            pb::SubmitTaskRequest { role: "implementer".into(), payload: payload.into_bytes(), ..Default::default() };
        let s = summary("/qm.v1.Tasks/Submit", &task);
        assert!(!s.contains(SECRET) && s.contains("payload=<"), "{s}");
        let job = pb::SubmitJobRequest {
            title: "t".into(),
            inputs: [("ticket".to_string(), SECRET.to_string())].into(),
            run: SECRET.as_bytes().to_vec(),
            ..Default::default()
        };
        let s = summary("/qm.v1.Jobs/Submit", &job);
        assert!(!s.contains(SECRET) && s.contains("inputs=[\"ticket\"]"), "{s}");
    }

    #[test]
    fn a_project_file_is_recorded_by_its_size_and_digest() {
        let s = summary("/qm.v1.Jobs/ApplyProject", &pb::ApplyProjectRequest { project_toml: "abc".into() });
        assert_eq!(s, "project_toml=<3 bytes> sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn free_text_is_cut_short_and_quoted() {
        let gate = pb::DecideGateRequest {
            job_id: 3,
            pass: "design".into(),
            approve: true,
            note: format!("line\n{}", "x".repeat(500)),
            by: "alice".into(),
        };
        let s = summary("/qm.v1.Jobs/DecideGate", &gate);
        assert!(s.starts_with("job_id=3 pass=\"design\" approve=true by=\"alice\" note=\"line\\n"), "{s}");
        assert!(s.len() < 200, "{s}");
        assert_eq!(request_summary("/qm.v1.Acl/RevokeToken", b"\xff\xff"), "(the request does not decode)");
        assert_eq!(request_summary("/qm.v1.Jobs/List", b""), "");
    }

    #[test]
    fn a_listing_past_its_bounds_is_refused_naming_the_field_and_the_bound() {
        let too_many = pb::ListAuditRequest { limit: AUDIT_LIST_MAX + 1, ..Default::default() };
        let e = audit_query(&too_many).expect_err("refused");
        assert_eq!((e.field.as_str(), e.message.as_str()), ("limit", "1001 is above the maximum 1000"));
        let long = pb::ListAuditRequest { principal: "p".repeat(65), ..Default::default() };
        assert_eq!(audit_query(&long).expect_err("refused").field, "principal");
        let q = audit_query(&pb::ListAuditRequest::default()).expect("defaults");
        assert_eq!((q.limit, q.principal, q.method), (AUDIT_LIST_DEFAULT as usize, None, None));
        assert_eq!(code_name(7), "PERMISSION_DENIED");
    }
}
