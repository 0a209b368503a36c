#!/usr/bin/env bash
# Build openshell's packages: `packaging/build.sh deb|rpm|tar|all` -> target/packages/.
# One staged tree (release binary, man pages generated from the CLI definitions,
# bash/zsh/fish completions, the systemd user unit, docs, license) packed by Debian's own tools: dpkg-deb for
# the .deb, rpmbuild (Debian's `rpm` package) for the .rpm, tar for install.sh.
# Depends: uidmap (newuidmap/newgidmap); Recommends: nftables. No maintainer scripts:
# installing adds files only; removing leaves nothing but users' own data.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in deb|rpm|tar|all) ;; *) echo "usage: $0 deb|rpm|tar|all" >&2; exit 2;; esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch_deb=$(dpkg --print-architecture 2>/dev/null || echo amd64)
arch_rpm=$(uname -m)
out=target/packages
stage=$(mktemp -d /tmp/openshell-pkg.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cargo build --release -p openshell
bin=target/release/openshell

# The tree, as installed under /usr.
root=$stage/root
install -D -m 0755 "$bin" "$root/usr/bin/openshell"
mkdir -p "$root/usr/share/man/man1"
"$bin" man "$stage/man"
for p in "$stage"/man/*.1; do gzip -9n -c "$p" > "$root/usr/share/man/man1/$(basename "$p").gz"; done
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$root/usr/share/bash-completion/completions/openshell"
"$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_openshell"
"$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/openshell.fish"
install -D -m 0644 packaging/systemd/openshell.service "$root/usr/lib/systemd/user/openshell.service"
install -D -m 0644 README.md "$root/usr/share/doc/openshell/README.md"
for d in docs/*.md; do install -D -m 0644 "$d" "$root/usr/share/doc/openshell/$d"; done
cat > "$root/usr/share/doc/openshell/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: openshell
Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPY
mkdir -p "$out"

if [ "$what" = deb ] || [ "$what" = all ]; then
  deb=$stage/deb
  cp -a "$root" "$deb"
  mkdir -p "$deb/DEBIAN"
  size=$(du -sk "$deb/usr" | cut -f1)
  cat > "$deb/DEBIAN/control" <<CTL
Package: openshell
Version: $version
Architecture: $arch_deb
Maintainer: openshell developers <openshell@localhost>
Installed-Size: $size
Depends: uidmap
Recommends: nftables
Section: admin
Priority: optional
Homepage: https://github.com/openshell/openshell
Description: rootless sandboxes for AI agents
 Runs coding agents in their own user, mount, pid and network namespaces,
 confined by Landlock and seccomp, every connection through a per-sandbox
 policy proxy; credentials stay on the host. No container engine, no root.
CTL
  dpkg-deb --root-owner-group --build "$deb" "$out/openshell_${version}_${arch_deb}.deb" >/dev/null
  echo "$out/openshell_${version}_${arch_deb}.deb"
fi

if [ "$what" = rpm ] || [ "$what" = all ]; then
  if ! command -v rpmbuild >/dev/null; then
    echo "rpmbuild missing (Debian: apt-get install rpm)" >&2; exit 1
  fi
  top=$stage/rpm
  mkdir -p "$top"/{BUILD,RPMS,SPECS,SOURCES,BUILDROOT}
  files=$(cd "$root" && find . -type f | sed 's|^\.||' | sort)
  {
    echo "Name: openshell"
    echo "Version: $version"
    echo "Release: 1"
    echo "Summary: rootless sandboxes for AI agents"
    echo "License: Apache-2.0"
    echo "Requires: shadow-utils"
    echo "Recommends: nftables"
    echo "%description"
    echo "Runs coding agents in their own namespaces, confined by Landlock and seccomp,"
    echo "every connection through a per-sandbox policy proxy; no container engine, no root."
    echo "%install"
    echo "cp -a $root/. %{buildroot}/"
    echo "%files"
    echo "$files"
  } > "$top/SPECS/openshell.spec"
  rpmbuild --quiet --define "_topdir $top" --define "_build_id_links none" \
    --define "__os_install_post %{nil}" \
    --define "__strip /bin/true" -bb "$top/SPECS/openshell.spec"
  cp "$top"/RPMS/*/openshell-"$version"-1.*.rpm "$out/"
  ls "$out"/openshell-"$version"-1.*.rpm
fi

if [ "$what" = tar ] || [ "$what" = all ]; then
  tarball=$out/openshell-$version-$arch_rpm-linux.tar.gz
  tar -C "$root/usr" -czf "$tarball" bin share lib
  (cd "$out" && sha256sum "$(basename "$tarball")" > "$(basename "$tarball").sha256")
  echo "$tarball"
fi
