#!/usr/bin/env bash
# Load: N concurrent CONNECT tunnels (default 1000) through one sandbox's proxy, each
# carrying R keep-alive requests (default 100; 100 000 in all) to the upstream test host
# of tests/env, from a real client inside the sandbox (python3 asyncio, the host's).
# Counts errors (must be 0), checks one NET:OPEN log line per tunnel, and reports the
# request rate; bounded in time (LOAD_TIMEOUT, default 600 s). Then the same load
# direct (the host to nginx, no proxy) for the ratio.
#   sudo tests/env/up.sh; bench/load.sh [N] [R]      (release build: cargo build --release)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
n=${1:-1000}
r=${2:-100}
env_out=$("$here/../tests/env/env.sh") || { echo "bench/load.sh: start tests/env first (sudo tests/env/up.sh)" >&2; exit 1; }
eval "$env_out"
# Every tunnel is two descriptors in the proxy and one in the client.
ulimit -n "$(( n * 3 + 1024 ))"
work=$(mktemp -d /tmp/openshell-load.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
export OPENSHELL_STATE_DIR=$work/state

cat > "$work/load.py" <<'PY'
import asyncio, sys, time
n, r, host, proxy = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
errors, done = [], [0]

async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status

async def tunnel(i):
    try:
        if proxy:
            ph, pp = proxy.split(":")
            reader, writer = await asyncio.open_connection(ph, int(pp))
            writer.write(f"CONNECT {host}:80 HTTP/1.1\r\nHost: {host}:80\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n")[0] + b" ":
                errors.append(f"tunnel {i}: {head[:80]!r}"); return
        else:
            reader, writer = await asyncio.open_connection(host, 80)
        for k in range(r):
            writer.write(f"GET /load/{i}/{k} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = await read_response(reader)
            if status != b"200":
                errors.append(f"tunnel {i} request {k}: {status!r}"); break
            done[0] += 1
        writer.close()
    except Exception as e:
        errors.append(f"tunnel {i}: {type(e).__name__}: {e}")

async def main():
    t = time.monotonic()
    await asyncio.gather(*(tunnel(i) for i in range(n)))
    dt = time.monotonic() - t
    print(f"tunnels={n} requests={done[0]} errors={len(errors)} seconds={dt:.2f} rps={done[0]/dt:.0f}")
    for e in errors[:10]:
        print("error:", e)

asyncio.run(main())
PY

cat > "$work/policy.yaml" <<POL
version: 1
network_policies:
  load:
    name: load
    endpoints:
      - { host: "$OS_UPSTREAM_HOST", port: 80 }
    binaries:
      - { path: "/usr/bin/python3*" }
POL

timeout=${LOAD_TIMEOUT:-600}
echo "== $n tunnels x $r requests through the sandbox proxy"
proxied=$(timeout "$timeout" "$os" run --policy "$work/policy.yaml" --log-dir "$work/logs" \
  --mount "$work/load.py:/sandbox/load.py:ro" -- \
  python3 /sandbox/load.py "$n" "$r" "$OS_UPSTREAM_HOST" 10.200.0.1:3128)
echo "$proxied"
opened=$(grep -c "NET:OPEN ALLOWED" "$work/logs/openshell.log" || true)
echo "log: $opened NET:OPEN lines for $n tunnels"
echo "== the same load direct (host to nginx)"
direct=$(timeout "$timeout" python3 "$work/load.py" "$n" "$r" "$OS_UPSTREAM_HOST" "")
echo "$direct"
rps() { sed -n 's/.*rps=\([0-9]*\).*/\1/p' <<<"$1"; }
python3 -c "import sys; p,d=float(sys.argv[1]),float(sys.argv[2]); print(f'ratio proxied/direct: {p/d:.2f}')" "$(rps "$proxied")" "$(rps "$direct")"
fail=0
grep -q " errors=0 " <<<"$proxied" || fail=1
[ "$opened" = "$n" ] || { echo "expected $n NET:OPEN lines, got $opened"; fail=1; }
[ "$fail" = 0 ] && echo "load: PASS (0 errors, one log line per tunnel)" || echo "load: FAIL"
exit $fail
