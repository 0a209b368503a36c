#!/usr/bin/env bash
# Port forwarding throughput, side by side in one run: a 256 MiB download from a
# python3 web server on a sandbox's loopback through `--forward` (host 127.0.0.1 ->
# supervisor -> sandbox 127.0.0.1), against the same server program on the host's
# loopback reached directly, and curl inside the sandbox to the very server the forward
# reaches (same files, same confinement: only the forward's hop differs). Median of
# RUNS (default 9) curl downloads each, interleaved (the VM's speed drifts within a
# run); prints MB/s and the ratios (target: >= 0.9x direct).
#   cargo build --release; bench/forward.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
runs=${RUNS:-9}
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
once() { curl -s --noproxy '*' -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$1/big"; }
inside() { "$os" sandbox exec fwbench -- curl -s --noproxy '*' -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$pf/big"; }
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for _ in $(seq "$runs"); do
  once "$pf" >> "$work/fwd"; once "$pd" >> "$work/direct"; inside >> "$work/inside"
done
python3 - "$(median "$work/fwd")" "$(median "$work/direct")" "$(median "$work/inside")" <<'PY'
import sys
f, d, i = (float(x) for x in sys.argv[1:])
print(f"forward            {f/1e6:8.1f} MB/s")
print(f"host direct        {d/1e6:8.1f} MB/s   forward / host direct:       {f/d:.2f}")
print(f"in-sandbox direct  {i/1e6:8.1f} MB/s   forward / in-sandbox direct: {f/i:.2f}")
PY
