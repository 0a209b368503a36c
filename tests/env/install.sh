#!/usr/bin/env bash
# install.sh - install the Debian packages tests/env needs, where missing (apt-get; root).
# When everything is there it only checks (no root needed). Packages: docker-registry
# (CNCF distribution 2.8), busybox-static (the images' content), zstd, apache2-utils
# (htpasswd), openssl, curl, nginx, iproute2, util-linux, python3, ca-certificates.
# If systemd runs, the docker-registry service the package starts on :5000 is disabled,
# and so is nginx's when this script installed it (upstream.sh runs its own).
#
#   install.sh [--quiet]
set -euo pipefail
[ "${1:-}" != --quiet ] || QUIET=1
. "$(dirname "$0")/lib/common.sh"

PACKAGES=(docker-registry busybox-static zstd apache2-utils openssl curl nginx iproute2 util-linux
  python3 ca-certificates)
installed=" $(dpkg-query -W -f '${Package}:${Status}\n' "${PACKAGES[@]}" 2>/dev/null |
  sed -n 's/:install ok installed$//p' | tr '\n' ' ' || true)"
missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$installed" == *" $p "* ]] || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
[ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run tests/env/install.sh as root"
info "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1 ||
  { apt-get update -q >>"$log" 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; } ||
  { tail -n 20 "$log" >&2 && die "apt-get install ${missing[*]} failed"; }
if [ -d /run/systemd/system ]; then
  for p in "${missing[@]}"; do
    case "$p" in docker-registry | nginx) systemctl disable --now "$p" >/dev/null 2>&1 || true ;; esac
  done
fi
