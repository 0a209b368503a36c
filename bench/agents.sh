#!/usr/bin/env bash
# Agents benchmark (issue 10), side by side in one run, inside one sandbox:
#  1. requests/s through an inspected endpoint (TLS terminated, rules applied) with a
#     placeholder swapped for a credential, against the same requests without one
#     (target >= 0.9x);
#  2. the latency inference.local adds over calling the same backend directly through
#     the proxy (target <= 1 ms at p50).
# Needs the upstream hosts of tests/env (sudo tests/env/up.sh; eval "$(tests/env/env.sh)").
# N (default 400) requests per way, on one kept-alive connection (curl with N URLs);
# a first way warms the proxy (executable hash, TLS); each way's first request (the
# connection's set-up) is left out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
n=${N:-400}
: "${OS_UPSTREAM_HOST:?eval \"\$(tests/env/env.sh)\" first}"
work=$(mktemp -d /tmp/openshell-agents-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export XDG_CONFIG_HOME=$work/config OPENSHELL_STATE_DIR=$work/state
host=$OS_UPSTREAM_HOST
"$os" provider create --name bench --type anthropic --credential ANTHROPIC_API_KEY=sk-bench-key \
  --config "base_url=https://$host" >/dev/null 2>&1
"$os" inference set --provider bench --model testenv-small >/dev/null
cat > "$work/in.sh" <<'IN'
n=$1; host=$2
urls() { i=0; while [ $i -lt $n ]; do printf '%s ' "$1"; i=$((i+1)); done; }
# One connection, N requests each; time_total per request (seconds).
run() { label=$1; shift; curl -sS -o /dev/null -w "$label %{time_total}\n" "$@"; }
run warm $(urls "https://$host/v1/models")
run plain -H "x-api-key: plain-value" $(urls "https://$host/v1/models")
run swap -H "x-api-key: $ANTHROPIC_API_KEY" $(urls "https://$host/v1/models")
run direct -H "x-api-key: $ANTHROPIC_API_KEY" $(urls "https://$host/v1/models")
run router $(urls "https://inference.local/v1/models")
IN
"$os" run --provider bench --upstream-ca "$OS_UPSTREAM_CA" --upload "$work/in.sh:/sandbox/in.sh" \
  -- sh /sandbox/in.sh "$n" "$host" > "$work/out" 2>"$work/err" || { cat "$work/err"; exit 1; }
grep -E "^(plain|swap|direct|router) [0-9.]+$" "$work/out" > "$work/rows" || { head -5 "$work/out" "$work/err"; exit 1; }
python3 - "$work/rows" "$n" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    rows.setdefault(k, []).append(float(v))
# The first request of each way carries the connection's set-up (CONNECT, TLS).
rows = {k: v[1:] for k, v in rows.items()}
n = int(sys.argv[2])
med = {k: statistics.median(v) * 1000 for k, v in rows.items()}
rps = {k: len(v) / sum(v) for k, v in rows.items()}
print(f"requests per way: {n} (one kept-alive connection each)")
print(f"inspected, no credential : {rps['plain']:8.0f} req/s   p50 {med['plain']:.3f} ms")
print(f"inspected, swapped       : {rps['swap']:8.0f} req/s   p50 {med['swap']:.3f} ms   ratio {rps['swap']/rps['plain']:.2f}x (target >= 0.9x)")
print(f"backend through the proxy: p50 {med['direct']:.3f} ms")
print(f"inference.local          : p50 {med['router']:.3f} ms   adds {med['router']-med['direct']:+.3f} ms (target <= 1 ms)")
PY
