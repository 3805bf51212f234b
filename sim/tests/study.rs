//! Level A in the default test run: a short slice of each shipped scenario, the same seed
//! giving the same run, and scenario errors that name the field.

use std::path::Path;

use qm_sim::study::{self, scenario};

fn shipped(name: &str) -> scenario::Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name);
    scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// The scenario cut to its first simulated hours, so a debug build runs it in seconds.
fn slice(mut sc: scenario::Scenario, hours: u64) -> scenario::Scenario {
    sc.duration_ms = hours * 3_600_000;
    for a in &mut sc.arrivals {
        a.until_ms = a.until_ms.min(sc.duration_ms);
    }
    sc
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let sc = slice(shipped("standup-rush.toml"), 2);
    let a = study::run(&sc, "base", &sc.policies, 7);
    let b = study::run(&sc, "base", &sc.policies, 7);
    let c = study::run(&sc, "base", &sc.policies, 8);
    assert_eq!(a.state_digest, b.state_digest);
    assert_eq!(a.commands, b.commands);
    assert_eq!(a.classes, b.classes);
    assert_ne!(a.state_digest, c.state_digest);
    assert!(a.items_submitted > 0 && a.attempts_started > 0, "{}", a.table());
}

#[test]
fn the_stand_up_rush_queues_on_staging_and_the_fleet_does_work() {
    let sc = slice(shipped("standup-rush.toml"), 3);
    let r = study::run(&sc, "base", &sc.policies, sc.seed);
    // Twenty-four features arrive together at 1h and contend for four schemas.
    let staging = r.resources.iter().find(|x| x.path == "pg:staging").expect("row");
    assert!(staging.grants > 0 && staging.peak_waiters > 0, "{}", r.table());
    assert!(r.passes_succeeded > 0 && r.items_completed > 0, "{}", r.table());
    assert_eq!(r.expiries, 0, "leases are kept alive while held");
    // Every pass that started waited a measured time, and the CDF ends at 1.
    for c in &r.classes {
        if c.starts > 0 {
            assert!((c.cdf.last().copied().unwrap_or(0.0) - 1.0).abs() < 1e-9, "{c:?}");
        }
    }
    let html = study::html::run_page(&sc, &r);
    assert!(html.contains("<svg") && html.contains("pg:staging"));
}

#[test]
fn re_planning_keeps_implementers_busy_while_migrations_wait() {
    let sc = slice(shipped("replan-under-contention.toml"), 3);
    let on = sc.variants.iter().find(|v| v.name == "re-plan on").expect("variant");
    let off = sc.variants.iter().find(|v| v.name == "re-plan off").expect("variant");
    let cmp = study::compare(&sc, &[on.clone(), off.clone()], sc.seed);
    let (on, off) = (&cmp.runs[0], &cmp.runs[1]);
    assert!(on.replans > 0 && on.replan_starts > 0, "{}", cmp.table());
    assert_eq!(off.replans, 0);
    // Both see the same arrivals.
    assert_eq!(on.items_submitted, off.items_submitted);
}

#[test]
fn scenario_errors_name_the_file_line_and_field() {
    let read = |_: &str| -> Result<String, String> { Err("no files here".into()) };
    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/standup-rush.toml")).unwrap();

    // Checks after parsing name the line of their field, like syntax errors do.
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let bad = base.replace("class = \"hotfix\"", "class = \"urgent\"");
    let e = scenario::parse(&bad, "s.toml", &read).unwrap_err();
    let class = e
        .iter()
        .find(|e| e.field.ends_with(".class") && e.message.contains("incident"))
        .unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(class.line, Some(line_of(&bad, "class = \"urgent\"")), "{class}");
    assert!(class.to_string().starts_with(&format!("s.toml:{}: ", line_of(&bad, "urgent"))), "{class}");

    let bad = base.replace("duration = \"8h\"", "duration = \"8 weeks\"");
    let e = scenario::parse(&bad, "s.toml", &read).unwrap_err();
    let duration = e.iter().find(|e| e.field == "duration").unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(duration.line, Some(line_of(&bad, "8 weeks")), "{duration}");

    let bad = base.replace("count = 24", "count = 24\ncolour = \"red\"");
    let e = scenario::parse(&bad, "s.toml", &read).unwrap_err();
    assert!(e[0].line.is_some() && e[0].message.contains("colour"), "{e:?}");

    let bad = base.replace(", monitor = 1", "");
    let e = scenario::parse(&bad, "s.toml", &read).unwrap_err();
    assert!(e.iter().any(|e| e.message.contains("monitor")), "{e:?}");

    let bad = base.replace("\"search\"]", "\"search\", \"x y\"]");
    let e = scenario::parse(&bad, "s.toml", &read).unwrap_err();
    assert!(!e.is_empty(), "a pick value that makes a bad path is refused");
}
