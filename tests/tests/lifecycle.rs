//! A sandbox's life at its edges: a setup that hangs ends (timeout, SIGTERM), pty
//! sessions end when their input is /dev/null or openshell is told to stop, `create`
//! failures leave nothing behind, `create -o json` can still be started, `image rm`
//! removes one reference, `system df`/`reset`, state that cannot be written says
//! what to do, and init stays its owner's after starting the command. As root and (in CI) as an unprivileged user.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use openshell_tests::{Sandbox, need_sandbox, stderr, stdout};

/// Wait for `child` up to `limit` (a watchdog against hangs, not a timing claim);
/// kill it and fail when it does not end.
fn ends_within(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let until = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what}: still running after {limit:?}: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids whose command line (process title) is exactly `title`.
fn pids_titled(title: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).trim_end_matches('\0') == title)
        })
        .collect()
}

fn held_run(sb: &Sandbox, name: &str, timeout: &str) -> Child {
    sb.cmd()
        .args(["run", "--name", name, "--", "true"])
        .env("OPENSHELL_DEBUG_HOLD_INIT", "1")
        .env("OPENSHELL_SETUP_TIMEOUT", timeout)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A setup that never finishes (init held before it) ends by the setup timeout with a
/// message, and nothing of the sandbox is left: no init, no state, the name free.
fn a_setup_that_hangs_ends_by_its_timeout() {
    need_sandbox!();
    let sb = Sandbox::new();
    let name = format!("hang{}", std::process::id());
    let out = ends_within(
        held_run(&sb, &name, "1"),
        Duration::from_secs(30),
        "timeout",
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not finish within 1s (OPENSHELL_SETUP_TIMEOUT)"),
        "{}",
        stderr(&out)
    );
    assert!(pids_titled(&format!("openshell: init {name}")).is_empty());
    assert!(!sb.state.path().join("sandboxes").join(&name).exists());
    // Bad values name the variable.
    for bad in ["0", "-1", "abc", "1e9", "NaN"] {
        let o = sb
            .cmd()
            .args(["run", "--", "true"])
            .env("OPENSHELL_SETUP_TIMEOUT", bad)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(125), "{bad}");
        assert!(
            stderr(&o).contains(&format!("OPENSHELL_SETUP_TIMEOUT={bad}: give seconds")),
            "{bad}: {}",
            stderr(&o)
        );
    }
    // A setup that fails leaves nothing: no directory and no lock file (its clean-up
    // got the run's own lock instead of waiting for it on a second descriptor).
    assert_eq!(sb.leftovers(), Vec::<std::ffi::OsString>::new());
    let locks: Vec<_> = std::fs::read_dir(sb.state.path().join("sandboxes/.locks"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(locks.is_empty(), "lock files left: {locks:?}");
}

/// SIGTERM, SIGINT and SIGHUP to openshell while setup hangs end it at once (they are
/// blocked for the relay, so before the fix they were never seen).
fn signals_end_a_setup_that_hangs() {
    need_sandbox!();
    let sb = Sandbox::new();
    for (i, sig) in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP]
        .into_iter()
        .enumerate()
    {
        let name = format!("sig{i}-{}", std::process::id());
        let child = held_run(&sb, &name, "600");
        let title = format!("openshell: init {name}");
        let until = Instant::now() + Duration::from_secs(20);
        while pids_titled(&title).is_empty() {
            assert!(Instant::now() < until, "init of {name} never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill with a pid we spawned and a signal number.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = ends_within(child, Duration::from_secs(30), "signal during setup");
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("during the sandbox's setup: stopped"),
            "{}",
            stderr(&out)
        );
        assert!(pids_titled(&title).is_empty(), "init outlived {sig}");
    }
}

/// With stdin /dev/null, `run -t`, `exec -t` and `connect` end (an interactive bash
/// and python3 read end-of-file), and a pty command that ignores SIGTERM and SIGHUP is
/// killed after the grace time when openshell is told to stop.
fn pty_sessions_end_with_dev_null_input_and_on_sigterm() {
    need_sandbox!();
    let sb = Sandbox::new();
    let null = |args: &[&str]| {
        sb.cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for argv in [&["bash"][..], &["bash", "-l"], &["python3"], &["sh"]] {
        let mut args = vec!["run", "-t", "--"];
        args.extend_from_slice(argv);
        let out = ends_within(null(&args), Duration::from_secs(30), &args.join(" "));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let name = format!("pty{}", std::process::id());
    let o = sb.cli(&["sandbox", "create", "--detach", "--name", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = ends_within(
        null(&["sandbox", "connect", &name]),
        Duration::from_secs(30),
        "connect </dev/null",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ends_within(
        null(&["sandbox", "exec", "-t", &name, "--", "bash"]),
        Duration::from_secs(30),
        "exec -t bash </dev/null",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Input that never ends, a command that ignores TERM and HUP: SIGTERM to openshell
    // ends it (after the grace time) in a run and in an exec.
    let stubborn = "trap '' TERM HUP; echo ready; sleep 120";
    for args in [
        vec!["run", "-t", "--", "bash", "-c", stubborn],
        vec!["sandbox", "exec", "-t", &name, "--", "bash", "-c", stubborn],
        vec!["sandbox", "connect", &name],
    ] {
        let mut child = sb
            .cmd()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill with a pid we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = ends_within(child, Duration::from_secs(40), &args.join(" "));
        drop(input);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
    }
    let o = sb.cli(&["sandbox", "delete", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// CPU ticks (user + system) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A relay with nothing to do stays idle: after its piped input ended (a pipe without
/// writer reports POLLHUP for ever), and when the command closed its terminal but
/// lives on (the pty reports POLLHUP/EIO for ever). A busy loop would use a core.
fn an_idle_pty_relay_does_not_spin() {
    need_sandbox!();
    let sb = Sandbox::new();
    for script in ["sleep 3", "exec 0<&- 1>&- 2>&-; sleep 3"] {
        let mut child = sb
            .cmd()
            .args(["run", "-t", "--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(child.stdin.take()); // input ends at once
        std::thread::sleep(Duration::from_millis(2500));
        let ticks = cpu_ticks(child.id());
        let _ = ends_within(child, Duration::from_secs(30), script);
        // 2.5 s of spinning is ~250 ticks; an idle relay uses a handful.
        assert!(
            ticks < 60,
            "{script}: the relay used {ticks} ticks of CPU while idle"
        );
    }
}

/// `create --detach -o json` prints JSON and keeps `-o` out of the saved options, so
/// `start` works; a failed create (bad upload, a setup that fails in the supervisor)
/// leaves no sandbox and the name free, with or without --no-keep.
fn create_saves_only_its_own_options_and_failures_leave_nothing() {
    need_sandbox!();
    let sb = Sandbox::new();
    let name = format!("cj{}", std::process::id());
    let o = sb.cli(&[
        "sandbox", "create", "--detach", "-o", "json", "--name", &name, "-e", "A=1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["name"], name.as_str());
    for cmd in ["stop", "start"] {
        let o = sb.cli(&["sandbox", cmd, &name]);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
    }
    let o = sb.cli(&["sandbox", "exec", &name, "--", "sh", "-c", "echo $A"]);
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
    // A create of a name in use fails and leaves the existing sandbox alone (running
    // or stopped): its files, its log.
    let o = sb.cli(&[
        "sandbox",
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo kept > /sandbox/f",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for _ in 0..2 {
        let o = sb.cli(&["sandbox", "create", "--detach", "--name", &name]);
        assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
        assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
        assert!(
            sb.state
                .path()
                .join("supervisors")
                .join(format!("{name}.log"))
                .exists()
        );
        let o = sb.cli(&["sandbox", "stop", &name]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = sb.cli(&["sandbox", "start", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "exec", &name, "--", "cat", "/sandbox/f"]);
    assert_eq!(stdout(&o), "kept\n", "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "delete", &name]);
    assert!(o.status.success());

    let bad = format!("cb{}", std::process::id());
    for extra in [&[][..], &["--no-keep"]] {
        let mut args = vec![
            "sandbox",
            "create",
            "--name",
            &bad,
            "--upload",
            "/nonexistent/x",
        ];
        args.extend_from_slice(extra);
        args.extend(["--", "true"]);
        let o = sb.cli(&args);
        assert_eq!(o.status.code(), Some(125));
        assert!(stderr(&o).contains("/nonexistent/x"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("kept sandbox state"), "{}", stderr(&o));
        assert!(!sb.state.path().join("sandboxes").join(&bad).exists());
    }
    // A failure in the detached supervisor itself (setup timeout).
    let o = sb
        .cmd()
        .args(["sandbox", "create", "--detach", "--name", &bad])
        .env("OPENSHELL_SETUP_TIMEOUT", "0.000001")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("OPENSHELL_SETUP_TIMEOUT"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "list"]);
    assert!(!stdout(&o).contains(&bad), "{}", stdout(&o));
    // The name is free.
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        &bad,
        "--no-keep",
        "--",
        "true",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A state or image directory that cannot be written names the path and what to do.
fn unwritable_state_says_which_path_and_what_to_do() {
    let sb = Sandbox::new();
    // A regular file as a parent fails for root too (no permission bypass).
    let file = sb.state.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = sb
        .cmd()
        .args(["run", "--", "true"])
        .env("OPENSHELL_STATE_DIR", file.join("state"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let e = stderr(&o);
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains("OPENSHELL_STATE_DIR"), "{e}");
    let o = sb
        .cmd()
        .args(["image", "list"])
        .env("OPENSHELL_IMAGE_DIR", file.join("images"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("OPENSHELL_IMAGE_DIR"), "{}", stderr(&o));
}

/// `image rm NAME` of an image with several names removes that name only; removing
/// the last name removes the image and the layers no other image uses (not shared
/// ones); `system df` counts, `system reset` refuses without a terminal or --force,
/// then removes everything (rootless: files of subordinate ids too).
fn image_rm_per_reference_and_system_reset() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let tls = var("OS_TEST_REGISTRY_TLS");
    let ca = var("OS_TEST_REGISTRY_CA");
    let a = format!("{}/busybox:latest", e.plain);
    let b = format!("{tls}/busybox:latest");
    let multi = format!("{}/busybox:multilayer", e.plain);
    ok(&os(&sb, &["image", "pull", "-q", &a]));
    ok(&os(&sb, &["image", "pull", "-q", "--registry-ca", &ca, &b]));
    ok(&os(&sb, &["image", "pull", "-q", &multi]));
    let layers = || {
        std::fs::read_dir(sb.state.path().join("images/layers"))
            .unwrap()
            .count()
    };
    let list = ok(&os(&sb, &["image", "list"]));
    assert!(list.contains(&a) && list.contains(&b), "{list}");
    let before = layers();
    assert!(ok(&os(&sb, &["image", "rm", &a])).contains("untagged"));
    let list = ok(&os(&sb, &["image", "list"]));
    assert!(!list.contains(&a) && list.contains(&b), "{list}");
    let o = os(&sb, &["run", "--from", &b, "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The last name: the image goes; its layer is shared with multilayer and stays.
    assert!(ok(&os(&sb, &["image", "rm", &b])).contains("removed"));
    assert_eq!(layers(), before, "a shared layer was removed");
    let o = os(&sb, &["run", "--from", &multi, "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A kept sandbox with files of the sandbox user (subordinate ids, rootless).
    let o = os(
        &sb,
        &[
            "run",
            "--keep",
            "--name",
            "keepme",
            "--from",
            &multi,
            "--",
            "sh",
            "-c",
            "echo x > /sandbox/f; mkdir -p /home/sandbox/d 2>/dev/null; true",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let df = ok(&os(&sb, &["system", "df", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&df).unwrap();
    assert_eq!(v[0]["kind"], "images");
    assert_eq!(v[0]["total"], 1);
    assert_eq!(v[1]["total"], 1);
    assert!(v[0]["bytes"].as_u64().unwrap() > 100_000, "{df}");
    // Never a directory holding the home (here: the state dir is HOME's parent).
    let o = os(&sb, &["system", "reset", "--force"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("holds your home"), "{}", stderr(&o));
    let home_dir = openshell_tests::TempDir::new("home");
    let home = home_dir.path().to_path_buf();
    let reset = |force: bool| {
        let mut c = sb.cmd();
        c.env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
            .env("XDG_RUNTIME_DIR", sb.state.path().join("run"))
            .env("HOME", &home)
            .args(["system", "reset"]);
        if force {
            c.arg("--force");
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    let o = reset(false);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(ok(&os(&sb, &["image", "list"])).contains(&multi));
    let out = ok(&reset(true));
    assert!(out.contains("deleted sandbox keepme"), "{out}");
    assert!(!sb.state.path().join("images").exists(), "image store left");
    assert!(
        !sb.state.path().join("sandboxes").exists(),
        "sandboxes left"
    );
}

/// A fallback the setup takes is never silent: `-v` shows it, `sandbox explain` and the
/// sandbox's log keep it; without `-v` the run stays quiet.
fn fallbacks_are_shown_with_v_explained_and_logged() {
    need_sandbox!();
    let sb = Sandbox::new();
    let run = |args: &[&str]| {
        sb.cmd()
            .env("OPENSHELL_NFT_FALLBACK", "1")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let note = "nftables: the kernel refused the rules over netlink; the host's nft loaded them";
    let out = run(&["-v", "run", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(note), "{}", stderr(&out));
    let out = run(&["run", "--keep", "--name", "fb", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains(note), "{}", stderr(&out));
    let explained = sb.cli(&["sandbox", "explain", "fb"]);
    assert!(
        stdout(&explained).contains(&format!("Fallbacks:\n  {note}")),
        "{}",
        stdout(&explained)
    );
    let logs = sb.cli(&["logs", "fb"]);
    assert!(
        stdout(&logs).contains(&format!("SETUP:FALLBACK {note}")),
        "{}",
        stdout(&logs)
    );
    // Without the fallback there is nothing to say.
    let out = sb
        .cmd()
        .args(["run", "--keep", "--name", "plain", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!stdout(&sb.cli(&["sandbox", "explain", "plain"])).contains("Fallbacks"));
}

/// Init starts the command in a child that shares its memory until the exec
/// (runtime/src/core/vfork.rs); the child makes that memory non-dumpable, and init must
/// put its own flag back: the files under /proc of a non-dumpable process belong to
/// root, and a rootless supervisor could no longer open /proc/<init>/root or ns/
/// (owner lookups, `sandbox exec`). Checked as the sandbox's owner sees init once the
/// command runs. (As root both owners are root: the check is the unprivileged run's.)
fn init_stays_its_owners_after_starting_the_command() {
    need_sandbox!();
    let sb = Sandbox::new();
    let mut child = sb
        .cmd()
        .args(["run", "--network", "none", "--", "sleep", "30.25"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sup = child.id();
    let children = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
    };
    // Init is the supervisor's child; the command runs once init has a child too.
    let mut init = None;
    for _ in 0..100 {
        if let Some(p) = children(sup).split_whitespace().next() {
            let p: u32 = p.parse().unwrap();
            if !children(p).trim().is_empty() {
                init = Some(p);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let init = init.expect("the sandbox's command never started");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let euid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::symlink_metadata(format!("/proc/{init}/fd"))
        .unwrap()
        .uid();
    let ns = std::fs::File::open(format!("/proc/{init}/ns/pid"));
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        owner, euid,
        "init's /proc files belong to {owner}, not to its user {euid}: it was left non-dumpable"
    );
    assert!(ns.is_ok(), "its owner cannot open init's ns/pid: {ns:?}");
}

openshell_tests::suite!(
    fallbacks_are_shown_with_v_explained_and_logged,
    a_setup_that_hangs_ends_by_its_timeout,
    signals_end_a_setup_that_hangs,
    pty_sessions_end_with_dev_null_input_and_on_sigterm,
    an_idle_pty_relay_does_not_spin,
    create_saves_only_its_own_options_and_failures_leave_nothing,
    unwritable_state_says_which_path_and_what_to_do,
    image_rm_per_reference_and_system_reset,
    init_stays_its_owners_after_starting_the_command,
);
