//! Gates: where a pass's gate is decided — the pass's own outcome, a reviewer's verdict,
//! or a human decision — and what a failed gate does (retry, go back, stop).

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::workflow::{dollars, OnFail};
use qm_shared::{Invalid, Role, Tier};

use crate::state::types::TaskSpec;
use crate::state::types::{JobId, Refusal, Response, TaskId};
use crate::state::{Ctx, State};

use super::*;

/// `text` as the inside of a JSON string.
pub(in crate::state) fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A gate review's verdict. A structured one first: a JSON object whose `verdict` is `pass`
/// (anything else fails), its `reasons` the note. Otherwise text: it fails when the output
/// starts with FAIL or REJECT, and its first line is the note.
pub(in crate::state) fn verdict(output: &[u8]) -> (bool, String) {
    if let Ok(serde_json::Value::Object(v)) = serde_json::from_slice::<serde_json::Value>(output) {
        if let Some(verdict) = v.get("verdict").and_then(|x| x.as_str()) {
            let reasons = v.get("reasons").and_then(|x| x.as_str()).unwrap_or_default();
            return (verdict.eq_ignore_ascii_case("pass"), note_of(reasons.trim()));
        }
    }
    let text = String::from_utf8_lossy(output);
    let first = note_of(text.trim().lines().next().unwrap_or(""));
    let upper = first.to_ascii_uppercase();
    (!(upper.starts_with("FAIL") || upper.starts_with("REJECT")), first)
}

/// Bytes of a verdict's reasons kept as the gate's note (and given back in `{{feedback}}`).
const NOTE_BYTES_MAX: usize = 1_000;

/// The first [`NOTE_BYTES_MAX`] bytes of `text`, cut at a character.
fn note_of(text: &str) -> String {
    let mut end = text.len().min(NOTE_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Bytes of one artifact a payload placeholder (`{{output}}`, `{{artifact.<pass>}}`) carries.
pub(in crate::state) const ARTIFACT_FILL_BYTES_MAX: usize = 24 * 1024;

/// An artifact as a payload carries it: the output of an agent (JSON with a summary, a
/// branch and a diff) as readable text, anything else as text; at most
/// [`ARTIFACT_FILL_BYTES_MAX`] bytes.
pub(in crate::state) fn artifact_text(output: &[u8]) -> String {
    let mut text = match serde_json::from_slice::<serde_json::Value>(output) {
        Ok(serde_json::Value::Object(v)) if v.contains_key("summary") || v.contains_key("diff") => {
            let mut t = String::new();
            for key in ["summary", "verdict", "reasons", "branch", "commit", "base", "diffstat", "diff"] {
                if let Some(x) = v.get(key).and_then(|x| x.as_str()).filter(|x| !x.is_empty()) {
                    t.push_str(&format!("{key}:\n{x}\n"));
                }
            }
            t
        }
        _ => String::from_utf8_lossy(output).into_owned(),
    };
    if text.len() > ARTIFACT_FILL_BYTES_MAX {
        let mut end = ARTIFACT_FILL_BYTES_MAX - 64;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let whole = text.len();
        text.truncate(end);
        text.push_str(&format!("\n[truncated: {whole} bytes in all]"));
    }
    text
}

impl State {
    pub(in crate::state) fn apply_decide_gate(
        &mut self,
        id: JobId,
        pass: String,
        approve: bool,
        note: String,
        by: String,
        ctx: &mut Ctx,
    ) -> Response {
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return Response::Refused(Refusal::JobUnknown { job: id });
        };
        let Some(i) = job.passes.iter().position(|p| p.name == pass) else {
            let names: Vec<&str> = job.passes.iter().map(|p| p.name.as_str()).collect();
            return Response::Refused(Refusal::Invalid(Invalid::new(
                "pass",
                format!("{pass:?} is not a pass of {id}; its passes: {}", names.join(", ")),
            )));
        };
        let p = &mut job.passes[i];
        let who = if by.is_empty() { "human".to_string() } else { format!("human {by}") };
        if p.status == PassStatus::AwaitingHuman {
            let round = p.gate_failures + 1;
            p.gates.push(GateResult { round, reviewer: who.clone(), passed: approve, note: note.clone(), at: ctx.now });
            let verdict = if approve { "approved" } else { "rejected" };
            let note = if note.is_empty() { String::new() } else { format!(": {note}") };
            self.jobs.event(id, &pass, format!("gate {verdict} by {who}{note}"), ctx);
            if approve {
                self.pass_passed(id, i, ctx);
            } else {
                self.gate_failed(id, i, ctx);
            }
        } else if p.status == PassStatus::Queued && p.approval_wanted {
            if approve {
                p.approval_wanted = false;
                p.spend_approved = true;
                self.jobs.event(id, &pass, format!("spend approved by {who}"), ctx);
                self.release_held();
            } else {
                self.jobs.event(id, &pass, format!("spend rejected by {who}"), ctx);
                self.end_job(id, JobStatus::Failed, format!("{pass}: spend rejected"), ctx);
            }
        } else {
            let status = p.status.as_str().to_string();
            return Response::Refused(Refusal::NotAwaitingDecision { job: id, pass, status });
        }
        self.advance(id, ctx);
        self.dispatch_tasks(ctx);
        Response::GateDecided { job: id, pass }
    }

    /// Marks the pass of a held task as waiting for a spend approval.
    pub(in crate::state) fn want_approval(&mut self, task: TaskId) {
        if let Some((job, i, _)) = self.jobs.link(task) {
            if let Some(j) = self.jobs.jobs.get_mut(&job) {
                j.passes[i].approval_wanted = true;
            }
        }
    }

    pub(in crate::state) fn await_human(&mut self, job: JobId, i: usize, ctx: &mut Ctx) {
        let j = self.jobs.jobs.get_mut(&job).expect("job exists");
        let p = &mut j.passes[i];
        p.status = PassStatus::AwaitingHuman;
        let name = p.name.clone();
        let criteria = j.spec.workflow.passes[i].gate.as_ref().map(|g| g.criteria.clone()).unwrap_or_default();
        self.jobs.event(
            job,
            &name,
            format!("waits for a human gate ({criteria}): qm gate approve {job} {name} | qm gate reject {job} {name}"),
            ctx,
        );
    }

    pub(in crate::state) fn start_review(&mut self, job_id: JobId, i: usize, role: Role, ctx: &mut Ctx) {
        let job = &self.jobs.jobs[&job_id];
        let pass = &job.spec.workflow.passes[i];
        let gate = pass.gate.as_ref().expect("reviewed passes have gates");
        let template = if gate.run.is_empty() { &job.spec.review_run } else { &gate.run };
        let payload = fill(template, job, i, &gate.criteria, &self.jobs.fill_values(job, i, true, template));
        let spec = TaskSpec {
            role,
            items: Vec::new(),
            payload,
            priority: job.spec.priority,
            work_item: job_id.to_string(),
            max_attempts: 2,
            timeout_ms: pass.timeout_ms,
            incremental: false,
            team: job.spec.team.clone(),
            project: job.spec.project.clone(),
            tier: Some(role.default_tier()),
            requires: Vec::new(),
            principal: String::new(),
        };
        match self.new_task(spec, ctx) {
            Ok(task) => {
                self.jobs.by_task.insert(task, (job_id, i, Kind::Review));
                let p = &mut self.jobs.jobs.get_mut(&job_id).expect("job").passes[i];
                p.status = PassStatus::Reviewing;
                p.review = Some(task);
                let name = p.name.clone();
                self.jobs.event(
                    job_id,
                    &name,
                    format!("output ready; gate review by the {role} role queued ({task})"),
                    ctx,
                );
            }
            Err(r) => self.end_job(job_id, JobStatus::Failed, format!("gate review could not be queued: {r:?}"), ctx),
        }
    }

    pub(in crate::state) fn pass_passed(&mut self, job_id: JobId, i: usize, ctx: &mut Ctx) {
        let tree_key = self.jobs.jobs.get(&job_id).map(|j| super::tree_key(j, i)).unwrap_or_default();
        let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let p = &mut j.passes[i];
        p.status = PassStatus::Passed;
        p.wait = None;
        let (name, key, digest, mut cost) =
            (p.name.clone(), p.cache_key.clone(), p.artifact.clone(), p.run_cost_micros);
        let facts =
            digest.as_ref().and_then(|d| self.jobs.artifacts.get(d)).map(|(_, a)| super::cache::replay_facts(a));
        let (records_reads, replayed) = facts.unwrap_or_default();
        if replayed {
            // The worker applied the offered result instead of running: what that result
            // cost is saved, and stays its cost in the cache.
            let saved = p.offered_micros;
            p.saved_micros += saved;
            j.saved_micros += saved;
            cost = saved;
            let what = format!("replayed a cached result: the files it read are unchanged (saved {})", dollars(saved));
            self.jobs.event(job_id, &name, what, ctx);
        }
        if let Some(d) = digest {
            if !key.is_empty() {
                self.jobs.remember(key, d.clone(), cost);
            }
            if records_reads && !replayed {
                self.jobs.remember(tree_key, d, cost);
            }
        }
        let this_run = if replayed { 0 } else { cost };
        self.jobs.event(job_id, &name, format!("passed ({} this run)", dollars(this_run)), ctx);
    }

    pub(in crate::state) fn gate_failed(&mut self, job_id: JobId, i: usize, ctx: &mut Ctx) {
        // The highest tier the role's agent spec lets a failed gate escalate to.
        let role = self.jobs.jobs.get(&job_id).map(|j| j.spec.workflow.passes[i].role);
        let spec = role.and_then(|r| self.role_spec(r));
        let cap = spec.map_or(Tier::Frontier, |t| t.max);
        let every = spec.map_or(1, |t| t.after_failed_gates.max(1));
        let j = self.jobs.jobs.get_mut(&job_id).expect("job exists");
        let gate = j.spec.workflow.passes[i].gate.clone().expect("failed gates exist");
        let p = &mut j.passes[i];
        p.gate_failures += 1;
        let name = p.name.clone();
        if p.gate_failures > gate.max_failures {
            p.status = PassStatus::Failed;
            let why = format!("{name}: gate failed {} times (max_failures {})", p.gate_failures, gate.max_failures);
            self.end_job(job_id, JobStatus::Failed, why, ctx);
            return;
        }
        match &gate.on_fail {
            OnFail::Retry => {
                p.status = PassStatus::Pending;
                self.jobs.event(job_id, &name, "gate failed: runs again".into(), ctx);
            }
            OnFail::Escalate => {
                let from = p.tier;
                let due = p.gate_failures % every == 0;
                if due {
                    p.tier = p.tier.escalated().min(cap).max(from);
                }
                p.status = PassStatus::Pending;
                let to = p.tier;
                let what = if !due {
                    format!("gate failed: runs again at {from} (its agent spec escalates after {every} failed gates)")
                } else if to == from {
                    format!("gate failed: runs again at {from}, the highest tier its agent spec allows")
                } else {
                    format!("gate failed: runs again, escalated {from} → {to}")
                };
                self.jobs.event(job_id, &name, what, ctx);
            }
            OnFail::SendBack(to) => {
                let (from, _) = j.spec.workflow.pass(to).expect("validated");
                // The target and everything downstream of it run again.
                let mut again: BTreeSet<usize> = BTreeSet::from([from]);
                for (k, pass) in j.spec.workflow.passes.iter().enumerate().skip(from + 1) {
                    let after = pass.after.iter().filter_map(|a| j.spec.workflow.pass(a).map(|x| x.0));
                    if after.into_iter().any(|x| again.contains(&x)) {
                        again.insert(k);
                    }
                }
                let mut stop = Vec::new();
                let mut stale: Vec<String> = again.iter().map(|k| super::tree_key(j, *k)).collect();
                for k in again {
                    let q = &mut j.passes[k];
                    if q.status.active() {
                        stop.extend(q.task.into_iter().chain(q.review));
                    }
                    q.status = PassStatus::Pending;
                    q.wait = None;
                    stale.push(std::mem::take(&mut q.cache_key));
                }
                // What a later gate rejected is not reused: the passes run again for real.
                for key in stale {
                    if let Some(e) = self.jobs.cache.remove(&key) {
                        self.jobs.cache_order.remove(&e.seq);
                    }
                }
                self.jobs.event(job_id, &name, format!("gate failed: sent back to {to}"), ctx);
                for task in stop {
                    self.jobs.by_task.remove(&task);
                    if self.tasks.get(task).is_some_and(|t| !t.status.ended()) {
                        self.stop_task(task, ctx);
                    }
                }
            }
            OnFail::Stop => {
                p.status = PassStatus::Failed;
                self.end_job(job_id, JobStatus::Failed, format!("{name}: gate failed (on_fail stop)"), ctx);
            }
        }
    }
}

/// Fills a payload template: `{{pass}}`, `{{role}}`, `{{tier}}`, `{{title}}`, `{{job}}`,
/// `{{workflow}}`, `{{criteria}}`, `{{commit}}`, `{{input.<name>}}` and the artifacts in
/// `values` (`{{output}}`, `{{artifact.<pass>}}`), JSON-escaped. In the `cmd` of a `command`
/// payload each value is also shell-quoted (one shell word, whatever it holds), and filled in
/// one pass so a value is never searched for placeholders again.
pub(in crate::state) fn fill(
    template: &[u8],
    job: &Job,
    i: usize,
    criteria: &str,
    values: &BTreeMap<String, String>,
) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(template) else { return template.to_vec() };
    if !text.contains("{{") {
        return template.to_vec();
    }
    if let Some(filled) = fill_command(text, job, i, criteria, values) {
        return filled;
    }
    let pass = &job.spec.workflow.passes[i];
    let mut out = text
        .replace("{{pass}}", &json_escape(&pass.name))
        .replace("{{role}}", pass.role.as_str())
        .replace("{{tier}}", job.passes[i].tier.as_str())
        .replace("{{title}}", &json_escape(&job.spec.title))
        .replace("{{job}}", &job.id.to_string())
        .replace("{{workflow}}", &json_escape(&job.spec.workflow.name))
        .replace("{{criteria}}", &json_escape(criteria))
        .replace("{{commit}}", &json_escape(&job.spec.commit));
    for (k, v) in &job.spec.inputs {
        out = out.replace(&format!("{{{{input.{k}}}}}"), &json_escape(v));
    }
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), &json_escape(v));
    }
    out.into_bytes()
}

/// A `command` payload template (JSON whose `executor` is `command`), filled field by field:
/// placeholders in `cmd` become shell-quoted words, elsewhere plain text. `None` for any other
/// template, which is filled as text.
fn fill_command(text: &str, job: &Job, i: usize, criteria: &str, values: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("executor").and_then(|e| e.as_str()) != Some("command") {
        return None;
    }
    let pass = &job.spec.workflow.passes[i];
    let value_of = |name: &str| -> Option<String> {
        Some(match name {
            "pass" => pass.name.clone(),
            "role" => pass.role.as_str().to_string(),
            "tier" => job.passes[i].tier.as_str().to_string(),
            "title" => job.spec.title.clone(),
            "job" => job.id.to_string(),
            "workflow" => job.spec.workflow.name.clone(),
            "criteria" => criteria.to_string(),
            "commit" => job.spec.commit.clone(),
            _ => match name.strip_prefix("input.") {
                Some(input) => job.spec.inputs.get(input)?.clone(),
                None => values.get(name)?.clone(),
            },
        })
    };
    for (key, field) in obj.iter_mut() {
        fill_strings(field, &|name: &str| {
            let raw = value_of(name)?;
            Some(if key == "cmd" { qm_shared::shell::shell_quote(&raw) } else { raw })
        });
    }
    serde_json::to_vec(&v).ok()
}

/// Fills the placeholders of every string inside `v`.
fn fill_strings(v: &mut serde_json::Value, value_of: &dyn Fn(&str) -> Option<String>) {
    match v {
        serde_json::Value::String(s) => *s = substitute(s, value_of),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| fill_strings(i, value_of)),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(|f| fill_strings(f, value_of)),
        _ => {}
    }
}

/// `text` with each known `{{name}}` replaced by its value, left to right in one pass (a
/// value is never searched for placeholders); unknown names stay as they are.
fn substitute(text: &str, value_of: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}").and_then(|end| Some((end, value_of(&after[..end])?))) {
            Some((end, value)) => {
                out.push_str(&value);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_verdicts_fail_only_on_fail_or_reject() {
        assert!(verdict(b"PASS: criteria met").0);
        assert!(verdict(b"looks good").0);
        assert!(!verdict(b"FAIL: missing tests\nmore").0);
        assert_eq!(verdict(b"  reject: no\n").1, "reject: no");
        // A structured verdict wins over the text, whatever its first characters.
        assert_eq!(verdict(br#"{"verdict":"fail","reasons":"no test for 0"}"#), (false, "no test for 0".into()));
        assert_eq!(verdict(br#"{"verdict":"PASS","reasons":"FAIL-safe"}"#), (true, "FAIL-safe".into()));
        assert_eq!(verdict(br#"{"summary":"x"}"#), (true, r#"{"summary":"x"}"#.into()), "no verdict: read as text");
    }

    #[test]
    fn a_verdict_keeps_a_bounded_note_cut_at_a_character() {
        let reasons = "é".repeat(800); // 1,600 bytes
        let out = serde_json::to_vec(&serde_json::json!({"verdict": "fail", "reasons": reasons})).unwrap();
        let (passed, note) = verdict(&out);
        assert!(!passed);
        assert_eq!(note.len(), NOTE_BYTES_MAX, "500 two-byte characters");
        assert_eq!(verdict(b"PASS: fine\nmore"), (true, "PASS: fine".to_string()));
        assert!(!verdict(b"REJECT it").0);
    }

    #[test]
    fn templates_are_filled_json_escaped() {
        let text = "{\"output\":\"{{pass}} of {{title}} / {{input.spec}}\"}";
        let job = Job {
            id: JobId(3),
            spec: JobSpec {
                title: "say \"hi\"".into(),
                class: "feature".into(),
                priority: 500,
                team: "t".into(),
                project: "p".into(),
                workflow: Workflow {
                    name: "w".into(),
                    description: String::new(),
                    passes: vec![qm_shared::workflow::Pass {
                        name: "spec".into(),
                        role: Role::Specifier,
                        tier: None,
                        after: vec![],
                        needs: vec![],
                        requires: vec![],
                        inputs: vec![],
                        outputs: vec![],
                        gate: None,
                        timeout_ms: 0,
                        retries: 0,
                        run: vec![],
                    }],
                },
                budget_micros: None,
                inputs: BTreeMap::from([("spec".to_string(), "line\nbreak".to_string())]),
                commit: String::new(),
                run: vec![],
                review_run: vec![],
                principal: String::new(),
                complexity: Default::default(),
            },
            status: JobStatus::Running,
            passes: vec![],
            submitted_at: 0,
            ended_at: None,
            events: vec![],
            cost_micros: 0,
            saved_micros: 0,
        };
        let mut job = job;
        job.passes.push(PassState::new("spec", Tier::Standard));
        let filled = fill(text.as_bytes(), &job, 0, "", &BTreeMap::new());
        let v: serde_json::Value = serde_json::from_slice(&filled).expect("valid json");
        assert_eq!(v["output"], "spec of say \"hi\" / line\nbreak");

        // In a command's cmd every value is one shell word, and a value holding a placeholder
        // is not filled again.
        job.spec.inputs.insert("ticket".into(), "; rm -rf / #{{title}}".into());
        let text = r#"{"executor":"command","cmd":"fix --ticket {{input.ticket}} --title {{title}} {{nope}}","workdir":"{{pass}}"}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&fill(text.as_bytes(), &job, 0, "", &BTreeMap::new())).expect("valid json");
        assert_eq!(v["cmd"], r#"fix --ticket '; rm -rf / #{{title}}' --title 'say "hi"' {{nope}}"#);
        assert_eq!(v["workdir"], "spec");

        // Artifacts and the commit are placeholders too, escaped like the rest.
        job.spec.commit = "abc123".into();
        let values: BTreeMap<String, String> = [("output".to_string(), "diff:\n+\"x\"\n".to_string())].into();
        let text = r#"{"executor":"agent","prompt":"review {{output}}","start":"{{commit}}","x":"{{artifact.none}}"}"#;
        let v: serde_json::Value =
            serde_json::from_slice(&fill(text.as_bytes(), &job, 0, "", &values)).expect("valid json");
        assert_eq!(v["prompt"], "review diff:\n+\"x\"\n");
        assert_eq!(v["start"], "abc123");
        assert_eq!(v["x"], "{{artifact.none}}", "an artifact not there stays a placeholder");
    }

    #[test]
    fn an_agent_s_output_is_carried_as_text_and_bounded() {
        let out = serde_json::json!({"summary": "fixed", "branch": "qm/j1/a", "diff": "+x\n", "turns": 3});
        assert_eq!(artifact_text(out.to_string().as_bytes()), "summary:\nfixed\nbranch:\nqm/j1/a\ndiff:\n+x\n\n");
        let long = "y".repeat(ARTIFACT_FILL_BYTES_MAX * 2);
        let t = artifact_text(long.as_bytes());
        assert!(
            t.len() <= ARTIFACT_FILL_BYTES_MAX && t.ends_with(&format!("[truncated: {} bytes in all]", long.len()))
        );
    }
}
