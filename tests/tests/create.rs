//! `openshell sandbox create` as a user drives it: detached sandboxes that stay Ready
//! with no command, attached commands after which the sandbox stays (or goes with
//! --no-keep), duplicates refused, and a stopped sandbox that keeps its files.

use std::process::Stdio;

use openshell_tests::{Sandbox, need_sandbox, stderr, stdout};

fn phase(sb: &Sandbox, name: &str) -> String {
    let o = sb.cli(&["sandbox", "get", name, "-o", "json"]);
    if !o.status.success() {
        return "absent".into();
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["phase"].as_str().unwrap().to_string()
}

fn create_detached_attached_and_no_keep() {
    need_sandbox!();
    let sb = Sandbox::new();
    // Detached: returns once Ready, with nothing running but init.
    let o = sb.cli(&[
        "sandbox", "create", "--name", "bg", "--detach", "--label", "k=v",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "bg\n");
    assert_eq!(phase(&sb, "bg"), "Ready");
    // Its init keeps no descriptor of the state directory (the name's lock, held by the
    // supervisor while init set up, was closed in init).
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sb.state.path().join("sandboxes/bg/sandbox.json")).unwrap(),
    )
    .unwrap();
    let init = rec["init_pid"].as_i64().expect("init_pid in the record");
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&sb.state.path().join("sandboxes").display().to_string()))
        .collect();
    assert!(held.is_empty(), "init holds {held:?}");
    // A command given with --detach runs in the background; its output is in the
    // sandbox's log (followed until it ends).
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "bg2",
        "--detach",
        "--",
        "sh",
        "-c",
        "echo hi; printf 'x\\rforged\\033[2K\\033[1mbold\\033[0m\\n'; sleep 1; echo done",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "bg2\n");
    let o = sb.cli(&["logs", "bg2", "--source", "sandbox", "-f"]);
    // Colours pass; other control characters are shown, not obeyed (--raw: as written).
    assert_eq!(
        stdout(&o),
        "hi\nx\\x{d}forged\\x{1b}[2K\x1b[1mbold\x1b[0m\ndone\n",
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["logs", "bg2", "--source", "sandbox", "--raw"]);
    assert_eq!(
        stdout(&o),
        "hi\nx\rforged\x1b[2K\x1b[1mbold\x1b[0m\ndone\n",
        "{}",
        stderr(&o)
    );
    // Among the supervisor's lines, control characters are escaped: no forged line.
    let all = stdout(&sb.cli(&["logs", "bg2"]));
    assert!(
        all.contains("CONFIG:LOADED")
            && all.ends_with("sandbox| hi\nsandbox| x\\x{d}forged\\x{1b}[2K\\x{1b}[1mbold\\x{1b}[0m\nsandbox| done\n"),
        "{all}"
    );
    assert!(sb.cli(&["sandbox", "delete", "bg2"]).status.success());
    let o = sb.cli(&[
        "sandbox",
        "exec",
        "bg",
        "--",
        "sh",
        "-c",
        // The shell lists /proc itself (no child racing the listing): what runs is
        // init and this shell, nothing else.
        "for p in /proc/[0-9]*; do read c < $p/comm; echo \"$c\"; done; id -u",
    ]);
    assert_eq!(
        stdout(&o),
        "openshell: init\nsh\n1000\n",
        "init and this sh only: {}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "list", "-q", "--selector", "k=v"]);
    assert_eq!(stdout(&o), "bg\n");
    // The same name again is refused, saying so.
    let o = sb.cli(&["sandbox", "create", "--name", "bg", "--detach"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("a sandbox named bg already exists"),
        "{}",
        stderr(&o)
    );

    // Attached: the command's output and exit status; the sandbox stays Ready.
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "fg",
        "--",
        "sh",
        "-c",
        "echo made > /sandbox/f; echo out; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(phase(&sb, "fg"), "Ready");
    assert_eq!(
        stdout(&sb.cli(&["sandbox", "exec", "fg", "--", "cat", "/sandbox/f"])),
        "made\n"
    );

    // Stop keeps it (files too); delete takes it.
    assert!(sb.cli(&["sandbox", "stop", "fg"]).status.success());
    assert_eq!(phase(&sb, "fg"), "Stopped");
    let v: serde_json::Value =
        serde_json::from_slice(&sb.cli(&["sandbox", "get", "fg", "-o", "json"]).stdout).unwrap();
    let ws = std::path::PathBuf::from(v["path"].as_str().unwrap()).join("workspace/f");
    assert_eq!(std::fs::read_to_string(ws).unwrap(), "made\n");

    // --no-keep: gone after the command.
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "once",
        "--no-keep",
        "--",
        "true",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(phase(&sb, "once"), "absent");

    assert!(sb.cli(&["sandbox", "delete", "--all"]).status.success());
    assert_eq!(stdout(&sb.cli(&["sandbox", "list", "-q"])), "");
    let logs: Vec<_> = std::fs::read_dir(sb.state.path().join("supervisors"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(logs.is_empty(), "supervisor logs left: {logs:?}");
    let o = sb.cli(&["sandbox", "create", "--name", "Bad Name", "--detach"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("invalid sandbox name"),
        "{}",
        stderr(&o)
    );
}

fn start_brings_a_stopped_sandbox_back_with_its_files_and_policy() {
    need_sandbox!();
    let sb = Sandbox::new();
    let dir = openshell_tests::TempDir::new("startpol");
    let allow = |host: &str| {
        format!(
            "version: 1\nnetwork_policies:\n  p:\n    name: p\n    endpoints:\n      - {{ host: {host}, port: 443 }}\n    binaries:\n      - {{ path: /usr/bin/curl }}\n"
        )
    };
    let v1 = openshell_tests::policy_file(dir.path(), "v1.yaml", &allow("one.example"));
    let v2 = openshell_tests::policy_file(dir.path(), "v2.yaml", &allow("two.example"));
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "s",
        "--label",
        "team=x",
        "--policy",
        v1.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo kept > /sandbox/f",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["policy", "set", "s", "--policy", v2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(sb.cli(&["sandbox", "stop", "s"]).status.success());
    assert_eq!(phase(&sb, "s"), "Stopped");

    let o = sb.cli(&["sandbox", "start", "s"]);
    assert_eq!(stdout(&o), "started s\n", "{}", stderr(&o));
    assert_eq!(phase(&sb, "s"), "Ready");
    let o = sb.cli(&["sandbox", "exec", "s", "--", "cat", "/sandbox/f"]);
    assert_eq!(stdout(&o), "kept\n", "{}", stderr(&o));
    assert_eq!(
        stdout(&sb.cli(&["sandbox", "list", "-q", "--selector", "team=x"])),
        "s\n"
    );
    let got = stdout(&sb.cli(&["policy", "get", "s", "--full"]));
    assert!(
        got.contains("two.example") && !got.contains("one.example"),
        "the live policy comes back: {got}"
    );

    let o = sb.cli(&["sandbox", "start", "s"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("sandbox s is already running"),
        "{}",
        stderr(&o)
    );
    sb.run(&["--keep", "--name", "r"], &["true"]);
    let o = sb.cli(&["sandbox", "start", "r"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("cannot be started"), "{}", stderr(&o));
    assert!(sb.cli(&["sandbox", "delete", "--all"]).status.success());
}

fn an_image_sandbox_starts_again_on_its_own_upper_dir() {
    need_sandbox!();
    let reg = std::env::var("OS_TEST_REGISTRY");
    openshell_tests::need(
        "registry",
        reg.is_ok(),
        "no test registry (sudo tests/env/up.sh; eval \"$(tests/env/env.sh)\")",
    );
    let reg = reg.unwrap_or_default();
    let sb = Sandbox::new();
    let img = format!("{reg}/busybox:latest");
    let os = |args: &[&str]| {
        sb.cmd()
            .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
            .env("HOME", sb.state.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = os(&[
        "sandbox",
        "create",
        "--name",
        "bb",
        "--from",
        &img,
        "--",
        "sh",
        "-c",
        "echo x > /sandbox/y",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(os(&["sandbox", "stop", "bb"]).status.success());
    let o = os(&["sandbox", "start", "bb"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = os(&[
        "sandbox",
        "exec",
        "bb",
        "--",
        "sh",
        "-c",
        "cat /sandbox/y; busybox | head -1 | cut -c1-7",
    ]);
    assert_eq!(stdout(&o), "x\nBusyBox\n", "{}", stderr(&o));
    assert!(os(&["sandbox", "delete", "bb"]).status.success());
}

/// A bare `--from NAME` is a community image under OPENSHELL_COMMUNITY_REGISTRY (the
/// test registry stands in for OpenShell's); without the variable it stays a Docker
/// Hub name, which `--pull never` proves without any traffic.
fn bare_from_names_use_the_community_registry() {
    need_sandbox!();
    let reg = std::env::var("OS_TEST_REGISTRY");
    openshell_tests::need(
        "registry",
        reg.is_ok(),
        "no test registry (tests/env/up.sh)",
    );
    let sb = Sandbox::new();
    let run = |community: Option<&str>, from: &str| {
        let mut c = sb.cmd();
        c.env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
            .env_remove("OPENSHELL_COMMUNITY_REGISTRY");
        if let Some(p) = community {
            c.env("OPENSHELL_COMMUNITY_REGISTRY", p);
        }
        c.args([
            "run",
            "--network",
            "none",
            "--pull",
            "missing",
            "--from",
            from,
        ])
        .args(["--", "/bin/busybox", "echo", "in"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
    };
    let prefix = format!("{}/", reg.unwrap_or_default());
    let o = run(Some(&prefix), "busybox");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "in\n");
    assert!(
        stderr(&o).contains(&format!("community image {prefix}busybox:latest")),
        "{}",
        stderr(&o)
    );
    // A name with a tag, a path or a registry is not a community name.
    let o = run(Some("127.0.0.1:1"), &format!("{prefix}busybox:latest"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("community image"), "{}", stderr(&o));
    let mut c = sb.cmd();
    let o = c
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .env_remove("OPENSHELL_COMMUNITY_REGISTRY")
        .args(["run", "--pull", "never", "--from", "busybox", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("docker.io/library/busybox:latest is not in the store"),
        "{}",
        stderr(&o)
    );
}

fn a_killed_supervisor_reads_as_error_and_start_revives_it() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "k",
        "--",
        "sh",
        "-c",
        "echo data > /sandbox/d",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&sb.cli(&["sandbox", "get", "k", "-o", "json"]).stdout).unwrap();
    let pid = v["supervisor_pid"].as_i64().expect("a running supervisor") as i32;
    // SAFETY: kill(2) on the supervisor this test created.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while phase(&sb, "k") != "Error" {
        assert!(
            std::time::Instant::now() < until,
            "never Error: {}",
            phase(&sb, "k")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = sb.cli(&["sandbox", "start", "k"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "exec", "k", "--", "cat", "/sandbox/d"]);
    assert_eq!(stdout(&o), "data\n", "{}", stderr(&o));
    assert!(sb.cli(&["sandbox", "delete", "k"]).status.success());
}

fn twenty_parallel_execs_each_get_their_own_answer() {
    need_sandbox!();
    let sb = Sandbox::new();
    assert!(
        sb.cli(&["sandbox", "create", "--name", "par", "--detach"])
            .status
            .success()
    );
    let kids: Vec<_> = (0..20)
        .map(|i| {
            sb.cmd()
                .args(["sandbox", "exec", "par", "--", "sh", "-c"])
                .arg(format!("echo {i} > /tmp/{i}; cat /tmp/{i}; exit {i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(i as i32));
        assert_eq!(stdout(&o), format!("{i}\n"));
    }
    assert!(sb.cli(&["sandbox", "delete", "par"]).status.success());
}

fn secrets_given_to_create_never_show_in_a_command_line_or_a_readable_file() {
    need_sandbox!();
    let sb = Sandbox::new();
    let secret = "s3cr3t-value-for-ps-test";
    let kv = format!("GITHUB_TOKEN={secret}");
    let o = sb.cli(&["sandbox", "create", "--name", "sec", "--detach", "-e", &kv]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = sb.wait_phase("sec", "Ready");
    let v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    let pid = v
        .get("supervisor_pid")
        .and_then(|p| p.as_i64())
        .unwrap_or_else(|| panic!("no supervisor pid in {rec}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!shown.contains(secret), "supervisor cmdline: {shown}");
    assert!(shown.starts_with("openshell: supervisor sec"), "{shown}");
    // Every process of the sandbox as another user or ps would see it.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    assert!(!stdout(&ps).contains(secret), "ps shows the secret");
    let o = sb.cli(&[
        "sandbox",
        "exec",
        "sec",
        "--",
        "sh",
        "-c",
        "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $GITHUB_TOKEN",
    ]);
    let out = stdout(&o);
    assert!(
        out.starts_with("openshell: init sec"),
        "{out}{}",
        stderr(&o)
    );
    assert!(
        out.contains(secret),
        "the variable itself reaches the sandbox: {out}"
    );
    // Files of the state dir are private.
    use std::os::unix::fs::PermissionsExt;
    let dir = sb.state.path().join("sandboxes/sec");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        let body = if md.is_file() {
            std::fs::read_to_string(e.path()).unwrap_or_default()
        } else {
            String::new()
        };
        if body.contains(secret) {
            assert_eq!(
                md.permissions().mode() & 0o077,
                0,
                "{} holds the secret and is {:o}",
                e.path().display(),
                md.permissions().mode()
            );
        }
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let _ = sb.cli(&["sandbox", "delete", "sec"]);
}

openshell_tests::suite!(
    create_detached_attached_and_no_keep,
    start_brings_a_stopped_sandbox_back_with_its_files_and_policy,
    an_image_sandbox_starts_again_on_its_own_upper_dir,
    bare_from_names_use_the_community_registry,
    a_killed_supervisor_reads_as_error_and_start_revives_it,
    twenty_parallel_execs_each_get_their_own_answer,
    secrets_given_to_create_never_show_in_a_command_line_or_a_readable_file,
);
