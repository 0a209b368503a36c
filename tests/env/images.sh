#!/usr/bin/env bash
# images.sh - build the test images (lib/images.py: deterministic, from busybox-static)
# into $STATE/images and push every tag whose digest differs to the plain test registry
# (registry.sh start first), then check every tag. Also installs the tree checker that
# OS_TEST_CHECK_TREE names. Unchanged inputs: no rebuild; tags in place: no push.
#
#   images.sh [--quiet] [--no-big] [--force]
#     --no-big  skip big:latest and big:zstd (~230 MB of blobs; the pull tests need them)
#     --force   rebuild from scratch
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

args=()
for a in "$@"; do
  case "$a" in
    --quiet) QUIET=1 ;;
    --no-big) args+=(--no-big) ;;
    --force) rm -f "$STATE/images/.stamp" ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2 && exit 2 ;;
  esac
done
need zstd flock "$PY"
[ -x /bin/busybox ] || die "/bin/busybox is missing: run tests/env/install.sh as root (busybox-static)"
state_dir
lock
reg="$("$(dirname "$0")/registry.sh" env | sed -n "s/^export OS_TEST_REGISTRY='\(.*\)'$/\1/p")"
[ -n "$reg" ] || die "no plain registry: run tests/env/registry.sh start"
rm -f "$STATE/images/.pushed"
"$PY" "$ENV_HERE/lib/images.py" build "$STATE/images" ${args[@]+"${args[@]}"} ${QUIET:+--quiet}
"$PY" "$ENV_HERE/lib/images.py" push "$STATE/images" "$reg" ${QUIET:+--quiet}
echo "$reg" >"$STATE/images/.pushed"
install -m 0644 "$ENV_HERE/lib/check_tree.py" "$STATE/check_tree.py"
chmod -R a+rX "$STATE/images"
