#!/usr/bin/env bash
# Port forwarding throughput, side by side in one run: a 256 MiB download from a
# python3 web server on a sandbox's loopback through `--forward` (host 127.0.0.1 ->
# supervisor -> sandbox 127.0.0.1), against the same server program on the host's
# loopback reached directly. Median of RUNS (default 5) curl downloads each; prints
# MB/s and the ratio (target: >= 0.9x direct).
#   cargo build --release; bench/forward.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
runs=${RUNS:-5}
work=$(mktemp -d /tmp/openshell-fwd-bench.XXXXXX)
export OPENSHELL_STATE_DIR=$work/state
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pf=$(port); pd=$(port)
hostpid=""
cleanup() {
  [ -n "$hostpid" ] && kill "$hostpid" 2>/dev/null || true
  "$os" sandbox delete fwbench >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$os" sandbox create --detach --name fwbench --forward "$pf" >/dev/null
"$os" sandbox exec fwbench -- sh -c "mkdir -p /tmp/w && cd /tmp/w && head -c 268435456 /dev/urandom > big && setsid python3 -m http.server $pf --bind 127.0.0.1 >/dev/null 2>&1 &"
mkdir -p "$work/w" && head -c 268435456 /dev/urandom > "$work/w/big"
(cd "$work/w" && exec python3 -m http.server "$pd" --bind 127.0.0.1 >/dev/null 2>&1) &
hostpid=$!
sleep 1.5
measure() {
  for _ in $(seq "$runs"); do
    curl -s --noproxy '*' -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$1/big"
  done | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
fwd=$(measure "$pf")
direct=$(measure "$pd")
python3 - "$fwd" "$direct" <<'PY'
import sys
f, d = float(sys.argv[1]), float(sys.argv[2])
print(f"forward  {f/1e6:8.1f} MB/s")
print(f"direct   {d/1e6:8.1f} MB/s")
print(f"forward / direct: {f/d:.2f}")
PY
