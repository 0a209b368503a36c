//! `openshell sandbox list|get|delete` as a user drives them: kept sandboxes and their
//! records, phases checked against the real supervisor, deleting running and dead
//! sandboxes (processes and files gone, also files of subordinate ids), labels and
//! selectors, bad input, a CLI killed mid-create; prune, status and explain
//! (concurrency.rs: many CLIs at once).

mod common;

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use openshell_tests::{Sandbox, need_sandbox, processes_with, stderr, stdout};

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// Start `openshell run OPTS -- ARGV` in the background.
fn spawn(sb: &Sandbox, opts: &[&str], argv: &[&str]) -> Child {
    sb.spawn_run(opts, argv)
}

/// Wait until `sandbox get NAME` says `phase`; return its JSON.
fn wait_phase(sb: &Sandbox, name: &str, phase: &str) -> serde_json::Value {
    serde_json::from_str(&sb.wait_phase(name, phase)).unwrap()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < until, "openshell run did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kept_sandbox_is_listed_inspected_and_deleted() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(
        &["--keep", "--name", "keeper", "--label", "team=ai"],
        &["sh", "-c", "echo kept > /sandbox/f; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    sb.run(&["--keep", "--name", "other"], &["true"]);

    let table = stdout(&sb.cli(&["sandbox", "list"]));
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["keeper", "Stopped", "host"], "{table}");

    let all = json(&sb.cli(&["sandbox", "list", "-o", "json"]));
    assert_eq!(all.as_array().unwrap().len(), 2);
    let picked = json(&sb.cli(&["sandbox", "list", "-o", "json", "--selector", "team=ai"]));
    let picked = picked.as_array().unwrap();
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0]["name"], "keeper");
    assert_eq!(picked[0]["exit_code"], 3);
    assert_eq!(picked[0]["labels"]["team"], "ai");
    let none = sb.cli(&["sandbox", "list", "-q", "--selector", "team=ops"]);
    assert_eq!(stdout(&none), "");
    let names = stdout(&sb.cli(&["sandbox", "list", "-q"]));
    assert_eq!(names, "keeper\nother\n");

    let got = json(&sb.cli(&["sandbox", "get", "keeper", "-o", "json"]));
    let path = std::path::PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(path.join("workspace/f")).unwrap(),
        "kept\n"
    );
    let yaml = stdout(&sb.cli(&["sandbox", "get", "keeper", "-o", "yaml"]));
    assert!(yaml.contains("phase: Stopped"), "{yaml}");

    let del = sb.cli(&["sandbox", "delete", "keeper"]);
    assert_eq!(stdout(&del), "deleted keeper\n", "{}", stderr(&del));
    assert!(!path.exists(), "files left behind");
    for args in [
        &["sandbox", "get", "keeper"][..],
        &["sandbox", "delete", "keeper"],
        &["sandbox", "get", "../other"],
    ] {
        let o = sb.cli(args);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("no sandbox named") && stderr(&o).contains("sandbox list"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(stdout(&sb.cli(&["sandbox", "list", "-q"])), "other\n");
}

fn running_sandbox_is_ready_and_delete_stops_it() {
    need_sandbox!();
    let sb = Sandbox::new();
    let marker = format!("{}", 600_000 + std::process::id() % 1000);
    let mut child = spawn(&sb, &["--name", "live"], &["sleep", &marker]);
    let v = wait_phase(&sb, "live", "Ready");
    let pid = v["supervisor_pid"].as_i64().expect("supervisor pid");
    assert_eq!(i64::from(child.id()), pid);
    assert!(!processes_with(&format!("sleep {marker}")).is_empty());

    let del = sb.cli(&["sandbox", "delete", "live"]);
    assert!(del.status.success(), "{}", stderr(&del));
    wait_exit(&mut child);
    assert_eq!(
        processes_with(&format!("sleep {marker}")),
        Vec::<String>::new()
    );
    assert_eq!(stdout(&sb.cli(&["sandbox", "list", "-q"])), "");
    let names = sb.leftovers();
    assert!(names.is_empty(), "left: {names:?}");
}

fn dead_supervisor_reads_as_error_and_delete_cleans_up() {
    need_sandbox!();
    let sb = Sandbox::new();
    let marker = format!("{}", 700_000 + std::process::id() % 1000);
    let mut child = spawn(&sb, &["--keep", "--name", "dead"], &["sleep", &marker]);
    wait_phase(&sb, "dead", "Ready");
    child.kill().unwrap(); // SIGKILL: no code of ours runs
    child.wait().unwrap();
    let v = wait_phase(&sb, "dead", "Error");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("supervisor (pid {}) is gone", child.id())),
        "{reason}"
    );
    let table = stdout(&sb.cli(&["sandbox", "list"]));
    assert!(table.contains("dead  Error"), "{table}");
    // Its processes died with it.
    let until = Instant::now() + Duration::from_secs(10);
    while !processes_with(&format!("sleep {marker}")).is_empty() {
        assert!(Instant::now() < until, "sandbox outlived its supervisor");
        std::thread::sleep(Duration::from_millis(20));
    }
    let del = sb.cli(&["sandbox", "delete", "dead"]);
    assert!(del.status.success(), "{}", stderr(&del));
    assert!(!sb.state.path().join("sandboxes/dead").exists());
}

fn image_sandbox_files_of_other_ids_are_deleted() {
    need_sandbox!();
    let e = common::registry();
    let sb = common::sb();
    // init creates the mount points of /etc files in the overlay upper as the
    // sandbox's root: rootless with subordinate ids, that is not the invoking user, and
    // only a user namespace mapped like the sandbox can remove them.
    let out = common::os(
        &sb,
        &[
            "run",
            "--keep",
            "--name",
            "img",
            "--from",
            &format!("{}/busybox:latest", e.plain),
            "--",
            "sh",
            "-c",
            "echo data > /sandbox/f",
        ],
    );
    common::ok(&out);
    let v = json(&sb.cli(&["sandbox", "get", "img", "-o", "json"]));
    assert!(
        v["image"].as_str().unwrap().ends_with("busybox:latest"),
        "{v}"
    );
    assert!(
        v["image_digest"].as_str().unwrap().starts_with("sha256:"),
        "{v}"
    );
    let path = std::path::PathBuf::from(v["path"].as_str().unwrap());
    assert!(path.join("upper/etc").exists());
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path.join("upper/etc")).unwrap());
    eprintln!("upper/etc owned by {owner}, we are {}", nix_euid());
    let del = sb.cli(&["sandbox", "delete", "img"]);
    assert!(del.status.success(), "{}", stderr(&del));
    assert!(!path.exists(), "upper left behind");
    let left = sb.leftovers();
    assert!(left.is_empty(), "left: {left:?}");
}

fn bad_arguments_are_refused_clearly() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.run(&["--label", "no-equals"], &["true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("--label \"no-equals\": expected KEY=VALUE"));
    let o = sb.cli(&["sandbox", "list", "--selector", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("expected KEY=VALUE"), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "delete"]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    let o = sb.cli(&["sandbox", "delete", "--all", "x"]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    // An unreadable record is reported, not a panic, and delete still works.
    sb.run(&["--keep", "--name", "broken"], &["true"]);
    let rec = sb.state.path().join("sandboxes/broken/sandbox.json");
    std::fs::write(&rec, "{ not json").unwrap();
    let v = json(&sb.cli(&["sandbox", "list", "-o", "json"]));
    assert_eq!(v[0]["phase"], "Error");
    assert!(
        v[0]["reason"]
            .as_str()
            .unwrap()
            .contains("unreadable record")
    );
    assert!(sb.cli(&["sandbox", "delete", "broken"]).status.success());
}

fn nix_euid() -> u32 {
    // Our effective uid, from /proc (the tests crate has no libc).
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap()
}

/// Move a kept sandbox's record back in time (as if it had been created and used
/// `age` and `idle` seconds ago).
fn backdate(sb: &Sandbox, name: &str, age: u64, idle: u64) {
    let p = sb
        .state
        .path()
        .join(format!("sandboxes/{name}/sandbox.json"));
    let mut r: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let created = r["created"].as_u64().unwrap();
    let active = r["last_active"].as_u64().unwrap();
    r["created"] = (created - age).into();
    r["last_active"] = (active - idle).into();
    std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
}

fn prune_removes_only_idle_or_old_sandboxes_that_are_not_running() {
    need_sandbox!();
    let sb = Sandbox::new();
    for n in ["idle", "old", "fresh"] {
        let o = sb.run(&["--keep", "--name", n], &["true"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    backdate(&sb, "idle", 3 * 86400, 2 * 86400);
    backdate(&sb, "old", 10 * 86400, 60);
    let mut child = spawn(&sb, &["--keep", "--name", "busy"], &["sleep", "30"]);
    wait_phase(&sb, "busy", "Ready");
    backdate(&sb, "busy", 30 * 86400, 30 * 86400);

    let dry = sb.cli(&["sandbox", "prune", "--dry-run"]);
    assert_eq!(stdout(&dry), "would delete idle\n", "{}", stderr(&dry));
    let o = sb.cli(&["sandbox", "prune", "--max-age", "7d"]);
    assert_eq!(stdout(&o), "deleted old\n", "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "prune", "--idle", "24h"]);
    assert_eq!(stdout(&o), "deleted idle\n", "{}", stderr(&o));
    assert_eq!(
        stdout(&sb.cli(&["sandbox", "list", "-q"])),
        "busy\nfresh\n",
        "running and fresh sandboxes stay"
    );
    for bad in ["5x", "h", "-1d", "99999999999999999999d"] {
        let o = sb.cli(&["sandbox", "prune", &format!("--idle={bad}")]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(stderr(&o).contains("--idle"), "{}", stderr(&o));
    }
    assert!(sb.cli(&["sandbox", "delete", "busy"]).status.success());
    child.wait().unwrap();
}

fn status_counts_sandboxes_and_reports_the_kernel() {
    need_sandbox!();
    let sb = Sandbox::new();
    sb.run(&["--keep", "--name", "s1"], &["true"]);
    let mut child = spawn(&sb, &["--name", "s2"], &["sleep", "30"]);
    wait_phase(&sb, "s2", "Ready");
    let text = stdout(&sb.cli(&["status"]));
    assert!(
        text.starts_with("Sandboxes: 2 (1 running: s2; 1 stopped; 0 error)\n"),
        "{text}"
    );
    assert!(text.contains(&format!("State:     {}\n", sb.state.path().display())));
    let v = json(&sb.cli(&["status", "-o", "json"]));
    assert_eq!(v["running"][0], "s2");
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        features.contains(&"landlock") && features.contains(&"seccomp"),
        "{v}"
    );
    assert!(sb.cli(&["sandbox", "delete", "s2"]).status.success());
    child.wait().unwrap();
}

fn explain_reports_what_this_kernel_enforced() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.run(
        &["--keep", "--name", "full", "--network", "none"],
        &["true"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // An older Landlock ABI, as on an older kernel: best_effort drops what it lacks.
    let o = sb
        .cmd()
        .env("OPENSHELL_LANDLOCK_MAX_ABI", "3")
        .args(["run", "--keep", "--name", "abi3", "--", "true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let text = stdout(&sb.cli(&["sandbox", "explain", "full"]));
    assert!(text.starts_with("Sandbox:   full (Stopped)\n"), "{text}");
    assert!(text.contains("Network:   none: loopback only"), "{text}");
    assert!(text.contains("  read-write: /sandbox /tmp"), "{text}");
    let full = json(&sb.cli(&["sandbox", "explain", "full", "-o", "json"]));
    let old = json(&sb.cli(&["sandbox", "explain", "abi3", "-o", "json"]));
    assert_eq!(old["landlock"]["abi"], 3);
    let dropped: Vec<&str> = old["landlock"]["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(dropped.iter().any(|d| d.contains("ABI 5")), "{dropped:?}");
    assert!(full["landlock"]["abi"].as_i64().unwrap() > 3);
    assert!(
        full["landlock"]["dropped"].as_array().unwrap().len() < dropped.len(),
        "{full}"
    );
    assert_eq!(
        old["network"]["mode"].as_str().unwrap().split(':').next(),
        Some("proxy")
    );
    assert!(full["seccomp"]["refused_syscall_rules"].as_u64().unwrap() > 20);
    let o = sb.cli(&["sandbox", "explain", "nope"]);
    assert!(
        stderr(&o).contains("no sandbox named nope"),
        "{}",
        stderr(&o)
    );
}

fn a_cli_killed_mid_create_leaves_something_delete_removes() {
    need_sandbox!();
    let sb = Sandbox::new();
    let marker = format!("{}", 800_000 + std::process::id() % 1000);
    for (i, delay_ms) in [0u64, 1, 2, 4, 6, 9, 14, 25].iter().enumerate() {
        let name = format!("k{i}");
        let mut child = spawn(&sb, &["--keep", "--name", &name], &["sleep", &marker]);
        std::thread::sleep(Duration::from_millis(*delay_ms));
        child.kill().unwrap(); // SIGKILL at some point of the setup
        child.wait().unwrap();
        let o = sb.cli(&["sandbox", "delete", &name]);
        assert!(
            o.status.success() || stderr(&o).contains(&format!("no sandbox named {name}")),
            "{name} after {delay_ms} ms: {}",
            stderr(&o)
        );
    }
    assert!(sb.leftovers().is_empty(), "left: {:?}", sb.leftovers());
    let until = Instant::now() + Duration::from_secs(10);
    while !processes_with(&format!("sleep {marker}")).is_empty() {
        assert!(Instant::now() < until, "a sandbox outlived its killed CLI");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_ends_the_processes_and_keeps_the_files() {
    need_sandbox!();
    let sb = Sandbox::new();
    let marker = format!("{}", 900_000 + std::process::id() % 1000);
    let mut child = spawn(
        &sb,
        &["--keep", "--name", "st"],
        &[
            "sh",
            "-c",
            &format!("echo kept > /sandbox/f; exec sleep {marker}"),
        ],
    );
    let v = wait_phase(&sb, "st", "Ready");
    let o = sb.cli(&["sandbox", "stop", "st"]);
    assert_eq!(stdout(&o), "stopped st\n", "{}", stderr(&o));
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(143), "SIGTERM reached the command");
    assert_eq!(
        processes_with(&format!("sleep {marker}")),
        Vec::<String>::new()
    );
    let after = wait_phase(&sb, "st", "Stopped");
    assert_eq!(after["exit_code"], 143);
    let path = std::path::PathBuf::from(v["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(path.join("workspace/f")).unwrap(),
        "kept\n"
    );
    assert!(path.join("policy.yaml").exists());
    assert_eq!(
        stdout(&sb.cli(&["sandbox", "stop", "st"])),
        "st was not running\n"
    );
    let o = sb.cli(&["sandbox", "stop", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no sandbox named nope"));
    assert!(sb.cli(&["sandbox", "delete", "st"]).status.success());
}

/// OpenShell's (and CreateOS's) spellings work: `sb`/`lg`/`pol`, `exec -n NAME
/// --no-tty`, `list --names --ids --limit --offset --status`, comma-separated
/// selectors, `rm --force`, `logs --tail --source gateway --level debug -n`,
/// `OPENSHELL_SANDBOX_POLICY`, `policy default` ending in an appendable
/// `network_policies:`, and `create` naming the sandbox it made.
fn openshell_spellings_work() {
    need_sandbox!();
    let sb = Sandbox::new();
    for (n, labels) in [
        ("sp-a", "team=ai,env=dev"),
        ("sp-b", "team=ai,env=prod"),
        ("sp-c", "team=web,env=dev"),
    ] {
        let mut args = vec!["sb", "create", "--detach", "--name", n];
        for l in labels.split(',') {
            args.extend(["--label", l]);
        }
        let o = sb.cli(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let names = |args: &[&str]| {
        let mut a = vec!["sandbox", "list"];
        a.extend_from_slice(args);
        let o = sb.cli(&a);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(names(&["--names"]), "sp-a\nsp-b\nsp-c\n");
    assert_eq!(names(&["--ids", "--limit", "1", "--offset", "1"]), "sp-b\n");
    assert_eq!(
        names(&["--names", "--selector", "team=ai,env=dev"]),
        "sp-a\n"
    );
    let o = sb.cli(&["sandbox", "stop", "sp-c"]);
    assert!(o.status.success());
    assert_eq!(names(&["--names", "--status", "stopped"]), "sp-c\n");
    assert_eq!(names(&["--names", "--status", "Ready"]), "sp-a\nsp-b\n");
    let bad = sb.cli(&["sandbox", "list", "--status", "sleepy"]);
    assert!(
        stderr(&bad).contains("--status \"sleepy\": one of"),
        "{}",
        stderr(&bad)
    );
    // exec -n NAME --no-tty
    let o = sb.cli(&[
        "sb", "exec", "-n", "sp-a", "--no-tty", "--", "echo", "via -n",
    ]);
    assert_eq!(stdout(&o), "via -n\n", "{}", stderr(&o));
    // Without a name: the last one used (sp-a, just exec'd in).
    let o = sb.cli(&["sandbox", "exec", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sandbox sp-a (the last one used)"),
        "{}",
        stderr(&o)
    );
    // logs: lg, --tail is follow (ended here by the sandbox's deletion), gateway, debug, -n
    let o = sb.cli(&[
        "lg", "sp-a", "--source", "gateway", "--level", "debug", "-n", "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("CONFIG:LOADED"), "{}", stdout(&o));
    // policy default + an appended block is a valid policy; pol is policy.
    let def = sb.cli(&["pol", "default"]);
    assert!(
        stdout(&def).ends_with("network_policies:\n"),
        "{}",
        stdout(&def)
    );
    let file = sb.state.path().join("appended.yaml");
    let block = "  web:\n    name: web\n    endpoints:\n      - { host: example.com, port: 443 }\n    binaries:\n      - { path: /usr/bin/curl }\n";
    std::fs::write(&file, format!("{}{block}", stdout(&def))).unwrap();
    let o = sb.cli(&["policy", "validate", &file.display().to_string()]);
    assert!(
        stdout(&o).contains("valid (1 network policies)"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    // OPENSHELL_SANDBOX_POLICY is --policy.
    let bad_policy = sb.state.path().join("bad.yaml");
    std::fs::write(&bad_policy, "version: 1\nnope: 1\n").unwrap();
    let o = sb
        .cmd()
        .env("OPENSHELL_SANDBOX_POLICY", &bad_policy)
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    // create names what it made; rm --force is accepted.
    let o = sb.cli(&["sandbox", "create", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let made = stderr(&o);
    let made = made
        .lines()
        .find_map(|l| l.strip_prefix("openshell: created sandbox "))
        .unwrap_or_else(|| panic!("no name in {made}"))
        .to_string();
    assert!(names(&["--names"]).contains(&made));
    // -o is honoured where there is data, refused with a message elsewhere.
    let o = sb.cli(&["sandbox", "stop", "sp-a", "-o", "json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("-o json: this command prints no data"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "list", "-o", "yaml"]);
    assert!(stdout(&o).contains("name: sp-a"), "{}", stdout(&o));
    let o = sb.cli(&["sb", "rm", "--force", "sp-a", "sp-b", "sp-c", &made]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(names(&["--names"]), "");
}

/// `sandbox recreate`: a created sandbox comes back from its saved options with nothing
/// kept; a running one needs --force; a `run --keep` one has no options to use.
fn recreate_keeps_the_options_and_nothing_else() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.cli(&[
        "sandbox", "create", "--detach", "--name", "rc", "--label", "team=ai",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&[
        "sandbox",
        "exec",
        "rc",
        "--",
        "sh",
        "-c",
        "echo kept > /sandbox/f",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "recreate", "rc"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is running: `sandbox recreate --force rc`"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "recreate", "--force", "rc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&[
        "sandbox",
        "exec",
        "rc",
        "--",
        "sh",
        "-c",
        "cat /sandbox/f 2>&1 || echo gone",
    ]);
    assert!(
        stdout(&o).contains("gone") || stdout(&o).contains("No such file"),
        "{}",
        stdout(&o)
    );
    let o = sb.cli(&["sandbox", "list", "--names", "--selector", "team=ai"]);
    assert_eq!(stdout(&o), "rc\n");
    // Again, with --all, stopped first (no --force needed), and the saved options still
    // parse (nothing was added twice).
    let o = sb.cli(&["sandbox", "stop", "rc"]);
    assert!(o.status.success());
    let o = sb.cli(&["sandbox", "recreate", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "stop", "rc"]);
    assert!(o.status.success());
    let o = sb.cli(&["sandbox", "start", "rc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.run(&["--keep", "--name", "kept-run"], &["true"]);
    assert!(o.status.success());
    let o = sb.cli(&["sandbox", "recreate", "kept-run"]);
    assert!(
        stderr(&o).contains("no options to create it from"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "delete", "--all"]);
    assert!(o.status.success());
}

/// NAME left out means the last sandbox used (created, started, exec'd in), said on
/// stderr; with none, the error says what to give.
fn the_last_sandbox_is_used_when_name_is_left_out() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.cli(&["sandbox", "get"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("which sandbox? give its NAME"),
        "{}",
        stderr(&o)
    );
    for n in ["l-one", "l-two"] {
        let o = sb.cli(&["sandbox", "create", "--detach", "--name", n]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = sb.cli(&["sandbox", "exec", "--", "hostname"]);
    assert_eq!(stdout(&o), "l-two\n", "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sandbox l-two (the last one used)"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "exec", "l-one", "--", "true"]);
    assert!(o.status.success());
    let o = sb.cli(&["sandbox", "get", "-o", "json"]);
    assert!(stdout(&o).contains("\"name\": \"l-one\""), "{}", stdout(&o));
    let o = sb.cli(&["logs", "-n", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["policy", "get"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "stop"]);
    assert_eq!(stdout(&o), "stopped l-one\n", "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "delete", "l-one"]);
    assert!(o.status.success());
    let o = sb.cli(&["sandbox", "get"]);
    assert!(stderr(&o).contains("which sandbox?"), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "delete", "--all"]);
    assert!(o.status.success());
}

openshell_tests::suite!(
    the_last_sandbox_is_used_when_name_is_left_out,
    recreate_keeps_the_options_and_nothing_else,
    openshell_spellings_work,
    kept_sandbox_is_listed_inspected_and_deleted,
    running_sandbox_is_ready_and_delete_stops_it,
    dead_supervisor_reads_as_error_and_delete_cleans_up,
    image_sandbox_files_of_other_ids_are_deleted,
    bad_arguments_are_refused_clearly,
    prune_removes_only_idle_or_old_sandboxes_that_are_not_running,
    status_counts_sandboxes_and_reports_the_kernel,
    explain_reports_what_this_kernel_enforced,
    a_cli_killed_mid_create_leaves_something_delete_removes,
    stop_ends_the_processes_and_keeps_the_files,
);
