//! The explicit proxy keeps upstream connections of plain `http://` requests for the
//! next request to the same place (docs/network.md, "Upstream connections"), and only
//! where that is safe: the same host, port, program, policy entry, endpoint and policy
//! version; never for a request with a body, after an unfinished response or across a
//! policy change. The testenv
//! nginx tells each answer's connection (its client port and request count on it).

use std::process::Stdio;
use std::time::Duration;

use openshell_tests::agents::{ProviderEnv, ok};
use openshell_tests::{need_upstream, policy_file, stderr, stdout, up};

mod netcommon;

use netcommon::{Net, bin, control, ep, policy};

/// `(client_port, connection_requests)` of each answer in `text`, in order.
fn answers(text: &str) -> Vec<(String, u32)> {
    let mut port = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("client_port=") {
            port = Some(p.to_string());
        } else if let Some(n) = line.strip_prefix("connection_requests=") {
            out.push((port.take().unwrap_or_default(), n.parse().unwrap_or(0)));
        }
    }
    out
}

fn fields(host: &str) -> String {
    format!("curl -sS -m 10 http://{host}/ | grep -E '^(client_port|connection_requests)='")
}

/// Three separate client connections, one upstream connection; every request logged.
fn forwarded_requests_share_an_upstream_connection() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&ep(&host, 80), &bin("/**"));
    let script = [fields(&host), fields(&host), fields(&host)].join("; ");
    let out = n.run(Some(&p), &script);
    let a = answers(&stdout(&out));
    assert_eq!(a.len(), 3, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        a.iter().map(|x| x.1).collect::<Vec<_>>(),
        [1, 2, 3],
        "{a:?}"
    );
    assert!(a.iter().all(|x| x.0 == a[0].0), "{a:?}");
    let opens = n
        .log()
        .lines()
        .filter(|l| l.contains("NET:OPEN ALLOWED") && l.contains(&host))
        .count();
    assert_eq!(opens, 3, "one log line per request: {}", n.log());
}

/// A request allowed by another policy entry (another binary; both entries with the
/// same display name) gets a connection of its own; requests with a body never use or
/// leave a kept connection; a response left unread leaves none.
fn another_entry_or_an_unsafe_exchange_gets_a_new_connection() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    // Both entries carry the same display name: the pool tells them apart by key.
    let p = format!(
        "version: 1\nnetwork_policies:\n  by_curl:\n    name: web\n    endpoints:\n{}    binaries:\n{}  by_python:\n    name: web\n    endpoints:\n{}    binaries:\n{}",
        ep(&host, 80),
        bin("/usr/bin/curl"),
        ep(&host, 80),
        bin("/usr/bin/python3*"),
    );
    let py = format!(
        "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://{host}/\", timeout=10).read().decode())' | grep -E '^(client_port|connection_requests)='"
    );
    let chunked = format!(
        "printf abc | curl -sS -m 10 -H 'Transfer-Encoding: chunked' --data-binary @- http://{host}/ | grep -E '^(client_port|connection_requests)='"
    );
    let with_body = format!(
        "curl -sS -m 10 --data-binary abc http://{host}/ | grep -E '^(client_port|connection_requests)='"
    );
    let unread = format!("curl -sS -m 10 http://{host}/big 2>/dev/null | head -c 1000 >/dev/null");
    let script = [
        fields(&host), // 0: new (A)
        py,            // 1: another entry: new
        fields(&host), // 2: A again
        chunked,       // 3: a body the client framed: a new connection (C), not kept
        fields(&host), // 4: A again (not C)
        with_body,     // 5: any body: a new connection (D), not kept
        fields(&host), // 6: A again (not D)
        unread,        // takes A, cut short: not kept
        "sleep 0.5".to_string(),
        fields(&host), // 7: neither A, C nor D
    ]
    .join("; ");
    let out = n.run(Some(&p), &script);
    let a = answers(&stdout(&out));
    assert_eq!(a.len(), 8, "{}{}", stdout(&out), stderr(&out));
    let (conn_a, conn_c) = (a[0].0.clone(), a[3].0.clone());
    assert_eq!(a[0].1, 1, "{a:?}");
    assert_eq!(a[1].1, 1, "another policy entry shares nothing: {a:?}");
    assert_ne!(a[1].0, conn_a, "{a:?}");
    assert_eq!((&a[2].0, a[2].1), (&conn_a, 2), "{a:?}");
    assert_eq!(
        a[3].1, 1,
        "a chunked request takes no kept connection: {a:?}"
    );
    assert_ne!(conn_c, conn_a, "{a:?}");
    assert_eq!(
        (&a[4].0, a[4].1),
        (&conn_a, 3),
        "the chunked request's connection is not kept: {a:?}"
    );
    assert_eq!(
        a[5].1, 1,
        "a request with a body takes no kept connection: {a:?}"
    );
    let conn_d = a[5].0.clone();
    assert_ne!(conn_d, conn_a, "{a:?}");
    assert_eq!(
        (&a[6].0, a[6].1),
        (&conn_a, 4),
        "the connection of a request with a body is not kept: {a:?}"
    );
    assert_eq!(a[7].1, 1, "after an unread response: {a:?}");
    assert!(
        a[7].0 != conn_a && a[7].0 != conn_c && a[7].0 != conn_d,
        "{a:?}"
    );
}

/// A policy change (hot reload) leaves no connection of the old policy in use.
fn a_policy_change_drops_kept_connections() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let v1 = policy(&ep(&host, 80), &bin("/**"));
    let v2 = policy(&[ep(&host, 80), ep(&host, 81)].concat(), &bin("/**"));
    let script = format!(
        "{f}; {f}; touch /sandbox/ready
for i in $(seq 1 100); do [ -e /sandbox/reloaded ] && break; sleep 0.1; done
{f}; {f}",
        f = fields(&host)
    );
    let name = format!("pool{}", std::process::id());
    let f = policy_file(n.dir.path(), "v1.yaml", &v1);
    let child =
        n.sb.cmd()
            .args(["run", "--name", &name, "--keep", "--policy"])
            .arg(&f)
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let dir = n.sb.state.path().join("sandboxes").join(&name);
    let ws = dir.join("workspace");
    for _ in 0..100 {
        if ws.join("ready").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = control(&dir.join("control.sock"), "PUT", Some(&v2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["version"], 2, "{}", stdout(&out));
    std::fs::write(ws.join("reloaded"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let a = answers(&stdout(&out));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(a.len(), 4, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        a.iter().map(|x| x.1).collect::<Vec<_>>(),
        [1, 2, 1, 2],
        "{a:?}"
    );
    assert_ne!(a[2].0, a[0].0, "{a:?}");
}

/// A plain `http://` request that gets a credential swapped in — here from a
/// placeholder inside Basic credentials, which the reuse rule does not decode — ends
/// its upstream connection: the next request of the same program gets a new one.
fn a_request_with_a_secret_swapped_in_leaves_no_connection() {
    need_upstream!();
    let e = ProviderEnv::new();
    let host = up("OS_UPSTREAM_HOST");
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "ant",
        "--type",
        "anthropic",
        "--credential",
        "ANTHROPIC_API_KEY=sk-ant-pool-789",
        "--config",
        &format!("base_url=http://{host}"),
    ]));
    let basic = "$(printf 'user:%s' \"$ANTHROPIC_API_KEY\" | base64 -w0)";
    let script = format!(
        "curl -sS -H \"Authorization: Basic {basic}\" http://{host}/a | grep -E '^(client_port|connection_requests)='; {f}; {f}",
        f = fields(&host)
    );
    let out = e.run(&["--provider", "ant"], &["sh", "-c", &script]);
    let a = answers(&stdout(&out));
    assert_eq!(a.len(), 3, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(a[0].1, 1, "{a:?}");
    assert_eq!(a[1].1, 1, "the secret's connection was kept: {a:?}");
    assert_ne!(a[1].0, a[0].0, "{a:?}");
    // Requests without a secret still share theirs.
    assert_eq!((&a[2].0, a[2].1), (&a[1].0, 2), "{a:?}");
}

openshell_tests::suite!(
    forwarded_requests_share_an_upstream_connection,
    another_entry_or_an_unsafe_exchange_gets_a_new_connection,
    a_policy_change_drops_kept_connections,
    a_request_with_a_secret_swapped_in_leaves_no_connection,
);
