//! Inspected (`protocol: rest`) endpoints end to end: TLS terminated with the sandbox
//! CA, every request decided by `access`/`rules`/`deny_rules`, `enforcement: audit`,
//! clients trusting the CA unmodified, and the attacks on an inspecting proxy (domain
//! fronting by SNI, Host or HTTP/2 authority, request smuggling, oversized heads);
//! HTTP/2 clients (every stream decided) and WebSocket upgrades.

use std::process::Output;

use openshell_tests::{Sandbox, TempDir, need_upstream, policy_file, stderr, stdout, up};

struct L7 {
    sb: Sandbox,
    logs: TempDir,
    dir: TempDir,
}

impl L7 {
    fn new() -> Self {
        Self {
            sb: Sandbox::new(),
            logs: TempDir::new("l7logs"),
            dir: TempDir::new("l7pol"),
        }
    }

    /// Run `script`; the proxy trusts the test CA for its own upstream TLS, the client
    /// only the sandbox CA (no --cacert anywhere).
    fn run(&self, policy: &str, script: &str) -> Output {
        self.run_with(policy, &[], script)
    }

    /// [`L7::run`] with more `run` options.
    fn run_with(&self, policy: &str, extra: &[&str], script: &str) -> Output {
        let f = policy_file(self.dir.path(), "p.yaml", policy);
        let logs = self.logs.path().to_string_lossy().into_owned();
        let ca = up("OS_UPSTREAM_CA");
        let mut opts = vec![
            "--policy",
            f.to_str().unwrap(),
            "--upstream-ca",
            &ca,
            "--log-dir",
            &logs,
        ];
        opts.extend_from_slice(extra);
        self.sb.run(&opts, &["sh", "-c", script])
    }

    /// Write `content` to `name` in the test's directory; the `--mount` spec that
    /// shows it read-only at /sandbox/`name`.
    fn file_mount(&self, name: &str, content: &str) -> String {
        let host = self.dir.path().join(name);
        std::fs::write(&host, content).unwrap();
        format!("{}:/sandbox/{name}:ro", host.display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("openshell.log")).unwrap_or_default()
    }
}

fn policy(endpoints: &str, binaries: &[&str]) -> String {
    let bins: String = binaries
        .iter()
        .map(|b| format!("      - {{ path: \"{b}\" }}\n"))
        .collect();
    format!(
        "version: 1\nnetwork_policies:\n  upstream:\n    name: upstream\n    endpoints:\n{endpoints}    binaries:\n{bins}"
    )
}

fn read_only_denies_post_before_it_reaches_upstream() {
    need_upstream!();
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(
        &format!("      - {{ host: \"{host}\", port: 443, protocol: rest, access: read-only }}\n"),
        &["/**"],
    );
    let marker = format!("openshell-l7-{}", std::process::id());
    // Two requests on one kept-alive connection: each is decided.
    let script = format!(
        "curl --http1.1 -sS -i https://{host}/get-{marker}?token=SECRET --next --http1.1 -sS -i -X POST -d a=b https://{host}/post-{marker}"
    );
    let out = t.run(&p, &script);
    let text = stdout(&out);
    assert!(text.contains("method=GET"), "{text}{}", stderr(&out));
    assert!(text.contains("HTTP/1.1 403 Forbidden"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-openshell-policy: upstream"),
        "{text}"
    );
    let body = text.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"], "policy_denied");
    assert_eq!(
        v["detail"],
        format!("POST /post-{marker} not permitted by policy")
    );
    assert_eq!(v["policy"], "upstream");
    assert_eq!(v["rule"], "access:read-only");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["host"], host.as_str());
    assert_eq!(v["port"], 443);
    assert_eq!(v["binary"], "/usr/bin/curl");
    // The denied request never reached the upstream; the allowed one did.
    let access = std::fs::read_to_string(up("OS_UPSTREAM_ACCESS_LOG")).unwrap_or_default();
    assert!(
        access.contains(&format!("/get-{marker}")),
        "allowed request missing upstream"
    );
    assert!(
        !access.contains(&format!("/post-{marker}")),
        "denied request reached upstream"
    );
    let ours = t.log();
    assert!(
        ours.contains(&format!(
            "HTTP:POST DENIED POST https://{host}/post-{marker} /usr/bin/curl("
        )),
        "{ours}"
    );
    assert!(
        !ours.contains("SECRET"),
        "a query string was logged: {ours}"
    );
}

fn rules_paths_queries_deny_rules_and_audit() {
    need_upstream!();
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let eps = format!(
        "      - host: \"{host}\"
        port: 443
        protocol: rest
        rules:
          - allow: {{ method: GET, path: \"/repos/**\" }}
          - allow: {{ method: GET, path: /search, query: {{ q: \"rust*\" }} }}
          - allow: {{ method: POST, path: \"/repos/*/issues\" }}
        deny_rules:
          - {{ method: \"*\", path: \"/repos/secret/**\" }}
      - host: \"{host}\"
        port: 8443
        protocol: rest
        enforcement: audit
        access: read-only
"
    );
    let p = policy(&eps, &["/**"]);
    let code = |m: &str, url: &str| {
        format!("curl -sS -o /dev/null -w '%{{http_code}} ' -X {m} 'https://{host}{url}'; ")
    };
    let script = [
        code("GET", "/repos/a/b"),
        code("GET", "/repos/secret/x"),
        code("GET", "/repos/a/../secret/x"),
        code("GET", "/repos/%73ecret/x"),
        code("GET", "/search?q=rustls"),
        code("GET", "/search?q=go"),
        code("POST", "/repos/a/issues"),
        code("POST", "/repos/a/b/issues"),
        code("GET", "/other"),
        code("DELETE", ":8443/audited"),
    ]
    .concat();
    let out = t.run(&p, &script);
    // curl normalises /a/../ itself; the encoded and plain forms are the proxy's job.
    assert_eq!(
        stdout(&out),
        "200 403 403 403 200 403 200 403 403 200 ",
        "{}",
        stderr(&out)
    );
    let log = t.log();
    assert!(log.contains("HTTP:DELETE AUDIT DELETE https://"), "{log}");
    assert!(
        log.contains("[reason:a deny rule matches this request]"),
        "{log}"
    );
}

fn the_sandbox_ca_is_trusted_by_clients_unmodified() {
    need_upstream!();
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(
        &format!("      - {{ host: \"{host}\", port: 443, protocol: rest, access: read-only }}\n"),
        &[
            "/usr/bin/curl",
            "/usr/bin/python3*",
            "/usr/bin/git",
            "/usr/lib/git-core/*",
        ],
    );
    let url = up("OS_UPSTREAM_HTTPS_URL");
    let script = format!(
        "env | grep -E '^(SSL_CERT_FILE|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|GIT_SSL_CAINFO|NODE_EXTRA_CA_CERTS|DENO_CERT)=' | sort
         curl -sS {url}/curl | head -1
         curl -sS --cacert /etc/ssl/certs/ca-certificates.crt {url}/distro-bundle | head -1
         python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{url}/python\").read().decode().splitlines()[0])'
         python3 -c 'import requests; print(requests.get(\"{url}/requests\").text.splitlines()[0])'
         /usr/bin/git ls-remote {url}/repo.git 2>&1 | grep -c 'SSL certificate problem' || true"
    );
    let out = t.run(&p, &script);
    let text = stdout(&out);
    for want in [
        "CURL_CA_BUNDLE=/run/openshell/ca-bundle.pem",
        "DENO_CERT=/run/openshell/ca.pem",
        "GIT_SSL_CAINFO=/run/openshell/ca-bundle.pem",
        "NODE_EXTRA_CA_CERTS=/run/openshell/ca.pem",
        "REQUESTS_CA_BUNDLE=/run/openshell/ca-bundle.pem",
        "SSL_CERT_FILE=/run/openshell/ca-bundle.pem",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
    assert_eq!(
        text.matches("method=GET").count(),
        4,
        "{text}{}",
        stderr(&out)
    );
    // git reached the upstream through the inspected tunnel (nginx is no git server).
    assert!(
        text.trim_end().ends_with('0'),
        "git did not trust the CA: {text}"
    );
    assert!(
        t.log()
            .contains("HTTP:GET ALLOWED GET https://api.test.openshell/repo.git/info/refs"),
        "{}",
        t.log()
    );
    // The CA's key is nowhere in the sandbox's reach.
    let out = t.run(
        &p,
        "grep -c 'PRIVATE KEY' /run/openshell/*; ls /run/openshell",
    );
    assert_eq!(
        stdout(&out),
        "/run/openshell/ca-bundle.pem:0\n/run/openshell/ca.pem:0\n/run/openshell/node-proxy.cjs:0\nca-bundle.pem\nca.pem\nnode-proxy.cjs\n"
    );
}

const TLS_PROBE: &str = r#"
import socket, ssl, sys
host, sni, payload = sys.argv[1], sys.argv[2], eval(sys.argv[3])
s = socket.create_connection(('10.200.0.1', 3128))
s.sendall(b'CONNECT ' + host.encode() + b':443 HTTP/1.1\r\n\r\n')
s.recv(100)
c = ssl.create_default_context()
c.check_hostname = False
c.verify_mode = ssl.CERT_NONE
try:
    t = c.wrap_socket(s, server_hostname=sni)
    t.sendall(payload)
    d = t.recv(200)
    print(d.split(b'\r\n')[0].decode() if d else 'closed')
    # Keep reading a moment: a pipelined second request gets its own answer.
    t.settimeout(1)
    try:
        while t.recv(4096):
            pass
    except Exception:
        pass
except Exception as e:
    print('closed', type(e).__name__)
"#;

fn domain_fronting_smuggling_and_oversized_heads_are_refused() {
    need_upstream!();
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let other = up("OS_UPSTREAM_OTHER_HOST");
    let eps = format!(
        "      - {{ host: \"{host}\", port: 443, protocol: rest, rules: [{{ allow: {{ method: \"*\", path: /x }} }}] }}\n"
    );
    let p = policy(&eps, &["/**"]);
    let probe = t.file_mount("probe.py", TLS_PROBE);
    let marker = format!("smuggled-{}", std::process::id());
    let get = format!("b'GET /x HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n'");
    // CL.TE: a front end trusting Content-Length would pass the tail on as a second
    // request the rules never saw.
    let tail = format!("GET /{marker} HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n");
    let smuggle = format!(
        "b'POST /x HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Length: {}\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n{tail}'",
        5 + tail.len() - tail.matches("\\r\\n").count() * 2
    );
    let big =
        format!("b'GET /x HTTP/1.1\\r\\nHost: {host}\\r\\nX: ' + b'a' * 20000 + b'\\r\\n\\r\\n'");
    // An h2c upgrade would carry HTTP/2 requests the rules never see; a Host naming
    // another port of the same name is another site.
    let h2c = format!(
        "b'GET /x HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: Upgrade, HTTP2-Settings\\r\\nUpgrade: h2c\\r\\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\\r\\n\\r\\n'"
    );
    let port = format!("b'GET /x HTTP/1.1\\r\\nHost: {host}:8443\\r\\n\\r\\n'");
    let script = format!(
        "python3 /sandbox/probe.py {host} {other} \"{get}\"
         python3 /sandbox/probe.py {host} {host} \"{smuggle}\"
         python3 /sandbox/probe.py {host} {host} \"{big}\"
         curl --http1.1 -sS -o /dev/null -w '%{{http_code}}\\n' -H 'Host: {other}' https://{host}/x
         python3 /sandbox/probe.py {host} {host} \"{h2c}\"
         python3 /sandbox/probe.py {host} {host} \"{port}\""
    );
    let out = t.run_with(&p, &["--mount", &probe], &script);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 6, "{lines:?} {}", stderr(&out));
    assert!(
        lines[0].starts_with("closed"),
        "SNI fronting was answered: {lines:?}"
    );
    assert_eq!(
        lines[1], "HTTP/1.1 200 OK",
        "the POST itself is allowed: {lines:?}"
    );
    assert_eq!(
        lines[2], "HTTP/1.1 431 Request Header Fields Too Large",
        "{lines:?}"
    );
    assert_eq!(lines[3], "403", "Host header fronting: {lines:?}");
    assert_eq!(lines[4], "HTTP/1.1 403 Forbidden", "h2c upgrade: {lines:?}");
    assert_eq!(
        lines[5], "HTTP/1.1 403 Forbidden",
        "Host with another port: {lines:?}"
    );
    let log = t.log();
    assert!(
        log.contains("TLS SNI does not name the CONNECT host (domain fronting)"),
        "{log}"
    );
    assert!(
        log.contains("the Host header does not name the CONNECT host (domain fronting)"),
        "{log}"
    );
    assert!(
        log.contains("only WebSocket upgrades are relayed (Upgrade: h2c)"),
        "{log}"
    );
    // The smuggled request never reached the upstream: hyper closes a connection whose
    // request had both framings (had it gone on, the tail would be decided as a request).
    assert!(
        !log.contains(&format!("ALLOWED GET https://{host}/{marker}")),
        "{log}"
    );
    let access = std::fs::read_to_string(up("OS_UPSTREAM_ACCESS_LOG")).unwrap_or_default();
    assert!(
        !access.contains(&marker),
        "the smuggled request reached the upstream"
    );
}

fn http2_streams_are_each_decided_and_forwarded_as_http2() {
    need_upstream!();
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let other = up("OS_UPSTREAM_OTHER_HOST");
    let p = policy(
        &format!(
            "      - host: \"{host}\"\n        port: 443\n        protocol: rest\n        rules:\n          - allow: {{ method: GET, path: \"/h2/**\" }}\n"
        ),
        &["/**"],
    );
    // Two streams on one HTTP/2 connection (curl reuses it): one allowed, one denied;
    // then HTTP/1.1 to the same endpoint; then fronting through the :authority.
    let script = format!(
        "curl -sS -i https://{host}/h2/a --next -sS -i https://{host}/elsewhere; echo; \
         curl --http1.1 -sS https://{host}/h2/b; \
         curl -sS -o /dev/null -w 'fronted %{{http_version}} %{{http_code}}\\n' -H 'Host: {other}' https://{host}/h2/c"
    );
    let out = t.run(&p, &script);
    let text = stdout(&out);
    // (curl -i also prints the proxy's answer to its CONNECT.)
    assert!(
        text.contains("\r\n\r\nHTTP/2 200"),
        "{text}{}",
        stderr(&out)
    );
    let (first, rest) = text
        .split_once("HTTP/2 403")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        first.contains("protocol=HTTP/2.0"),
        "upstream saw HTTP/2: {first}"
    );
    assert!(first.contains("path=/h2/a"), "{first}");
    assert!(rest.contains("x-openshell-policy: upstream"), "{rest}");
    assert!(rest.contains("\"error\":\"policy_denied\""), "{rest}");
    assert!(rest.contains("\"path\":\"/elsewhere\""), "{rest}");
    assert!(
        rest.contains("path=/h2/b") && rest.contains("protocol=HTTP/1.1"),
        "an HTTP/1.1 client reaches the upstream over HTTP/1.1: {rest}"
    );
    assert!(rest.contains("fronted 2 403"), "{rest}");
    let log = t.log();
    assert!(
        log.contains(&format!("HTTP:GET ALLOWED GET https://{host}/h2/a")),
        "{log}"
    );
    assert!(
        log.contains(&format!("HTTP:GET DENIED GET https://{host}/elsewhere")),
        "{log}"
    );
    assert!(
        log.contains("the request's authority does not name the CONNECT host (domain fronting)"),
        "{log}"
    );
    let access = std::fs::read_to_string(up("OS_UPSTREAM_ACCESS_LOG")).unwrap_or_default();
    assert!(
        !access.contains("/h2/c"),
        "the fronted request reached the upstream"
    );
}

/// A minimal WebSocket client (Python's standard library has none): CONNECT through
/// the proxy, TLS trusting the sandbox CA the way every client does, the upgrade, two
/// echoed messages, a close.
const WS_CLIENT: &str = r#"
import base64, os, socket, ssl, struct, sys
host, path = sys.argv[1], sys.argv[2]
s = socket.create_connection(("10.200.0.1", 3128), timeout=10)
s.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
t = ssl.create_default_context().wrap_socket(s, server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
t.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
resp = b""
while b"\r\n\r\n" not in resp:
    c = t.recv(1)
    if not c:
        break
    resp += c
print(resp.split(b"\r\n", 1)[0].decode())
if b" 101 " not in resp.split(b"\r\n", 1)[0] + b" ":
    sys.exit(0)
def send(op, payload):
    mask = os.urandom(4)
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    t.sendall(bytes([0x80 | op]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
def recv():
    b = t.recv(2)
    n = b[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", t.recv(2))[0]
    data = b""
    while len(data) < n:
        data += t.recv(n - len(data))
    return b[0] & 0x0F, data
for msg in [b"hello through openshell", bytes(range(256)) * 4]:
    send(2, msg)
    op, data = recv()
    print("echo", op, len(data), data == msg)
send(8, struct.pack(">H", 1000))
print("close", recv()[0])
"#;

fn websocket_upgrade_is_decided_then_relayed() {
    need_upstream!();
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let p = policy(
        &format!(
            "      - host: \"{host}\"\n        port: 443\n        protocol: rest\n        rules:\n          - allow: {{ method: GET, path: \"/ws\" }}\n        deny_rules:\n          - {{ method: GET, path: \"/ws\", query: {{ room: \"secret\" }} }}\n"
        ),
        &["/**"],
    );
    let ws = t.file_mount("ws.py", WS_CLIENT);
    let script = format!(
        "python3 /sandbox/ws.py {host} /ws; python3 /sandbox/ws.py {host} '/ws?room=secret'; python3 /sandbox/ws.py {host} /ws-other"
    );
    let out = t.run_with(&p, &["--mount", &ws], &script);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "HTTP/1.1 101 Switching Protocols",
            "echo 2 23 True",
            "echo 2 1024 True",
            "close 8",
            "HTTP/1.1 403 Forbidden",
            "HTTP/1.1 403 Forbidden",
        ],
        "{}",
        stderr(&out)
    );
    let log = t.log();
    assert!(
        log.contains(&format!("HTTP:GET ALLOWED GET https://{host}/ws")),
        "{log}"
    );
    assert!(
        log.contains(&format!("HTTP:GET DENIED GET https://{host}/ws-other")),
        "{log}"
    );
}

/// Node's default agents, unmodified scripts: node older than 22.21 ignores the proxy
/// variables, so the sandbox preloads an agent (NODE_OPTIONS) that tunnels https and
/// forwards http through the proxy; the decisions are the proxy's (by node's binary).
const NODE_CLIENT: &str = r#"
const https = require('https'), http = require('http');
const get = (mod, url) => new Promise((done) => {
  mod.get(url, (r) => {
    let b = '';
    r.on('data', (d) => { b += d; });
    r.on('end', () => done(`${r.statusCode} ${b.split('\n')[0]}`));
  }).on('error', (e) => done(`error ${e.message}`));
});
(async () => {
  for (const u of process.argv.slice(2)) console.log(await get(u.startsWith('https') ? https : http, u));
})();
"#;

fn node_goes_through_the_proxy_unmodified() {
    need_upstream!();
    let node = std::path::Path::new("/usr/bin/node");
    openshell_tests::need(
        "node",
        node.exists(),
        "no /usr/bin/node (apt install nodejs)",
    );
    let t = L7::new();
    let host = up("OS_UPSTREAM_HOST");
    let other = up("OS_UPSTREAM_OTHER_HOST");
    let eps = format!(
        "      - {{ host: \"{host}\", port: 443 }}
      - {{ host: \"{host}\", port: 80 }}
      - host: files.test.openshell
        port: 443
        protocol: rest
        rules:
          - allow: {{ method: GET, path: \"/node/**\" }}
"
    );
    let p = policy(&eps, &["/usr/bin/node"]);
    let js = t.file_mount("n.js", NODE_CLIENT);
    let ca = format!("{}:/sandbox/ca.crt:ro", up("OS_UPSTREAM_CA"));
    // The plain tunnel reaches the test host's own certificate: node trusts its CA the
    // usual way; the inspected endpoint needs nothing (the sandbox CA is preset).
    let script = format!(
        "NODE_EXTRA_CA_CERTS=/sandbox/ca.crt node /sandbox/n.js https://{host}/node/a http://{host}/node/b https://{other}/; \
         node /sandbox/n.js https://files.test.openshell/node/c https://files.test.openshell/other; \
         curl -sS -o /dev/null -w 'curl %{{http_code}}\\n' http://{host}/node/d"
    );
    let out = t.run_with(
        &p,
        &[
            "--mount",
            &js,
            "--mount",
            &ca,
            "-e",
            "NODE_OPTIONS=--no-warnings",
        ],
        &script,
    );
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 6, "{lines:?} {}", stderr(&out));
    assert_eq!(lines[0], "200 method=GET", "https tunnel: {lines:?}");
    assert_eq!(lines[1], "200 method=GET", "http forward: {lines:?}");
    assert!(
        lines[2].starts_with(&format!(
            "error openshell proxy refused CONNECT {other}:443: HTTP/1.1 403 Forbidden"
        )) && lines[2].contains("policy_denied"),
        "{lines:?}"
    );
    assert_eq!(lines[3], "200 method=GET", "inspected: {lines:?}");
    assert!(
        lines[4].starts_with("403 ") && lines[4].contains("\"path\":\"/other\""),
        "{lines:?}"
    );
    assert_eq!(
        lines[5], "curl 403",
        "the policy names node only: {lines:?}"
    );
    let log = t.log();
    assert!(log.contains("NET:OPEN ALLOWED /usr/bin/node("), "{log}");
    assert!(
        log.contains("HTTP:GET ALLOWED GET https://files.test.openshell/node/c"),
        "{log}"
    );
}

openshell_tests::suite!(
    read_only_denies_post_before_it_reaches_upstream,
    rules_paths_queries_deny_rules_and_audit,
    the_sandbox_ca_is_trusted_by_clients_unmodified,
    domain_fronting_smuggling_and_oversized_heads_are_refused,
    http2_streams_are_each_decided_and_forwarded_as_http2,
    websocket_upgrade_is_decided_then_relayed,
    node_goes_through_the_proxy_unmodified,
);
