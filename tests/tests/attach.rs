//! Attach and detach, as a user at a terminal does it (tmux at 80×24): `sandbox create
//! -- CMD` runs CMD on a pty its session keeper holds; Ctrl-P Ctrl-Q detaches and leaves
//! it running; `sandbox connect` attaches again with the screen replayed and returns its
//! exit status; `connect --shell` opens a new shell beside it; the window size follows;
//! `--no-keep` takes the sandbox with the command; the replay is bounded (1 MiB).

use std::process::{Command, Stdio};

use openshell_tests::tmux::{Tmux, quote};
use openshell_tests::{Sandbox, eventually, need, need_sandbox, openshell_bin, stderr, stdout};

fn need_tmux() {
    need(
        "tmux",
        openshell_tests::tmux::available(),
        "tmux is not installed (apt install tmux)",
    );
}

/// `openshell ARGS; echo TAG=$?` in tmux, with the sandbox's state dir.
fn in_tmux(sb: &Sandbox, args: &str, tag: &str) -> Tmux {
    Tmux::start(&format!(
        "env OPENSHELL_STATE_DIR={} {} {args}; echo {tag}=$?; sleep 600",
        quote(&sb.state.path().to_string_lossy()),
        quote(&openshell_bin().to_string_lossy()),
    ))
}

fn phase(sb: &Sandbox, name: &str) -> String {
    let o = sb.cli(&["sandbox", "get", name, "-o", "json"]);
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .ok()
        .and_then(|v| v["phase"].as_str().map(str::to_string))
        .unwrap_or_else(|| "absent".into())
}

fn detach_attach_and_the_exit_status() {
    need_sandbox!();
    need_tmux();
    let sb = Sandbox::new();
    let cmd = "sandbox create --name at1 -- sh -c 'echo started; while read l; do echo got:$l; done; exit 5'";
    let t = in_tmux(&sb, cmd, "CREATE_RC");
    t.wait_for("started");
    t.keys(&["abc", "Enter"]);
    t.wait_for("got:abc");
    t.keys(&["C-p", "C-q"]);
    let s = t.wait_for("CREATE_RC=0");
    assert!(s.contains("detached from at1; it keeps running"), "{s}");
    assert_eq!(phase(&sb, "at1"), "Ready");
    let o = sb.cli(&["logs", "at1", "--source", "sandbox"]);
    assert!(stdout(&o).contains("got:abc"), "{}", stdout(&o));
    // Still running: input typed now reaches it once attached again.
    let t = in_tmux(&sb, "sandbox connect at1", "CONNECT_RC");
    let s = t.wait_for("attached to at1's first command");
    assert!(s.contains("got:abc"), "the screen came back: {s}");
    t.keys(&["xyz", "Enter"]);
    t.wait_for("got:xyz");
    // Ctrl-P alone is a key like any other.
    t.keys(&["C-p", "q", "Enter"]);
    t.wait_for("got:");
    t.keys(&["C-d"]);
    t.wait_for("CONNECT_RC=5");
    // It ended: connect opens a shell now.
    let t = in_tmux(&sb, "sandbox connect at1", "RC");
    t.wait_for("sandbox@at1");
    t.keys(&["exit", "Enter"]);
    t.wait_for("RC=0");
}

fn a_shell_beside_the_window_size_and_no_keep() {
    need_sandbox!();
    need_tmux();
    let sb = Sandbox::new();
    // The default command is a login shell; its size follows the terminal.
    let t = in_tmux(&sb, "sandbox create --name at2", "CREATE_RC");
    t.wait_for("sandbox@at2");
    t.keys(&["stty size", "Enter"]);
    t.wait_for("24 80");
    t.resize(100, 30);
    std::thread::sleep(std::time::Duration::from_millis(500));
    t.keys(&["clear; stty size", "Enter"]);
    t.wait_for("30 100");
    t.keys(&["C-p", "C-q"]);
    t.wait_for("CREATE_RC=0");
    // --shell: a new shell while the first still runs.
    let t2 = in_tmux(&sb, "sandbox connect at2 --shell", "RC");
    t2.wait_for("sandbox@at2");
    t2.keys(&["echo second-$((6*7))", "Enter"]);
    t2.wait_for("second-42");
    t2.keys(&["exit", "Enter"]);
    t2.wait_for("RC=0");
    // Back to the first: exit ends it, and connect returns its status.
    let t3 = in_tmux(&sb, "sandbox connect at2", "RC");
    // The replay brings back the screen (after its `clear`, so not the attach notice).
    t3.wait_for("30 100");
    t3.keys(&["exit 3", "Enter"]);
    t3.wait_for("RC=3");
    drop(t);
    // --no-keep with a terminal: the sandbox goes with its command.
    let t = in_tmux(
        &sb,
        "sandbox create --name at3 --no-keep -- sh -c 'exit 4'",
        "RC",
    );
    t.wait_for("RC=4");
    assert_eq!(phase(&sb, "at3"), "absent");
}

/// A command that stops reading its input (raw mode, never a read) does not take the
/// way out: after a paste far larger than every buffer on the way, Ctrl-P Ctrl-Q still
/// detaches, and the terminal comes back in its normal mode.
fn a_command_that_never_reads_cannot_hold_the_terminal() {
    need_sandbox!();
    need_tmux();
    let sb = Sandbox::new();
    let name = format!("st{}", std::process::id());
    let cmd = format!(
        "sandbox create --name {name} -- sh -c 'stty raw -echo; printf \"\\033[?1049h\\033[?1000h\\033[>4;2m\"; echo stalled; sleep 600'"
    );
    let t = in_tmux(&sb, &cmd, "CREATE_RC");
    t.wait_for("stalled");
    let chunk = "y".repeat(64 << 10);
    for _ in 0..48 {
        t.paste(&chunk);
    }
    t.keys(&["C-p", "C-q"]);
    let s = t.wait_for("CREATE_RC=0");
    assert!(s.contains(&format!("detached from {name}")), "{s}");
    // The terminal is in its normal mode again (what is typed is echoed: the raw,
    // no-echo mode the command set is gone), on the main screen, without mouse reporting.
    t.keys(&["typed-after-detach"]);
    t.wait_for("typed-after-detach");
    let o = t
        .cmd()
        .args(["display", "-p", "#{alternate_on}#{mouse_any_flag}"])
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), "00", "alternate screen / mouse left on");
    assert_eq!(phase(&sb, &name), "Ready");
    // Deleted, the sandbox takes its session keeper with it, even with a write to the
    // pty still blocked.
    assert!(sb.cli(&["sandbox", "delete", &name]).status.success());
    let keeper = format!("__session {name}");
    assert!(
        eventually(10, || openshell_tests::processes_with(&keeper).is_empty()),
        "left: {:?}",
        openshell_tests::processes_with(&keeper)
    );
}

/// A large paste into a command that reads slowly arrives whole, in order: held by the
/// client, not dropped.
fn a_large_paste_arrives_whole() {
    need_sandbox!();
    need_tmux();
    let sb = Sandbox::new();
    let cmd = "sandbox create --name pa -- sh -c 'stty raw -echo; echo ready; sleep 4; head -c 6291456 | md5sum; sleep 600'";
    let t = in_tmux(&sb, cmd, "CREATE_RC");
    t.wait_for("ready");
    let chunk: String = (0..(64 << 10))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    for _ in 0..96 {
        t.paste(&chunk);
    }
    let mut all = String::new();
    for _ in 0..96 {
        all.push_str(&chunk);
    }
    let o = Command::new("md5sum")
        .stdin({
            let p = std::env::temp_dir().join(format!("paste-{}", std::process::id()));
            std::fs::write(&p, &all).unwrap();
            std::fs::File::open(&p).unwrap()
        })
        .output()
        .unwrap();
    let want = stdout(&o).split_whitespace().next().unwrap().to_string();
    t.wait_for(&want);
    t.keys(&["C-p", "C-q"]);
    t.wait_for("CREATE_RC=0");
}

/// A client that attaches late gets at most the last MiB of output, ending with the
/// newest.
fn the_replay_is_bounded() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "big",
        "--detach",
        "--",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END; sleep 60",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(30, || stdout(
        &sb.cli(&["logs", "big", "--source", "sandbox"])
    )
    .contains("END")));
    let o = Command::new("timeout")
        .arg("3")
        .arg(openshell_bin())
        .args(["sandbox", "connect", "big"])
        .env("OPENSHELL_STATE_DIR", sb.state.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let n = o.stdout.len();
    assert!(
        ((1 << 20) - 4096..=1 << 20).contains(&n),
        "replayed {n} bytes: {}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("END\r\n"));
    assert!(
        sb.cli(&["sandbox", "delete", "big", "--force"])
            .status
            .success()
    );
}

openshell_tests::suite!(
    detach_attach_and_the_exit_status,
    a_shell_beside_the_window_size_and_no_keep,
    a_command_that_never_reads_cannot_hold_the_terminal,
    a_large_paste_arrives_whole,
    the_replay_is_bounded,
);
