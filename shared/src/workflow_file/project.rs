//! Project files: resources, providers and prices; and the check of a workflow against a
//! project (every need declared, no counted resource asked for more units than it has).

use std::collections::{BTreeMap, BTreeSet};

use toml::de::DeValue;

use crate::limits::*;
use crate::validate;
use crate::workflow::{Price, Project, ProjectResource, Provider, Workflow};
use crate::{ResourcePath, Tier};

use super::document::*;
use super::FileError;

const PROJECT_KEYS: &[&str] = &["name", "team", "repos", "tools", "resource", "provider", "price"];
const RESOURCE_KEYS: &[&str] = &["path", "capacity", "policy", "grace"];
const PROVIDER_KEYS: &[&str] = &["name", "kind", "endpoint", "local", "concurrency", "models", "hourly"];
const PRICE_KEYS: &[&str] = &["input", "output", "cached"];
const POLICIES: &[&str] = &["none", "preempt", "inherit"];
const PROVIDER_KINDS: &[&str] = &["openai", "anthropic"];

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
