#!/usr/bin/env bash
# Checks packaging/lima without a VM (none runs here): the template parses and has what
# Lima needs (images for both arches, no container engine, the provisioning steps); its
# embedded script is packaging/lima/provision.sh byte for byte; and that script,
# given the parameters Lima substitutes, provisions a Debian 12 root (debootstrap
# minbase) in a mount and pid namespace of its own (pivot_root, not chroot: a
# chrooted process may not create the user namespaces sandboxes need): it installs
# the .deb from the "mounted project", adds subordinate ids for the VM's user, is
# idempotent, and that user can then run a sandbox with the installed openshell.
# Usage (root): packaging/lima/test.sh [DEB]. Needs debootstrap and python3-yaml;
# caches the Debian root in $OPENSHELL_DEBIAN_CACHE (default /var/tmp/openshell-debian12.tar).
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() { echo "lima test: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, namespaces)"
deb=${1:-$(ls -1 target/packages/openshell_*_"$(dpkg --print-architecture)".deb 2>/dev/null | tail -1)}
[ -f "$deb" ] || fail "no .deb (packaging/build.sh deb)"

# 1. The template.
script=$(mktemp); trap 'rm -f "$script"' EXIT
python3 - packaging/lima/openshell.yaml packaging/lima/provision.sh "$script" <<'PY'
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))
arches = {i["arch"] for i in t["images"]}
assert arches == {"x86_64", "aarch64"}, f"images for {arches}"
assert all(i["location"].startswith("https://cloud.debian.org/") for i in t["images"])
assert t["containerd"] == {"system": False, "user": False}, "a container engine would be installed"
assert {m["location"] for m in t["mounts"]} >= {"~"}, "the home (project) mount"
assert "PROJECT" in t["param"] and "AGENTS" in t["param"]
modes = [p["mode"] for p in t["provision"]]
assert modes == ["system", "user"], modes
system = t["provision"][0]["script"]
body = system.split("<<'PROVISION'\n", 1)[1].split("\nPROVISION\n", 1)[0] + "\n"
assert body == open(sys.argv[2]).read(), "openshell.yaml's script differs from provision.sh"
assert "systemctl --user enable --now openshell" in t["provision"][1]["script"]
# What Lima runs, with its template values for this test.
run = system.replace("{{.User}}", "lima-test").replace("{{.Param.PROJECT}}", "/project") \
            .replace("{{.Param.AGENTS}}", "")
assert "{{" not in run, "an unsubstituted template value"
open(sys.argv[3], "w").write(run)
print("lima test: template parses; provision.sh embedded unchanged")
PY

# 2. A Debian 12 root.
cache=${OPENSHELL_DEBIAN_CACHE:-/var/tmp/openshell-debian12.tar}
if [ ! -s "$cache" ]; then
  command -v debootstrap >/dev/null || fail "debootstrap missing (apt-get install debootstrap)"
  d=$(mktemp -d /var/tmp/openshell-debootstrap.XXXXXX)
  debootstrap --variant=minbase --include=uidmap,nftables,passwd,ca-certificates,curl \
    bookworm "$d/root" http://deb.debian.org/debian >"$d/log" 2>&1 || { tail -20 "$d/log"; fail "debootstrap"; }
  tar -C "$d/root" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
  rm -rf "$d"
fi
work=$(mktemp -d /var/tmp/openshell-lima.XXXXXX)
trap 'rm -f "$script"; rm -rf "$work"' EXIT
root=$work/root; mkdir "$root"
tar -C "$root" -xf "$cache"
mkdir -p "$root/project/target/packages"
cp "$deb" "$root/project/target/packages/"
cp "$script" "$root/provision-lima.sh"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# 3. Inside: as Lima's cloud-init has it, the user exists; then the provisioning, twice.
inside() {
  unshare --mount --pid --fork --propagation private bash -c '
    set -e; r=$1; shift
    mount --bind "$r" "$r"
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    mount --rbind /sys "$r/sys"
    mount -t tmpfs tmpfs "$r/tmp"
    mkdir -p "$r/.oldroot"; cd "$r"; pivot_root . .oldroot
    exec /usr/sbin/chroot . /bin/sh -c "umount -l /.oldroot; rmdir /.oldroot; cd /; exec \"\$@\"" sh "$@"
  ' _ "$root" "$@"
}
inside useradd -m -s /bin/bash lima-test
inside bash /provision-lima.sh > "$work/first.log" 2>&1 || { tail -30 "$work/first.log"; fail "provisioning failed"; }
inside bash /provision-lima.sh > "$work/second.log" 2>&1 || { tail -30 "$work/second.log"; fail "provisioning is not idempotent"; }
inside dpkg -s openshell >/dev/null || fail "openshell not installed"
[ "$(grep -c '^lima-test:' "$root/etc/subuid")" = 1 ] || fail "subordinate uids: $(cat "$root/etc/subuid")"
[ "$(grep -c '^lima-test:' "$root/etc/subgid")" = 1 ] || fail "subordinate gids"
grep -q "ready for lima-test" "$work/second.log" || fail "no ready message: $(tail -5 "$work/second.log")"
out=$(inside runuser -u lima-test -- openshell run -- sh -c 'echo "hello from $(id -un)"' 2>&1) \
  || fail "openshell run as the VM's user: $out"
[ "$out" = "hello from sandbox" ] || fail "unexpected: $out"
echo "lima test: provisioned a Debian 12 root twice; its user runs sandboxes with the installed openshell"
