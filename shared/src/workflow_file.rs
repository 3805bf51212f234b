//! Workflow and project files: TOML text parsed and validated into [`Workflow`] and
//! [`Project`]. The formats are documented in `docs/workflows.md`.
//!
//! Every error names the file, the 1-based line, the field path (`pass[2].gate.on_fail`, pass
//! indexes counting from 0 in file order) and the bound or the accepted choices, and a file's
//! errors are reported all at once rather than one per attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::duration::{duration_text, parse_duration_ms};
use crate::limits::{
    CAPACITY_MAX, GATE_FAILURES_MAX, JOB_INPUTS_MAX, NAME_LEN_MAX_BYTES, PASS_TIMEOUT_MS_MAX, PREEMPT_GRACE_MS_MAX,
    PREEMPT_GRACE_MS_MIN, PROJECT_ENTRIES_MAX, PROJECT_GRACE_MS_DEFAULT, PROVIDER_CONCURRENCY_MAX, SET_SIZE_MAX,
    TASK_ATTEMPTS_MAX, TASK_PAYLOAD_BYTES_MAX, TEXT_LEN_MAX_BYTES, WORKFLOW_FILE_BYTES_MAX, WORKFLOW_PASSES_MAX,
};
use crate::toml_place::line_of;
use crate::validate;
use crate::workflow::{
    parse_dollars, Capability, Gate, Need, OnFail, Pass, Price, Project, ProjectResource, Provider, Reviewer, Workflow,
};
use crate::{Mode, ResourcePath, Role, Tier};

/// One thing wrong with a workflow or project file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    pub file: String,
    /// 1-based line, when the error has a place in the text.
    pub line: Option<usize>,
    /// Path of the field (`pass[2].gate.on_fail`); empty for TOML syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FileError {}

/// Work-item classes and their default priorities (the coordinator's `jobs.classes` config
/// may change them): `incident > hotfix > security > feature > refactor > docs`.
pub const CLASSES: [(&str, u32); 6] =
    [("incident", 1000), ("hotfix", 900), ("security", 800), ("feature", 500), ("refactor", 300), ("docs", 100)];

/// The default priority of a work-item class.
pub fn class_priority(class: &str) -> Option<u32> {
    CLASSES.iter().find(|(c, _)| *c == class).map(|(_, p)| *p)
}

/// The built-in workflows: name and file text.
pub const BUILTIN_WORKFLOWS: [(&str, &str); 5] = [
    ("new-feature", include_str!("../../workflows/new-feature.toml")),
    ("production-bug", include_str!("../../workflows/production-bug.toml")),
    ("security-incident", include_str!("../../workflows/security-incident.toml")),
    ("refactor", include_str!("../../workflows/refactor.toml")),
    ("docs", include_str!("../../workflows/docs.toml")),
];

/// The demo project's file text (team `platform`).
pub const DEMO_PROJECT: &str = include_str!("../../projects/demo.toml");

/// A built-in workflow, parsed.
pub fn builtin_workflow(name: &str) -> Option<Workflow> {
    let (name, text) = BUILTIN_WORKFLOWS.iter().find(|(n, _)| *n == name)?;
    parse_workflow(text, &format!("workflows/{name}.toml")).ok()
}

type Span = Range<usize>;

const WORKFLOW_KEYS: &[&str] = &["name", "description", "pass"];
const PASS_KEYS: &[&str] =
    &["name", "role", "tier", "after", "needs", "requires", "inputs", "outputs", "timeout", "retries", "run", "gate"];
const NEED_KEYS: &[&str] = &["path", "mode", "units"];
const GATE_KEYS: &[&str] = &["criteria", "reviewer", "review_role", "on_fail", "send_back_to", "max_failures", "run"];
const PROJECT_KEYS: &[&str] = &["name", "team", "repos", "tools", "resource", "provider", "price"];
const RESOURCE_KEYS: &[&str] = &["path", "capacity", "policy", "grace"];
const PROVIDER_KEYS: &[&str] = &["name", "kind", "endpoint", "local", "concurrency", "models", "hourly"];
const PRICE_KEYS: &[&str] = &["input", "output", "cached"];
const MODES: &[&str] = &["shared", "exclusive"];
const REVIEWERS: &[&str] = &["agent", "human", "both"];
const ON_FAILS: &[&str] = &["retry", "escalate", "stop", "send-back"];
const CAPABILITIES: &[&str] = &["gpu", "local-model"];
const POLICIES: &[&str] = &["none", "preempt", "inherit"];
const PROVIDER_KINDS: &[&str] = &["openai", "anthropic"];
/// Most retries of a pass: its attempts stay within `TASK_ATTEMPTS_MAX`.
const RETRIES_MAX: u64 = TASK_ATTEMPTS_MAX as u64 - 1;
const RETRIES_DEFAULT: u32 = 1;
const MAX_FAILURES_DEFAULT: u32 = 3;

/// The errors found so far in one file.
struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<FileError>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, file: &'a str) -> Ctx<'a> {
        Ctx { text, file, errors: Vec::new() }
    }

    fn at(&mut self, span: Option<&Span>, field: &str, message: impl Into<String>) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.errors.push(FileError {
            file: self.file.to_string(),
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// The document, or `None` after reporting why there is none (size, TOML syntax).
    fn document(&mut self) -> Option<Spanned<DeTable<'a>>> {
        if self.text.len() > WORKFLOW_FILE_BYTES_MAX {
            let n = self.text.len();
            self.at(None, "", format!("the file is {n} bytes, at most {WORKFLOW_FILE_BYTES_MAX} allowed"));
            return None;
        }
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(doc);
        }
        for e in errors {
            let message = format!("invalid TOML: {}", e.message().trim_end());
            self.at(e.span().as_ref(), "", message);
        }
        None
    }

    fn finish<T>(mut self, value: T) -> Result<T, Vec<FileError>> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(self.errors)
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn choices(list: &[&str]) -> String {
    list.join(", ")
}

/// A table of the document with its place (span of its header or inline text) and field path.
#[derive(Clone)]
struct Table<'a, 'i> {
    map: &'a DeTable<'i>,
    span: Option<Span>,
    path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.map.get(key)
    }

    fn missing(&self, cx: &mut Ctx<'_>, key: &str) {
        cx.at(self.span.as_ref(), &self.field(key), "missing (required)");
    }

    /// Reports every key not in `known`, naming it and the accepted ones.
    fn check_keys(&self, cx: &mut Ctx<'_>, known: &[&str]) {
        for (k, _) in self.map.iter() {
            let key: &str = k.get_ref();
            if !known.contains(&key) {
                cx.at(Some(&k.span()), &self.field(key), format!("unknown key; expected one of: {}", choices(known)));
            }
        }
    }

    fn wrong(&self, cx: &mut Ctx<'_>, key: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        cx.at(Some(&v.span()), &self.field(key), format!("expected {expected}, found {}", kind(v.get_ref())));
    }

    fn string(&self, cx: &mut Ctx<'_>, key: &str, required: bool) -> Option<(String, Span)> {
        let Some(v) = self.get(key) else {
            if required {
                self.missing(cx, key);
            }
            return None;
        };
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            _ => {
                self.wrong(cx, key, v, "a string");
                None
            }
        }
    }

    /// A string that must be one of `list`.
    fn choice(&self, cx: &mut Ctx<'_>, key: &str, list: &[&'static str]) -> Option<(&'static str, Span)> {
        let (s, span) = self.string(cx, key, false)?;
        match list.iter().find(|c| **c == s) {
            Some(c) => Some((c, span)),
            None => {
                cx.at(Some(&span), &self.field(key), format!("{s:?} is not one of: {}", choices(list)));
                None
            }
        }
    }

    /// A non-negative integer in `min..=max`.
    fn uint(&self, cx: &mut Ctx<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong(cx, key, v, "an integer");
            return None;
        };
        let field = self.field(key);
        let Ok(n) = i128::from_str_radix(i.as_str(), i.radix()) else {
            cx.at(Some(&v.span()), &field, format!("{i} is not an integer in {min}..={max}"));
            return None;
        };
        if n < i128::from(min) {
            cx.at(Some(&v.span()), &field, format!("{n} is below the minimum {min}"));
            return None;
        }
        if n > i128::from(max) {
            cx.at(Some(&v.span()), &field, format!("{n} is above the maximum {max}"));
            return None;
        }
        u64::try_from(n).ok()
    }

    fn boolean(&self, cx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong(cx, key, v, "true or false");
                None
            }
        }
    }

    /// An array of non-empty printable strings of at most `len_max` bytes, at most `items_max`
    /// of them.
    fn strings(&self, cx: &mut Ctx<'_>, key: &str, items_max: usize, len_max: usize) -> Vec<(String, Span)> {
        let Some(v) = self.get(key) else { return Vec::new() };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(cx, key, v, "an array of strings");
            return Vec::new();
        };
        let field = self.field(key);
        if items.len() > items_max {
            cx.at(Some(&v.span()), &field, format!("has {} entries, at most {items_max} allowed", items.len()));
        }
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let at = format!("{field}[{j}]");
            match item.get_ref() {
                DeValue::String(s) => match validate::check_name(&at, s, len_max) {
                    Ok(()) => out.push((s.to_string(), item.span())),
                    Err(e) => cx.at(Some(&item.span()), &at, e.message),
                },
                other => cx.at(Some(&item.span()), &at, format!("expected a string, found {}", kind(other))),
            }
        }
        out
    }

    fn table(&self, cx: &mut Ctx<'_>, key: &str) -> Option<Table<'a, 'i>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(map) => Some(Table { map, span: Some(v.span()), path: self.field(key) }),
            _ => {
                self.wrong(cx, key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[pass]]`, or an array of inline tables), with the array's span.
    fn tables(&self, cx: &mut Ctx<'_>, key: &str) -> (Vec<Table<'a, 'i>>, Option<Span>) {
        let Some(v) = self.get(key) else { return (Vec::new(), None) };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(cx, key, v, &format!("an array of tables ([[{key}]] or [{{ ... }}])"));
            return (Vec::new(), Some(v.span()));
        };
        let field = self.field(key);
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let at = format!("{field}[{j}]");
            match item.get_ref() {
                DeValue::Table(map) => out.push(Table { map, span: Some(item.span()), path: at }),
                other => cx.at(Some(&item.span()), &at, format!("expected a table, found {}", kind(other))),
            }
        }
        (out, Some(v.span()))
    }

    /// A duration (`"500ms"`, `"30s"`, `"10m"`, `"2h"`; `"0"` or `0`: zero) in `min..=max` ms.
    fn duration(&self, cx: &mut Ctx<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        let field = self.field(key);
        let ms = match v.get_ref() {
            DeValue::String(s) => match parse_duration_ms(s) {
                Ok(ms) => ms,
                Err(m) => {
                    cx.at(Some(&v.span()), &field, m);
                    return None;
                }
            },
            DeValue::Integer(i) if i.as_str().trim_start_matches(['+', '-']).bytes().all(|b| b == b'0') => 0,
            _ => {
                self.wrong(cx, key, v, "a duration such as \"30s\" or \"10m\"");
                return None;
            }
        };
        if ms < min || ms > max {
            cx.at(
                Some(&v.span()),
                &field,
                format!("{} is outside {}..={}", duration_text(ms), duration_text(min), duration_text(max)),
            );
            return None;
        }
        Some(ms)
    }

    /// An amount in dollars: a string such as `"3.00"` (or a bare number, read as written).
    fn dollars(&self, cx: &mut Ctx<'_>, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        let field = self.field(key);
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            _ => {
                self.wrong(cx, key, v, "an amount in dollars such as \"3.00\"");
                return None;
            }
        };
        match parse_dollars(&field, &text) {
            Ok(m) => Some(m),
            Err(e) => {
                cx.at(Some(&v.span()), &field, e.message);
                None
            }
        }
    }

    /// An executor payload table, as JSON bytes; absent: empty.
    fn payload(&self, cx: &mut Ctx<'_>, key: &str) -> Vec<u8> {
        let Some(v) = self.get(key) else { return Vec::new() };
        let field = self.field(key);
        if !matches!(v.get_ref(), DeValue::Table(_)) {
            self.wrong(cx, key, v, "a table such as { executor = \"scripted\" }");
            return Vec::new();
        }
        let json = match to_json(v.get_ref()) {
            Ok(j) => j,
            Err(m) => {
                cx.at(Some(&v.span()), &field, m);
                return Vec::new();
            }
        };
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        if bytes.len() > TASK_PAYLOAD_BYTES_MAX {
            cx.at(
                Some(&v.span()),
                &field,
                format!("is {} bytes as JSON, at most {TASK_PAYLOAD_BYTES_MAX} allowed", bytes.len()),
            );
            return Vec::new();
        }
        bytes
    }
}

/// A TOML value as JSON (date-times as their text).
fn to_json(v: &DeValue<'_>) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::from(n),
            Err(_) => match u64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::from(n),
                Err(_) => return Err(format!("integer {i} is out of range")),
            },
        },
        DeValue::Float(f) => {
            let x: f64 = f.as_str().parse().map_err(|_| format!("float {f} is not a number JSON can hold"))?;
            serde_json::Number::from_f64(x).map(Value::Number).ok_or_else(|| format!("float {f} has no JSON form"))?
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|x| to_json(x.get_ref())).collect::<Result<_, _>>()?),
        DeValue::Table(map) => {
            let mut out = serde_json::Map::new();
            for (k, x) in map.iter() {
                out.insert(k.get_ref().to_string(), to_json(x.get_ref())?);
            }
            Value::Object(out)
        }
    })
}

/// A lowercase name (`[a-z0-9-]`, at most `NAME_LEN_MAX_BYTES`).
fn check_slug(cx: &mut Ctx<'_>, field: &str, span: &Span, s: &str) -> bool {
    if let Err(e) = validate::check_name(field, s, NAME_LEN_MAX_BYTES) {
        cx.at(Some(span), field, e.message);
        return false;
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        cx.at(Some(span), field, format!("{s:?} may use only a-z, 0-9 and -"));
        return false;
    }
    true
}

/// Free text: at most `TEXT_LEN_MAX_BYTES`, and not blank when `required`.
fn check_text(cx: &mut Ctx<'_>, field: &str, span: &Span, s: &str, required: bool) -> bool {
    if required && s.trim().is_empty() {
        cx.at(Some(span), field, "must not be empty");
        return false;
    }
    if s.len() > TEXT_LEN_MAX_BYTES {
        cx.at(Some(span), field, format!("is {} bytes, at most {TEXT_LEN_MAX_BYTES} allowed", s.len()));
        return false;
    }
    true
}

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
        Some((r, span)) => match r.parse::<Role>() {
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
        Some((r, span)) => match r.parse::<Role>() {
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
                        Role::ALL.map(Role::as_str).join(", ")
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

/// Parses and validates a project file. `file` names it in errors.
pub fn parse_project(text: &str, file: &str) -> Result<Project, Vec<FileError>> {
    let mut cx = Ctx::new(text, file);
    let Some(doc) = cx.document() else { return Err(cx.errors) };
    let root = Table { map: doc.get_ref(), span: None, path: String::new() };
    root.check_keys(&mut cx, PROJECT_KEYS);

    let name = match root.string(&mut cx, "name", true) {
        Some((n, span)) if check_slug(&mut cx, "name", &span, &n) => n,
        _ => String::new(),
    };
    let team = match root.string(&mut cx, "team", true) {
        Some((t, span)) => match validate::check_name("team", &t, NAME_LEN_MAX_BYTES) {
            Ok(()) => t,
            Err(e) => {
                cx.at(Some(&span), "team", e.message);
                String::new()
            }
        },
        None => String::new(),
    };
    let repos = root.strings(&mut cx, "repos", PROJECT_ENTRIES_MAX, TEXT_LEN_MAX_BYTES);
    let tools = root.strings(&mut cx, "tools", PROJECT_ENTRIES_MAX, NAME_LEN_MAX_BYTES);
    let repos = repos.into_iter().map(|(s, _)| s).collect();
    let tools = tools.into_iter().map(|(s, _)| s).collect();
    let resources = parse_resources(&mut cx, &root);
    let (providers, model_spans) = parse_providers(&mut cx, &root);
    let (prices, priced) = parse_prices(&mut cx, &root);

    for (i, p) in providers.iter().enumerate() {
        let api = format!("api:{}", p.name);
        if let Some(j) = resources.iter().position(|r| r.path.as_str() == api) {
            cx.at(
                model_spans[i].0.as_ref(),
                &format!("provider[{i}].name"),
                format!("resource[{j}] also declares {api}; the provider declares it (capacity = its concurrency)"),
            );
        }
        if p.local {
            continue;
        }
        for (tier, model) in &p.models {
            if !priced.contains(model.as_str()) {
                let span = model_spans[i].1.get(tier);
                cx.at(
                    span,
                    &format!("provider[{i}].models.{tier}"),
                    format!(
                        "model {model:?} has no price: add [price.{}] with input and output dollars per million \
                         tokens (models of a provider that is not local must be priced)",
                        toml_key(model)
                    ),
                );
            }
        }
    }
    cx.finish(Project { name, team, resources, repos, tools, providers, prices })
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn parse_resources(cx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Vec<ProjectResource> {
    let (tables, span) = root.tables(cx, "resource");
    if tables.len() > PROJECT_ENTRIES_MAX {
        cx.at(
            span.as_ref(),
            "resource",
            format!("has {} entries, at most {PROJECT_ENTRIES_MAX} allowed", tables.len()),
        );
    }
    let mut out: Vec<ProjectResource> = Vec::new();
    for r in &tables {
        r.check_keys(cx, RESOURCE_KEYS);
        let path = r.string(cx, "path", true).and_then(|(p, span)| match ResourcePath::parse(&p) {
            Ok(path) if out.iter().any(|x| x.path == path) => {
                cx.at(Some(&span), &r.field("path"), format!("{path} is declared twice"));
                None
            }
            Ok(path) => Some(path),
            Err(e) => {
                cx.at(Some(&span), &r.field("path"), e.message);
                None
            }
        });
        let capacity = r.uint(cx, "capacity", 1, CAPACITY_MAX.into()).map(|c| c as u32);
        let policy = r.choice(cx, "policy", POLICIES).map_or("none", |(p, _)| p);
        let grace_ms =
            r.duration(cx, "grace", PREEMPT_GRACE_MS_MIN, PREEMPT_GRACE_MS_MAX).unwrap_or(PROJECT_GRACE_MS_DEFAULT);
        if let Some(path) = path {
            out.push(ProjectResource { path, capacity, policy: policy.to_string(), grace_ms });
        }
    }
    out
}

/// Where a provider's name and each of its models is written.
type ProviderSpans = (Option<Span>, BTreeMap<Tier, Span>);

fn parse_providers(cx: &mut Ctx<'_>, root: &Table<'_, '_>) -> (Vec<Provider>, Vec<ProviderSpans>) {
    let (tables, span) = root.tables(cx, "provider");
    if tables.len() > PROJECT_ENTRIES_MAX {
        cx.at(
            span.as_ref(),
            "provider",
            format!("has {} entries, at most {PROJECT_ENTRIES_MAX} allowed", tables.len()),
        );
    }
    let mut out: Vec<Provider> = Vec::new();
    let mut spans = Vec::new();
    for p in &tables {
        p.check_keys(cx, PROVIDER_KEYS);
        let mut name_span = None;
        let name = p.string(cx, "name", true).and_then(|(n, span)| {
            name_span = Some(span.clone());
            if !check_slug(cx, &p.field("name"), &span, &n) {
                return None;
            }
            if out.iter().any(|x| x.name == n) {
                cx.at(Some(&span), &p.field("name"), format!("provider {n:?} is declared twice"));
                return None;
            }
            Some(n)
        });
        let kind = p.choice(cx, "kind", PROVIDER_KINDS).map(|(k, _)| k);
        if p.get("kind").is_none() {
            p.missing(cx, "kind");
        }
        let endpoint = p.string(cx, "endpoint", true).and_then(|(e, span)| {
            if !check_text(cx, &p.field("endpoint"), &span, &e, true) {
                return None;
            }
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                cx.at(Some(&span), &p.field("endpoint"), format!("{e:?} is not an http:// or https:// URL"));
                return None;
            }
            Some(e)
        });
        let local = p.boolean(cx, "local").unwrap_or(false);
        let concurrency = p.uint(cx, "concurrency", 1, PROVIDER_CONCURRENCY_MAX.into()).map(|c| c as u32);
        if p.get("concurrency").is_none() {
            p.missing(cx, "concurrency");
        }
        let mut models = BTreeMap::new();
        let mut model_spans = BTreeMap::new();
        match p.table(cx, "models") {
            Some(m) => {
                m.check_keys(cx, &Tier::ALL.map(Tier::as_str));
                for tier in Tier::ALL {
                    let Some((model, span)) = m.string(cx, tier.as_str(), false) else { continue };
                    match validate::check_name(&m.field(tier.as_str()), &model, NAME_LEN_MAX_BYTES) {
                        Ok(()) => {
                            models.insert(tier, model);
                            model_spans.insert(tier, span);
                        }
                        Err(e) => cx.at(Some(&span), &e.field, e.message),
                    }
                }
                if m.map.is_empty() {
                    cx.at(
                        m.span.as_ref(),
                        &m.path,
                        format!(
                            "maps no tier; give a model for at least one of: {}",
                            choices(&Tier::ALL.map(Tier::as_str))
                        ),
                    );
                }
            }
            None if p.get("models").is_none() => p.missing(cx, "models"),
            None => {}
        }
        let hourly = p.dollars(cx, "hourly");
        match (local, p.get("hourly")) {
            (true, None) => cx.at(
                p.span.as_ref(),
                &p.field("hourly"),
                "missing (required for a local provider): its box's amortised cost in dollars per hour",
            ),
            (false, Some(v)) => cx.at(
                Some(&v.span()),
                &p.field("hourly"),
                "applies only to local providers (local = true); cloud models are priced per token in [price]",
            ),
            _ => {}
        }
        if let (Some(name), Some(kind), Some(endpoint), Some(concurrency)) = (name, kind, endpoint, concurrency) {
            out.push(Provider {
                name,
                kind: kind.to_string(),
                endpoint,
                local,
                concurrency,
                models,
                hourly_micros: if local { hourly.unwrap_or(0) } else { 0 },
            });
            spans.push((name_span, model_spans));
        }
    }
    (out, spans)
}

/// The prices, and every model a `[price]` entry names (valid or not).
fn parse_prices<'a>(cx: &mut Ctx<'_>, root: &Table<'a, '_>) -> (BTreeMap<String, Price>, BTreeSet<&'a str>) {
    let mut out = BTreeMap::new();
    let Some(t) = root.table(cx, "price") else { return (out, BTreeSet::new()) };
    let priced = t.map.iter().map(|(k, _)| -> &'a str { k.get_ref() }).collect();
    if t.map.len() > PROJECT_ENTRIES_MAX {
        cx.at(t.span.as_ref(), "price", format!("has {} entries, at most {PROJECT_ENTRIES_MAX} allowed", t.map.len()));
    }
    for (k, v) in t.map.iter() {
        let model: &str = k.get_ref();
        let field = format!("price.{}", toml_key(model));
        if let Err(e) = validate::check_name(&field, model, NAME_LEN_MAX_BYTES) {
            cx.at(Some(&k.span()), &field, e.message);
            continue;
        }
        let DeValue::Table(map) = v.get_ref() else {
            cx.at(
                Some(&v.span()),
                &field,
                format!("expected a table with input and output dollars, found {}", kind(v.get_ref())),
            );
            continue;
        };
        let p = Table { map, span: Some(v.span()), path: field };
        p.check_keys(cx, PRICE_KEYS);
        let input = p.dollars(cx, "input");
        let output = p.dollars(cx, "output");
        let cached = p.dollars(cx, "cached").unwrap_or(0);
        for key in ["input", "output"] {
            if p.get(key).is_none() {
                p.missing(cx, key);
            }
        }
        if let (Some(input), Some(output)) = (input, output) {
            out.insert(
                model.to_string(),
                Price { input_per_mtok_micros: input, output_per_mtok_micros: output, cached_per_mtok_micros: cached },
            );
        }
    }
    (out, priced)
}

/// Checks a workflow against a project: every resource a pass needs is declared by the project
/// (or lies under a declared one), and no pass asks a counted resource for more units than it
/// has. Fields name passes by their index in the workflow's (topological) order.
pub fn check_against_project(w: &Workflow, p: &Project, file: &str) -> Vec<FileError> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| {
        errors.push(FileError { file: file.to_string(), line: None, field, message });
    };
    for (i, pass) in w.passes.iter().enumerate() {
        for (j, need) in pass.needs.iter().enumerate() {
            let field = format!("pass[{i}].needs[{j}].path");
            if !p.covers(&need.path) {
                let declared: Vec<String> = p
                    .resources
                    .iter()
                    .map(|r| r.path.to_string())
                    .chain(p.providers.iter().map(|pr| format!("api:{}", pr.name)))
                    .collect();
                err(
                    field,
                    format!(
                        "pass {:?} needs {}, which project {:?} does not declare (it declares: {})",
                        pass.name,
                        need.path,
                        p.name,
                        if declared.is_empty() { "nothing".to_string() } else { declared.join(", ") }
                    ),
                );
                continue;
            }
            let capacity = p.resources.iter().find(|r| r.path == need.path).and_then(|r| r.capacity).or_else(|| {
                p.providers.iter().find(|pr| need.path.as_str() == format!("api:{}", pr.name)).map(|pr| pr.concurrency)
            });
            if let Some(c) = capacity {
                if need.units > c {
                    err(
                        format!("pass[{i}].needs[{j}].units"),
                        format!("pass {:?} asks {} for {} units; it has {c}", pass.name, need.path, need.units),
                    );
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<FileError> {
        parse_workflow(text, "w.toml").expect_err("should be rejected")
    }

    fn pass(name: &str, role: &str, extra: &str) -> String {
        format!("[[pass]]\nname = \"{name}\"\nrole = \"{role}\"\n{extra}\n")
    }

    #[test]
    fn builtins_parse_and_the_demo_project_covers_their_needs() {
        let project = parse_project(DEMO_PROJECT, "projects/demo.toml").expect("demo project");
        assert_eq!(project.team, "platform");
        assert_eq!(project.providers.len(), 3);
        let local = project.providers.iter().find(|p| p.local).expect("a local provider");
        assert_eq!((local.name.as_str(), local.concurrency, local.hourly_micros), ("local-llama", 2, 400_000));
        for (name, text) in BUILTIN_WORKFLOWS {
            let w = parse_workflow(text, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(w.name, name);
            assert!(!w.description.is_empty());
            assert_eq!(builtin_workflow(name).as_ref(), Some(&w));
            let errors = check_against_project(&w, &project, name);
            assert!(errors.is_empty(), "{name}: {errors:?}");
            for (i, p) in w.passes.iter().enumerate() {
                assert!(p.run.is_empty(), "{name}: built-ins carry no executor payload");
                for a in &p.after {
                    assert!(w.passes[..i].iter().any(|q| &q.name == a), "{name}: {} before {a}", p.name);
                }
                if let Some(g) = &p.gate {
                    assert!(g.reviewer == Reviewer::Human || g.review_role != p.role, "{name}.{}", p.name);
                }
            }
        }
        let nf = builtin_workflow("new-feature").expect("new-feature");
        let names: Vec<&str> = nf.passes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["spec", "design", "ir", "validation", "generation", "verification", "integration"]);
        assert_eq!(nf.pass("design").map(|(_, p)| p.gate.as_ref().map(|g| g.reviewer)), Some(Some(Reviewer::Human)));
        let sec = builtin_workflow("security-incident").expect("security-incident");
        for name in ["patch", "deploy"] {
            let gate = sec.pass(name).and_then(|(_, p)| p.gate.clone()).expect("gate");
            assert_ne!(gate.reviewer, Reviewer::Agent, "{name} needs a human");
        }
        assert!(builtin_workflow("nope").is_none());
    }

    #[test]
    fn fields_parse_into_the_domain_types_in_topological_order() {
        let text = format!(
            "name = \"x\"\n{}{}",
            pass(
                "b",
                "implementer",
                "after = [\"a\"]\ntier = \"cheap\"\nneeds = [{ path = \"repo:app\", mode = \"exclusive\" }, \
                 { path = \"ci:runners\", units = 2 }]\nrequires = [\"gpu\"]\ntimeout = \"90s\"\nretries = 0\n\
                 run = { executor = \"scripted\", duration_ms = 800 }\n[pass.gate]\ncriteria = \"ok\"\n\
                 review_role = \"verifier\"\non_fail = \"send-back\"\nsend_back_to = \"a\"\nmax_failures = 2",
            ),
            pass("a", "analyst", "timeout = \"0\""),
        );
        let w = parse_workflow(&text, "w.toml").expect("valid");
        assert_eq!(w.passes.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let b = &w.passes[1];
        assert_eq!(b.tier, Some(Tier::Cheap));
        assert_eq!(b.needs[0].mode, Mode::Exclusive);
        assert_eq!((b.needs[1].mode, b.needs[1].units), (Mode::Shared, 2));
        assert_eq!(b.requires, [Capability::Gpu]);
        assert_eq!((b.timeout_ms, b.retries), (90_000, 0));
        let run: serde_json::Value = serde_json::from_slice(&b.run).expect("json");
        assert_eq!(run, serde_json::json!({"executor": "scripted", "duration_ms": 800}));
        let g = b.gate.as_ref().expect("gate");
        assert_eq!((g.reviewer, g.review_role, g.max_failures), (Reviewer::Agent, Role::Verifier, 2));
        assert_eq!(g.on_fail, OnFail::SendBack("a".into()));
        assert!(g.run.is_empty());
        let a = &w.passes[0];
        assert_eq!((a.timeout_ms, a.retries, a.tier, a.gate.is_none()), (0, 1, None, true));
    }

    #[test]
    fn a_cycle_is_reported_with_its_path() {
        let text = format!(
            "name = \"x\"\n{}{}{}",
            pass("spec", "specifier", "after = [\"design\"]"),
            pass("design", "architect", "after = [\"spec\"]"),
            pass("build", "implementer", "after = [\"design\"]"),
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "pass[0].after");
        assert_eq!(e[0].line, Some(5));
        assert!(e[0].message.contains("spec -> design -> spec"), "{}", e[0]);
        assert!(e[0].to_string().starts_with("w.toml:5: pass[0].after: cycle"), "{}", e[0]);
    }

    #[test]
    fn an_unknown_role_lists_the_choices_and_all_errors_are_reported() {
        let text = format!(
            "name = \"x\"\n{}{}",
            pass("a", "orchestrator", ""),
            pass("b", "implementer", "tier = \"huge\"\nafter = [\"zz\"]"),
        );
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!((e[0].field.as_str(), e[0].line), ("pass[0].role", Some(4)));
        assert!(e[0].message.contains("analyst, architect, specifier"), "{}", e[0]);
        assert_eq!(e[1].field, "pass[1].tier");
        assert!(e[1].message.contains("cheap, standard, frontier"), "{}", e[1]);
        assert_eq!(e[2].field, "pass[1].after[0]");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let text = format!(
            "name = \"x\"\n{}",
            pass(
                "a",
                "analyst",
                "colour = \"red\"\n[pass.gate]\ncriteria = \"c\"\nreview_role = \"verifier\"\nonfail = \"stop\""
            )
        );
        let e = errors(&text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!((e[0].field.as_str(), e[0].line), ("pass[0].colour", Some(5)));
        assert!(e[0].message.contains("unknown key"), "{}", e[0]);
        assert_eq!((e[1].field.as_str(), e[1].line), ("pass[0].gate.onfail", Some(9)));
        assert!(e[1].message.contains("on_fail"), "{}", e[1]);
    }

    #[test]
    fn send_back_must_name_an_ancestor() {
        let gate = |to: &str| {
            format!("[pass.gate]\ncriteria = \"c\"\nreview_role = \"verifier\"\non_fail = \"send-back\"\nsend_back_to = \"{to}\"")
        };
        let base = |to: &str| {
            format!(
                "name = \"x\"\n{}{}{}{}",
                pass("a", "analyst", ""),
                pass("side", "analyst", ""),
                pass("b", "architect", "after = [\"a\"]"),
                pass("c", "implementer", &format!("after = [\"b\"]\n{}", gate(to))),
            )
        };
        assert!(parse_workflow(&base("a"), "w.toml").is_ok(), "a transitive ancestor is fine");
        for to in ["side", "c", "nope"] {
            let e = errors(&base(to));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].field, "pass[3].gate.send_back_to");
        }
        assert!(errors(&base("side"))[0].message.contains("not an ancestor"));
        let no_target = format!(
            "name = \"x\"\n{}",
            pass("a", "analyst", "[pass.gate]\ncriteria = \"c\"\nreview_role = \"verifier\"\non_fail = \"send-back\"")
        );
        assert_eq!(errors(&no_target)[0].field, "pass[0].gate.send_back_to");
    }

    #[test]
    fn a_gate_is_never_reviewed_by_the_role_that_did_the_pass() {
        let text = format!(
            "name = \"x\"\n{}",
            pass("a", "verifier", "[pass.gate]\ncriteria = \"c\"\nreviewer = \"both\"\nreview_role = \"verifier\"")
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "pass[0].gate.review_role");
        let human =
            format!("name = \"x\"\n{}", pass("a", "verifier", "[pass.gate]\ncriteria = \"c\"\nreviewer = \"human\""));
        let w = parse_workflow(&human, "w.toml").expect("a human gate needs no review role");
        assert_eq!(w.passes[0].gate.as_ref().map(|g| g.review_role), Some(Role::Analyst));
        let missing = format!("name = \"x\"\n{}", pass("a", "verifier", "[pass.gate]\ncriteria = \"c\""));
        assert_eq!(errors(&missing)[0].field, "pass[0].gate.review_role");
    }

    #[test]
    fn bounds_and_names_are_checked() {
        let e = errors("name = \"Bad Name\"\ndescription = 3\n");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["pass", "name", "description"], "{e:?}");
        let text = format!(
            "name = \"x\"\n{}{}",
            pass("a", "analyst", "retries = 16\ntimeout = \"25h\"\nneeds = [{ path = \"bad\" }]\nrequires = [\"tpu\"]"),
            pass("a", "analyst", "timeout = \"10 minutes\""),
        );
        let e = errors(&text);
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "pass[0].retries",
                "pass[0].timeout",
                "pass[0].needs[0].path",
                "pass[0].requires[0]",
                "pass[1].name",
                "pass[1].timeout"
            ],
            "{e:?}"
        );
        assert!(e[0].message.contains("maximum 15"), "{}", e[0]);
        assert!(e[1].message.contains("0..=24h"), "{}", e[1]);
        assert!(e[2].message.contains("kind:name"), "{}", e[2]);
        let e = errors("name = \"x\"\n[[pass]\n");
        assert!(e[0].field.is_empty() && e[0].line == Some(2), "{e:?}");
        let too_many: String =
            (0..=WORKFLOW_PASSES_MAX).map(|i| pass(&format!("p{i}"), "analyst", "")).collect::<String>();
        let e = errors(&format!("name = \"x\"\n{too_many}"));
        assert!(e[0].message.contains(&format!("at most {WORKFLOW_PASSES_MAX}")), "{e:?}");
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert!(parse_duration_ms("1.5s").is_err() && parse_duration_ms("s").is_err());
    }

    #[test]
    fn a_cloud_model_without_a_price_is_rejected() {
        let text = "name = \"p\"\nteam = \"t\"\n[[provider]]\nname = \"cloud\"\nkind = \"anthropic\"\n\
                    endpoint = \"https://api.anthropic.com\"\nconcurrency = 5\n\
                    models = { cheap = \"haiku\", standard = \"sonnet\" }\n[price.haiku]\ninput = \"1\"\noutput = \"5\"\n";
        let e = parse_project(text, "p.toml").expect_err("sonnet has no price");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].field.as_str(), e[0].line), ("provider[0].models.standard", Some(8)));
        assert!(e[0].message.contains("\"sonnet\" has no price"), "{}", e[0]);
        let bad_price =
            text.replace("models = { cheap = \"haiku\", standard = \"sonnet\" }", "models = { cheap = \"haiku\" }");
        let e =
            parse_project(&bad_price.replace("input = \"1\"", "input = \"abc\""), "p.toml").expect_err("bad amount");
        assert_eq!(e.len(), 1, "a priced model with a bad amount is not also unpriced: {e:?}");
        assert_eq!(e[0].field, "price.haiku.input");

        let local = "name = \"p\"\nteam = \"t\"\n[[provider]]\nname = \"box\"\nkind = \"openai\"\n\
                     endpoint = \"http://127.0.0.1:8080/v1\"\nlocal = true\nconcurrency = 1\nmodels = { cheap = \"q\" }\n";
        let e = parse_project(local, "p.toml").expect_err("a local provider needs hourly");
        assert_eq!(e[0].field, "provider[0].hourly");
        let p = parse_project(&format!("{local}hourly = \"0.25\"\n"), "p.toml").expect("valid");
        assert_eq!(p.providers[0].hourly_micros, 250_000);
        assert!(p.covers(&ResourcePath::parse("api:box").expect("path")));
    }

    #[test]
    fn project_fields_are_checked() {
        let text = "name = \"p\"\nteam = \"t\"\nowner = \"me\"\n[[resource]]\npath = \"pg:x\"\npolicy = \"steal\"\n\
                    grace = \"50ms\"\n[[resource]]\npath = \"pg:x\"\ncapacity = 0\n[[provider]]\nname = \"c\"\n\
                    kind = \"grpc\"\nendpoint = \"ftp://x\"\nconcurrency = 20000\nmodels = { huge = \"m\" }\n";
        let e = parse_project(text, "p.toml").expect_err("invalid");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "owner",
                "resource[0].policy",
                "resource[0].grace",
                "resource[1].path",
                "resource[1].capacity",
                "provider[0].kind",
                "provider[0].endpoint",
                "provider[0].concurrency",
                "provider[0].models.huge",
            ],
            "{e:?}"
        );
        assert!(e[1].message.contains("none, preempt, inherit"), "{}", e[1]);
        let p = parse_project("name = \"p\"\nteam = \"t\"\n[[resource]]\npath = \"gpu:a\"\n", "p.toml").expect("ok");
        assert_eq!((p.resources[0].policy.as_str(), p.resources[0].grace_ms), ("none", 5_000));
    }

    #[test]
    fn needs_outside_the_project_are_named() {
        let project = parse_project(DEMO_PROJECT, "demo.toml").expect("demo");
        let text = format!(
            "name = \"x\"\n{}",
            pass(
                "a",
                "analyst",
                "needs = [{ path = \"pg:staging/table:orders\" }, { path = \"pg:prod\" }, \
                 { path = \"ci:runners\", units = 5 }, { path = \"api:anthropic\" }]",
            )
        );
        let w = parse_workflow(&text, "w.toml").expect("valid");
        let e = check_against_project(&w, &project, "w.toml");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["pass[0].needs[1].path", "pass[0].needs[2].units"], "{e:?}");
    }

    #[test]
    fn classes_map_to_priorities() {
        assert_eq!(class_priority("incident"), Some(1000));
        assert_eq!(class_priority("docs"), Some(100));
        assert_eq!(class_priority("chore"), None);
        assert!(CLASSES.windows(2).all(|w| w[0].1 > w[1].1));
    }

    #[test]
    fn file_errors_display_file_line_field_message() {
        let e = FileError { file: "f.toml".into(), line: Some(3), field: "pass[0].role".into(), message: "bad".into() };
        assert_eq!(e.to_string(), "f.toml:3: pass[0].role: bad");
        let e = FileError { line: None, ..e };
        assert_eq!(e.to_string(), "f.toml: pass[0].role: bad");
    }
}
