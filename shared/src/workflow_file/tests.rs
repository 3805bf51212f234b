//! Tests of workflow and project files: every error names file, line and field.

use super::*;
use crate::duration::parse_duration_ms;
use crate::limits::WORKFLOW_PASSES_MAX;
use crate::workflow::{Capability, OnFail, Reviewer};
use crate::{Mode, ResourcePath, Role, Tier};

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
            // Built-ins leave the executor to the work item, except `ticket`, whose passes are
            // real agents and the repository's test command.
            assert_eq!(p.run.is_empty(), name != "ticket", "{name}: executor payloads");
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
    let too_many: String = (0..=WORKFLOW_PASSES_MAX).map(|i| pass(&format!("p{i}"), "analyst", "")).collect::<String>();
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
    let e = parse_project(&bad_price.replace("input = \"1\"", "input = \"abc\""), "p.toml").expect_err("bad amount");
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
