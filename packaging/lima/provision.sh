#!/usr/bin/env bash
# Provisioning of the openshell Lima VM (packaging/lima/openshell.yaml embeds this
# file; packaging/lima/test.sh runs it in a Debian 12 root to check it). As root:
#   1. the packages openshell needs (uidmap, nftables) — apt-get only what is missing;
#   2. openshell itself: the newest .deb under the mounted project's target/packages/
#      (packaging/build.sh deb), else $OPENSHELL_DEB_URL, else built from the project's
#      source with a rustup toolchain (slow the first time, ~10 min);
#   3. subordinate ids for the VM's user (several ids inside sandboxes);
#   4. linger for that user, so `systemctl --user enable --now openshell` (serve)
#      keeps running without a login session;
#   5. the agents named in AGENTS (npm packages, e.g. @anthropic-ai/claude-code), with
#      Debian's nodejs.
# Usage: provision.sh USER PROJECT_DIR [AGENTS]. Idempotent: a second run changes nothing.
set -euo pipefail
user=${1:?usage: provision.sh USER PROJECT_DIR [AGENTS]}
project=${2:?usage: provision.sh USER PROJECT_DIR [AGENTS]}
agents=${3:-}
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in uidmap nftables ca-certificates curl; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q && apt-get install -y -q "${missing[@]}"
fi

arch=$(dpkg --print-architecture)
deb=$(ls -1 "$project"/target/packages/openshell_*_"$arch".deb 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$deb" ]; then
  dpkg -i "$deb"
elif [ -n "${OPENSHELL_DEB_URL:-}" ]; then
  tmp=$(mktemp -d)
  curl -fsSL -o "$tmp/openshell.deb" "$OPENSHELL_DEB_URL"
  dpkg -i "$tmp/openshell.deb"
  rm -rf "$tmp"
elif [ -f "$project/Cargo.toml" ]; then
  # From source: Debian's rustc is too old; a rustup toolchain in the user's home.
  missing=()
  for p in build-essential pkg-config rpm; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] || apt-get install -y -q "${missing[@]}"
  build=$(mktemp -d); cp -a "$project"/. "$build"/; chown -R "$user" "$build"
  runuser -u "$user" -- bash -lc "command -v cargo >/dev/null || curl -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal; . \"\$HOME/.cargo/env\"; cd '$build' && packaging/build.sh deb"
  dpkg -i "$build"/target/packages/openshell_*_"$arch".deb
  rm -rf "$build"
else
  echo "provision: no openshell package under $project/target/packages, no OPENSHELL_DEB_URL, no source in $project" >&2
  exit 1
fi

grep -q "^$user:" /etc/subuid 2>/dev/null || usermod --add-subuids 100000-165535 "$user"
grep -q "^$user:" /etc/subgid 2>/dev/null || usermod --add-subgids 100000-165535 "$user"

if [ -d /run/systemd/system ] && command -v loginctl >/dev/null; then
  loginctl enable-linger "$user"
fi
if [ -n "$agents" ]; then
  for p in nodejs npm; do dpkg -s "$p" >/dev/null 2>&1 || apt-get install -y -q "$p"; done
  # shellcheck disable=SC2086 # a list of package names
  npm install -g --no-fund --no-audit $agents
fi

runuser -u "$user" -- openshell doctor || echo "provision: see what doctor says above" >&2
echo "provision: openshell $(openshell --version | cut -d' ' -f2) ready for $user"
