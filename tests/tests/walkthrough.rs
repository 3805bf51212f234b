//! A terminal walk-through, as a newcomer does it: `qm dev` in one tmux window, the README's
//! lease commands in others, keys typed with `send-keys` and screens read with
//! `capture-pane`. Ctrl-C on a queued `qm reserve run` withdraws it (the next waiter is
//! granted the moment the holder releases, and `qm reserve list --pending` no longer shows
//! it); a SIGKILLed `qm reserve run` holder's lease is freed within its short session TTL.

use std::process::Command;
use std::time::Duration;

use qm_tests::{eventually, free_port, qm_bin};

/// A tmux server of this test's own (its own socket), stopped when dropped.
struct Tmux {
    socket: String,
    env: String,
}

impl Tmux {
    fn start(env: &[(&str, String)]) -> Tmux {
        let socket = format!("qm-walkthrough-{}", std::process::id());
        let env = env.iter().map(|(k, v)| format!("{k}='{v}'")).collect::<Vec<_>>().join(" ");
        let t = Tmux { socket, env };
        t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "walk",
            "-n",
            "dev",
            "-x",
            "200",
            "-y",
            "50",
            &t.shell(),
        ]);
        t
    }

    /// A clean shell with the test's environment and nothing of the caller's QM_* settings.
    fn shell(&self) -> String {
        format!("env -u QM_TOKEN -u QM_TOKEN_FILE -u QM_CONFIG -u XDG_CONFIG_HOME -u XDG_STATE_HOME {} bash --norc --noprofile", self.env)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn window(&self, name: &str) {
        self.tmux(&["new-window", "-d", "-t", "walk", "-n", name, &self.shell()]);
    }

    /// Types `line` into window `name` and presses Enter.
    fn type_line(&self, name: &str, line: &str) {
        let target = format!("walk:{name}");
        self.tmux(&["send-keys", "-t", &target, "-l", line]);
        self.tmux(&["send-keys", "-t", &target, "Enter"]);
    }

    fn ctrl_c(&self, name: &str) {
        self.tmux(&["send-keys", "-t", &format!("walk:{name}"), "C-c"]);
    }

    /// What window `name` shows, its scrollback included.
    fn screen(&self, name: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-500", "-t", &format!("walk:{name}")])
    }

    /// Waits until window `name` shows `text`; returns the screen.
    async fn until_shows(&self, name: &str, text: &str, within: Duration) -> String {
        eventually(&format!("window {name} shows {text:?}"), within, || async {
            let screen = self.screen(name);
            if screen.contains(text) {
                Ok(screen)
            } else {
                Err(screen)
            }
        })
        .await
    }

    /// Waits until window `name` shows a line that is exactly `line` (not the typed command
    /// that will print it).
    async fn until_line(&self, name: &str, line: &str, within: Duration) {
        eventually(&format!("window {name} prints {line:?}"), within, || async {
            let screen = self.screen(name);
            if screen.lines().any(|l| l.trim() == line) {
                Ok(())
            } else {
                Err(screen)
            }
        })
        .await
    }

    /// The process id of the shell in window `name`.
    fn shell_pid(&self, name: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", &format!("walk:{name}"), "#{pane_pid}"]).trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// The children of process `pid`.
fn children(pid: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-P", pid]).output().expect("run pgrep");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// `qm ARGS -o json` run directly (not through tmux) against the walk-through's `qm dev`.
fn qm_json(env: &[(&str, String)], args: &[&str]) -> serde_json::Value {
    let mut command = Command::new(qm_bin());
    command.args(args).args(["-o", "json"]);
    for k in ["QM_TOKEN", "QM_TOKEN_FILE", "QM_CONFIG", "XDG_CONFIG_HOME", "XDG_STATE_HOME"] {
        command.env_remove(k);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run qm");
    assert!(out.status.success(), "qm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn owners(list: &serde_json::Value, key: &str) -> Vec<String> {
    list[key].as_array().expect(key).iter().map(|r| r["owner"].as_str().expect("owner").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_session_ctrl_c_withdraws_a_queued_run_and_a_killed_holder_frees_its_lease() {
    let home = tempfile::tempdir().expect("home");
    let (grpc, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let bin_dir = qm_bin().parent().expect("bin dir").display().to_string();
    let env = vec![
        ("PATH", format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default())),
        ("HOME", home.path().display().to_string()),
        ("QM_ENDPOINT", grpc.clone()),
    ];
    let t = Tmux::start(&env);
    t.type_line("dev", &format!("qm dev --no-demo --listen {grpc} --admin-listen {admin}"));
    t.until_shows("dev", "qm dev: serving", Duration::from_secs(120)).await;

    // The README's first lease, held from a window of its own.
    t.window("holder");
    t.type_line("holder", "qm reserve acquire pg:staging --mode exclusive");
    let screen = t.until_shows("holder", "release with: ", Duration::from_secs(30)).await;
    let release = screen
        .lines()
        .find_map(|l| l.split("release with: ").nth(1))
        .expect("the release command the acquire printed")
        .trim()
        .to_string();

    // Two `reserve run`s queue behind it, each in its window.
    for (name, word) in [("first", "first-ran"), ("second", "second-ran")] {
        t.window(name);
        t.type_line(name, &format!("qm reserve run pg:staging --mode exclusive -- echo {word}"));
        let want = if name == "first" { 1 } else { 2 };
        eventually(&format!("{name} queues"), Duration::from_secs(30), || async {
            let pending = owners(&qm_json(&env, &["reserve", "list", "--pending"]), "pending");
            if pending.len() == want {
                Ok(())
            } else {
                Err(format!("{pending:?}"))
            }
        })
        .await;
    }

    // Ctrl-C on the first: its request leaves the queue, and its command never runs.
    t.ctrl_c("first");
    eventually("the interrupted run leaves the queue", Duration::from_secs(30), || async {
        let pending = owners(&qm_json(&env, &["reserve", "list", "--pending"]), "pending");
        if pending.len() == 1 {
            Ok(())
        } else {
            Err(format!("{pending:?}"))
        }
    })
    .await;
    // The shell prompt is back and the interrupted command said why it stopped.
    t.type_line("first", "echo exit=$?");
    t.until_line("first", "exit=130", Duration::from_secs(30)).await;

    // The holder releases: the second waiter runs, the withdrawn one never does.
    t.type_line("holder", &release);
    t.until_line("second", "second-ran", Duration::from_secs(30)).await;
    let first = t.screen("first");
    assert!(!first.lines().any(|l| l.trim() == "first-ran"), "the withdrawn run never ran:\n{first}");
    assert!(first.contains("interrupted: request"), "it says it withdrew its request:\n{first}");
    let pending = owners(&qm_json(&env, &["reserve", "list", "--pending"]), "pending");
    assert!(pending.is_empty(), "nothing waits any more: {pending:?}");

    // A holder whose `qm` is SIGKILLed: its short session lapses and the lease is free again.
    t.window("killed");
    t.type_line("killed", "qm reserve run pg:orders --mode exclusive --session-ttl-ms 2000 -- sleep 600");
    eventually("the run holds pg:orders", Duration::from_secs(30), || async {
        let held = owners(&qm_json(&env, &["reserve", "list", "--prefix", "pg:orders"]), "reservations");
        if held.len() == 1 {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    })
    .await;
    let qm = children(&t.shell_pid("killed"));
    assert_eq!(qm.len(), 1, "the window's shell runs one qm: {qm:?}");
    let sleeper = children(&qm[0]);
    let status = Command::new("kill").args(["-KILL", &qm[0]]).status().expect("kill");
    assert!(status.success());
    t.type_line("holder", "qm reserve acquire pg:orders --mode exclusive --wait --timeout-ms 60000");
    t.until_shows("holder", "exclusive pg:orders token=", Duration::from_secs(90)).await;
    for pid in sleeper {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }

    // Ctrl-C stops `qm dev` too.
    t.ctrl_c("dev");
    t.type_line("dev", "echo dev-exit=$?");
    t.until_line("dev", "dev-exit=0", Duration::from_secs(60)).await;
}
