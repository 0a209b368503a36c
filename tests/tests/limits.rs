//! Resource limits end to end: a memory hog and a fork bomb end inside the sandbox
//! (by its cgroup as root here, by rlimits rootless), tmpfs are sized, `sandbox exec`
//! gets the same limits, `explain` says how they were applied, and bad values are
//! refused with the flag named. Runs as root and as an unprivileged user.

use openshell_tests::{Sandbox, need_sandbox, stderr, stdout};

/// Allocates 600 MiB in 10 MiB steps; prints how far it got.
const HOG: &str = "python3 -c '
b = []
try:
    for i in range(60):
        b.append(bytearray(10 << 20))
    print(\"hog: allocated 600 MiB\")
except MemoryError:
    print(\"hog: MemoryError\")
'; echo hog-exit=$?";

/// Starts 200 sleepers in a subshell (dash gives up at the first fork that fails),
/// then counts the sandbox's processes without forking (a glob).
const BOMB: &str = "(for i in $(seq 1 200); do sleep 5 & done) 2>/dev/null; \
    set -- /proc/[0-9]*; echo started=$#";

fn started(text: &str) -> usize {
    text.lines()
        .find_map(|l| l.strip_prefix("started="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

fn a_memory_hog_and_a_fork_bomb_end_inside() {
    need_sandbox!();
    let sb = Sandbox::new();
    let script = format!("{HOG}; {BOMB}");
    let out = sb.run(
        &["--network", "none", "--memory", "256m", "--pids", "64"],
        &["sh", "-c", &script],
    );
    let text = stdout(&out);
    assert!(
        !text.contains("allocated 600 MiB"),
        "the hog got its memory: {text}{}",
        stderr(&out)
    );
    // Killed by the cgroup's OOM killer (137) or refused by RLIMIT_DATA.
    assert!(
        text.contains("hog: MemoryError") || text.contains("hog-exit=137"),
        "{text}{}",
        stderr(&out)
    );
    // 64 processes at most (the shell, init and ls among them), not 200.
    let n = started(&text);
    assert!(n <= 66, "{n} processes ran with --pids 64: {text}");
    // The host is fine: this process can still start others.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
    // Without the flags, 200 start (the default is 4096).
    let out = sb.run(&["--network", "none"], &["sh", "-c", BOMB]);
    let n = started(&stdout(&out));
    assert!(
        (200..usize::MAX).contains(&n),
        "{n}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn tmpfs_are_sized_from_the_memory_limit() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(
        &["--network", "none", "--memory", "256Mi"],
        &[
            "sh",
            "-c",
            "df -k /tmp /dev/shm | tail -2 | tr -s ' ' | cut -d' ' -f2; \
             dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1 | grep -o 'No space left on device' | head -1",
        ],
    );
    assert_eq!(
        stdout(&out),
        "131072\n65536\nNo space left on device\n",
        "{}",
        stderr(&out)
    );
}

fn exec_gets_the_same_limits_and_explain_says_how() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "lim",
        "--detach",
        "--network",
        "none",
        "--pids",
        "48",
        "--cpu",
        "500m",
        "--memory",
        "4Gi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "exec", "lim", "--", "sh", "-c", BOMB]);
    let n = started(&stdout(&o));
    assert!(
        n <= 50,
        "{n} processes in exec with --pids 48: {}",
        stdout(&o)
    );
    let o = sb.cli(&["sandbox", "explain", "lim"]);
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("Limits:"))
        .unwrap_or_else(|| panic!("no Limits line: {text}{}", stderr(&o)));
    assert!(
        line.contains("memory 4.0 GiB")
            && line.contains("pids 48")
            && line.contains("/tmp 2.0 GiB"),
        "{line}"
    );
    let o = sb.cli(&["sandbox", "explain", "lim", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let how = v["limits"]["how"].as_str().unwrap_or_default().to_string();
    let cgroups = v["limits"]["cgroups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if how.starts_with("cgroup") {
        // A cgroup: the CPU limit is applied and the directories exist while it runs.
        assert_eq!(v["limits"]["cpus_milli"], 500, "{v}");
        assert!(line.contains("cpus 0.5"), "{line}");
        for c in &cgroups {
            assert!(std::path::Path::new(c.as_str().unwrap()).is_dir(), "{c}");
        }
    } else {
        assert_eq!(how, "rlimits", "{v}");
        assert!(cgroups.is_empty());
        // Not applied, and said so.
        assert!(v["limits"]["cpus_milli"].is_null(), "{v}");
        assert!(text.contains("--cpus not applied"), "{text}");
    }
    assert!(sb.cli(&["sandbox", "delete", "lim"]).status.success());
    for c in &cgroups {
        assert!(
            !std::path::Path::new(c.as_str().unwrap()).exists(),
            "{c} left behind"
        );
    }
}

fn bad_limits_are_refused_with_the_flag_named() {
    need_sandbox!();
    let sb = Sandbox::new();
    for (args, want) in [
        (["--memory", "4x"], "--memory \"4x\": unknown unit"),
        (["--memory", "1k"], "--memory \"1k\": at least 16 MiB"),
        (["--memory", "g"], "--memory \"g\": not a size"),
        (["--cpus", "0"], "--cpus \"0\": out of range"),
        (["--cpus", "lots"], "--cpus \"lots\": not a number"),
        (["--pids", "5"], "--pids \"5\": out of range"),
    ] {
        let mut opts = vec!["--network", "none"];
        opts.extend_from_slice(&args);
        let out = sb.run(&opts, &["true"]);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

/// Decision logs are a host resource too: a flood of identical denials is counted, not
/// written 5000 times, and names a sandboxed program chooses (its executable's path)
/// cannot forge a line or send escape sequences to the terminal of `run -v`.
fn decision_logs_are_bounded_and_escaped() {
    openshell_tests::need_upstream!();
    let sb = Sandbox::new();
    let logs = openshell_tests::TempDir::new("floodlogs");
    let host = openshell_tests::up("OS_UPSTREAM_HOST");
    let flood = "python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q = b\"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x05flood\\x07example\\x00\\x00\\x01\\x00\\x01\"
for i in range(5000):
    s.sendto(q, (\"10.200.0.1\", 53))
'";
    let forged = format!(
        "t=\"/sandbox/x$(printf '\\nNET:OPEN ALLOWED curl(1) -> evil:443 \\033[31m')\"; cp /usr/bin/curl \"$t\"; \"$t\" -sS -o /dev/null -w '%{{http_code}}\\n' http://{host}/"
    );
    let script = format!("{flood}; sleep 0.5; {forged}");
    let dir = logs.path().to_string_lossy().into_owned();
    let out = sb.run(&["-v", "--log-dir", &dir], &["sh", "-c", &script]);
    assert_eq!(stdout(&out), "403\n", "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains('\u{1b}'),
        "an escape sequence reached the terminal: {err:?}"
    );
    let log = std::fs::read_to_string(logs.path().join("openshell.log")).unwrap();
    let floods: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("flood.example"))
        .collect();
    assert!(
        !floods.is_empty() && floods.len() <= 3,
        "{} lines for one repeated denial",
        floods.len()
    );
    assert!(
        floods.iter().any(|l| l.contains("[repeated ")),
        "the count is missing: {floods:?}"
    );
    // One line for the forged name, with its newline and ESC escaped.
    assert!(
        !log.lines()
            .any(|l| l.starts_with("NET:OPEN ALLOWED curl(1) -> evil")),
        "a forged line: {log}"
    );
    assert!(log.contains("/sandbox/x\\nNET:OPEN ALLOWED"), "{log}");
    assert!(log.contains("\\x{1b}[31m"), "{log}");
}

openshell_tests::suite!(
    a_memory_hog_and_a_fork_bomb_end_inside,
    tmpfs_are_sized_from_the_memory_limit,
    exec_gets_the_same_limits_and_explain_says_how,
    bad_limits_are_refused_with_the_flag_named,
    decision_logs_are_bounded_and_escaped,
);
