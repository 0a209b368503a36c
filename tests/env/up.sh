#!/usr/bin/env bash
# up.sh - the whole test environment, as root, printing nothing but errors: installs what
# is missing, starts the registries, builds and pushes the images, starts the upstream
# test hosts. Idempotent: a running environment is checked and left as it is.
# Then: eval "$(tests/env/env.sh)" (any user); tests/env/down.sh to stop.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "tests/env: up.sh needs root (network namespace, /etc/hosts): sudo $0" >&2 && exit 1; }
export QUIET=1
./install.sh --quiet
./registry.sh start
./images.sh --quiet
./upstream.sh start
