#!/usr/bin/env bash
# down.sh - stop the environment up.sh started (root): the upstream test hosts (names,
# namespace, veth) and the registries. Certificates, images and registry storage stay
# for a fast next start; --clean deletes them too.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "tests/env: down.sh needs root: sudo $0" >&2 && exit 1; }
export QUIET=1
./upstream.sh stop
./registry.sh stop
if [ "${1:-}" = --clean ]; then
  . lib/common.sh
  rm -rf "$STATE"
fi
