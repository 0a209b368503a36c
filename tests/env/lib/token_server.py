#!/usr/bin/env python3
"""token_server.py - the bearer-token realm of the `bearer` and `secure` test registries
(the distribution token-auth protocol). Python 3 stdlib + the openssl CLI (RS256).

  token_server.py --http 127.0.0.1:5005 --https 127.0.0.1:5006 --cert C --cert-key K
                  --key SIGNING.key --user USER:PASSWORD --service S --issuer I

GET /token?service=S&scope=repository:NAME:pull,push (HTTP Basic optional) and the OAuth2
form POST /token (grant_type=password) answer {"token", "access_token", "expires_in",
"issued_at"}. Valid credentials get what they ask for; anonymous requests get `pull`
on repositories outside private/ and nothing else; wrong credentials get 401, another
service 400. One JSON line per request on stderr.
"""

import argparse
import base64
import hashlib
import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TTL = 300


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Realm:
    def __init__(self, a):
        self.a = a
        self.user, _, self.password = a.user.partition(":")
        spki = subprocess.run(["openssl", "pkey", "-in", a.key, "-pubout", "-outform", "DER"],
                              stdout=subprocess.PIPE, check=True).stdout
        # the key id the registry computes for its trusted certificate (libtrust format)
        k = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode()
        self.kid = ":".join(k[i:i + 4] for i in range(0, 48, 4))
        self.n = 0
        self.lock = threading.Lock()

    def grant(self, user, scopes):
        out = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            acts = [x for x in actions.split(",") if x]
            if not name:
                continue
            if user is None:
                if kind != "repository" or name.startswith("private/"):
                    continue
                acts = [x for x in acts if x == "pull"]
            if acts:
                out.append({"type": kind, "name": name, "actions": acts})
        return out

    def token(self, user, scopes):
        now = int(time.time())
        with self.lock:
            self.n += 1
            n = self.n
        claims = {"iss": self.a.issuer, "sub": user or "", "aud": self.a.service, "exp": now + TTL,
                  "nbf": now - 1, "iat": now, "jti": "openshell-testenv-%d-%d" % (now, n),
                  "access": self.grant(user, scopes)}
        head = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        body = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.a.key], input=body.encode(),
                             stdout=subprocess.PIPE, check=True).stdout
        tok = body + "." + b64url(sig)
        return {"token": tok, "access_token": tok, "expires_in": TTL,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}, claims["access"]


def handler(realm):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def reply(self, code, obj, **kw):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="openshell-testenv"')
            self.end_headers()
            self.wfile.write(data)
            print(json.dumps(dict(status=code, method=self.command, **kw)), file=sys.stderr, flush=True)

        def issue(self, user, service, scopes):
            if service != realm.a.service:
                return self.reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]},
                                  service=service)
            body, granted = realm.token(user, scopes)
            self.reply(200, body, user=user, scopes=scopes, granted=granted)

        def do_GET(self):
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query)
            if u.path == "/healthz":
                return self.reply(200, {"ok": True})
            if u.path != "/token":
                return self.reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            user = None
            auth = self.headers.get("Authorization", "")
            if auth:
                try:
                    kind, val = auth.split(" ", 1)
                    u_, _, p_ = base64.b64decode(val).decode().partition(":")
                except ValueError:
                    kind, u_, p_ = "", "", ""
                if kind.lower() != "basic" or (u_, p_) != (realm.user, realm.password):
                    return self.reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                        "message": "incorrect username or password"}]})
                user = u_
            self.issue(user, q.get("service", [""])[0], q.get("scope", []))

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(n).decode(errors="replace"))
            f = lambda k: form.get(k, [""])[0]  # noqa: E731
            if urllib.parse.urlsplit(self.path).path != "/token":
                return self.reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            if f("grant_type") != "password":
                return self.reply(400, {"error": "unsupported_grant_type"})
            if (f("username"), f("password")) != (realm.user, realm.password):
                return self.reply(401, {"error": "invalid_grant"})
            self.issue(f("username"), f("service"), form.get("scope", []))

    return H


class TLSServer(ThreadingHTTPServer):
    ctx = None

    def finish_request(self, request, client_address):  # handshake in the request's thread
        try:
            request = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        super().finish_request(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    for opt in ("--http", "--https", "--cert", "--cert-key", "--key", "--user", "--service", "--issuer"):
        ap.add_argument(opt, required=True)
    a = ap.parse_args()
    realm = Realm(a)
    h = handler(realm)
    host, port = a.http.rsplit(":", 1)
    servers = [ThreadingHTTPServer((host, int(port)), h)]
    host, port = a.https.rsplit(":", 1)
    TLSServer.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    TLSServer.ctx.load_cert_chain(a.cert, a.cert_key)
    servers.append(TLSServer((host, int(port)), h))
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(json.dumps({"listening": [a.http, a.https], "kid": realm.kid}), file=sys.stderr, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
