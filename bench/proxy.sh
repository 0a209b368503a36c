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
T=$here/../../shared/testenv
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
rate() { ab -q -n 2000 -c 8 "$@" "$url" 2>/dev/null | awk '/Requests per second/{print $4}'; }
: > "$work/rate.txt"
for i in 1 2 3 4 5; do
  {
    echo "direct $(rate)"
    echo "tinyproxy $(rate -X 127.0.0.1:18888)"
    echo "squid $(rate -X 127.0.0.1:13128)"
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

echo "== start-up cost of the sandbox network (run -- true, 2 x 200 runs each, alternating)"
# The state directory goes on tmpfs for this part: on ext4, inode allocation after many
# runs' worth of created and deleted files (the first part of this script) costs more
# than the network and drifts within one hyperfine session.
shm=$(mktemp -d /dev/shm/openshell-proxy-bench.XXXXXX)
trap 'rm -rf "$shm"; cleanup' EXIT
OPENSHELL_STATE_DIR=$shm/state hyperfine -N --warmup 20 --runs 200 --export-json "$work/start.json" \
  -n none "$os run --network none -- true" -n proxy "$os run -- true" \
  -n none2 "$os run --network none -- true" -n proxy2 "$os run -- true" >/dev/null
python3 - "$work/start.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
n = (r["none"] + r["none2"]) / 2
p = (r["proxy"] + r["proxy2"]) / 2
print(f"--network none {n*1000:.2f} ms, proxy {p*1000:.2f} ms: the network adds {(p-n)*1000:.2f} ms "
      f"(pairs: {(r['proxy']-r['none'])*1000:.2f}, {(r['proxy2']-r['none2'])*1000:.2f})")
PY
