//! Port forwarding end to end with real clients: a python3 web server on the sandbox's
//! loopback, curl on the host. `--forward` at create, `forward start -d|stop|list`, a
//! port nothing listens on inside, a host port already taken, a duplicate, the
//! foreground form ended by SIGINT, a forward ending with its sandbox, and the refusal
//! with `--network none`. Root and rootless alike.

use std::process::{Command, Stdio};

use openshell_tests::{Sandbox, eventually, need_sandbox, stderr, stdout};

/// A free TCP port on the host's loopback (bound and released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn curl(port: u16) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--noproxy", "*"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .expect("curl (apt install curl)");
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

/// Start a web server inside `name` on 127.0.0.1:`port`, serving "MARK\n".
fn serve_inside(sb: &Sandbox, name: &str, port: u16, mark: &str) {
    let script = format!(
        "mkdir -p /tmp/w{port} && cd /tmp/w{port} && echo {mark} > index.html && setsid python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &"
    );
    let o = sb.cli(&["sandbox", "exec", name, "--", "sh", "-c", &script]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Ready when it answers inside.
    let probe = format!(
        "for i in $(seq 50); do python3 -c 'import urllib.request,sys; urllib.request.urlopen(\"http://127.0.0.1:{port}/\")' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    );
    let o = sb.cli(&["sandbox", "exec", name, "--", "sh", "-c", &probe]);
    assert!(o.status.success(), "the server inside never answered");
}

fn forwards_reach_a_server_inside_and_end_with_the_sandbox() {
    need_sandbox!();
    let sb = Sandbox::new();
    let (p1, p2) = (free_port(), free_port());
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--detach",
        "--name",
        "fw",
        "--forward",
        &p1.to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    serve_inside(&sb, "fw", p1, "first");
    assert_eq!(curl(p1), (true, "first\n".into()));

    // A second, detached; then listed with the sandbox's supervisor.
    serve_inside(&sb, "fw", p2, "second");
    let o = sb.cli(&["forward", "start", &format!("127.0.0.1:{p2}"), "fw", "-d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(curl(p2), (true, "second\n".into()));
    let list = stdout(&sb.cli(&["fwd", "list"]));
    assert!(list.starts_with("SANDBOX"), "{list}");
    for p in [p1, p2] {
        assert!(list.contains(&format!("fw       127.0.0.1  {p}")), "{list}");
    }
    let json = stdout(&sb.cli(&["forward", "list", "-o", "json"]));
    assert!(json.contains(&format!("\"port\": {p2}")), "{json}");

    // Refusals say what is wrong.
    let o = sb.cli(&["forward", "start", &p2.to_string(), "fw", "-d"]);
    assert!(stderr(&o).contains("already forwarded"), "{}", stderr(&o));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tp = taken.local_addr().unwrap().port();
    let o = sb.cli(&["forward", "start", &tp.to_string(), "fw", "-d"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is in use on this host"),
        "{}",
        stderr(&o)
    );
    drop(taken);
    let o = sb.cli(&["forward", "start", "nope:80", "fw"]);
    assert!(
        stderr(&o).contains("expected [ADDR:]PORT"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["forward", "stop", "1", "fw"]);
    assert!(stderr(&o).contains("is not forwarded"), "{}", stderr(&o));

    // Nothing listening inside: the client's connection closes, nothing hangs.
    let empty = free_port();
    let o = sb.cli(&["forward", "start", &empty.to_string(), "fw", "-d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!curl(empty).0);

    // stop ends one forward.
    let o = sb.cli(&["forward", "stop", &p2.to_string(), "fw"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!curl(p2).0);

    // The foreground form ends with SIGINT and takes its forward with it.
    let p3 = free_port();
    serve_inside(&sb, "fw", p3, "third");
    let mut fg = sb
        .cmd()
        .args(["forward", "start", &p3.to_string(), "fw"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(10, || curl(p3).0),
        "the foreground forward never served"
    );
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(fg.id() as i32, libc::SIGINT) };
    assert!(fg.wait().unwrap().success());
    assert!(!curl(p3).0, "the forward outlived its foreground command");

    // The forwards end with the sandbox.
    let o = sb.cli(&["sandbox", "stop", "fw"]);
    assert!(o.status.success());
    assert!(!curl(p1).0, "a forward outlived its sandbox");
    // ... and come back with it (saved with its options).
    let o = sb.cli(&["sandbox", "start", "fw"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serve_inside(&sb, "fw", p1, "again");
    assert_eq!(curl(p1), (true, "again\n".into()));
    let o = sb.cli(&["sandbox", "delete", "fw"]);
    assert!(o.status.success());
}

fn forwarding_needs_the_network_and_a_running_sandbox() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.run(&["--network", "none", "--forward", "8080"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("--forward needs the sandbox's network"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&[
        "sandbox",
        "create",
        "--detach",
        "--name",
        "quiet",
        "--network",
        "none",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&["forward", "start", "8080", "quiet", "-d"]);
    assert!(stderr(&o).contains("--network none"), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "stop", "quiet"]);
    assert!(o.status.success());
    let o = sb.cli(&["forward", "start", "8080", "quiet", "-d"]);
    assert!(stderr(&o).contains("is not running"), "{}", stderr(&o));
    let o = sb.cli(&["sandbox", "delete", "quiet"]);
    assert!(o.status.success());
}

openshell_tests::suite!(
    forwards_reach_a_server_inside_and_end_with_the_sandbox,
    forwarding_needs_the_network_and_a_running_sandbox,
);
