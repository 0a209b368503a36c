#!/usr/bin/env python3
"""upstream_app.py - the dynamic endpoints of the upstream test hosts (behind nginx, which
adds X-Testenv-* headers describing the client's connection) and a TCP echo server.
Python 3 stdlib only; upstream.sh runs it in the namespace as nobody.

  upstream_app.py HTTP_ADDR:PORT ECHO_ADDR:PORT

  /headers               JSON: the request as nginx received it, headers in order
  /anything[/...]        the same plus the body: {length, sha256, text (<= 64 KiB UTF-8)}
  /status/NNN            status NNN (200..599); ?location= for 3xx
  /slow?s=S              answers after S seconds (default 2, at most 600)
  /drip?n=N&s=S          N bytes (default 10) spread over S seconds (default 2), chunked
  /chunked?n=N&size=B&delay=S   N chunks of B bytes, S seconds apart
  /ws                    WebSocket echo (ping -> pong, close echoed); 426 without upgrade
  /v1/...                a model API stand-in (below)

The model API: POST /v1/messages (Anthropic, "stream": true for SSE), /v1/messages/
count_tokens, /v1/chat/completions (OpenAI, SSE ending "data: [DONE]"), /v1/responses
(OpenAI Responses, SSE), GET /v1/models[/ID]. Every answer's text is
  testenv-llm model=<model> key=<fp> chat: <last user text, 200 chars>
where <fp> is the first 16 hex digits of the sha256 of the credential that arrived
(x-api-key, else the Bearer token; "none"): a test sees which key reached the upstream
without the upstream echoing it. The key "reject-me" gets 401. When the prompt says
"create hello_world.py" and Claude Code's Write tool is offered, /v1/messages answers
with a tool_use writing /sandbox/hello_world.py, then a text once the tool_result is
back. GET /v1/_testenv/last?kind=messages|count_tokens|chat|responses|models shows the
last such request (credential headers replaced by sha256:<fp>).
"""

import base64
import hashlib
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

META = "x-testenv-"
MAX_TEXT = 64 * 1024
MAX_JSON = 32 * 1024 * 1024
MODELS = ["testenv-small", "testenv-large", "claude-sonnet-4-5", "gpt-5-codex"]
LAST, LAST_LOCK = {}, threading.Lock()


def fp(value):
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value else "none"


def num(q, name, default, lo, hi, kind=float):
    try:
        return max(lo, min(hi, kind(q.get(name, [default])[0])))
    except ValueError:
        return default


def text_of(content):
    if isinstance(content, str):
        return content
    parts = []
    for b in content if isinstance(content, list) else []:
        if isinstance(b, dict) and b.get("type") in ("text", "input_text", "output_text"):
            parts.append(str(b.get("text", "")))
        elif isinstance(b, dict) and b.get("type") == "tool_result":
            parts.append("[tool_result] " + text_of(b.get("content")))
    return " ".join(parts)


def last_user_text(messages):
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


def answer(model, key, said):
    return "testenv-llm model=%s key=%s chat: %s" % (model or "-", fp(key), " ".join(said.split())[:200])


def words(text):
    """the text in pieces (each word with its space) for streamed deltas"""
    w = text.split(" ")
    return [x + " " for x in w[:-1]] + [w[-1]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openshell-testenv"
    sys_version = ""

    def log_message(self, *_):  # nginx keeps the access log
        pass

    def __getattr__(self, name):  # every method, known or not
        if name.startswith("do_"):
            return self.route
        raise AttributeError(name)

    # ------------------------------------------------------------------ basics
    def send(self, code, body=b"", ctype="text/plain; charset=utf-8", headers=()):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, obj, code=200):
        self.send(code, json.dumps(obj, indent=1) + "\n", "application/json")

    def body(self, keep=MAX_TEXT):
        """read the whole body: (length, sha256 hex, its first `keep` bytes)"""
        h, head, n = hashlib.sha256(), bytearray(), 0

        def take(data):
            nonlocal n
            n += len(data)
            h.update(data)
            if len(head) < keep:
                head.extend(data[:keep - len(head)])

        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192).strip():
                        pass
                    break
                while size:
                    data = self.rfile.read(min(size, 1 << 20))
                    if not data:
                        raise ConnectionResetError
                    take(data)
                    size -= len(data)
                self.rfile.readline(8)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 1 << 20))
                if not data:
                    raise ConnectionResetError
                take(data)
                left -= len(data)
        return n, h.hexdigest(), bytes(head)

    def meta(self):
        return {k.lower()[len(META):]: v for k, v in self.headers.items() if k.lower().startswith(META)}

    def header_list(self):
        """the client's headers in order (nginx's own Connection replaced by the client's)"""
        hl = [[k, v] for k, v in self.headers.items() if not k.lower().startswith(META) and k.lower() != "connection"]
        conn = self.meta().get("connection")
        return hl + [["Connection", conn]] if conn else hl

    def info(self):
        meta, hl = self.meta(), self.header_list()
        headers = {}
        for k, v in hl:
            headers[k] = headers[k] + ", " + v if k in headers else v
        uri = meta.get("uri", self.path)
        u = urlsplit(uri)
        return {"method": self.command, "request_line": meta.get("request-line", self.requestline),
                "uri": uri, "path": u.path, "query": u.query, "args": parse_qs(u.query, keep_blank_values=True),
                "host": headers.get("Host", ""), "scheme": meta.get("scheme", "http"), "sni": meta.get("sni", ""),
                "protocol": meta.get("protocol", self.request_version), "tls": meta.get("tls", ""),
                "server_addr": meta.get("server-addr", ""), "server_port": int(meta.get("server-port") or 0),
                "client_addr": meta.get("client-addr", self.client_address[0]),
                "headers": headers, "header_list": hl}

    def route(self):
        u = urlsplit(self.path)
        path, q = u.path, parse_qs(u.query)
        try:
            if path.startswith("/v1/"):
                return self.llm(path, q)
            if path == "/ws":
                return self.websocket()
            n, digest, head = self.body()
            if path == "/headers":
                return self.send_json(self.info())
            if path == "/anything" or path.startswith("/anything/"):
                text = None
                if n <= MAX_TEXT:
                    try:
                        text = head.decode()
                    except UnicodeDecodeError:
                        pass
                return self.send_json(dict(self.info(), body={"length": n, "sha256": digest, "text": text}))
            if path.startswith("/status/"):
                code = num({"c": [path[8:]]}, "c", 0, 0, 999, int)
                if not 200 <= code <= 599:
                    return self.send(400, "status must be 200..599\n")
                extra = [("Location", q.get("location", ["/"])[0])] if 300 <= code < 400 else []
                extra += [("WWW-Authenticate", 'Basic realm="testenv"')] if code == 401 else []
                extra += [("Retry-After", "1")] if code in (429, 503) else []
                return self.send(code, "status=%d\n" % code, headers=extra)
            if path == "/slow":
                s = num(q, "s", 2.0, 0.0, 600.0)
                time.sleep(s)
                return self.send(200, "slow=%g\n" % s)
            if path == "/drip":
                n = num(q, "n", 10, 0, 10 ** 7, int)
                s = num(q, "s", 2.0, 0.0, 600.0)
                return self.stream((b"*" for _ in range(n)), s / n if n else 0)
            if path == "/chunked":
                n, size = num(q, "n", 5, 0, 10 ** 5, int), num(q, "size", 1024, 1, 1 << 24, int)
                return self.stream((b"%d" % (i % 10) * size for i in range(n)), num(q, "delay", 0.0, 0.0, 60.0))
            return self.send(404, "not found: %s\n" % path)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def stream(self, chunks, pause, ctype="application/octet-stream"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, c in enumerate(chunks):
            if pause and i:
                time.sleep(pause)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --------------------------------------------------------------- websocket
    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self.body()
            return self.send(426, "websocket upgrade required\n", headers=[("Upgrade", "websocket")])
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC11B85").encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

        def read(n):
            data = self.rfile.read(n)
            if len(data) < n:
                raise ConnectionResetError
            return data

        def send(first, payload):
            n = len(payload)
            size = struct.pack("!B", n) if n < 126 else struct.pack("!BH", 126, n) if n < 65536 \
                else struct.pack("!BQ", 127, n)
            self.wfile.write(bytes([first]) + size + payload)
            self.wfile.flush()

        while True:
            b0, b1 = read(2)
            n = b1 & 0x7F
            n = struct.unpack("!H", read(2))[0] if n == 126 else struct.unpack("!Q", read(8))[0] if n == 127 else n
            if n > MAX_JSON:
                return send(0x88, struct.pack("!H", 1009))
            mask = read(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(read(n)))
            op = b0 & 0x0F
            if op == 0x8:
                return send(0x88, data[:2])
            if op == 0x9:
                send(0x8A, data)
            elif op != 0xA:
                send(b0 & 0x8F, data)  # text, binary, continuation: echoed as they came

    # --------------------------------------------------------------- model API
    def llm(self, path, q):
        if path == "/v1/_testenv/last":
            self.body()
            kind = q.get("kind", ["messages"])[0]
            with LAST_LOCK:
                rec = LAST.get(kind)
            return self.send_json(rec or {"error": "no %s request yet" % kind}, 200 if rec else 404)
        anthropic = path.startswith("/v1/messages")
        key = self.headers.get("x-api-key", "")
        auth = self.headers.get("Authorization", "")
        if not key and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        n, _, raw = self.body(MAX_JSON)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            self.remember("models", None)
            if path.rstrip("/") == "/v1/models":
                return self.send_json({"object": "list", "data": [self.model(m) for m in MODELS]})
            return self.send_json(self.model(path[len("/v1/models/"):]))
        try:
            req = json.loads(raw or b"{}") if n <= MAX_JSON else None
        except ValueError:
            req = None
        kind = {"/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens",
                "/v1/chat/completions": "chat", "/v1/responses": "responses"}.get(path)
        if kind is None:
            return self.api_error(anthropic, 404, "not_found_error", "no such endpoint: " + path)
        if self.command != "POST" or not isinstance(req, dict):
            return self.api_error(anthropic, 400, "invalid_request_error", "POST a JSON object to " + path)
        if key == "reject-me":
            return self.api_error(anthropic, 401, "authentication_error", "invalid api key")
        self.remember(kind, req)
        if kind == "count_tokens":
            return self.send_json({"input_tokens": len(json.dumps(req.get("messages", []))) // 4 + 1})
        return getattr(self, "api_" + kind)(req, key)

    @staticmethod
    def model(m):
        return {"id": m, "object": "model", "type": "model", "created": 0, "owned_by": "testenv", "display_name": m}

    def remember(self, kind, req):
        headers = {}
        for k, v in self.header_list():
            if k.lower() in ("x-api-key", "authorization", "api-key"):
                v = "sha256:" + fp(v[7:].strip() if v[:7].lower() == "bearer " else v)
            headers[k] = v
        with LAST_LOCK:
            LAST[kind] = {"time": time.time(), "path": urlsplit(self.path).path, "headers": headers, "body": req}

    def api_error(self, anthropic, code, kind, msg):
        if anthropic:
            return self.send_json({"type": "error", "error": {"type": kind, "message": msg}}, code)
        return self.send_json({"error": {"message": msg, "type": kind, "param": None, "code": kind}}, code)

    def sse(self, events):
        """events: (name or None, dict or str); chunked, flushed one by one"""
        def encode():
            for name, data in events:
                line = data if isinstance(data, str) else json.dumps(data)
                yield (("event: %s\n" % name) if name else "").encode() + b"data: " + line.encode() + b"\n\n"
        self.stream(encode(), 0, "text/event-stream")

    def api_messages(self, req, key):
        model, msgs = req.get("model", ""), req.get("messages", [])
        said = last_user_text(msgs)
        asked = [last_user_text([m]).lower() for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        has_result = any(isinstance(m, dict) and isinstance(m.get("content"), list) and
                         any(isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])
                         for m in msgs)
        offered = any(isinstance(t, dict) and t.get("name") == "Write" for t in req.get("tools") or [])
        wants_file = any("create hello_world.py" in a for a in asked)
        if wants_file and offered and not has_result:
            block = {"type": "tool_use", "id": "toolu_testenv_write", "name": "Write",
                     "input": {"file_path": "/sandbox/hello_world.py", "content": 'print("Hello, World!")\n'}}
        else:
            block = {"type": "text", "text": answer(model, key, ("done: " if has_result else "") + said)}
        stop = "tool_use" if block["type"] == "tool_use" else "end_turn"
        usage = {"input_tokens": len(json.dumps(msgs)) // 4 + 1, "output_tokens": 12,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        msg = {"id": "msg_testenv_%d" % time.time_ns(), "type": "message", "role": "assistant", "model": model,
               "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not req.get("stream"):
            return self.send_json(msg)
        ev = [("message_start", {"type": "message_start", "message": dict(
            msg, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))})]
        if block["type"] == "text":
            ev.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}}))
            ev += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": w}}) for w in words(block["text"])]
        else:
            ev.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": dict(block, input={})}))
            ev.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
        ev += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": 12}}),
               ("message_stop", {"type": "message_stop"})]
        self.sse(ev)

    def api_chat(self, req, key):
        model = req.get("model", "")
        text = answer(model, key, last_user_text(req.get("messages", [])))
        base = {"id": "chatcmpl-testenv-%d" % time.time_ns(), "created": int(time.time()), "model": model}
        usage = {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}
        if not req.get("stream"):
            return self.send_json(dict(base, object="chat.completion", usage=usage, choices=[
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]))

        def chunk(delta, finish=None, **extra):
            return None, dict(base, object="chat.completion.chunk",
                              choices=[{"index": 0, "delta": delta, "finish_reason": finish}], **extra)
        self.sse([chunk({"role": "assistant", "content": ""})] + [chunk({"content": w}) for w in words(text)] +
                 [chunk({}, "stop", usage=usage), (None, "[DONE]")])

    def api_responses(self, req, key):
        model, inp = req.get("model", ""), req.get("input", "")
        if not isinstance(inp, str):
            inp = last_user_text([i for i in inp if isinstance(i, dict) and i.get("type", "message") == "message"]
                                 if isinstance(inp, list) else [])
        text = answer(model, key, inp)
        item = {"id": "msg_testenv", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 12,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 22}
        done = {"id": "resp_testenv_%d" % time.time_ns(), "object": "response", "created_at": int(time.time()),
                "status": "completed", "model": model, "output": [item], "usage": usage}
        if not req.get("stream"):
            return self.send_json(done)
        at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        ev = [("response.created", dict(done, status="in_progress", output=[], usage=None)),
              ("response.in_progress", dict(done, status="in_progress", output=[], usage=None)),
              ("response.output_item.added", {"output_index": 0, "item": dict(item, status="in_progress", content=[])}),
              ("response.content_part.added", dict(at, part=part))]
        ev += [("response.output_text.delta", dict(at, delta=w)) for w in words(text)]
        ev += [("response.output_text.done", dict(at, text=text)),
               ("response.content_part.done", dict(at, part=dict(part, text=text))),
               ("response.output_item.done", {"output_index": 0, "item": item}),
               ("response.completed", done)]
        self.sse([(name, {"type": name, "sequence_number": i, **(
            {"response": data} if data.get("object") == "response" else data)}) for i, (name, data) in enumerate(ev)])


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                self.request.sendall(data)
            self.request.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    (host, port), (ehost, eport) = (a.rsplit(":", 1) for a in sys.argv[1:])
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    echo = socketserver.ThreadingTCPServer((ehost, int(eport)), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    web = ThreadingHTTPServer((host, int(port)), Handler)
    print("upstream_app: http %s:%s, tcp echo %s:%s" % (host, port, ehost, eport), file=sys.stderr, flush=True)
    web.serve_forever()


if __name__ == "__main__":
    main()
