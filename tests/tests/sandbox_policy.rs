//! `openshell policy get|set|list NAME` against a running sandbox: the new policy is
//! observed from inside (curl through the proxy to the testenv upstream host), bad and
//! static-changing policies are refused while the active one stays, revisions are
//! listed, and a stopped sandbox answers from its stored policy; `openshell logs`
//! shows, follows and filters the decisions; `policy update` adds and removes endpoints.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use openshell_tests::{
    Sandbox, TempDir, need_sandbox, need_upstream, policy_file, stderr, stdout, up,
};

fn allow(host: &str) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  upstream:\n    name: upstream\n    endpoints:\n      - {{ host: \"{host}\", port: 80 }}\n    binaries:\n      - {{ path: \"/**\" }}\n"
    )
}

/// Ask the sandbox's loop to run request `n` (to the upstream host, or `url`); return
/// the HTTP code it saw.
fn request(ws: &Path, n: u32) -> String {
    request_to(ws, n, "")
}

fn request_to(ws: &Path, n: u32, url: &str) -> String {
    std::fs::write(ws.join(format!("go{n}")), url).unwrap();
    let res = ws.join(format!("res{n}"));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(&res)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        assert!(Instant::now() < until, "request {n} never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sandbox's loop: request n when /sandbox/go<n> appears (to the URL in it, else
/// the upstream host); its HTTP code lands in /sandbox/res<n>; ends on /sandbox/stop.
fn script(host: &str) -> String {
    format!(
        "i=1; while [ ! -e /sandbox/stop ]; do if [ -e /sandbox/go$i ]; then \
         u=$(cat /sandbox/go$i); \
         curl -s -m 10 -o /dev/null -w '%{{http_code}}\\n' ${{u:-http://{host}/}} > /sandbox/res$i.tmp; \
         mv /sandbox/res$i.tmp /sandbox/res$i; i=$((i+1)); fi; sleep 0.02; done"
    )
}

fn wait_ready(sb: &Sandbox, name: &str) -> PathBuf {
    let v: serde_json::Value = serde_json::from_str(&sb.wait_phase(name, "Ready")).unwrap();
    PathBuf::from(v["path"].as_str().unwrap()).join("workspace")
}

fn stop(ws: &Path, mut child: Child) {
    std::fs::write(ws.join("stop"), "").unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "sandbox did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn policy_set_get_list_on_a_running_sandbox() {
    need_upstream!();
    let host = up("OS_UPSTREAM_HOST");
    let sb = Sandbox::new();
    let dir = TempDir::new("livepol");
    let v1 = policy_file(dir.path(), "v1.yaml", &allow(&host));
    let v2 = policy_file(dir.path(), "v2.yaml", &allow("other.test.openshell"));
    let bad = policy_file(dir.path(), "bad.yaml", "version: 1\nnetwork_policy: {}\n");
    let static_change = policy_file(
        dir.path(),
        "static.yaml",
        &format!(
            "{}filesystem_policy:\n  read_only: [/usr]\n  read_write: [/sandbox, /tmp]\n",
            allow(&host)
        ),
    );
    let script = script(&host);
    let pol_arg = v1.to_string_lossy().into_owned();
    let child = sb.spawn_run(
        &["--keep", "--name", "pol", "--policy", &pol_arg],
        &["sh", "-c", &script],
    );
    let ws = wait_ready(&sb, "pol");
    assert_eq!(request(&ws, 1), "200", "v1 allows the host");

    let got = sb.cli(&["policy", "get", "pol", "--full"]);
    let text = stdout(&got);
    assert!(
        text.starts_with("Sandbox: pol\nVersion: 1\nHash:    sha256:"),
        "{text}"
    );
    assert!(
        text.contains("Status:  loaded\nActive:  yes\nCreated: "),
        "{text}"
    );
    let yaml = text.split_once("---\n").unwrap().1;
    assert!(yaml.contains(&host), "{yaml}");

    let set = sb.cli(&[
        "policy",
        "set",
        "pol",
        "--policy",
        v2.to_str().unwrap(),
        "--wait",
    ]);
    assert!(set.status.success(), "{}", stderr(&set));
    assert!(
        stdout(&set).contains("policy v2 loaded"),
        "{}",
        stdout(&set)
    );
    assert_eq!(request(&ws, 2), "403", "v2 no longer allows it");

    let o = sb.cli(&["policy", "set", "pol", "--policy", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.yaml:2:1"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("keeps its active policy"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&[
        "policy",
        "set",
        "pol",
        "--policy",
        static_change.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("v2 stays active"), "{}", stderr(&o));
    assert_eq!(request(&ws, 3), "403", "still v2 after the rejections");

    let json = stdout(&sb.cli(&["policy", "list", "pol", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v[0]["time"].as_str().unwrap().ends_with('Z'), "{json}");
    let list = stdout(&sb.cli(&["policy", "list", "pol"]));
    let statuses: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(statuses, ["superseded", "loaded", "rejected"], "{list}");
    // `sandbox get --policy-only` is the YAML alone; `policy get --full` the same page.
    let only = stdout(&sb.cli(&["sandbox", "get", "pol", "--policy-only"]));
    assert!(
        only.starts_with("version: 1\n") && only.contains("other.test.openshell"),
        "{only}"
    );
    let full = stdout(&sb.cli(&["policy", "get", "pol", "--full"]));
    assert!(full.ends_with(&only), "{full}");
    let json = sb.cli(&["policy", "get", "pol", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["version"], 2);

    // Back to v1 (allowed again), then stop: the stored policy is the last one set.
    let set = sb.cli(&["policy", "set", "pol", "--policy", v1.to_str().unwrap()]);
    assert!(set.status.success(), "{}", stderr(&set));
    assert_eq!(request(&ws, 4), "200");
    stop(&ws, child);
    let got = stdout(&sb.cli(&["policy", "get", "pol", "--full"]));
    assert!(
        got.contains("Status:  stored (not running)\n---\n"),
        "{got}"
    );
    assert!(
        got.contains(&host) && !got.contains("other.test.openshell"),
        "{got}"
    );
    let o = sb.cli(&["policy", "set", "pol", "--policy", v2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sandbox pol is not running (Stopped)"),
        "{}",
        stderr(&o)
    );
}

fn policy_verbs_explain_what_is_wrong() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.cli(&["policy", "get", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no sandbox named nope; see 'openshell sandbox list'"));
    // Without the network proxy there is nothing to change live.
    let mut child = sb
        .cmd()
        .args([
            "run",
            "--network",
            "none",
            "--name",
            "offline",
            "--",
            "sleep",
            "30",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&sb, "offline");
    let dir = TempDir::new("livepol2");
    let p = policy_file(dir.path(), "p.yaml", "version: 1\n");
    let o = sb.cli(&["policy", "set", "offline", "--policy", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("runs without the network proxy"),
        "{}",
        stderr(&o)
    );
    assert!(sb.cli(&["sandbox", "delete", "offline"]).status.success());
    child.wait().unwrap();
}

fn logs_show_follow_and_filter_the_decisions() {
    need_upstream!();
    let host = up("OS_UPSTREAM_HOST");
    let sb = Sandbox::new();
    let dir = TempDir::new("logs");
    let pol = policy_file(dir.path(), "p.yaml", &allow(&host));
    let pol_arg = pol.to_string_lossy().into_owned();
    let child = sb.spawn_run(
        &["--keep", "--name", "lg", "--policy", &pol_arg],
        &["sh", "-c", &script(&host)],
    );
    let ws = wait_ready(&sb, "lg");
    assert_eq!(request(&ws, 1), "200");
    // Follow from here on: the deny that comes next must show up while it runs.
    let mut follow = sb
        .cmd()
        .args(["logs", "lg", "-f", "--level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    assert_eq!(request_to(&ws, 2, "http://other.test.openshell/"), "403");
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("logs -f printed the deny");
    assert!(
        line.contains(" WARN  NET:OPEN DENIED /usr/bin/curl(")
            && line.contains("other.test.openshell:80"),
        "{line}"
    );
    stop(&ws, child);
    let until = Instant::now() + Duration::from_secs(10);
    while follow.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < until,
            "logs -f did not end with the sandbox"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rx.try_recv().is_err(), "only the deny is at warn level");

    let all = stdout(&sb.cli(&["logs", "lg"]));
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "{all}");
    assert!(lines[0].contains("INFO  CONFIG:LOADED policy v1"), "{all}");
    assert!(
        lines[1].contains("INFO  NET:OPEN ALLOWED") && lines[1].contains(&host),
        "{all}"
    );
    let last = stdout(&sb.cli(&["logs", "lg", "-n", "1"]));
    assert_eq!(last.trim(), lines[2]);
    let json = stdout(&sb.cli(&["logs", "lg", "-o", "json"]));
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["time"].as_u64().is_some(), "{l}");
        let dt = v["time_dt"].as_str().unwrap();
        assert!(
            dt.len() == 24 && dt.ends_with('Z') && dt.as_bytes()[10] == b'T',
            "{l}"
        );
    }
    // Lines older than --since are left out (the sandbox's lines are seconds old).
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(stdout(&sb.cli(&["logs", "lg", "--since", "0s"])), "");
    let o = sb.cli(&["logs", "lg", "--since", "soon"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--since"), "{}", stderr(&o));
}

fn policy_update_adds_and_removes_endpoints_live() {
    need_upstream!();
    let host = up("OS_UPSTREAM_HOST");
    let other = std::env::var("OS_UPSTREAM_OTHER_HOST").expect("OS_UPSTREAM_OTHER_HOST");
    let sb = Sandbox::new();
    let dir = TempDir::new("update");
    let pol = policy_file(dir.path(), "p.yaml", &allow(&host));
    let pol_arg = pol.to_string_lossy().into_owned();
    let child = sb.spawn_run(
        &["--keep", "--name", "up", "--policy", &pol_arg],
        &["sh", "-c", &script(&host)],
    );
    let ws = wait_ready(&sb, "up");
    let other_url = format!("http://{other}/");
    assert_eq!(request_to(&ws, 1, &other_url), "403");

    let spec = format!("{other}:80");
    // A dry run changes nothing.
    let o = sb.cli(&[
        "policy",
        "update",
        "up",
        "--add-endpoint",
        &spec,
        "--binary",
        "/usr/bin/curl",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&other), "{}", stdout(&o));
    assert_eq!(
        request_to(&ws, 2, &other_url),
        "403",
        "dry run applied nothing"
    );

    let o = sb.cli(&[
        "policy",
        "update",
        "up",
        "--add-endpoint",
        &spec,
        "--binary",
        "/usr/bin/curl",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("policy v2 loaded"), "{}", stdout(&o));
    assert_eq!(
        request_to(&ws, 3, &other_url),
        "200",
        "added endpoint works"
    );

    let o = sb.cli(&[
        "policy",
        "update",
        "up",
        "--remove-endpoint",
        &format!("{host}:80"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(request(&ws, 4), "403", "removed endpoint is denied");
    assert_eq!(request_to(&ws, 5, &other_url), "200");

    // Mistakes: a clear error and the active policy stays (v3).
    for (args, want) in [
        (
            vec!["--remove-endpoint", "nowhere.test.openshell:80"],
            "no endpoint nowhere.test.openshell:80",
        ),
        (vec!["--add-endpoint", &spec], "needs --binary PATH"),
        (
            vec!["--add-endpoint", "x:80:sometimes", "--binary", "/b"],
            "unknown variant",
        ),
        (vec![], "give --add-endpoint, --remove-endpoint"),
    ] {
        let mut a = vec!["policy", "update", "up"];
        a.extend(args);
        let o = sb.cli(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&sb.cli(&["policy", "get", "up", "-o", "json"]).stdout).unwrap();
    assert_eq!(v["version"], 3);

    // Upstream's rule spellings: a named inspected endpoint with an allow rule, then a
    // deny rule on it, then the whole network policy removed by name. Each is live.
    let root = format!("http://{other}/");
    let sub = format!("http://{other}/nothing-here");
    let o = sb.cli(&["policy", "update", "up", "--remove-endpoint", &spec]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&[
        "policy",
        "update",
        "up",
        "--add-endpoint",
        &format!("{other}:80::rest"),
        "--rule-name",
        "web",
        "--binary",
        "/usr/bin/curl",
        "--add-allow",
        &format!("{other}:80:get:/**"),
        "--wait",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("in network policy web"),
        "{}",
        stderr(&o)
    );
    assert_eq!(request_to(&ws, 6, &root), "200", "allowed by the GET rule");
    assert_eq!(
        request_to(&ws, 7, &sub),
        "200",
        "allowed by the GET rule too"
    );
    let o = sb.cli(&[
        "policy",
        "update",
        "up",
        "--add-deny",
        &format!("{other}:80:GET:/nothing-here"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(request_to(&ws, 8, &sub), "403", "the deny rule wins");
    assert_eq!(request_to(&ws, 9, &root), "200");
    let full = stdout(&sb.cli(&["policy", "get", "up", "--full"]));
    assert!(
        full.contains("web:") && full.contains("deny_rules") && full.contains("Active:  yes"),
        "{full}"
    );
    let o = sb.cli(&["policy", "update", "up", "--remove-rule", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        request_to(&ws, 10, &root),
        "403",
        "the network policy is gone"
    );
    for (args, want) in [
        (vec!["--remove-rule", "web"], "no network policy named web"),
        (
            vec!["--add-allow", &format!("{host}:81:GET:/x")],
            "no endpoint",
        ),
        (vec!["--add-allow", "h:80:GET:x"], "must start with '/'"),
        (vec!["--add-deny", "h:80:GET"], "not four fields"),
        (
            vec!["--add-endpoint", "h:80::websocket", "--binary", "/b"],
            "use rest",
        ),
        (
            vec![
                "--add-endpoint",
                "h:80:full:rest:enforce:websocket-credential-rewrite",
                "--binary",
                "/b",
            ],
            "not supported",
        ),
        (
            vec!["--add-endpoint", "h:80", "--rule-name", "_provider_x"],
            "belong to providers",
        ),
        (
            vec!["--binary", "/b", "--remove-rule", "x"],
            "only goes with",
        ),
    ] {
        let mut a = vec!["policy", "update", "up"];
        a.extend(args);
        let o = sb.cli(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    // A sixth field: allowed-ip lands in the endpoint.
    let o = sb.cli(&[
        "policy",
        "update",
        "up",
        "--add-endpoint",
        "h.test.openshell:80:::: allowed-ip=10.77.0.0/24",
        "--binary",
        "/b",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("10.77.0.0/24"), "{}", stdout(&o));

    // Revisions: the header alone by default; --rev N shows what was loaded then.
    let head = stdout(&sb.cli(&["policy", "get", "up"]));
    assert!(
        head.contains("Version: 7\n") && !head.contains("---"),
        "{head}"
    );
    let r1 = stdout(&sb.cli(&["policy", "get", "up", "--rev", "1", "--full"]));
    assert!(
        r1.contains("Version: 1\n") && r1.contains("Status:  superseded\nActive:  no\nCreated: 20"),
        "{r1}"
    );
    assert!(r1.contains(&host) && !r1.contains(&other), "{r1}");
    let v: serde_json::Value = serde_json::from_slice(
        &sb.cli(&["policy", "get", "up", "--rev", "5", "--base", "-o", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(v["version"], 5);
    assert!(v["policy"].as_str().unwrap().contains("web:"), "{v}");
    assert!(v["created"].as_str().unwrap().ends_with('Z'), "{v}");
    let o = sb.cli(&["policy", "get", "up", "--rev", "99"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no revision 99"), "{}", stderr(&o));
    stop(&ws, child);
    let o = sb.cli(&["policy", "get", "up", "--rev", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("kept by the running supervisor"),
        "{}",
        stderr(&o)
    );
}

/// Processes started by `sandbox exec` are children of the CLI on the host, not of the
/// sandbox's init: the proxy must still find them (in the sandbox's pid namespace) and
/// decide by their binary — allowed for curl, denied for python3 — not refuse every
/// connection as coming from an unknown process.
fn exec_processes_are_identified_by_the_proxy() {
    need_upstream!();
    let host = up("OS_UPSTREAM_HOST");
    let sb = Sandbox::new();
    let dir = TempDir::new("execnet");
    let logs = TempDir::new("execlogs");
    let policy = policy_file(
        dir.path(),
        "p.yaml",
        &format!(
            "version: 1\nnetwork_policies:\n  curl_only:\n    name: curl_only\n    endpoints:\n      - {{ host: \"{host}\", port: 80 }}\n    binaries:\n      - {{ path: /usr/bin/curl }}\n"
        ),
    );
    let p = policy.to_string_lossy().into_owned();
    let l = logs.path().to_string_lossy().into_owned();
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--name",
        "exnet",
        "--policy",
        &p,
        "--log-dir",
        &l,
        "--detach",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let url = format!("http://{host}/x");
    let curl = sb.cli(&[
        "sandbox",
        "exec",
        "exnet",
        "--",
        "curl",
        "-s",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(stdout(&curl), "200", "{}", stderr(&curl));
    let py = format!(
        "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('{url}', timeout=10)\n    print('open')\nexcept urllib.error.HTTPError as e:\n    print(e.code)\nexcept Exception as e:\n    print('error', e)\n"
    );
    let python = sb.cli(&["sandbox", "exec", "exnet", "--", "python3", "-c", &py]);
    assert_eq!(stdout(&python).trim(), "403", "{}", stderr(&python));
    let log = std::fs::read_to_string(logs.path().join("openshell.log")).unwrap_or_default();
    assert!(
        log.contains("NET:OPEN ALLOWED /usr/bin/curl("),
        "curl's connection attributed to curl: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("NET:OPEN DENIED /usr/bin/python3")),
        "python3's connection attributed to python3: {log}"
    );
    assert!(!log.contains("could not be identified"), "{log}");
    let o = sb.cli(&["sandbox", "delete", "exnet"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

openshell_tests::suite!(
    policy_set_get_list_on_a_running_sandbox,
    policy_verbs_explain_what_is_wrong,
    logs_show_follow_and_filter_the_decisions,
    policy_update_adds_and_removes_endpoints_live,
    exec_processes_are_identified_by_the_proxy,
);
