//! inference.local, the privacy router, end to end: calls from inside reach the route
//! the user set on the host with the route's credential and model (the client's own
//! auth dropped), with JSON errors for everything else; a route to a server on the
//! host's loopback works while CONNECT to it stays refused; streams are relayed as
//! they arrive (the backend holds its second event until the client, having read the
//! first, asks for it); Claude Code uses it as its base URL.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use openshell_tests::agents::{ProviderEnv, fingerprint as fp, ok};
use openshell_tests::{need_upstream, stderr, stdout, up};

type Env = ProviderEnv;

/// `run` without auto-providers: these tests use only the route's key.
fn run(e: &Env, opts: &[&str], argv: &[&str]) -> Output {
    e.run(&[&["--no-auto-providers"], opts].concat(), argv)
}

fn calls_reach_the_route_with_its_key_and_model_and_errors_are_json() {
    need_upstream!();
    let e = Env::new();
    let host = up("OS_UPSTREAM_HOST");
    let key = "sk-route-key-1";
    // No route yet: 503.
    let o = run(
        &e,
        &[],
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://inference.local/v1/models",
        ],
    );
    assert_eq!(stdout(&o), "503", "{}", stderr(&o));
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "oa",
        "--type",
        "openai",
        "--credential",
        &format!("OPENAI_API_KEY={key}"),
        "--config",
        &format!("base_url=https://{host}/v1"),
    ]));
    let o = e.cli(&[
        "inference",
        "set",
        "--provider",
        "oa",
        "--model",
        "testenv-large",
    ]);
    assert!(
        stdout(&o).contains("model testenv-large"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let script = r#"
B='{"model":"mine","messages":[{"role":"user","content":"route me"}]}'
echo "chat: $(curl -sS -H 'Authorization: Bearer client-key' -H 'content-type: application/json' -d "$B" https://inference.local/v1/chat/completions | grep -o 'model=[a-z-]* key=[0-9a-f]*')"
echo "plain: $(curl -sS -d "$B" http://inference.local/v1/chat/completions | grep -o 'key=[0-9a-f]*')"
echo "models: $(curl -sS https://inference.local/v1/models | grep -c testenv-small)"
python3 -c '
import json, urllib.request
r = urllib.request.Request("https://inference.local/v1/chat/completions", data=json.dumps({"model": "x", "messages": [{"role": "user", "content": "from python"}]}).encode(), headers={"content-type": "application/json", "authorization": "Bearer py-key"})
print("python:", json.load(urllib.request.urlopen(r))["choices"][0]["message"]["content"])
' 
echo "fetch: $(curl -sS -d '{"model":"x","tools":[{"type":"mcp","server_url":"https://elsewhere.example"}]}' https://inference.local/v1/responses)"
echo "traversal: $(curl -sS --path-as-is -o /dev/null -w '%{http_code}' https://inference.local/v1/models/..%2F..%2Fheaders)"
for p in "POST /v1/messages" "GET /v1/files" "POST /v1/chat/completions/x" "DELETE /v1/models"; do
  set -- $p
  echo "$1 $2: $(curl -sS -X $1 -d '{}' -w ' %{http_code}' https://inference.local$2 | tr -d '\n')"
done
"#;
    let o = run(
        &e,
        &["--log-dir", e.dir.path().to_str().unwrap()],
        &["sh", "-c", script],
    );
    let text = stdout(&o);
    assert!(
        text.contains(&format!("chat: model=testenv-large key={}", fp(key))),
        "{text}{}",
        stderr(&o)
    );
    assert!(text.contains(&format!("plain: key={}", fp(key))), "{text}");
    assert!(
        text.contains(&format!(
            "python: testenv-llm model=testenv-large key={} chat: from python",
            fp(key)
        )),
        "{text}"
    );
    assert!(
        text.contains("models: ") && !text.contains("models: 0"),
        "{text}"
    );
    assert!(
        text.contains("fetch: {\"error\":\"provider_side_fetch_refused\""),
        "{text}"
    );
    assert!(text.contains("traversal: 403"), "{text}");
    assert!(
        text.contains("POST /v1/messages: {\"error\":\"no_compatible_route\""),
        "{text}"
    );
    for p in [
        "GET /v1/files",
        "POST /v1/chat/completions/x",
        "DELETE /v1/models",
    ] {
        let line = text.lines().find(|l| l.starts_with(p)).unwrap_or_default();
        assert!(
            line.contains("unsupported_inference_path") && line.ends_with(" 403"),
            "{p}: {text}"
        );
    }
    // One API:INFERENCE line per call, never the key.
    let logs = std::fs::read_dir(e.dir.path())
        .unwrap()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .collect::<String>();
    assert!(logs.matches("API:INFERENCE").count() >= 12, "{logs}");
    assert!(!logs.contains(key), "the key is in a log");
    assert!(
        logs.contains("ms [tokens:"),
        "no token counts logged: {logs}"
    );
    // The backend down: 502, JSON.
    ok(&e.cli(&[
        "provider",
        "update",
        "oa",
        "--config",
        "base_url=https://blackhole.test.openshell:1/v1",
    ]));
    ok(&e.cli(&[
        "inference",
        "set",
        "--provider",
        "oa",
        "--model",
        "m",
        "--no-verify",
        "--timeout",
        "2",
    ]));
    let o = run(
        &e,
        &[],
        &[
            "curl",
            "-sS",
            "-w",
            " %{http_code}",
            "-d",
            "{}",
            "https://inference.local/v1/responses",
        ],
    );
    let t = stdout(&o);
    assert!(t.ends_with(" 502") || t.ends_with(" 504"), "{t}");
    assert!(t.contains("inference_backend"), "{t}");
    // Bad input.
    let o = e.cli(&[
        "inference",
        "set",
        "--provider",
        "oa",
        "--model",
        "m",
        "--timeout",
        "1",
    ]);
    assert!(stderr(&o).contains("does not answer"), "{}", stderr(&o));
    let o = e.cli(&["inference", "set", "--provider", "nope", "--model", "m"]);
    assert!(
        stderr(&o).contains("no provider named nope"),
        "{}",
        stderr(&o)
    );
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "gh",
        "--type",
        "github",
        "--credential",
        "GITHUB_TOKEN=x",
    ]));
    let o = e.cli(&["inference", "set", "--provider", "gh", "--model", "m"]);
    assert!(
        stderr(&o).contains("cannot serve inference"),
        "{}",
        stderr(&o)
    );
    ok(&e.cli(&["inference", "delete"]));
    assert!(stdout(&e.cli(&["inference", "get"])).contains("default: no route"));
}

/// A model server on the host's loopback (this test's own, speaking SSE): reachable
/// through the route only. Its second event waits until the client, having read the
/// first, calls again — a router that buffered the stream would never deliver it.
const BACKEND: &str = r#"
import http.server, threading, sys, json
go = threading.Event()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        go.set()
        body = json.dumps({"data": [{"id": "loopback-model"}], "key": self.headers.get("x-api-key", "")}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("content-length", "0")); req = json.loads(self.rfile.read(n))
        self.send_response(200); self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked"); self.end_headers()
        def chunk(s):
            b = s.encode(); self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b)); self.wfile.flush()
        chunk("event: one\ndata: model=%s\n\n" % req.get("model"))
        go.wait(60)
        chunk("event: two\ndata: done\n\n"); self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct Backend(Child, u16);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backend() -> Backend {
    let mut c = Command::new("python3")
        .args(["-c", BACKEND])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Backend(c, line.trim().parse().unwrap())
}

fn a_loopback_backend_streams_through_the_route_and_stays_unreachable_otherwise() {
    need_upstream!();
    let e = Env::new();
    let b = backend();
    let base = format!("http://127.0.0.1:{}", b.1);
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "local",
        "--type",
        "anthropic",
        "--credential",
        "ANTHROPIC_API_KEY=local-key",
        "--config",
        &format!("base_url={base}"),
    ]));
    ok(&e.cli(&[
        "inference",
        "set",
        "--provider",
        "local",
        "--model",
        "llama-local",
    ]));
    // Through the proxy: python's http.client does not read HTTPS_PROXY; curl -N does
    // and prints events as they come. The second call (GET) releases event two.
    let script = r#"
curl -sSN -d '{"model":"x","stream":true}' https://inference.local/v1/messages | while read -r line; do
  echo "got: $line"
  case "$line" in *model=*) curl -sS https://inference.local/v1/models >/dev/null ;; esac
done
"#;
    let o = run(&e, &[], &["timeout", "60", "sh", "-c", script]);
    let text = stdout(&o);
    assert!(
        text.contains("got: data: model=llama-local"),
        "{text}{}",
        stderr(&o)
    );
    assert!(
        text.contains("got: data: done"),
        "the stream was held back: {text}"
    );
    // Inside, 127.0.0.1 is the sandbox's own loopback; through the proxy it is refused.
    let direct = format!(
        "curl -sS -x \"$HTTP_PROXY\" --noproxy '' -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{}/v1/models",
        b.1
    );
    let o2 = run(&e, &[], &["sh", "-c", &direct]);
    assert_eq!(stdout(&o2), "403", "{}", stderr(&o2));
}

fn claude_code_uses_inference_local() {
    need_upstream!();
    openshell_tests::need(
        "agents",
        std::path::Path::new("/usr/bin/claude").exists(),
        "no /usr/bin/claude (npm install -g @anthropic-ai/claude-code)",
    );
    let e = Env::new();
    let host = up("OS_UPSTREAM_HOST");
    let key = "sk-ant-route-2";
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "ant",
        "--type",
        "anthropic",
        "--credential",
        &format!("ANTHROPIC_API_KEY={key}"),
        "--config",
        &format!("base_url=https://{host}"),
    ]));
    ok(&e.cli(&[
        "inference",
        "set",
        "--provider",
        "ant",
        "--model",
        "claude-sonnet-4-5",
    ]));
    let o = run(
        &e,
        &[
            "-e",
            "ANTHROPIC_BASE_URL=https://inference.local",
            "-e",
            "ANTHROPIC_API_KEY=not-the-key",
            "-e",
            "CLAUDE_CODE_MAX_RETRIES=0",
            "-e",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
        ],
        &["claude", "-p", "hi"],
    );
    let t = stdout(&o);
    assert!(
        t.contains(&format!("model=claude-sonnet-4-5 key={}", fp(key))),
        "{t}{}",
        stderr(&o)
    );
}

openshell_tests::suite!(
    calls_reach_the_route_with_its_key_and_model_and_errors_are_json,
    a_loopback_backend_streams_through_the_route_and_stays_unreachable_otherwise,
    claude_code_uses_inference_local,
);
