#!/usr/bin/env bash
# Proxy benchmark, side by side in one run, against the testenv upstream hosts (nginx in
# its own network namespace): one 200 MiB HTTPS download direct, through openshell's
# proxy (a CONNECT tunnel from inside a sandbox), through tinyproxy and through squid;
# then the new-connection rate (2000 small requests, 8 parallel, ab) the same ways; then
# the start-up cost of the sandbox network. Run as root (starts the upstream hosts);
# needs hyperfine, tinyproxy, squid, apache2-utils (ab), all from Debian.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
T=$here/../tests/env
$T/upstream.sh start >/dev/null
eval "$($T/upstream.sh env)"
work=$(mktemp -d /tmp/openshell-proxy-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export OPENSHELL_STATE_DIR=$work/state

# Peers on loopback, with configs of their own.
cat > "$work/tinyproxy.conf" <<CONF
Port 18888
Listen 127.0.0.1
MaxClients 200
ConnectPort 443
Allow 127.0.0.1
LogLevel Critical
CONF
tinyproxy -d -c "$work/tinyproxy.conf" >/dev/null 2>&1 &
pids+=($!)
mkdir -p "$work/squid"
cat > "$work/squid.conf" <<CONF
http_port 127.0.0.1:13128
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access allow localhost
http_access deny all
cache deny all
shutdown_lifetime 0 seconds
access_log none
cache_log $work/squid/cache.log
pid_filename $work/squid/squid.pid
coredump_dir $work/squid
CONF
chown -R proxy:proxy "$work/squid" 2>/dev/null || true
squid -N -f "$work/squid.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 2

policy=$work/policy.yaml
cat > "$policy" <<POL
version: 1
network_policies:
  bench:
    name: bench
    endpoints:
      - { host: files.test.openshell, port: 443 }
      - { host: files.test.openshell, port: 8443, protocol: rest, access: read-only }
      - { host: api.test.openshell, port: 80 }
    binaries:
      - { path: "/**" }
POL
ca=$OS_UPSTREAM_CA
big=$OS_UPSTREAM_BIG_URL
runs=${RUNS:-9}
# Each way is timed by curl itself (time_total: connect, CONNECT, TLS, transfer), so the
# sandbox's start-up is not counted as transfer time; the ways take turns within every
# round, so the VM's drift hits them all alike.
t() { "$@" -sS -o /dev/null -w '%{time_total}\n'; }
: > "$work/big.txt"
echo "== 200 MiB over HTTPS ($(date -u +%F), $runs rounds, the ways interleaved)"
for i in $(seq "$runs"); do
  {
    echo "direct $(t curl --cacert "$ca" "$big")"
    echo "openshell-tunnel $(t "$os" run --policy "$policy" --mount "$ca:/sandbox/ca.crt:ro" -- curl --cacert /sandbox/ca.crt "$big")"
    echo "openshell-splice $(OPENSHELL_SPLICE=1 t "$os" run --policy "$policy" --mount "$ca:/sandbox/ca.crt:ro" -- curl --cacert /sandbox/ca.crt "$big")"
    echo "openshell-l7 $(t "$os" run --policy "$policy" --upstream-ca "$ca" -- curl https://files.test.openshell:8443/big)"
    echo "tinyproxy $(t curl --cacert "$ca" -x http://127.0.0.1:18888 "$big")"
    echo "squid $(t curl --cacert "$ca" -x http://127.0.0.1:13128 "$big")"
  } >> "$work/big.txt"
done
python3 - "$work/big.txt" "$OS_UPSTREAM_BIG_SIZE" <<'PY'
import statistics, sys
r = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    r.setdefault(k, []).append(float(v))
size = int(sys.argv[2])
m = {k: statistics.median(v) for k, v in r.items()}
d = m["direct"]
for k, v in m.items():
    print(f"{k:17s} median {v:6.3f} s  {size/v/1e6:7.1f} MB/s  throughput vs direct {d/v:.2f}x")
t = m["openshell-tunnel"]
print(f"openshell tunnel vs tinyproxy throughput {m['tinyproxy']/t:.2f}x, vs squid {m['squid']/t:.2f}x")
PY

echo "== new-connection rate: 2000 requests, 8 parallel (ab, plain http, one connection each), 5 rounds interleaved"
url="http://api.test.openshell/x"
# Every way but a proxy that keeps its upstream connections leaves ~2000 sockets in
# TIME_WAIT towards the one upstream address per round; past the ~28 000 ephemeral ports
# the next runs wait for ports and collapse (200 req/s). Each run starts once fewer than
# 5000 are left, so no way is measured short of ports.
drain() { while [ "$(ss -Htan state time-wait | wc -l)" -gt 5000 ]; do sleep 2; done; }
rate() { drain; ab -q -n 2000 -c 8 "$@" "$url" 2>/dev/null | awk '/Requests per second/{print $4}'; }
: > "$work/rate.txt"
for i in 1 2 3 4 5; do
  {
    echo "direct $(rate)"
    echo "tinyproxy $(rate -X 127.0.0.1:18888)"
    echo "squid $(rate -X 127.0.0.1:13128)"
    drain
    echo "openshell $("$os" run --policy "$policy" -- ab -q -n 2000 -c 8 -X 10.200.0.1:3128 "$url" 2>/dev/null | awk '/Requests per second/{print $4}')"
  } >> "$work/rate.txt"
done
python3 - "$work/rate.txt" <<'PY'
import statistics, sys
r = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    r.setdefault(k, []).append(float(v))
m = {k: statistics.median(v) for k, v in r.items()}
for k in ["direct", "openshell", "tinyproxy", "squid"]:
    print(f"{k:10s} median {m[k]:8.0f} req/s  (rounds: {', '.join(f'{x:.0f}' for x in r[k])})")
print(f"openshell vs tinyproxy {m['openshell']/m['tinyproxy']:.2f}x, vs squid {m['openshell']/m['squid']:.2f}x")
PY

echo "== start-up cost of the sandbox network (run -- true, 400 pairs, alternating run by run)"
# One `--network none` run and one proxied run after the other, 400 times (the order
# flips every pair), so that the VM's drift hits both alike; the state directory goes
# on tmpfs: on ext4, inode allocation after the thousands of files the first parts of
# this script created and deleted drifts by milliseconds.
shm=$(mktemp -d /dev/shm/openshell-proxy-bench.XXXXXX)
trap 'rm -rf "$shm"; cleanup' EXIT
OPENSHELL_STATE_DIR=$shm/state python3 - "$os" 400 <<'PY'
import statistics, subprocess, sys, time
os_bin, n = sys.argv[1], int(sys.argv[2])
none = [os_bin, "run", "--network", "none", "--", "true"]
proxy = [os_bin, "run", "--", "true"]
def t(args):
    s = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - s
for _ in range(20):
    t(none), t(proxy)
pairs = []
for i in range(n):
    if i % 2:
        b = t(proxy); a = t(none)
    else:
        a = t(none); b = t(proxy)
    pairs.append((a, b))
a = statistics.median(x for x, _ in pairs)
b = statistics.median(y for _, y in pairs)
d = statistics.median(y - x for x, y in pairs)
print(f"--network none {a*1000:.2f} ms, proxy {b*1000:.2f} ms (medians, incl. ~1 ms of python's spawn): "
      f"the network adds {d*1000:.2f} ms (median of the pairs' differences; target <= 3 ms)")
PY
