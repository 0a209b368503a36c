//! Connections that ignore the proxy, end to end with real clients (curl, python3) and
//! the real upstream hosts of `tests/env`: the kernel refuses them before any handshake
//! ("connection refused", as OpenShell does) and the supervisor logs who tried
//! (`NET:BYPASS` with the binary); `protocol: tcp` endpoints are relayed transparently
//! for the binaries the policy names and refused for the others; a burst of attempts is
//! refused, never left hanging and never let through; with the rules loaded by the
//! `nft` binary (no packet queue) the bypass listener still refuses them, after the
//! handshake, and says so in the log.

use openshell_tests::{need_upstream, stderr, stdout, up};

mod netcommon;

use netcommon::{Net, bin, policy};

fn tcp_host() -> String {
    up("OS_UPSTREAM_TCP").split(':').next().unwrap().to_string()
}

/// A `protocol: tcp` endpoint for python3 only.
fn transparent_for_python() -> String {
    let tcp = format!(
        "      - {{ host: \"{}\", port: 7777, protocol: tcp }}\n",
        tcp_host()
    );
    policy(&tcp, &bin("/usr/bin/python3*"))
}

/// python3 connecting to `host:port`: what it saw.
fn py_connect(host: &str, port: u16) -> String {
    format!(
        "python3 -c 'import socket\ntry:\n s=socket.create_connection((\"{host}\",{port}), timeout=5); s.sendall(b\"x\"); d=s.recv(10); print(\"py=data\" if d else \"py=eof\")\nexcept ConnectionRefusedError: print(\"py=refused\")\nexcept ConnectionResetError: print(\"py=reset\")\nexcept OSError as e: print(\"py=\", e)'"
    )
}

const ECHO: &str = "python3 -c 'import socket; s=socket.create_connection((\"TCPHOST\",7777), timeout=5); s.sendall(b\"ping\\n\"); print(\"echo:\", s.recv(100).decode().strip())'";

fn refused_by_the_kernel_and_logged_transparent_tcp_relayed() {
    need_upstream!();
    let n = Net::new();
    let other = up("OS_UPSTREAM_OTHER_IP");
    let script = format!(
        "curl -sS -m 5 --noproxy '*' http://{other}/bypass-probe ; echo curl=$?; {}; {}; {}",
        py_connect(&other, 443),
        py_connect("10.200.0.1", 22),
        ECHO.replace("TCPHOST", &tcp_host()),
    );
    let out = n.run(Some(&transparent_for_python()), &script);
    let text = stdout(&out);
    // curl's exit 7 is "couldn't connect" (refused); a reset after a handshake is 56.
    assert!(text.contains("curl=7"), "{text}{}", stderr(&out));
    assert!(
        text.contains("Connection refused") || stderr(&out).contains("Couldn't connect"),
        "{text}{}",
        stderr(&out)
    );
    // The router's own address on a port that is not the proxy's: refused too.
    assert_eq!(text.matches("py=refused").count(), 2, "{text}");
    assert!(text.contains("echo: ping"), "{text}{}", stderr(&out));
    let log = n.log();
    assert!(!log.contains("NET:QUEUE"), "{log}");
    assert!(
        log.contains("NET:BYPASS DENIED /usr/bin/curl(") && log.contains(&format!("-> {other}:80")),
        "{log}"
    );
    assert!(
        log.contains(&format!("-> {other}:443")) && log.contains("-> 10.200.0.1:22"),
        "{log}"
    );
    assert!(
        log.contains("NET:OPEN ALLOWED /usr/bin/python3")
            && log.contains(&format!("-> {}:7777 [policy:upstream]", tcp_host())),
        "{log}"
    );
    // Nothing reached the upstream.
    let access = std::fs::read_to_string(up("OS_UPSTREAM_ACCESS_LOG")).unwrap_or_default();
    assert!(!access.contains("/bypass-probe"), "{access}");
}

/// A `protocol: tcp` endpoint names its binaries: curl reaching the same host and port
/// is refused (by the name our DNS gave it), while python3 is relayed.
fn a_transparent_endpoint_refuses_other_binaries() {
    need_upstream!();
    let n = Net::new();
    let host = tcp_host();
    let script = format!(
        "curl -sS -m 5 --noproxy '*' telnet://{host}:7777 </dev/null; echo curl=$?; {}",
        ECHO.replace("TCPHOST", &host)
    );
    let out = n.run(Some(&transparent_for_python()), &script);
    let text = stdout(&out);
    assert!(text.contains("curl=7"), "{text}{}", stderr(&out));
    assert!(text.contains("echo: ping"), "{text}{}", stderr(&out));
    let log = n.log();
    assert!(
        log.contains("NET:BYPASS DENIED /usr/bin/curl(")
            && log.contains(&format!("-> {host}:7777")),
        "{log}"
    );
}

/// Hundreds of attempts at once: every one is refused (or, past the queue's length,
/// reset by the listener after its handshake) — none hangs, none gets data — and
/// the queue still decides afterwards.
fn a_burst_of_attempts_is_refused_never_let_through() {
    need_upstream!();
    let n = Net::new();
    let other = up("OS_UPSTREAM_OTHER_IP");
    let burst = format!(
        "python3 -c '
import socket, threading
res = {{}}
lock = threading.Lock()
def go(port):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((\"{other}\", port))
        try:
            s.sendall(b\"GET / HTTP/1.0\\r\\n\\r\\n\")
            r = \"data\" if s.recv(10) else \"reset\"
        except OSError:
            r = \"reset\"
    except ConnectionRefusedError:
        r = \"refused\"
    except socket.timeout:
        r = \"timeout\"
    except OSError as e:
        r = \"error %s\" % e
    with lock:
        res[r] = res.get(r, 0) + 1
ts = [threading.Thread(target=go, args=(20000 + i,)) for i in range(200)]
[t.start() for t in ts]
[t.join() for t in ts]
print(\"burst\", sorted(res.items()))
'"
    );
    let script = format!(
        "{burst}; curl -sS -m 5 --noproxy '*' http://{other}/ ; echo curl=$?; {}",
        ECHO.replace("TCPHOST", &tcp_host())
    );
    let out = n.run(Some(&transparent_for_python()), &script);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("burst"))
        .unwrap_or_else(|| panic!("{text}{}", stderr(&out)));
    let counts: Vec<(String, u32)> = line
        .trim_start_matches("burst [")
        .trim_end_matches(']')
        .split("), (")
        .filter_map(|p| {
            let p = p.trim_matches(|c| c == '(' || c == ')');
            let (k, v) = p.split_once(", ")?;
            Some((k.trim_matches('\'').to_string(), v.parse().ok()?))
        })
        .collect();
    let total: u32 = counts.iter().map(|(_, v)| v).sum();
    assert_eq!(total, 200, "{line}");
    assert!(
        counts.iter().all(|(k, _)| k == "refused" || k == "reset"),
        "an attempt hung, failed otherwise or got data: {line}"
    );
    assert!(counts.iter().any(|(k, _)| k == "refused"), "{line}");
    assert!(text.contains("curl=7"), "{text}{}", stderr(&out));
    assert!(text.contains("echo: ping"), "{text}{}", stderr(&out));
    assert!(
        n.log().contains("NET:BYPASS DENIED /usr/bin/python3"),
        "{}",
        n.log()
    );
}

/// The same with the rules loaded by the host's `nft` (the fallback when the kernel
/// refuses our netlink batch): no packet queue, so the bypass listener resets the
/// connection after its handshake, logs it all the same, and the log says why.
fn without_the_queue_the_listener_resets_and_logs() {
    need_upstream!();
    openshell_tests::need(
        "nft",
        std::path::Path::new("/usr/sbin/nft").exists(),
        "no /usr/sbin/nft (apt install nftables)",
    );
    let n = Net::new();
    let other = up("OS_UPSTREAM_OTHER_IP");
    let script = format!(
        "curl -sS -m 5 --noproxy '*' http://{other}/ ; echo curl=$?; {}",
        ECHO.replace("TCPHOST", &tcp_host())
    );
    let out = n.run_env(
        &[("OPENSHELL_NFT_FALLBACK", "1")],
        Some(&transparent_for_python()),
        &[],
        &script,
    );
    let text = stdout(&out);
    assert!(text.contains("curl=56"), "{text}{}", stderr(&out));
    assert!(text.contains("echo: ping"), "{text}{}", stderr(&out));
    let log = n.log();
    assert!(!log.contains("NET:MODE"), "the rules did not load: {log}");
    assert!(log.contains("NET:QUEUE"), "{log}");
    assert!(
        log.contains("NET:BYPASS DENIED /usr/bin/curl(") && log.contains(&format!("-> {other}:80")),
        "{log}"
    );
}

openshell_tests::suite!(
    refused_by_the_kernel_and_logged_transparent_tcp_relayed,
    a_transparent_endpoint_refuses_other_binaries,
    a_burst_of_attempts_is_refused_never_let_through,
    without_the_queue_the_listener_resets_and_logs,
);
