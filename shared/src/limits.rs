//! Every bound Quartermaster enforces, in one place.
//!
//! Names carry their unit last (`_ms`, `_bytes`, `_max`). The edge (gRPC, CLI) and the pure
//! core validate against the same constants, so a request the edge accepts is one the core
//! accepts. Relations between limits are checked at compile time at the bottom of the file.

/// Longest resource path, in bytes of its canonical text.
pub const PATH_LEN_MAX_BYTES: usize = 512;
/// Most segments in one resource path (`pg:staging/schema:public/...`).
pub const PATH_SEGMENTS_MAX: usize = 8;
/// Longest segment kind (`pg`, `schema`, `table`, `rows`, `gpu`, `api` ...).
pub const SEGMENT_KIND_LEN_MAX_BYTES: usize = 32;
/// Longest segment name (`staging`, `orders`, `box-7` ...).
pub const SEGMENT_NAME_LEN_MAX_BYTES: usize = 128;
/// Longest owner name (`agent-7/WI-123`).
pub const OWNER_LEN_MAX_BYTES: usize = 128;
/// Longest session label.
pub const SESSION_LABEL_LEN_MAX_BYTES: usize = 128;
/// Most resources in one atomic acquire set.
pub const SET_SIZE_MAX: usize = 32;

/// Shortest reservation lease a client may ask for.
pub const LEASE_MS_MIN: u64 = 1_000;
/// The lease a reservation gets when the request names none.
pub const LEASE_MS_DEFAULT: u64 = 5 * 60 * 1_000;
/// Longest single lease (one extend renews up to this much).
pub const LEASE_MS_MAX: u64 = 60 * 60 * 1_000;
/// Longest total lifetime of a reservation, counted from its grant, across all extends.
pub const LIFETIME_MS_MAX: u64 = 24 * 60 * 60 * 1_000;

/// Session TTL bounds: a session not kept alive for this long is dead.
pub const SESSION_TTL_MS_MIN: u64 = 1_000;
pub const SESSION_TTL_MS_DEFAULT: u64 = 10_000;
pub const SESSION_TTL_MS_MAX: u64 = 5 * 60 * 1_000;

/// Longest time a `wait` acquire may wait before it times out.
pub const WAIT_TIMEOUT_MS_MAX: u64 = 60 * 60 * 1_000;

/// Priorities run from 0 (lowest) to `PRIORITY_MAX` (highest).
pub const PRIORITY_MAX: u32 = 1_000;
/// Default priority for requests that name none.
pub const PRIORITY_DEFAULT: u32 = 500;

/// Most owners of a wait-for cycle named in a DEADLOCK refusal or effect (the length is
/// always reported).
pub const CYCLE_REPORT_MAX: usize = 32;

/// Most requests that may wait on one resource; more are refused with backpressure.
pub const QUEUE_LEN_MAX: u32 = 1_024;
/// Largest declared capacity of a counted resource.
pub const CAPACITY_MAX: u32 = 1_000_000;

/// Most open sessions, held reservations and pending requests in the whole state.
pub const SESSIONS_MAX: usize = 1_000_000;
/// Open sessions of one principal (a token's name; not counted with access control off): no
/// principal can take more than a hundredth of the table. `RESOURCE_EXHAUSTED` past it.
pub const SESSIONS_PER_PRINCIPAL_MAX: usize = 10_000;
const _: () = assert!(SESSIONS_PER_PRINCIPAL_MAX <= SESSIONS_MAX / 100);
pub const RESERVATIONS_MAX: usize = 4_000_000;
pub const REQUESTS_MAX: usize = 1_000_000;
/// Most declared resources (capacity, policy, grace).
pub const RESOURCES_DECLARED_MAX: usize = 100_000;

/// Preemption grace bounds.
pub const PREEMPT_GRACE_MS_MIN: u64 = 100;
pub const PREEMPT_GRACE_MS_DEFAULT: u64 = 10_000;
pub const PREEMPT_GRACE_MS_MAX: u64 = 10 * 60 * 1_000;

/// Aging: a waiter's effective priority rises by one step every `aging_interval_ms`.
pub const AGING_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Priority points gained per aging step.
pub const AGING_STEP_DEFAULT: u32 = 10;

/// A waiter at least this many priority points above a holder may preempt it
/// (on resources whose policy is `preempt`).
pub const PREEMPT_GAP_DEFAULT: u32 = 100;

const _: () = assert!(LEASE_MS_MIN <= LEASE_MS_DEFAULT && LEASE_MS_DEFAULT <= LEASE_MS_MAX);
const _: () = assert!(LEASE_MS_MAX <= LIFETIME_MS_MAX);
const _: () = assert!(SESSION_TTL_MS_MIN <= SESSION_TTL_MS_DEFAULT);
const _: () = assert!(SESSION_TTL_MS_DEFAULT <= SESSION_TTL_MS_MAX);
const _: () = assert!(PRIORITY_DEFAULT <= PRIORITY_MAX);
const _: () = assert!(PREEMPT_GRACE_MS_MIN <= PREEMPT_GRACE_MS_DEFAULT);
const _: () = assert!(PREEMPT_GRACE_MS_DEFAULT <= PREEMPT_GRACE_MS_MAX);
const _: () = assert!(
    PATH_SEGMENTS_MAX * (SEGMENT_KIND_LEN_MAX_BYTES + 1 + SEGMENT_NAME_LEN_MAX_BYTES + 1) >= PATH_LEN_MAX_BYTES
);

/// Largest gRPC message between coordinators (log batches, snapshot chunks), both directions.
/// The peer service refuses a larger one before decoding it.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest gRPC message between a client and a coordinator, both directions.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest command a coordinator proposes, in bytes of its encoding in the log; a larger one
/// is refused before it reaches the log. A command arrives in one client message and may not
/// outgrow it, so no log entry can be too large to replicate (see the relations below).
pub const COMMAND_BYTES_MAX: usize = CLIENT_MESSAGE_BYTES_MAX;
/// What a log entry adds to its commands (log id, payload tag, `now`, the list's length), and
/// what a peer message adds to the entries or chunk it carries (the RPC's own fields, the
/// protobuf tags and lengths, the target id): generous allowances, used in the relations below.
pub const ENTRY_ENVELOPE_BYTES_MAX: usize = 1024;
pub const PEER_ENVELOPE_BYTES_MAX: usize = 1024;
/// Most entry bytes one AppendEntries carries: a longer run of entries is split (one entry
/// larger than this still goes, alone). Far below the message limit, because openraft gives
/// an AppendEntries one heartbeat interval (100 ms by default) to be answered: 4 MiB crosses
/// a 1 Gb/s link in about 34 ms.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest snapshot chunk a leader sends.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most reservations one List page returns (the default page is smaller).
pub const LIST_PAGE_MAX: u32 = 10_000;
pub const LIST_PAGE_DEFAULT: u32 = 1_000;
/// Most concurrent Watch streams one coordinator serves.
pub const WATCHERS_MAX: usize = 1_024;
/// Most sessions one Keepalive stream may carry per request burst (bounded in-flight work).
pub const KEEPALIVE_IN_FLIGHT_MAX: usize = 64;

/// Largest agent spec file (front matter and prompt body).
pub const AGENT_SPEC_BYTES_MAX: usize = 256 * 1024;
/// Most agent specs one directory may hold.
pub const AGENT_SPECS_MAX: usize = 1_024;
/// Longest agent name (`[a-z0-9-]`, as `.claude/agents` names are).
pub const AGENT_NAME_LEN_MAX_BYTES: usize = 64;
/// Longest agent description.
pub const AGENT_DESCRIPTION_LEN_MAX_BYTES: usize = 2_048;
/// Most entries in one list field of an agent spec (tools, capabilities, scopes, resources).
pub const AGENT_LIST_LEN_MAX: usize = 64;
/// Longest single entry of such a list.
pub const AGENT_ITEM_LEN_MAX_BYTES: usize = 512;
/// Largest per-task budget an agent spec may set, in micro-dollars ($10,000).
pub const AGENT_TASK_MONEY_MICROS_MAX: u64 = 10_000_000_000;
/// Largest per-task token budget an agent spec may set.
pub const AGENT_TASK_TOKENS_MAX: u64 = 100_000_000;

/// The replicated state's quota by default (encoded bytes, what a snapshot takes): past it the
/// storage alarm (NOSPACE) refuses writes that add data. In memory a state takes about 2.4
/// times its encoded size, and a follower installing a snapshot briefly holds two states and
/// the bytes: at this quota a coordinator fits in 2 GiB (docs/operations.md, "Sizing").
pub const STATE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// The smallest quota a coordinator accepts.
pub const STATE_BYTES_MAX_MIN: u64 = 16 * 1024;
const _: () = assert!(STATE_BYTES_MAX_MIN <= STATE_BYTES_DEFAULT);

/// Reservations held plus resources waited for by one principal (a fortieth of the lock
/// table), so that one token cannot fill the table for everyone.
pub const CLAIMS_PER_PRINCIPAL_MAX: u64 = 100_000;
const _: () = assert!(CLAIMS_PER_PRINCIPAL_MAX <= RESERVATIONS_MAX as u64);

/// Tasks one principal has submitted that have not ended (a twentieth of the task table).
pub const TASKS_PER_PRINCIPAL_MAX: u64 = 10_000;
/// Work items one principal has submitted that have not ended (a twentieth of the table).
pub const WORK_ITEMS_PER_PRINCIPAL_MAX: u64 = 2_500;
/// Payload bytes (task payloads; work items' run payloads, inputs and titles) of the
/// unended work one principal has submitted.
pub const PAYLOAD_BYTES_PER_PRINCIPAL_MAX: u64 = 64 * 1024 * 1024;
const _: () = assert!(TASKS_PER_PRINCIPAL_MAX <= TASKS_MAX as u64);
const _: () = assert!(WORK_ITEMS_PER_PRINCIPAL_MAX <= JOBS_MAX as u64);

/// Most tasks the replicated state holds (queued, running and retained ended ones).
pub const TASKS_MAX: usize = 200_000;
/// Ended tasks kept for `qm task show`; the oldest are forgotten first.
pub const TASKS_ENDED_RETAINED_MAX: usize = 10_000;
/// Most attempts of one task (failures before it ends as failed; history kept).
pub const TASK_ATTEMPTS_MAX: usize = 16;
/// Attempts of a task whose submitter names none.
pub const TASK_ATTEMPTS_DEFAULT: u32 = 3;
const _: () = assert!(TASK_ATTEMPTS_DEFAULT as usize <= TASK_ATTEMPTS_MAX);
/// Largest executor payload of a task.
pub const TASK_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Largest checkpoint a task may store (replicated: keep it small).
pub const TASK_CHECKPOINT_BYTES_MAX: usize = 256 * 1024;
/// Largest output a task attempt reports.
pub const TASK_OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Longest error text or blocked message of a task report.
pub const TASK_ERROR_LEN_MAX_BYTES: usize = 4 * 1024;
/// Longest progress stage name.
pub const TASK_STAGE_LEN_MAX_BYTES: usize = 128;
/// Longest work item id.
pub const WORK_ITEM_LEN_MAX_BYTES: usize = 128;
/// Most registered workers.
pub const WORKERS_MAX: usize = 10_000;
/// Longest worker node id (and label key + value).
pub const WORKER_NODE_ID_LEN_MAX_BYTES: usize = 256;
/// Most labels a worker registers.
pub const WORKER_LABELS_MAX: usize = 64;
/// Most agent slots per role on one worker.
pub const WORKER_SLOTS_PER_ROLE_MAX: u32 = 256;
/// Most roles one worker hosts (the nine built-in ones and those its specs declare).
pub const WORKER_ROLES_MAX: usize = 64;
/// Longest role name (`[a-z][a-z0-9-]*`); a spec may declare a role of its own.
pub const ROLE_NAME_LEN_MAX_BYTES: usize = 32;

/// Largest amount of money anywhere (budgets, prices, ledger), in micro-dollars ($1e9).
pub const MONEY_MICROS_MAX: u64 = 1_000_000_000_000_000;
/// Largest workflow or project file.
pub const WORKFLOW_FILE_BYTES_MAX: usize = 256 * 1024;
/// Most passes in one workflow.
pub const WORKFLOW_PASSES_MAX: usize = 64;
/// Longest workflow, pass, project, team, provider, model or input name.
pub const NAME_LEN_MAX_BYTES: usize = 128;
/// Longest gate criteria, description or work-item title.
pub const TEXT_LEN_MAX_BYTES: usize = 4 * 1024;
/// Most inputs of one work item (and most named inputs or outputs of one pass).
pub const JOB_INPUTS_MAX: usize = 64;
/// Largest value of one work-item input.
pub const JOB_INPUT_BYTES_MAX: usize = 16 * 1024;
/// Most work items the replicated state holds; ended ones are forgotten oldest first past
/// `JOBS_ENDED_RETAINED_MAX`.
pub const JOBS_MAX: usize = 50_000;
pub const JOBS_ENDED_RETAINED_MAX: usize = 10_000;
/// Events kept per work item (the oldest are dropped first).
pub const JOB_EVENTS_MAX: usize = 128;
/// Most projects, and most resources, providers and prices in one project.
pub const PROJECTS_MAX: usize = 1_024;
pub const PROJECT_ENTRIES_MAX: usize = 256;
/// Most budgets (scope × name).
pub const BUDGETS_MAX: usize = 10_000;
/// Ledger entries kept for reports (oldest dropped first; totals stay exact).
pub const LEDGER_ENTRIES_MAX: usize = 100_000;
/// Artifacts kept in the content-addressed cache (oldest evicted first).
pub const ARTIFACTS_MAX: usize = 20_000;
/// Most gate failures a pass may tolerate before its work item fails.
pub const GATE_FAILURES_MAX: u32 = 16;
/// Bytes of artifacts kept in the cache (oldest evicted first).
pub const ARTIFACT_BYTES_TOTAL_MAX: usize = 64 * 1024 * 1024;
/// Most calls in flight at once to one model provider (its `api:<name>` capacity).
pub const PROVIDER_CONCURRENCY_MAX: u32 = 10_000;
/// Longest time limit of one pass attempt.
pub const PASS_TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// The preemption grace a project resource gets when its file names none.
pub const PROJECT_GRACE_MS_DEFAULT: u64 = 5_000;
/// Most tokens a cluster keeps.
pub const TOKENS_MAX: usize = 1_024;
/// Longest token name (the principal's name).
pub const TOKEN_NAME_LEN_MAX_BYTES: usize = 64;
/// Most entries in each of a token's grant lists (teams, path prefixes, node ids).
pub const TOKEN_GRANTS_MAX: usize = 64;
/// Shortest and longest bearer secret.
pub const TOKEN_SECRET_LEN_MIN_BYTES: usize = 32;
pub const TOKEN_SECRET_LEN_MAX_BYTES: usize = 256;
/// Longest token lifetime asked for at creation (ten years).
pub const TOKEN_TTL_MS_MAX: u64 = 10 * 365 * 24 * 60 * 60 * 1_000;

// The audit log: per node, not replicated (`coordinator/src/audit.rs`).
/// Bytes of audit records a node keeps, on disk and in memory alike (`--audit-bytes-max`);
/// the oldest segment goes first.
pub const AUDIT_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
pub const AUDIT_BYTES_MIN: u64 = 64 * 1024;
pub const AUDIT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Segments the audit log is kept in: each holds up to `1 / AUDIT_SEGMENTS` of the bound.
pub const AUDIT_SEGMENTS: u64 = 4;
/// Records waiting for the disk writer; past it a record is kept in memory only and counted
/// as dropped.
pub const AUDIT_QUEUE_MAX: usize = 4_096;
/// Longest request summary, outcome message, method and peer address in a record.
pub const AUDIT_REQUEST_LEN_MAX_BYTES: usize = 1_024;
pub const AUDIT_MESSAGE_LEN_MAX_BYTES: usize = 512;
pub const AUDIT_METHOD_LEN_MAX_BYTES: usize = 128;
pub const AUDIT_PEER_LEN_MAX_BYTES: usize = 64;
/// Longest record as one JSON line: its strings at their longest, every byte escaped as
/// `\u00XX` (six bytes), and the numbers and keys around them.
pub const AUDIT_RECORD_BYTES_MAX: u64 = 6
    * (AUDIT_REQUEST_LEN_MAX_BYTES
        + AUDIT_MESSAGE_LEN_MAX_BYTES
        + AUDIT_METHOD_LEN_MAX_BYTES
        + AUDIT_PEER_LEN_MAX_BYTES
        + TOKEN_NAME_LEN_MAX_BYTES) as u64
    + 256;
/// Most records one `ListAudit` answers with (the default is smaller).
pub const AUDIT_LIST_MAX: u32 = 1_000;
pub const AUDIT_LIST_DEFAULT: u32 = 100;

// Worker executors: what one attempt's child process may use unless the worker's flags
// (`qm worker run --limit-*`, `--kill-grace-ms`) say otherwise. 0 in a flag means unlimited.
/// CPU time of each process of an attempt (RLIMIT_CPU; SIGXCPU, then SIGKILL, past it).
pub const EXEC_CPU_SECS_DEFAULT: u64 = 2 * 60 * 60;
/// Address space of each process of an attempt (RLIMIT_AS).
pub const EXEC_MEMORY_BYTES_DEFAULT: u64 = 16 * 1024 * 1024 * 1024;
/// Open file descriptors of each process of an attempt (RLIMIT_NOFILE).
pub const EXEC_OPEN_FILES_DEFAULT: u64 = 4_096;
/// Bytes of stdout kept as a command's output (the rest is drained and counted).
pub const EXEC_OUTPUT_BYTES_DEFAULT: usize = TASK_OUTPUT_BYTES_MAX;
/// After SIGTERM to an attempt's process group, how long before SIGKILL.
pub const EXEC_KILL_GRACE_MS_DEFAULT: u64 = 2_000;
pub const EXEC_KILL_GRACE_MS_MAX: u64 = 60_000;
/// Longest provider error body quoted in a task error (after secrets are scrubbed).
pub const PROVIDER_ERROR_LEN_MAX_BYTES: usize = 512;
/// Largest provider answer the llm executor reads.
pub const PROVIDER_ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What a replicated record may take besides the bounded fields counted for it in
/// [`SNAPSHOT_BYTES_MAX`] (ids, times, counters, enum tags, collection lengths, short names):
/// a generous allowance per record.
pub const RECORD_OVERHEAD_BYTES_MAX: u64 = 1024;

/// Largest state snapshot a coordinator accepts from a peer, in bytes: a chunk that would take
/// a snapshot past it is refused. Sized from the state's own limits — every bounded collection
/// full, every bounded field at its longest, plus [`RECORD_OVERHEAD_BYTES_MAX`] a record — so
/// no state the limits allow encodes larger, and a follower never refuses a real snapshot
/// (that would leave it behind for good). It is large (about 1.4 TiB) because the limits
/// are; it refuses offsets and endless streams that no state could produce. What keeps a
/// receiver's memory in proportion is the stricter rule beside it: a chunk must start exactly
/// where the bytes received so far end, so a receiver holds only bytes that were sent.
/// The wait-for graph's edge sets are left out: each edge is 8 bytes naming an owner counted
/// here, about one per queue entry in practice, with no byte bound of its own.
pub const SNAPSHOT_BYTES_MAX: u64 = snapshot_bytes_max();

const fn snapshot_bytes_max() -> u64 {
    const O: u64 = RECORD_OVERHEAD_BYTES_MAX;
    let path = PATH_LEN_MAX_BYTES as u64 + O;
    let items = RESERVATIONS_MAX as u64 + REQUESTS_MAX as u64 * SET_SIZE_MAX as u64;
    let sessions = SESSIONS_MAX as u64 * (SESSION_LABEL_LEN_MAX_BYTES as u64 + O);
    let owners = (RESERVATIONS_MAX + REQUESTS_MAX) as u64 * (OWNER_LEN_MAX_BYTES as u64 + O);
    let grants = RESERVATIONS_MAX as u64 * path;
    let requests = REQUESTS_MAX as u64 * SET_SIZE_MAX as u64 * path;
    // A node per prefix of every held or queued path, with a queue entry or holding per item.
    let nodes = items * PATH_SEGMENTS_MAX as u64 * path;
    let declared = RESOURCES_DECLARED_MAX as u64 * path;
    let attempt = TASK_OUTPUT_BYTES_MAX as u64 + TASK_ERROR_LEN_MAX_BYTES as u64 + O;
    let task = (TASK_PAYLOAD_BYTES_MAX + TASK_CHECKPOINT_BYTES_MAX) as u64
        + SET_SIZE_MAX as u64 * path
        + (TASK_ATTEMPTS_MAX as u64 + 1) * attempt;
    let worker = (WORKER_LABELS_MAX as u64 * 2 + 1) * WORKER_NODE_ID_LEN_MAX_BYTES as u64
        + WORKER_ROLES_MAX as u64 * (ROLE_NAME_LEN_MAX_BYTES as u64 + O)
        + O;
    let pass = 2 * TASK_PAYLOAD_BYTES_MAX as u64
        + 2 * TEXT_LEN_MAX_BYTES as u64
        + 2 * JOB_INPUTS_MAX as u64 * NAME_LEN_MAX_BYTES as u64
        + SET_SIZE_MAX as u64 * path;
    let job = JOB_INPUTS_MAX as u64 * (JOB_INPUT_BYTES_MAX + NAME_LEN_MAX_BYTES) as u64
        + 2 * TASK_PAYLOAD_BYTES_MAX as u64
        + WORKFLOW_PASSES_MAX as u64 * (pass + O)
        + JOB_EVENTS_MAX as u64 * (TEXT_LEN_MAX_BYTES as u64 + O)
        + 2 * TEXT_LEN_MAX_BYTES as u64;
    let ledger = LEDGER_ENTRIES_MAX as u64 * (4 * NAME_LEN_MAX_BYTES as u64 + O);
    let budgets = BUDGETS_MAX as u64 * (NAME_LEN_MAX_BYTES as u64 + O);
    let projects = PROJECTS_MAX as u64 * PROJECT_ENTRIES_MAX as u64 * 3 * path;
    let artifacts = ARTIFACT_BYTES_TOTAL_MAX as u64 + 2 * ARTIFACTS_MAX as u64 * (TEXT_LEN_MAX_BYTES as u64 + O);
    sessions
        + owners
        + grants
        + requests
        + nodes
        + declared
        + TASKS_MAX as u64 * task
        + WORKERS_MAX as u64 * worker
        + JOBS_MAX as u64 * job
        + ledger
        + budgets
        + projects
        + artifacts
}

// Relations the limits above must keep.
const _: () = assert!(LIST_PAGE_DEFAULT <= LIST_PAGE_MAX);
const _: () = assert!(TASKS_ENDED_RETAINED_MAX <= TASKS_MAX);
const _: () = assert!(JOBS_ENDED_RETAINED_MAX <= JOBS_MAX);
const _: () = assert!(AGENT_TASK_MONEY_MICROS_MAX <= MONEY_MICROS_MAX);
// A worker's report (output, checkpoint) travels in one client message.
const _: () = assert!(TASK_OUTPUT_BYTES_MAX + TASK_CHECKPOINT_BYTES_MAX < CLIENT_MESSAGE_BYTES_MAX);
// Any one pass output fits the artifact cache.
const _: () = assert!(TASK_OUTPUT_BYTES_MAX <= ARTIFACT_BYTES_TOTAL_MAX);
// A provider's concurrency is the capacity of its `api:<name>` resource.
const _: () = assert!(PROVIDER_CONCURRENCY_MAX <= CAPACITY_MAX);
// A token's name is what sessions record as their principal.
const _: () = assert!(TOKEN_NAME_LEN_MAX_BYTES <= SESSION_LABEL_LEN_MAX_BYTES);
// Every audit segment holds at least one record, so the log never keeps more than its bound.
const _: () = assert!(AUDIT_BYTES_MIN / AUDIT_SEGMENTS >= AUDIT_RECORD_BYTES_MAX);
const _: () = assert!(AUDIT_BYTES_MIN <= AUDIT_BYTES_DEFAULT && AUDIT_BYTES_DEFAULT <= AUDIT_BYTES_MAX);
const _: () = assert!(AUDIT_LIST_DEFAULT <= AUDIT_LIST_MAX);
// A command's kept output is a task output; a provider error quote fits a task error.
const _: () = assert!(EXEC_OUTPUT_BYTES_DEFAULT <= TASK_OUTPUT_BYTES_MAX);
const _: () = assert!(PROVIDER_ERROR_LEN_MAX_BYTES < TASK_ERROR_LEN_MAX_BYTES);
const _: () = assert!(EXEC_KILL_GRACE_MS_DEFAULT <= EXEC_KILL_GRACE_MS_MAX);
// One entry holding the largest command travels in one peer message, so replication never
// meets an entry it cannot send (the coordinator's batcher adds the batch bound to this).
const _: () = assert!(COMMAND_BYTES_MAX + ENTRY_ENVELOPE_BYTES_MAX + PEER_ENVELOPE_BYTES_MAX < PEER_MESSAGE_BYTES_MAX);
const _: () = assert!(APPEND_ENTRIES_BYTES_MAX + PEER_ENVELOPE_BYTES_MAX <= PEER_MESSAGE_BYTES_MAX);
// A snapshot chunk fits one peer message with room to spare for its meta (the membership:
// node ids and addresses of at most 256 bytes).
const _: () = assert!(2 * SNAPSHOT_CHUNK_BYTES_MAX <= PEER_MESSAGE_BYTES_MAX);
// Chunk offsets are u64 and a snapshot is held in memory: the bound fits both.
const _: () = assert!(SNAPSHOT_BYTES_MAX < u64::MAX / 2);
