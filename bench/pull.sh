#!/usr/bin/env bash
# Pull + unpack benchmark, side by side in one run, against the testenv registry:
#   openshell image pull big:latest             (fresh store each run)
#   skopeo copy docker://.../big:latest oci:DIR  + umoci unpack --rootless (fresh dirs)
# then `openshell run --from busybox -- true` (image cached) vs the host view.
# Needs: the test registry running with its images (sudo tests/env/up.sh), hyperfine,
# skopeo, umoci (all from Debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
os=${OPENSHELL:-$here/../target/release/openshell}
runs=${RUNS:-5}
eval "$("$here/../tests/env/env.sh")"
reg=$OS_TEST_REGISTRY
work=$(mktemp -d /tmp/openshell-pull-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OPENSHELL_STATE_DIR=$work/state

echo "== pull + unpack $reg/big:latest ($(date -u +%F), $runs runs each)"
hyperfine -N --runs "$runs" --export-json "$work/pull.json" \
  --prepare "rm -rf $work/store $work/oci $work/bundle" \
  -n openshell "env OPENSHELL_IMAGE_DIR=$work/store $os image pull -q $reg/big:latest" \
  -n skopeo+umoci "sh -c 'skopeo copy -q --src-tls-verify=false docker://$reg/big:latest oci:$work/oci:latest && umoci unpack --rootless --image $work/oci:latest $work/bundle'" \
  >/dev/null
python3 - "$work/pull.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
o, p = r["openshell"]["median"], r["skopeo+umoci"]["median"]
print(f"openshell     median {o:.3f} s")
print(f"skopeo+umoci  median {p:.3f} s")
print(f"ratio openshell/(skopeo+umoci) = {o/p:.2f}x")
PY

echo "== start-up: image view (busybox cached) vs host view"
export OPENSHELL_IMAGE_DIR=$work/store2
"$os" image pull -q "$reg/busybox:latest" >/dev/null
sleep 2 # let the machine settle after the pulls
hyperfine -N --warmup 30 --runs 200 --export-json "$work/start.json" \
  -n image-view "$os run --pull never --from $reg/busybox:latest -- true" \
  -n host-view "$os run -- true" >/dev/null
python3 - "$work/start.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
h, i = r["host-view"]["median"], r["image-view"]["median"]
print(f"host view   median {h*1000:.2f} ms")
print(f"image view  median {i*1000:.2f} ms")
print(f"ratio image/host = {i/h:.2f}x")
PY
