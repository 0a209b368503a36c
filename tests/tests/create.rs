//! `openshell sandbox create` as a user drives it: detached sandboxes that stay Ready
//! with no command, attached commands after which the sandbox stays (or goes with
//! --no-keep), duplicates refused, and a stopped sandbox that keeps its files.

use std::process::{Output, Stdio};

use openshell_tests::{Sandbox, need_sandbox, stderr, stdout};

fn cli(sb: &Sandbox, args: &[&str]) -> Output {
    sb.cmd()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openshell")
}

fn phase(sb: &Sandbox, name: &str) -> String {
    let o = cli(sb, &["sandbox", "get", name, "-o", "json"]);
    if !o.status.success() {
        return "absent".into();
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["phase"].as_str().unwrap().to_string()
}

#[test]
fn create_detached_attached_and_no_keep() {
    need_sandbox!();
    let sb = Sandbox::new();
    // Detached: returns once Ready, with nothing running but init.
    let o = cli(
        &sb,
        &[
            "sandbox", "create", "--name", "bg", "--detach", "--label", "k=v",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "bg\n");
    assert_eq!(phase(&sb, "bg"), "Ready");
    let o = cli(
        &sb,
        &[
            "sandbox",
            "exec",
            "bg",
            "--",
            "sh",
            "-c",
            "ls /proc | grep -c '^[0-9]'; id -u",
        ],
    );
    assert_eq!(
        stdout(&o),
        "4\n1000\n",
        "init, sh, ls, grep only: {}",
        stderr(&o)
    );
    let o = cli(&sb, &["sandbox", "list", "-q", "--selector", "k=v"]);
    assert_eq!(stdout(&o), "bg\n");
    // The same name again is refused, saying so.
    let o = cli(&sb, &["sandbox", "create", "--name", "bg", "--detach"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("a sandbox named bg already exists"),
        "{}",
        stderr(&o)
    );

    // Attached: the command's output and exit status; the sandbox stays Ready.
    let o = cli(
        &sb,
        &[
            "sandbox",
            "create",
            "--name",
            "fg",
            "--",
            "sh",
            "-c",
            "echo made > /sandbox/f; echo out; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(phase(&sb, "fg"), "Ready");
    assert_eq!(
        stdout(&cli(
            &sb,
            &["sandbox", "exec", "fg", "--", "cat", "/sandbox/f"]
        )),
        "made\n"
    );

    // Stop keeps it (files too); delete takes it.
    assert!(cli(&sb, &["sandbox", "stop", "fg"]).status.success());
    assert_eq!(phase(&sb, "fg"), "Stopped");
    let v: serde_json::Value =
        serde_json::from_slice(&cli(&sb, &["sandbox", "get", "fg", "-o", "json"]).stdout).unwrap();
    let ws = std::path::PathBuf::from(v["path"].as_str().unwrap()).join("workspace/f");
    assert_eq!(std::fs::read_to_string(ws).unwrap(), "made\n");

    // --no-keep: gone after the command.
    let o = cli(
        &sb,
        &[
            "sandbox",
            "create",
            "--name",
            "once",
            "--no-keep",
            "--",
            "true",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(phase(&sb, "once"), "absent");

    assert!(cli(&sb, &["sandbox", "delete", "--all"]).status.success());
    assert_eq!(stdout(&cli(&sb, &["sandbox", "list", "-q"])), "");
    let logs: Vec<_> = std::fs::read_dir(sb.state.path().join("supervisors"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(logs.is_empty(), "supervisor logs left: {logs:?}");
    let o = cli(
        &sb,
        &["sandbox", "create", "--name", "Bad Name", "--detach"],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("invalid sandbox name"),
        "{}",
        stderr(&o)
    );
}
