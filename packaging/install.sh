#!/usr/bin/env bash
# Install openshell without a package: `packaging/install.sh [--prefix DIR]
# [--from TARBALL] [--uninstall]`. The tarball is what `packaging/build.sh tar` makes
# (default: the newest in target/packages/); its SHA-256 is checked against the
# `.sha256` file next to it before anything is installed. Installs the binary, man
# pages and completions under PREFIX (default ~/.local, /usr/local as root), records
# what it installed (PREFIX/share/openshell/installed-files) so `--uninstall` removes
# exactly that. Running it again installs over the same files (idempotent).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" = 0 ]; then prefix=/usr/local; else prefix=$HOME/.local; fi
from=""; uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2;;
    --from) from=$2; shift 2;;
    --uninstall) uninstall=1; shift;;
    -h|--help) sed -n '2,9p' "$0"; exit 0;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
record=$prefix/share/openshell/installed-files
if [ "$uninstall" = 1 ]; then
  [ -f "$record" ] || { echo "install.sh: nothing installed under $prefix ($record missing)" >&2; exit 1; }
  # A user service started from this prefix stops with it.
  if grep -q 'systemd/user/openshell.service$' "$record" && command -v systemctl >/dev/null \
     && systemctl --user is-enabled openshell >/dev/null 2>&1; then
    systemctl --user disable --now openshell >/dev/null 2>&1 || true
  fi
  while IFS= read -r f; do rm -f -- "$prefix/$f"; done < "$record"
  rm -f "$record"; rmdir "$prefix/share/openshell" 2>/dev/null || true
  echo "removed openshell from $prefix"
  exit 0
fi
# The user unit names the binary: a prefix it cannot quote is refused before anything.
case "$prefix" in
  *[\"\\%\$]*|*$'\n'*) echo "install.sh: --prefix $prefix holds a character a systemd unit cannot quote (\" \\ % \$ or a newline)" >&2; exit 1;;
esac
case "$(uname -m)" in x86_64|aarch64) ;; *) echo "install.sh: $(uname -m) is not supported (x86_64, aarch64)" >&2; exit 1;; esac
if [ -z "$from" ]; then
  from=$(ls -t "$here"/../target/packages/openshell-*-linux.tar.gz 2>/dev/null | head -1 || true)
  [ -n "$from" ] || { echo "install.sh: no tarball; run packaging/build.sh tar or pass --from FILE" >&2; exit 1; }
fi
[ -f "$from.sha256" ] || { echo "install.sh: $from.sha256 missing: cannot verify the tarball" >&2; exit 1; }
want=$(cut -d' ' -f1 < "$from.sha256")
got=$(sha256sum "$from" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "install.sh: SHA-256 mismatch for $from (want $want, got $got)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tar -C "$tmp" -xzf "$from"
mkdir -p "$prefix/share/openshell"
(cd "$tmp" && find . -type f | sed 's|^\./||' | sort) > "$tmp/files"
: > "$tmp/installed"
while IFS= read -r f; do
  [ "$f" = files ] && continue
  mode=0644; case "$f" in bin/*) mode=0755;; esac
  dest=$f
  if [ "$f" = lib/systemd/user/openshell.service ]; then
    # The user unit runs this prefix's binary; under ~/.local it goes where the user's
    # systemd looks ($XDG_DATA_HOME/systemd/user).
    [ "$prefix" = "$HOME/.local" ] && dest=share/systemd/user/openshell.service
    # Quoted for systemd (a prefix may hold spaces), replaced as a plain string (no
    # character of the prefix is read as sed or pattern syntax).
    exe="$prefix/bin/openshell"
    unit=$(cat "$tmp/$f")
    repl="ExecStart=\"$exe\" "
    printf '%s\n' "${unit/ExecStart=\/usr\/bin\/openshell /"$repl"}" > "$tmp/$f"
  fi
  install -D -m "$mode" "$tmp/$f" "$prefix/$dest"
  echo "$dest" >> "$tmp/installed"
done < "$tmp/files"
cp "$tmp/installed" "$record"
echo "installed openshell into $prefix ($(wc -l < "$record") files)"
"$prefix/bin/openshell" doctor || echo "install.sh: see what doctor says above: sandboxes may not start on this host"
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "note: add $prefix/bin to PATH";; esac
echo "optional: systemctl --user daemon-reload && systemctl --user enable --now openshell (openshell serve)"
