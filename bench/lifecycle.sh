#!/usr/bin/env bash
# Lifecycle benchmark, side by side in one run: the create+delete cycle of a kept
# sandbox (`run --keep -- true` + `sandbox delete`) next to crun's create/start/delete
# of a minimal bundle; the RSS of an idle sandbox's own processes (supervisor with its
# proxy thread, and init; target <= 10 MB); start-up with 100 sandboxes alive vs with
# none (target <= 2x); exec latency into a running sandbox vs `crun exec` (podman,
# the issue's peer, is not installed here).
# Needs: hyperfine crun busybox-static (apt). Run as root (crun, see startup.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
runs=${RUNS:-100}
alive=${ALIVE:-100}
work=$(mktemp -d /tmp/openshell-lifecycle.XXXXXX)
pids=()
cleanup() {
  "$os" sandbox delete --all >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export OPENSHELL_STATE_DIR=$work/state

# crun's bundle: busybox-static as /bin/true and /bin/sleep.
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/"
ln -s busybox "$work/bundle/rootfs/bin/true"
(cd "$work/bundle" && crun spec && python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["linux"].pop("resources", None)
json.dump(c, open("config.json", "w"))
PY
)

echo "== create+delete cycle ($(date -u +%F), $(uname -r), $runs runs each)"
unshare -m --propagation private sh -c "
  umount -l /sys/fs/cgroup/unified 2>/dev/null || true
  hyperfine -N --warmup 5 --runs $runs --export-json $work/cycle.json \
    -n openshell \"sh -c '$os run --keep --name cyc -- true 2>/dev/null && $os sandbox delete cyc >/dev/null'\" \
    -n crun \"sh -c 'crun --root $work/crun create --bundle $work/bundle c1 && crun --root $work/crun start c1 && crun --root $work/crun delete -f c1'\" \
    >/dev/null"
python3 - "$work/cycle.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in r.items():
    print(f"{k:10} median {v:7.2f} ms")
print(f"openshell vs crun: {r['openshell'] / r['crun']:.2f}x")
PY

echo "== RSS of an idle sandbox (run --name idle -- sleep 600, network proxy on)"
"$os" run --name idle -- sleep 600 >/dev/null 2>&1 &
pids+=($!)
sup=$!
for _ in $(seq 100); do
  "$os" sandbox get idle -o json 2>/dev/null | grep -q '"Ready"' && break
  sleep 0.05
done
sleep 0.5
# The supervisor and init (its child); not the user's command.
init=$(pgrep -P "$sup" | head -1)
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pss() { awk '/^Pss:/ {s += $2} END {print s}' "/proc/$1/smaps_rollup"; }
echo "just started: supervisor RSS $(rss "$sup") kB (PSS $(pss "$sup") kB), init RSS $(rss "$init") kB (PSS $(pss "$init") kB)"
# Idle: both release their start-up code after 2 s without activity; measured 4 s
# after the start (issue 11's point).
sleep 3.5
echo "idle (4 s after start): supervisor RSS $(rss "$sup") kB (PSS $(pss "$sup") kB), init RSS $(rss "$init") kB (PSS $(pss "$init") kB)"
echo "total RSS idle $(( $(rss "$sup") + $(rss "$init") )) kB, PSS $(( $(pss "$sup") + $(pss "$init") )) kB (targets: <= 10240 kB; issue 11: <= 4096 kB)"

echo "== exec latency into a running sandbox vs crun exec ($runs runs each)"
# crun's container runs busybox sleep; podman is not installed here.
ln -sf busybox "$work/bundle/rootfs/bin/sleep"
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["args"] = ["/bin/sleep", "600"]
json.dump(c, open(sys.argv[1], "w"))
PY
unshare -m --propagation private sh -c "
  umount -l /sys/fs/cgroup/unified 2>/dev/null || true
  crun --root $work/crun create --bundle $work/bundle c2 && crun --root $work/crun start c2
  hyperfine -N --warmup 5 --runs $runs --export-json $work/exec.json \
    -n openshell '$os sandbox exec idle -- true' \
    -n crun 'crun --root $work/crun exec c2 /bin/true' >/dev/null
  crun --root $work/crun delete -f c2"
python3 - "$work/exec.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k, v in r.items():
    print(f"{k:10} median {v:7.2f} ms")
print(f"openshell exec vs crun exec: {r['openshell'] / r['crun']:.2f}x")
PY
"$os" sandbox delete idle >/dev/null

echo "== start-up with $alive sandboxes alive vs none ($runs runs each)"
hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/one.json" \
  -n none "$os run -- true" >/dev/null
for i in $(seq "$alive"); do
  "$os" run --name "a$i" -- sleep 600 >/dev/null 2>&1 &
  pids+=($!)
done
for _ in $(seq 600); do
  n=$("$os" sandbox list -q 2>/dev/null | wc -l)
  ready=$("$os" sandbox list 2>/dev/null | grep -c ' Ready ' || true)
  [ "$ready" -ge "$alive" ] && break
  sleep 0.1
done
echo "alive: $ready of $n sandboxes Ready"
hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/many.json" \
  -n "with-$alive" "$os run -- true" >/dev/null
python3 - "$work/one.json" "$work/many.json" "$alive" <<'PY'
import json, sys
def stats(path):
    r = json.load(open(path))["results"][0]
    t = sorted(r["times"])
    p99 = t[min(len(t) - 1, int(round(0.99 * (len(t) - 1))))]
    return r["median"] * 1000, p99 * 1000
one, one99 = stats(sys.argv[1])
many, many99 = stats(sys.argv[2])
print(f"run -- true: median {one:.2f} ms with none alive, {many:.2f} ms with {sys.argv[3]} alive: {many / one:.2f}x (target <= 2x)")
print(f"run -- true: p99 {one99:.2f} ms with none alive, {many99:.2f} ms with {sys.argv[3]} alive: {many99 / one99:.2f}x; p99 with {sys.argv[3]} alive / median alone {many99 / one:.2f}x (issue 11: <= 1.5x)")
PY
