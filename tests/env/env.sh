#!/usr/bin/env bash
# env.sh - print the `export ...` lines of the environment up.sh started (root's state
# dir, readable by every user): registries, images, tree checker, upstream test hosts.
# Fails, printing nothing, when a part is down.
#   eval "$(tests/env/env.sh)"    or    tests/env/env.sh > FILE (for another user)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export OS_TESTENV_STATE="${OS_TESTENV_STATE:-${TMPDIR:-/tmp}/openshell-testenv-0}"
. "$here/lib/common.sh"
[ "$(stat -c %u "$STATE" 2>/dev/null)" = 0 ] || die "no environment in $STATE: run (as root) tests/env/up.sh"
out="$("$here/registry.sh" env)"
reg="$(sed -n "s/^export OS_TEST_REGISTRY='\(.*\)'$/\1/p" <<<"$out")"
[ "$(cat "$STATE/images/.pushed" 2>/dev/null)" = "$reg" ] && [ -r "$STATE/check_tree.py" ] ||
  die "the images are not pushed: run tests/env/images.sh (or up.sh)"
out+="
export OS_TEST_IMAGES_DIR='$STATE/images'
export OS_TEST_CHECK_TREE='$STATE/check_tree.py'
$("$here/upstream.sh" env)"
echo "$out"
