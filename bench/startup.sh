#!/usr/bin/env bash
# Start-up benchmark, side by side in one run: `openshell run -- true` vs bubblewrap,
# crun and `unshare -Urnmpf true`; then the RSS of a sandbox's own processes.
# Needs: hyperfine bubblewrap crun busybox-static (apt). Run as root: crun is measured
# as root inside a private mount namespace with /sys/fs/cgroup/unified hidden (Debian's
# crun refuses the cgroup v1+v2 hybrid otherwise; rootless crun cannot run here at all).
# With BENCH_USER=name it also measures openshell/bwrap/unshare as that unprivileged user.
# RUNS (default 200) runs of each command, in ROUNDS (default 5) interleaved rounds.
# openshell runs twice: `--network none` (loopback only, like the peers: the comparable
# isolation) and with its proxied network (two network namespaces, veth, nftables, the
# proxy — nothing the peers do). The state directory is on tmpfs when /dev/shm exists
# (STATE_ON_DISK=1 keeps it under /tmp): on ext4, inode allocation after many runs'
# worth of created and deleted files drifts by milliseconds within one session.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
runs=${RUNS:-200}
work=$(mktemp -d /tmp/openshell-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cp "$os" "$work/openshell"

# A minimal OCI bundle for crun: busybox-static as /bin/true.
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
chmod -R a+rX "$work"

bwrap_cmd="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/bin /bin --proc /proc --dev /dev --tmpfs /tmp true"
state_root=$work
if [ -z "${STATE_ON_DISK:-}" ] && [ -d /dev/shm ]; then
  state_root=$(mktemp -d /dev/shm/openshell-bench.XXXXXX)
  chmod 755 "$state_root"
  trap 'rm -rf "$work" "$state_root"' EXIT
fi
export OPENSHELL_STATE_DIR=$state_root/state

# hyperfine runs each command's runs back to back; on a VM whose speed drifts within
# minutes that skews ratios. So the runs are split into ROUNDS interleaved rounds (each
# command RUNS/ROUNDS times per round) and each command's figure is the median of its
# round medians.
rounds=${ROUNDS:-5}
per=$(( (runs + rounds - 1) / rounds ))
summary() { # json files... -> one line per command: median of round medians, ratios
  python3 - "$@" <<'PY'
import json, statistics, sys
med = {}
for f in sys.argv[1:]:
    for x in json.load(open(f))["results"]:
        med.setdefault(x["command"], []).append(x["median"])
r = {k: statistics.median(v) for k, v in med.items()}
base = r["openshell"]
for name, m in r.items():
    print(f"{name:17s} median {m*1000:7.2f} ms  openshell/{name} = {base/m:.2f}x")
PY
}

echo "== start-up as root ($(date -u +%F), $(uname -r), $runs runs each in $rounds interleaved rounds)"
for r in $(seq "$rounds"); do
  unshare -m --propagation private sh -c "
    umount -l /sys/fs/cgroup/unified 2>/dev/null || true
    hyperfine -N --warmup 5 --runs $per --export-json $work/root.$r.json \
      -n openshell '$work/openshell run --network none -- true' \
      -n openshell-proxied '$work/openshell run -- true' \
      -n bwrap '$bwrap_cmd' \
      -n crun 'crun run --bundle $work/bundle openshell-bench' \
      -n unshare 'unshare -Urnmpf true' >/dev/null
  "
done
summary "$work"/root.*.json

if [ -n "${BENCH_USER:-}" ]; then
  echo "== start-up as $BENCH_USER (rootless)"
  mkdir -p -m 0777 "$work/u" "$state_root/u"
  for r in $(seq "$rounds"); do
    runuser -u "$BENCH_USER" -- env OPENSHELL_STATE_DIR="$state_root/u/state" hyperfine -N --warmup 5 --runs "$per" \
      --export-json "$work/u/user.$r.json" \
      -n openshell "$work/openshell run --network none -- true" \
      -n openshell-proxied "$work/openshell run -- true" \
      -n bwrap "$bwrap_cmd" \
      -n unshare "unshare -Urnmpf true" >/dev/null
  done
  summary "$work"/u/user.*.json
fi

echo "== memory of a sandbox's own processes (supervisor + init) while 'sleep' runs"
"$work/openshell" run -T -- sleep 3 &
sup=$!
sleep 1
init=$(cat /proc/$sup/task/$sup/children | awk '{print $1}')
for p in $sup $init; do
  name=$([ "$p" = "$sup" ] && echo supervisor || echo init)
  rss=$(awk '/^VmRSS/{print $2}' /proc/$p/status)
  pss=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)
  echo "$name pid $p: RSS ${rss} kB, PSS ${pss} kB"
done
wait $sup
