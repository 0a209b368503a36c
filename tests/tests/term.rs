//! `openshell term` as a user sees it: run in a real tmux at 80×24, driven with
//! `send-keys`, checked with `capture-pane` — the table, the followed log with its
//! denial highlighted, the policy pane, the filter, delete with its question, a shell
//! and back, a sandbox made meanwhile appearing, and the terminal given back (canonical
//! mode, normal screen) after `q` and after a panic.

use std::path::Path;
use std::process::Stdio;

use openshell_tests::tmux::{Tmux, quote};
use openshell_tests::{Sandbox, need, need_upstream, openshell_bin, stderr, stdout, up};

/// Start `openshell term ARGS` with `env` in an 80×24 tmux pane; after it ends the pane
/// prints the terminal's canonical-mode flag and `EXITED`, then waits.
fn start(env: &[(&str, &Path)], extra_env: &[(&str, &str)], args: &str) -> Tmux {
    let mut line = String::from("env");
    for (k, v) in env {
        line.push_str(&format!(" {k}={}", quote(&v.to_string_lossy())));
    }
    for (k, v) in extra_env {
        line.push_str(&format!(" {k}={}", quote(v)));
    }
    line.push_str(&format!(
        " {} term {args}; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\?icanon'; echo EXITED; sleep 600",
        quote(&openshell_bin().to_string_lossy())
    ));
    Tmux::start(&line)
}

fn create(sb: &Sandbox, args: &[&str]) {
    let o = sb
        .cmd()
        .args(["sandbox", "create", "--detach"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "create {args:?}: {}", stderr(&o));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn the_dashboard_shows_follows_and_acts() {
    need_upstream!();
    need(
        "tmux",
        openshell_tests::tmux::available(),
        "tmux is not installed (apt install tmux)",
    );
    let host = up("OS_UPSTREAM_HOST");
    let sb = Sandbox::new();
    let port = free_port().to_string();
    create(&sb, &["--name", "tui-a"]);
    create(&sb, &["--name", "tui-b", "--forward", &port]);
    // A denial in tui-a's log (nothing leaves: the default policy allows no host).
    let o = sb
        .cmd()
        .args(["sandbox", "exec", "tui-a", "--", "curl", "-s", "-m", "5"])
        .arg(format!("http://{host}/"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success() || stdout(&o).contains("denied"));

    let state = sb.state.path().to_path_buf();
    let t = start(
        &[("OPENSHELL_STATE_DIR", &state), ("HOME", &state)],
        &[("PATH", &std::env::var("PATH").unwrap_or_default())],
        "",
    );
    let s = t.wait_for("sandboxes (2)");
    for want in ["NAME", "PHASE", "IMAGE", "PROVIDERS", "FORWARDS", "> tui-a"] {
        assert!(s.contains(want), "{want}:\n{s}");
    }
    let b = s.lines().find(|l| l.contains("tui-b")).unwrap_or_default();
    assert!(b.contains("Ready") && b.contains(&port), "{s}");
    assert!(s.lines().all(|l| l.chars().count() <= 80), "{s}");
    // tui-a's log, its denial highlighted (bold, red).
    let s = t.wait_for("NET:OPEN DENIED");
    assert!(s.contains("logs: tui-a (follow)"), "{s}");
    let colored = t.screen(true);
    let denied = colored
        .lines()
        .find(|l| l.contains("DENIED"))
        .unwrap_or_default();
    // Bold, then bright red (colour 9).
    assert!(
        denied.contains("\x1b[1m\x1b[38;5;9m"),
        "not highlighted: {denied:?}"
    );

    // ↓ selects tui-b; p shows its policy.
    t.keys(&["Down", "p"]);
    let s = t.wait_for("policy: tui-b");
    assert!(s.contains("> tui-b") && s.contains("Active:  yes"), "{s}");
    // ↓ in the pane scrolls the policy.
    t.keys(&["PageDown"; 4]);
    t.wait_for("network_policies");
    // The list filter.
    t.keys(&["Escape", "/", "t", "u", "i", "-", "a", "Enter"]);
    let s = t.wait_for("1 of 2, filter: tui-a");
    assert!(!s.contains("tui-b"), "{s}");
    t.keys(&["Escape"]);
    t.wait_for("sandboxes (2)");
    // The log filter, in the log pane.
    t.keys(&["l", "/", "C", "O", "N", "F", "I", "G", "Enter"]);
    let s = t.wait_for("filter: CONFIG");
    assert!(!s.contains("NET:OPEN"), "{s}");
    t.keys(&["Escape", "Escape"]);

    // A sandbox made meanwhile shows up without a key.
    create(&sb, &["--name", "tui-c"]);
    t.wait_for("sandboxes (3)");

    // A shell in the selected sandbox, and back.
    t.keys(&["s"]);
    t.wait_for("sandbox@tui-a");
    t.keys(&["echo in-$((6*7))", "Enter"]);
    t.wait_for("in-42");
    t.keys(&["exit", "Enter"]);
    t.wait_for("shell in tui-a ended");

    // Delete asks; n keeps, y deletes.
    t.keys(&["d"]);
    t.wait_for("delete sandbox tui-a? y/n");
    t.keys(&["n"]);
    t.wait_for("tui-a kept");
    t.keys(&["d"]);
    t.wait_for("delete sandbox tui-a? y/n");
    t.keys(&["y"]);
    t.wait_for("deleted tui-a");
    let list = stdout(&sb.cli(&["sandbox", "list", "-q"]));
    assert_eq!(list, "tui-b\ntui-c\n");

    // q gives the terminal back: canonical mode, the normal screen.
    t.keys(&["q"]);
    let s = t.wait_for("EXITED");
    assert!(
        s.lines().any(|l| l == "icanon") && !s.contains("sandboxes ("),
        "{s}"
    );
}

/// The terminal comes back after a panic too (debug builds can be told to panic), and
/// without a terminal `term` says what to use instead.
fn the_terminal_comes_back_after_a_panic() {
    openshell_tests::need_sandbox!();
    need(
        "tmux",
        openshell_tests::tmux::available(),
        "tmux is not installed (apt install tmux)",
    );
    let sb = Sandbox::new();
    let o = sb.cli(&["term"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("term needs a terminal"),
        "{}",
        stderr(&o)
    );
    let o = sb.cmd().args(["term", "--theme", "pink"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    if !cfg!(debug_assertions) {
        openshell_tests::skip("the panic switch exists in debug builds only");
    }
    let state = sb.state.path().to_path_buf();
    let t = start(
        &[("OPENSHELL_STATE_DIR", &state)],
        &[("OPENSHELL_TERM_TEST_PANIC", "1")],
        "--theme light",
    );
    let s = t.wait_for("EXITED");
    assert!(s.contains("OPENSHELL_TERM_TEST_PANIC"), "{s}");
    assert!(
        s.lines().any(|l| l == "icanon") && !s.contains("sandboxes ("),
        "{s}"
    );
}

openshell_tests::suite!(
    the_dashboard_shows_follows_and_acts,
    the_terminal_comes_back_after_a_panic,
);
