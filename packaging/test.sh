#!/usr/bin/env bash
# Check the packages `packaging/build.sh all` made (CI, as root, with the unprivileged
# user USER=$1 that has subordinate ids): the .deb installs, `openshell run -- true`
# works from /usr/bin as that user, the man page and completions are there, `dpkg -r`
# removes it all; the .rpm's file list has the same files and no scripts; install.sh
# installs into a prefix and --uninstall removes exactly that.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${1:?usage: packaging/test.sh USER}
out=target/packages
fail() { echo "packaging: $*" >&2; exit 1; }
deb=$(ls "$out"/openshell_*.deb | head -1)
rpm=$(ls "$out"/openshell-*.rpm | head -1)

dpkg -i "$deb" >/dev/null
[ -x /usr/bin/openshell ] || fail "/usr/bin/openshell missing after dpkg -i"
(cd /tmp && runuser -u "$user" -- env -i PATH=/usr/bin:/bin HOME="$(getent passwd "$user" | cut -d: -f6)" \
   /usr/bin/openshell run --network none -- true) || fail "openshell run -- true failed as $user"
man -w openshell >/dev/null || fail "man openshell: no page"
man -w openshell-sandbox >/dev/null || fail "man openshell-sandbox: no page"
unit=/usr/lib/systemd/user/openshell.service
[ -f "$unit" ] || fail "no systemd user unit at $unit"
# Verified as systemd's user manager reads it; any complaint (even a warning) fails.
verify=$(XDG_RUNTIME_DIR=$(mktemp -d) systemd-analyze verify --user "$unit" 2>&1) \
  || fail "systemd-analyze verify $unit: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify $unit: $verify"
bash -c 'source /usr/share/bash-completion/completions/openshell && complete -p openshell' >/dev/null \
  || fail "bash completion does not load"
[ -s /usr/share/zsh/vendor-completions/_openshell ] || fail "zsh completion missing"
[ -s /usr/share/fish/vendor_completions.d/openshell.fish ] || fail "fish completion missing"
listed=$(dpkg -L openshell | sort)
dpkg -r openshell >/dev/null
for f in $listed; do
  case "$f" in /usr/bin/*|/usr/lib/systemd/user/openshell*|/usr/share/man/*|/usr/share/doc/openshell/*|*completion*/openshell*|*completions/_openshell)
    [ -d "$f" ] || [ ! -e "$f" ] || fail "$f left after dpkg -r";;
  esac
done
echo "deb: installed, ran as $user, man and completions present, removed cleanly"

command -v rpm >/dev/null || fail "rpm missing (apt-get install rpm)"
# (Read whole first: `grep -q` closing the pipe early would fail the pipeline.)
rpm_files=$(rpm -qpl "$rpm" 2>/dev/null)
grep -qx /usr/bin/openshell <<<"$rpm_files" || fail "rpm: /usr/bin/openshell not listed"
grep -qx /usr/share/man/man1/openshell.1.gz <<<"$rpm_files" || fail "rpm: man page not listed"
grep -qx /usr/lib/systemd/user/openshell.service <<<"$rpm_files" || fail "rpm: systemd user unit not listed"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
[ -z "$scripts" ] || fail "rpm has scripts: $scripts"
echo "rpm: files listed, no scripts"

prefix=$(mktemp -d /tmp/openshell-prefix.XXXXXX)
packaging/install.sh --prefix "$prefix" >/dev/null
[ -x "$prefix/bin/openshell" ] || fail "install.sh: no binary"
"$prefix/bin/openshell" --version >/dev/null
grep -qx "ExecStart=\"$prefix/bin/openshell\" serve" "$prefix/lib/systemd/user/openshell.service" \
  || fail "install.sh: the user unit does not run the installed binary"
packaging/install.sh --prefix "$prefix" >/dev/null   # again: idempotent
packaging/install.sh --prefix "$prefix" --uninstall >/dev/null
left=$(find "$prefix" -type f | wc -l)
[ "$left" = 0 ] || fail "install.sh --uninstall left $left files"
# A tampered tarball is refused.
tarball=$(ls "$out"/openshell-*-linux.tar.gz | head -1)
cp "$tarball" "$prefix/t.tar.gz"; cp "$tarball.sha256" "$prefix/t.tar.gz.sha256"
printf 'x' >> "$prefix/t.tar.gz"
if packaging/install.sh --prefix "$prefix" --from "$prefix/t.tar.gz" 2>/dev/null; then fail "install.sh accepted a tampered tarball"; fi
rm -rf "$prefix"
echo "install.sh: installed, reinstalled, uninstalled, refused a tampered tarball"
