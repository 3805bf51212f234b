//! Workflow files: `[[pass]]` tables with their needs and gates, checked pass by pass and
//! across passes (names, `after` order and cycles, send-back targets).

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::*;
use crate::workflow::{Capability, Gate, Need, OnFail, Pass, Reviewer, Workflow};
use crate::{Mode, ResourcePath, Role, Tier};

use super::document::*;
use super::FileError;

const WORKFLOW_KEYS: &[&str] = &["name", "description", "pass"];
const PASS_KEYS: &[&str] =
    &["name", "role", "tier", "after", "needs", "requires", "inputs", "outputs", "timeout", "retries", "run", "gate"];
const NEED_KEYS: &[&str] = &["path", "mode", "units"];
const GATE_KEYS: &[&str] = &["criteria", "reviewer", "review_role", "on_fail", "send_back_to", "max_failures", "run"];
pub(super) const MODES: &[&str] = &["shared", "exclusive"];
const REVIEWERS: &[&str] = &["agent", "human", "both"];
const ON_FAILS: &[&str] = &["retry", "escalate", "stop", "send-back"];
const CAPABILITIES: &[&str] = &["gpu", "local-model", "container"];
/// Most retries of a pass: its attempts stay within `TASK_ATTEMPTS_MAX`.
const RETRIES_MAX: u64 = TASK_ATTEMPTS_MAX as u64 - 1;
const RETRIES_DEFAULT: u32 = 1;
const MAX_FAILURES_DEFAULT: u32 = 3;

/// A pass as read, with what the checks across passes need.
struct RawPass {
    pass: Pass,
    /// The pass's name, when valid.
    name: Option<String>,
    name_span: Option<Span>,
    /// `after` entries and where each is written.
    after: Vec<(String, Span)>,
    after_span: Option<Span>,
    /// `gate.send_back_to` and where it is written.
    send_back: Option<(String, Span)>,
}

/// Parses and validates a workflow file. `file` names it in errors.
pub fn parse_workflow(text: &str, file: &str) -> Result<Workflow, Vec<FileError>> {
    let mut cx = Ctx::new(text, file);
    let Some(doc) = cx.document() else { return Err(cx.errors) };
    let root = Table { map: doc.get_ref(), span: None, path: String::new() };
    root.check_keys(&mut cx, WORKFLOW_KEYS);

    let name = match root.string(&mut cx, "name", true) {
        Some((n, span)) if check_slug(&mut cx, "name", &span, &n) => n,
        _ => String::new(),
    };
    let description = match root.string(&mut cx, "description", false) {
        Some((d, span)) if check_text(&mut cx, "description", &span, &d, false) => d,
        _ => String::new(),
    };

    let (tables, pass_span) = root.tables(&mut cx, "pass");
    if tables.is_empty() {
        if pass_span.is_none() {
            cx.at(None, "pass", "a workflow needs at least one [[pass]]");
        }
        return cx.finish(Workflow { name, description, passes: Vec::new() });
    }
    if tables.len() > WORKFLOW_PASSES_MAX {
        cx.at(
            pass_span.as_ref(),
            "pass",
            format!("has {} passes, at most {WORKFLOW_PASSES_MAX} allowed", tables.len()),
        );
        return cx.finish(Workflow { name, description, passes: Vec::new() });
    }
    let raws: Vec<RawPass> = tables.iter().map(|t| parse_pass(&mut cx, t)).collect();
    let order = check_passes(&mut cx, &raws);
    let mut slots: Vec<Option<Pass>> = raws.into_iter().map(|r| Some(r.pass)).collect();
    let passes = order.into_iter().filter_map(|i| slots[i].take()).collect();
    cx.finish(Workflow { name, description, passes })
}

fn parse_pass(cx: &mut Ctx<'_>, t: &Table<'_, '_>) -> RawPass {
    t.check_keys(cx, PASS_KEYS);
    let mut name = None;
    let mut name_span = None;
    if let Some((n, span)) = t.string(cx, "name", true) {
        if check_slug(cx, &t.field("name"), &span, &n) {
            name = Some(n);
        }
        name_span = Some(span);
    }
    let role = match t.string(cx, "role", true) {
        Some((r, span)) => match r.parse::<Role>().map_err(|e| e.to_string()).and_then(Role::check_not_misspelt) {
            Ok(role) => Some(role),
            Err(e) => {
                cx.at(Some(&span), &t.field("role"), e.to_string());
                None
            }
        },
        None => None,
    };
    let tier = match t.string(cx, "tier", false) {
        Some((s, span)) => match s.parse::<Tier>() {
            Ok(tier) => Some(tier),
            Err(e) => {
                cx.at(Some(&span), &t.field("tier"), e.to_string());
                None
            }
        },
        None => None,
    };
    let after = t.strings(cx, "after", WORKFLOW_PASSES_MAX, NAME_LEN_MAX_BYTES);
    let after_span = t.get("after").map(|v| v.span());
    let needs = parse_needs(cx, t);
    let mut requires = Vec::new();
    for (j, (s, span)) in t.strings(cx, "requires", CAPABILITIES.len(), NAME_LEN_MAX_BYTES).into_iter().enumerate() {
        let at = format!("{}[{j}]", t.field("requires"));
        let capability = match s.as_str() {
            "gpu" => Capability::Gpu,
            "local-model" => Capability::LocalModel,
            "container" => Capability::Container,
            _ => {
                cx.at(Some(&span), &at, format!("{s:?} is not one of: {}", choices(CAPABILITIES)));
                continue;
            }
        };
        if requires.contains(&capability) {
            cx.at(Some(&span), &at, format!("{s:?} is listed twice"));
        } else {
            requires.push(capability);
        }
    }
    let inputs = t.strings(cx, "inputs", JOB_INPUTS_MAX, NAME_LEN_MAX_BYTES).into_iter().map(|(s, _)| s).collect();
    let outputs = t.strings(cx, "outputs", JOB_INPUTS_MAX, NAME_LEN_MAX_BYTES).into_iter().map(|(s, _)| s).collect();
    let timeout_ms = t.duration(cx, "timeout", 0, PASS_TIMEOUT_MS_MAX).unwrap_or(0);
    let retries = t.uint(cx, "retries", 0, RETRIES_MAX).map_or(RETRIES_DEFAULT, |n| n as u32);
    let run = t.payload(cx, "run");
    let mut send_back = None;
    let gate = t.table(cx, "gate").map(|g| {
        let (gate, to) = parse_gate(cx, &g, role);
        send_back = to;
        gate
    });
    RawPass {
        pass: Pass {
            name: name.clone().unwrap_or_default(),
            role: role.unwrap_or(Role::Analyst),
            tier,
            after: after.iter().map(|(a, _)| a.clone()).collect(),
            needs,
            requires,
            inputs,
            outputs,
            gate,
            timeout_ms,
            retries,
            run,
        },
        name,
        name_span,
        after,
        after_span,
        send_back,
    }
}

fn parse_needs(cx: &mut Ctx<'_>, t: &Table<'_, '_>) -> Vec<Need> {
    let (tables, span) = t.tables(cx, "needs");
    if tables.len() > SET_SIZE_MAX {
        cx.at(
            span.as_ref(),
            &t.field("needs"),
            format!("has {} entries, at most {SET_SIZE_MAX} allowed", tables.len()),
        );
    }
    let mut needs: Vec<Need> = Vec::new();
    for n in &tables {
        n.check_keys(cx, NEED_KEYS);
        let path = n.string(cx, "path", true).and_then(|(p, span)| match ResourcePath::parse(&p) {
            Ok(path) => {
                if needs.iter().any(|x| x.path == path) {
                    cx.at(Some(&span), &n.field("path"), format!("{path} is listed twice"));
                    None
                } else {
                    Some(path)
                }
            }
            Err(e) => {
                cx.at(Some(&span), &n.field("path"), e.message);
                None
            }
        });
        let mode = match n.choice(cx, "mode", MODES) {
            Some(("exclusive", _)) => Mode::Exclusive,
            _ => Mode::Shared,
        };
        let units = n.uint(cx, "units", 1, CAPACITY_MAX.into()).map_or(1, |u| u as u32);
        if let Some(path) = path {
            needs.push(Need { path, mode, units });
        }
    }
    needs
}

fn parse_gate(cx: &mut Ctx<'_>, g: &Table<'_, '_>, role: Option<Role>) -> (Gate, Option<(String, Span)>) {
    g.check_keys(cx, GATE_KEYS);
    let criteria = match g.string(cx, "criteria", true) {
        Some((c, span)) if check_text(cx, &g.field("criteria"), &span, &c, true) => c,
        _ => String::new(),
    };
    let reviewer = match g.choice(cx, "reviewer", REVIEWERS) {
        Some(("human", _)) => Reviewer::Human,
        Some(("both", _)) => Reviewer::Both,
        _ => Reviewer::Agent,
    };
    let review_role = match g.string(cx, "review_role", false) {
        Some((r, span)) => match r.parse::<Role>().map_err(|e| e.to_string()).and_then(Role::check_not_misspelt) {
            Ok(r) if reviewer != Reviewer::Human && Some(r) == role => {
                cx.at(
                    Some(&span),
                    &g.field("review_role"),
                    format!("is the pass's own role {r}: a gate is never reviewed by the agent that did the pass"),
                );
                r
            }
            Ok(r) => r,
            Err(e) => {
                cx.at(Some(&span), &g.field("review_role"), e.to_string());
                Role::Analyst
            }
        },
        None => {
            if reviewer != Reviewer::Human {
                cx.at(
                    g.span.as_ref(),
                    &g.field("review_role"),
                    format!(
                        "missing (required when reviewer is {:?}): the role of the reviewing agent, one of: {}",
                        reviewer.as_str(),
                        Role::ALL.map(|r| r.as_str().to_string()).join(", ")
                    ),
                );
            }
            Role::Analyst
        }
    };
    let on_fail = g.choice(cx, "on_fail", ON_FAILS);
    let to = g.string(cx, "send_back_to", false);
    let mut send_back = None;
    let on_fail = match on_fail {
        Some(("escalate", _)) => OnFail::Escalate,
        Some(("stop", _)) => OnFail::Stop,
        Some(("send-back", span)) => match to {
            Some((to, to_span)) => {
                send_back = Some((to.clone(), to_span));
                OnFail::SendBack(to)
            }
            None => {
                cx.at(
                    Some(&span),
                    &g.field("send_back_to"),
                    "missing (required when on_fail is \"send-back\"): the earlier pass to run again from",
                );
                OnFail::Retry
            }
        },
        _ => {
            if let Some((_, to_span)) = to {
                cx.at(Some(&to_span), &g.field("send_back_to"), "applies only when on_fail is \"send-back\"");
            }
            OnFail::Retry
        }
    };
    let max_failures =
        g.uint(cx, "max_failures", 1, GATE_FAILURES_MAX.into()).map_or(MAX_FAILURES_DEFAULT, |n| n as u32);
    let run = g.payload(cx, "run");
    (Gate { criteria, reviewer, review_role, on_fail, max_failures, run }, send_back)
}

/// Checks across passes (unique names, `after` names, cycles, send-back targets) and returns
/// the passes' indexes in topological order (file order among ready passes).
fn check_passes(cx: &mut Ctx<'_>, raws: &[RawPass]) -> Vec<usize> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in raws.iter().enumerate() {
        let Some(name) = &r.name else { continue };
        match index.get(name.as_str()) {
            Some(&j) => cx.at(
                r.name_span.as_ref(),
                &format!("pass[{i}].name"),
                format!("{name:?} is already the name of pass[{j}]; pass names must be unique"),
            ),
            None => {
                index.insert(name, i);
            }
        }
    }
    let names = || index.keys().copied().collect::<Vec<_>>().join(", ");

    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); raws.len()];
    for (i, r) in raws.iter().enumerate() {
        for (j, (a, span)) in r.after.iter().enumerate() {
            let at = format!("pass[{i}].after[{j}]");
            match index.get(a.as_str()) {
                Some(&d) if d == i => cx.at(Some(span), &at, "a pass cannot come after itself"),
                Some(&d) if deps[i].contains(&d) => cx.at(Some(span), &at, format!("{a:?} is listed twice")),
                Some(&d) => deps[i].push(d),
                None => cx.at(Some(span), &at, format!("no pass is named {a:?} (passes: {})", names())),
            }
        }
    }

    let (order, cycles) = topological(&deps);
    for cycle in cycles {
        let first = cycle[0];
        let mut path: Vec<&str> = cycle.iter().map(|&i| raws[i].pass.name.as_str()).collect();
        path.push(&raws[first].pass.name);
        cx.at(
            raws[first].after_span.as_ref(),
            &format!("pass[{first}].after"),
            format!("cycle: {} (each pass comes after the next)", path.join(" -> ")),
        );
    }

    for (i, r) in raws.iter().enumerate() {
        let Some((to, span)) = &r.send_back else { continue };
        let at = format!("pass[{i}].gate.send_back_to");
        let Some(&target) = index.get(to.as_str()) else {
            cx.at(Some(span), &at, format!("no pass is named {to:?} (passes: {})", names()));
            continue;
        };
        let ancestors = ancestors(&deps, i);
        if !ancestors.contains(&target) {
            let list: Vec<&str> = ancestors.iter().map(|&a| raws[a].pass.name.as_str()).collect();
            let known =
                if list.is_empty() { "it has none".to_string() } else { format!("they are: {}", list.join(", ")) };
            cx.at(
                Some(span),
                &at,
                format!(
                    "{to:?} is not an ancestor of pass {:?}: a gate sends back only to a pass this one comes after, \
                     directly or through others ({known})",
                    r.pass.name
                ),
            );
        }
    }
    order
}

/// Indexes in a stable topological order (the first ready pass in file order goes next), and
/// the cycles found, each as the passes along `after` edges starting from its first in file order.
fn topological(deps: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let n = deps.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut cycles = Vec::new();
    loop {
        while let Some(i) = (0..n).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d])) {
            done[i] = true;
            order.push(i);
        }
        let Some(start) = (0..n).find(|&i| !done[i]) else { break };
        // Every pass left waits on another left, so walking waits from any of them closes a cycle.
        let mut walk = vec![start];
        let mut current = start;
        loop {
            let Some(next) = deps[current].iter().copied().find(|&d| !done[d]) else {
                done[current] = true;
                break;
            };
            if let Some(pos) = walk.iter().position(|&p| p == next) {
                let mut cycle = walk[pos..].to_vec();
                let lowest = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                cycle.rotate_left(lowest);
                for &c in &cycle {
                    done[c] = true;
                }
                cycles.push(cycle);
                break;
            }
            walk.push(next);
            current = next;
        }
    }
    (order, cycles)
}

/// The passes `i` comes after, directly or transitively, ascending.
fn ancestors(deps: &[Vec<usize>], i: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = deps[i].clone();
    while let Some(d) = stack.pop() {
        if d != i && seen.insert(d) {
            stack.extend(&deps[d]);
        }
    }
    seen
}
