//! Scripts against the pure core: a small command language, run on a fresh [`State`], that
//! prints a transcript of every response and effect. The scenario tests are such scripts
//! (with `insta` snapshots of their transcripts), and `qm script run FILE` runs any script,
//! so a user can learn and check the semantics without a cluster.
//!
//! ```text
//! # comment (copied into the transcript)
//! config aging_interval_ms=1000 aging_step=10 preempt_gap=100 queue_len_max=1024
//! at 5000                       set the clock (the leader's `now`) to 5000 ms
//! open s1 [ttl=10000]           open a session, call it s1 (#N names session sN directly)
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
//! The scheduler, work items and budgets have commands of their own, listed in [`work`].
//! A value with spaces is quoted: `title="Fix the login page"`. A command that takes a file
//! (a workflow, a project) takes it inline, up to a line holding only the word after `<<`:
//!
//! ```text
//! workflow <<END
//! name = "tiny"
//! ...
//! END
//! ```
//!
//! Every command is applied at the next log index, so fencing tokens are visible. Pure: the
//! script text in, the transcript out; no clock, no I/O.

mod work;

use std::collections::BTreeMap;
use std::fmt::Write;

use qm_shared::{Mode, ResourcePath};

use crate::state::{
    Acquire, Command, Config, Item, Policy, RequestId, ReservationId, Response, SessionId, State, Wait,
};

/// A script line that could not be run, with its 1-based line number.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    pub line: usize,
    pub message: String,
}

/// Most lines a script may have.
pub const SCRIPT_LINES_MAX: usize = 100_000;

/// Runs `script` on a fresh state and returns the transcript.
pub fn run(script: &str) -> Result<String, ScriptError> {
    let lines: Vec<&str> = script.lines().collect();
    if lines.len() > SCRIPT_LINES_MAX {
        return Err(ScriptError {
            line: SCRIPT_LINES_MAX + 1,
            message: format!("a script has at most {SCRIPT_LINES_MAX} lines"),
        });
    }
    let mut runner = Runner::new();
    let mut n = 0;
    while n < lines.len() {
        let line = lines[n].trim();
        let at = n + 1;
        n += 1;
        if line.is_empty() {
            runner.out.push('\n');
            continue;
        }
        if line.starts_with('#') {
            runner.out.push_str(line);
            runner.out.push('\n');
            continue;
        }
        writeln!(runner.out, "> {line}").expect("write to String");
        let fail = |message| ScriptError { line: at, message };
        let mut words = words(line).map_err(fail)?;
        let mut body = None;
        if let Some(end) = words.last().and_then(|w| w.strip_prefix("<<")).map(str::to_string) {
            words.pop();
            let close = lines[n..]
                .iter()
                .position(|l| l.trim() == end)
                .ok_or_else(|| fail(format!("no line holding only {end:?} closes the text that starts here")))?;
            for l in &lines[n..n + close] {
                writeln!(runner.out, "  {l}").expect("write to String");
            }
            writeln!(runner.out, "  {end}").expect("write to String");
            body = Some(Body { text: lines[n..n + close].join("\n"), first_line: n + 1 });
            n += close + 1;
        }
        runner.run_line(&words, body).map_err(|e| match e {
            LineError::Here(message) => ScriptError { line: at, message },
            LineError::At(line, message) => ScriptError { line, message },
        })?;
    }
    Ok(runner.out)
}

/// Inline text after a command ending in `<<END`, and the script line it starts on.
struct Body {
    text: String,
    first_line: usize,
}

/// Why a line failed: on the command's own line, or on a line of its inline text.
enum LineError {
    Here(String),
    At(usize, String),
}

impl From<String> for LineError {
    fn from(message: String) -> LineError {
        LineError::Here(message)
    }
}

impl From<&str> for LineError {
    fn from(message: &str) -> LineError {
        LineError::Here(message.to_string())
    }
}

/// Splits a line at whitespace, keeping double-quoted parts (`title="a b"`) together and
/// dropping their quotes.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    if started {
        out.push(word);
    }
    Ok(out)
}

struct Runner {
    state: State,
    index: u64,
    now: u64,
    sessions: BTreeMap<String, SessionId>,
    /// Workflows the script defined, by name (the built-in ones need no definition).
    workflows: BTreeMap<String, qm_shared::workflow::Workflow>,
    out: String,
}

/// The `key=value` words of a command.
struct Opts<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> Opts<'a> {
    fn of(args: &[&'a str]) -> Opts<'a> {
        Opts(args.iter().filter_map(|w| w.split_once('=')).collect())
    }

    fn number(&self, key: &str) -> Result<Option<u64>, String> {
        self.0.get(key).map(|v| number(key, v)).transpose()
    }

    fn text(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).copied()
    }
}

fn number(key: &str, value: &str) -> Result<u64, String> {
    value.parse().map_err(|_| format!("{key}={value}: not a number"))
}

/// `S path X path ...`: resources with their modes, each of `units`.
fn items<'a>(mut words: impl Iterator<Item = &'a &'a str>, units: u32) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    while let Some(mode) = words.next() {
        let mode = match *mode {
            "S" => Mode::Shared,
            "X" => Mode::Exclusive,
            other => return Err(format!("mode {other}: expected S or X")),
        };
        let path = words.next().ok_or("expected a resource path after the mode")?;
        items.push(Item { path: ResourcePath::parse(path).map_err(|e| e.to_string())?, mode, units });
    }
    Ok(items)
}

fn id(prefix: char, word: Option<&&str>) -> Result<u64, String> {
    let word = word.ok_or_else(|| format!("expected an id like {prefix}5"))?;
    word.trim_start_matches(prefix).parse().map_err(|_| format!("{word}: expected an id like {prefix}5"))
}

impl Runner {
    fn new() -> Runner {
        Runner {
            state: State::new(Config::default()),
            index: 0,
            now: 0,
            sessions: BTreeMap::new(),
            workflows: BTreeMap::new(),
            out: String::new(),
        }
    }

    fn session(&self, name: Option<&&str>) -> Result<SessionId, String> {
        let name = name.ok_or("expected a session name")?;
        if let Some(rest) = name.strip_prefix('#') {
            return Ok(SessionId(number("#", rest)?));
        }
        self.sessions.get(*name).copied().ok_or_else(|| format!("unknown session {name} (open it first)"))
    }

    fn apply(&mut self, cmd: Command) -> Response {
        self.index += 1;
        let (response, effects) = self.state.apply(self.index, self.now, cmd);
        writeln!(self.out, "  = {response}").expect("write to String");
        for e in &effects {
            writeln!(self.out, "  ~ {e}").expect("write to String");
        }
        response
    }

    /// Prints `text` as `|` lines of the transcript.
    fn table(&mut self, text: &str) {
        for l in text.lines() {
            writeln!(self.out, "  | {l}").expect("write to String");
        }
    }

    fn run_line(&mut self, words: &[String], mut body: Option<Body>) -> Result<(), LineError> {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let (verb, args) = (words[0], &words[1..]);
        if self.run_work(verb, args, &mut body)? {
            return Ok(());
        }
        if body.is_some() {
            return Err(format!("{verb} takes no inline text").into());
        }
        let opts = Opts::of(args);
        let opt = |k: &str| opts.number(k);
        match verb {
            "config" => {
                let mut config = Config::default();
                if let Some(v) = opt("aging_interval_ms")? {
                    config.aging_interval_ms = v;
                }
                if let Some(v) = opt("aging_step")? {
                    config.aging_step = v as u32;
                }
                if let Some(v) = opt("preempt_gap")? {
                    config.preempt_gap = v as u32;
                }
                if let Some(v) = opt("queue_len_max")? {
                    config.queue_len_max = v as u32;
                }
                if self.index > 0 {
                    self.apply(Command::Configure { config });
                } else {
                    self.state = State::new(config);
                }
            }
            "at" => self.now = number("at", args.first().ok_or("at needs a time in ms")?)?,
            "open" => {
                let name = args.first().ok_or("open needs a session name")?;
                let ttl_ms = opt("ttl")?.unwrap_or(10_000);
                if let Response::SessionOpened { session, .. } =
                    self.apply(Command::OpenSession { label: name.to_string(), ttl_ms, principal: String::new() })
                {
                    self.sessions.insert(name.to_string(), session);
                }
            }
            "keepalive" => {
                let session = self.session(args.first())?;
                self.apply(Command::KeepAlive { session });
            }
            "close" => {
                let session = self.session(args.first())?;
                self.apply(Command::CloseSession { session });
            }
            "acquire" => {
                let session = self.session(args.first())?;
                let owner = args.get(1).ok_or("acquire needs an owner")?.to_string();
                let units = opt("units")?.unwrap_or(1) as u32;
                let items = items(args.iter().skip(2).filter(|w| !w.contains('=') && **w != "try"), units)?;
                let wait = if args.contains(&"try") { Wait::Try } else { Wait::Wait { timeout_ms: opt("timeout")? } };
                self.apply(Command::Acquire(Acquire {
                    session,
                    owner,
                    items,
                    wait,
                    priority: opt("prio")?.unwrap_or(500) as u32,
                    lease_ms: opt("lease")?.unwrap_or(60_000),
                }));
            }
            "release" => {
                let session = self.session(args.first())?;
                let reservation = ReservationId(id('r', args.get(1))?);
                self.apply(Command::Release { session, reservation });
            }
            "cancel" => {
                let session = self.session(args.first())?;
                let request = RequestId(id('q', args.get(1))?);
                self.apply(Command::Cancel { session, request });
            }
            "extend" => {
                let session = self.session(args.first())?;
                let reservation = ReservationId(id('r', args.get(1))?);
                let lease_ms = opt("lease")?.unwrap_or(60_000);
                self.apply(Command::Extend { session, reservation, lease_ms });
            }
            "declare" => {
                let path = ResourcePath::parse(args.first().ok_or("declare needs a resource path")?)
                    .map_err(|e| e.to_string())?;
                let capacity = opt("capacity")?.map(|c| c as u32);
                let policy: Policy =
                    opts.text("policy").map_or(Ok(Policy::None), str::parse).map_err(|e| e.to_string())?;
                let grace_ms = opt("grace")?.unwrap_or(10_000);
                self.apply(Command::DeclareResource { path, capacity, policy, grace_ms });
            }
            "tick" => {
                if let Some(t) = args.first() {
                    self.now = number("tick", t)?;
                }
                self.apply(Command::Tick);
            }
            "restart-leases" => {
                self.apply(Command::RestartLeases);
            }
            "show" => self.table(&self.state.render()),
            "snapshot" => {
                let bytes = self.state.snapshot();
                let restored = State::restore(&bytes).map_err(|e| e.to_string())?;
                if restored.snapshot() != bytes || restored.render() != self.state.render() {
                    return Err("restore did not reproduce the state".into());
                }
                self.state = restored;
                writeln!(self.out, "  = snapshot restored, {} bytes, identical", bytes.len()).expect("write to String");
            }
            other => return Err(format!("unknown command {other:?}").into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let err = run("open s1\n\nacquire s1 a Q pg:x").unwrap_err();
        assert_eq!(err, ScriptError { line: 3, message: "mode Q: expected S or X".into() });
        assert_eq!(run("frobnicate").unwrap_err().message, "unknown command \"frobnicate\"");
        assert!(run("acquire s9 a X pg:x").unwrap_err().message.contains("unknown session s9"));
        assert!(run("open s1\nacquire s1 a X nope").unwrap_err().message.contains("kind:name"));
    }

    #[test]
    fn errors_in_inline_files_name_the_script_line_and_the_field() {
        let script = "# a workflow with a bad role\nworkflow <<END\nname = \"w\"\n[[pass]]\nname = \"a\"\nrole = \"Wizard\"\nEND\n";
        let err = run(script).unwrap_err();
        assert_eq!(err.line, 6, "{err}");
        assert!(err.message.starts_with("pass[0].role: "), "{err}");
        let err = run("workflow <<END\nname = \"w\"\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("no line holding only \"END\""), "{err}");
        assert_eq!(run("item x title=\"open").unwrap_err().message, "a quote is not closed");
        assert!(run("item nope").unwrap_err().message.contains("workflow nope is neither built in nor defined"));
        assert_eq!(run("tick <<END\nEND").unwrap_err().message, "tick takes no inline text");
    }

    #[test]
    fn quoted_values_keep_their_spaces() {
        assert_eq!(
            words(r#"decide j1 p reject note="too big" by=ana"#).unwrap(),
            ["decide", "j1", "p", "reject", "note=too big", "by=ana"]
        );
    }
}
