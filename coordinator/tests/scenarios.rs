//! Data-driven scenario tests for the pure core.
//!
//! Each file under `tests/scenarios/` is a small script; the transcript (each command, the
//! response, the effects, and the lock table / wait-for graph where the script asks for it)
//! is compared with an `insta` snapshot under `tests/snapshots/`. Read the scripts with their
//! snapshots to learn the semantics. The script language:
//!
//! ```text
//! # comment (copied into the transcript)
//! config aging_interval_ms=1000 aging_step=10 preempt_gap=100 queue_len_max=1024
//! at 5000                       set the clock (the leader's `now`) to 5000 ms
//! open s1 [ttl=10000]           open a session, call it s1
//! keepalive s1 | close s1
//! acquire s1 alice X pg:a/table:t [S pg:b ...] [try] [timeout=N] [prio=N] [lease=N] [units=N]
//! release s1 r5 | cancel s1 q7 | extend s1 r5 [lease=N]
//! declare gpu:box-7 [capacity=2] [policy=preempt|inherit|none] [grace=5000]
//! tick [T]                      set the clock to T (if given) and apply Tick
//! restart-leases                what a new leader proposes first
//! show                          print sessions, lock table and wait-for graph
//! snapshot                      snapshot, restore, and check the bytes are identical
//! ```
//!
//! Every command is applied at the next log index, so fencing tokens are visible.

use std::collections::BTreeMap;
use std::fmt::Write;

use qm_coordinator::state::{
    Acquire, Command, Config, Effect, GrantInfo, Item, Policy, Refusal, RequestId, ReservationId, Response,
    SessionId, State, Wait,
};
use qm_shared::{Mode, ResourcePath};

struct Runner {
    state: State,
    index: u64,
    now: u64,
    sessions: BTreeMap<String, SessionId>,
    out: String,
}

impl Runner {
    fn new() -> Runner {
        Runner { state: State::new(Config::default()), index: 0, now: 0, sessions: BTreeMap::new(), out: String::new() }
    }

    fn session(&self, name: &str) -> SessionId {
        if let Some(rest) = name.strip_prefix('#') {
            return SessionId(rest.parse().expect("#N session id"));
        }
        *self.sessions.get(name).unwrap_or_else(|| panic!("unknown session alias {name}"))
    }

    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        let (response, effects) = self.state.apply(self.index, self.now, cmd);
        writeln!(self.out, "  = {}", describe_response(&response)).unwrap();
        for e in &effects {
            writeln!(self.out, "  ~ {}", describe_effect(e)).unwrap();
        }
        response
    }

    fn run_line(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, args) = (words[0], &words[1..]);
        let opts: BTreeMap<&str, &str> = args.iter().filter_map(|w| w.split_once('=')).collect();
        let opt = |k: &str| opts.get(k).map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{k}={v}: not a number")));
        match verb {
            "config" => {
                let mut config = Config::default();
                if let Some(v) = opt("aging_interval_ms") {
                    config.aging_interval_ms = v;
                }
                if let Some(v) = opt("aging_step") {
                    config.aging_step = v as u32;
                }
                if let Some(v) = opt("preempt_gap") {
                    config.preempt_gap = v as u32;
                }
                if let Some(v) = opt("queue_len_max") {
                    config.queue_len_max = v as u32;
                }
                self.state = State::new(config);
            }
            "at" => self.now = args[0].parse().unwrap(),
            "open" => {
                let ttl_ms = opt("ttl").unwrap_or(10_000);
                if let Response::SessionOpened { session, .. } =
                    self.apply(Command::OpenSession { label: args[0].to_string(), ttl_ms })
                {
                    self.sessions.insert(args[0].to_string(), session);
                }
            }
            "keepalive" => {
                let session = self.session(args[0]);
                self.apply(Command::KeepAlive { session });
            }
            "close" => {
                let session = self.session(args[0]);
                self.apply(Command::CloseSession { session });
            }
            "acquire" => {
                let session = self.session(args[0]);
                let owner = args[1].to_string();
                let units = opt("units").unwrap_or(1) as u32;
                let mut items = Vec::new();
                let mut rest = args[2..].iter().filter(|w| !w.contains('=') && **w != "try");
                while let Some(mode) = rest.next() {
                    let mode = match *mode {
                        "S" => Mode::Shared,
                        "X" => Mode::Exclusive,
                        other => panic!("mode {other}: expected S or X"),
                    };
                    let path = ResourcePath::parse(rest.next().expect("path after mode")).expect("valid path");
                    items.push(Item { path, mode, units });
                }
                let wait = if args.contains(&"try") { Wait::Try } else { Wait::Wait { timeout_ms: opt("timeout") } };
                self.apply(Command::Acquire(Acquire {
                    session,
                    owner,
                    items,
                    wait,
                    priority: opt("prio").unwrap_or(500) as u32,
                    lease_ms: opt("lease").unwrap_or(60_000),
                }));
            }
            "release" => {
                let session = self.session(args[0]);
                let reservation = ReservationId(args[1].trim_start_matches('r').parse().unwrap());
                self.apply(Command::Release { session, reservation });
            }
            "cancel" => {
                let session = self.session(args[0]);
                let request = RequestId(args[1].trim_start_matches('q').parse().unwrap());
                self.apply(Command::Cancel { session, request });
            }
            "extend" => {
                let session = self.session(args[0]);
                let reservation = ReservationId(args[1].trim_start_matches('r').parse().unwrap());
                self.apply(Command::Extend { session, reservation, lease_ms: opt("lease").unwrap_or(60_000) });
            }
            "declare" => {
                let path = ResourcePath::parse(args[0]).unwrap();
                let capacity = opt("capacity").map(|c| c as u32);
                let policy: Policy = opts.get("policy").map_or(Policy::None, |p| p.parse().unwrap());
                let grace_ms = opt("grace").unwrap_or(10_000);
                self.apply(Command::DeclareResource { path, capacity, policy, grace_ms });
            }
            "tick" => {
                if let Some(t) = args.first() {
                    self.now = t.parse().unwrap();
                }
                self.apply(Command::Tick);
            }
            "restart-leases" => {
                self.apply(Command::RestartLeases);
            }
            "show" => {
                let text = self.state.render();
                for l in text.lines() {
                    writeln!(self.out, "  | {l}").unwrap();
                }
            }
            "snapshot" => {
                let bytes = self.state.snapshot();
                let restored = State::restore(&bytes).expect("restore");
                assert_eq!(restored.snapshot(), bytes, "restore then snapshot gives the same bytes");
                assert_eq!(restored.render(), self.state.render());
                self.state = restored;
                writeln!(self.out, "  = snapshot restored, bytes identical").unwrap();
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

fn grant(g: &GrantInfo) -> String {
    format!(
        "{} {} {} {} tok={} exp={}{}",
        g.id,
        g.owner,
        if g.mode == Mode::Exclusive { "X" } else { "S" },
        g.resource,
        g.fencing_token,
        g.expires_at,
        if g.units != 1 { format!(" units={}", g.units) } else { String::new() }
    )
}

fn describe_response(r: &Response) -> String {
    match r {
        Response::SessionOpened { session, ttl_ms, expires_at } => {
            format!("session {session} opened ttl={ttl_ms} expires_at={expires_at}")
        }
        Response::SessionKept { session, expires_at } => format!("session {session} kept expires_at={expires_at}"),
        Response::SessionClosed { session, released, cancelled } => {
            format!("session {session} closed released={released} cancelled={cancelled}")
        }
        Response::Granted { grants } => {
            format!("granted {}", grants.iter().map(grant).collect::<Vec<_>>().join("; "))
        }
        Response::Queued { request, position, estimated_wait_ms } => {
            format!("queued {request} position={position} estimated_wait_ms={estimated_wait_ms}")
        }
        Response::Released { reservation } => format!("released {reservation}"),
        Response::Cancelled { request } => format!("cancelled {request}"),
        Response::Extended { reservation, expires_at } => format!("extended {reservation} expires_at={expires_at}"),
        Response::ResourceDeclared { path } => format!("declared {path}"),
        Response::Ticked => "ticked".to_string(),
        Response::LeasesRestarted { reservations, sessions } => {
            format!("leases restarted reservations={reservations} sessions={sessions}")
        }
        Response::Configured => "configured".to_string(),
        Response::Refused(refusal) => format!("REFUSED {}", describe_refusal(refusal)),
    }
}

fn describe_refusal(r: &Refusal) -> String {
    match r {
        Refusal::Conflict { holders, waiting_ahead, queue_position, estimated_wait_ms } => {
            let ahead: Vec<&str> = waiting_ahead.iter().map(|o| o.name.as_str()).collect();
            let hs: Vec<String> = holders
                .iter()
                .map(|h| format!("{} {} {} {}", h.owner, h.reservation, h.mode.lock_mode(), h.resource))
                .collect();
            format!(
                "conflict holders=[{}] waiting_ahead=[{}] queue_position={queue_position} estimated_wait_ms={estimated_wait_ms}",
                hs.join("; "),
                ahead.join(" ")
            )
        }
        Refusal::QueueFull { resource, queue_len, retry_after_ms } => {
            format!("queue full on {resource} (len {queue_len}) retry_after_ms={retry_after_ms}")
        }
        Refusal::Deadlock { cycle } => format!("DEADLOCK cycle=[{}]", cycle.join(" -> ")),
        Refusal::SessionUnknown { session } => format!("session {session} unknown"),
        Refusal::ReservationUnknown { reservation } => format!("reservation {reservation} unknown"),
        Refusal::RequestUnknown { request } => format!("request {request} unknown"),
        Refusal::AlreadyWaiting { request } => format!("owner already waits in {request}"),
        Refusal::Exhausted { what, max } => format!("{what} exhausted (max {max})"),
        Refusal::Invalid(invalid) => format!("INVALID_ARGUMENT {invalid}"),
    }
}

fn describe_effect(e: &Effect) -> String {
    match e {
        Effect::SessionOpened { session } => format!("SessionOpened {session}"),
        Effect::SessionExpired { session } => format!("SessionExpired {session}"),
        Effect::Granted { grant: g, request } => match request {
            Some(q) => format!("Granted {} (was {q})", grant(g)),
            None => format!("Granted {}", grant(g)),
        },
        Effect::Queued { request, owner, position, .. } => format!("Queued {request} {owner} position={position}"),
        Effect::Released { reservation, resource, reason } => format!("Released {reservation} {resource} ({reason:?})"),
        Effect::Expired { reservation, resource, owner, .. } => format!("Expired {reservation} {owner} {resource}"),
        Effect::PreemptRequested { reservation, owner, by, grace_ms, deadline, .. } => {
            format!("PreemptRequested {reservation} {owner} by={by} grace_ms={grace_ms} deadline={deadline}")
        }
        Effect::Revoked { reservation, resource, owner, .. } => format!("Revoked {reservation} {owner} {resource}"),
        Effect::DeadlockVictim { request, owner, cycle, .. } => {
            format!("DeadlockVictim {request} {owner} cycle=[{}]", cycle.join(" -> "))
        }
        Effect::TimedOut { request, owner, .. } => format!("TimedOut {request} {owner}"),
        Effect::Cancelled { request, owner, .. } => format!("Cancelled {request} {owner}"),
        Effect::PriorityInherited { owner, priority, .. } => format!("PriorityInherited {owner} priority={priority}"),
    }
}

fn run(name: &str) -> String {
    let path = format!("{}/tests/scenarios/{name}.scn", env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut runner = Runner::new();
    for line in script.lines() {
        let line = line.trim();
        if line.is_empty() {
            runner.out.push('\n');
            continue;
        }
        if line.starts_with('#') {
            writeln!(runner.out, "{line}").unwrap();
            continue;
        }
        writeln!(runner.out, "> {line}").unwrap();
        runner.run_line(line);
    }
    runner.out
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                insta::assert_snapshot!(stringify!($name), run(stringify!($name)));
            }
        )*

        #[test]
        fn every_scenario_file_is_listed() {
            let listed = [$(stringify!($name)),*];
            let dir = format!("{}/tests/scenarios", env!("CARGO_MANIFEST_DIR"));
            for entry in std::fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                let stem = name.strip_suffix(".scn").expect("only .scn files");
                assert!(listed.contains(&stem), "scenario {stem} is not listed in scenarios!()");
            }
        }
    };
}

scenarios!(
    sessions,
    hierarchy,
    row_ranges,
    capacity,
    lifetime,
    fencing,
    acquire_try,
    acquire_wait,
    atomic_sets,
    queues,
    aging,
    backpressure,
    deadlock,
    preemption,
    inheritance,
    tick,
    snapshot,
    leader_change,
    invalid,
);
