#!/usr/bin/env python3
"""check_tree.py - compare an unpacked root filesystem with an expected/*.tsv of tests/env.

  python3 check_tree.py ROOTFS EXPECTED.tsv [--rootless]

The tsv has one line per path: path, type (d f l h c b p), octal mode, uid, gid, size,
detail (sha256 of a file, target of a symlink, path a hard link shares its inode with,
major:minor of a device). --rootless: owners are not compared, and a device may be
missing or an empty regular file (an unprivileged unpacker cannot create one).
Prints "ROOTFS: matches NAME.tsv (N entries)" and exits 0, or lists the differences
and exits 1.
"""

import hashlib
import os
import stat
import sys

KINDS = [(stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISREG, "f"), (stat.S_ISCHR, "c"),
         (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p")]


def kind_of(mode):
    return next((k for test, k in KINDS if test(mode)), "?")


def read_expected(path):
    want = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                p, k, mode, uid, gid, size, detail = line.rstrip("\n").split("\t")
                want[p] = (k, int(mode, 8), int(uid), int(gid), int(size), detail)
    return want


def sha256_of(path, mode):
    """sha256 of a file, reading it even when its mode forbids (unprivileged runs)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except PermissionError:
        os.chmod(path, mode | 0o400)
        try:
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        finally:
            os.chmod(path, mode)


def walk(root):
    """relative path -> lstat; directories we may not enter are opened up meanwhile
    (returned so that their modes are put back)."""
    seen, opened = {}, []
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            full = os.path.join(top, n)
            st = os.lstat(full)
            seen[os.path.relpath(full, root)] = st
            if stat.S_ISDIR(st.st_mode) and os.geteuid() != 0 and st.st_mode & 0o500 != 0o500:
                os.chmod(full, st.st_mode | 0o500)
                opened.append((full, stat.S_IMODE(st.st_mode)))
    return seen, opened


def compare(root, want, rootless):
    got, opened = walk(root)
    errs = []
    try:
        for p, (k, mode, uid, gid, size, detail) in sorted(want.items()):
            st = got.get(p)
            device = k in "cb"
            if st is None:
                if not (rootless and device):
                    errs.append("missing: " + p)
                continue
            have = kind_of(st.st_mode)
            if have != ("f" if k == "h" else k):
                if not (rootless and device and have == "f" and st.st_size == 0):
                    errs.append("type of %s: want %s, got %s" % (p, k, have))
                continue
            if rootless and device and have == "f":
                continue
            full = os.path.join(root, p)
            if k != "l" and stat.S_IMODE(st.st_mode) != mode:
                errs.append("mode of %s: want %04o, got %04o" % (p, mode, stat.S_IMODE(st.st_mode)))
            if not rootless and (st.st_uid, st.st_gid) != (uid, gid):
                errs.append("owner of %s: want %d:%d, got %d:%d" % (p, uid, gid, st.st_uid, st.st_gid))
            if k == "l" and os.readlink(full) != detail:
                errs.append("target of %s: want %r, got %r" % (p, detail, os.readlink(full)))
            if k in "fh" and st.st_size != size:
                errs.append("size of %s: want %d, got %d" % (p, size, st.st_size))
            elif k == "f" and sha256_of(full, stat.S_IMODE(st.st_mode)) != detail:
                errs.append("content of %s differs" % p)
            if k == "h":
                other = got.get(detail)
                if other is None or (other.st_dev, other.st_ino) != (st.st_dev, st.st_ino):
                    errs.append("%s is not a hard link of %s" % (p, detail))
            if device and not rootless and "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)) != detail:
                errs.append("device %s: want %s" % (p, detail))
        errs += ["unexpected: " + p for p in sorted(set(got) - set(want))]
    finally:
        for full, mode in reversed(opened):
            os.chmod(full, mode)
    return errs


def main():
    args = [a for a in sys.argv[1:] if a != "--rootless"]
    if len(args) != 2:
        sys.exit(__doc__)
    root, expected = args
    want = read_expected(expected)
    errs = compare(root, want, "--rootless" in sys.argv[1:])
    name = os.path.basename(expected)
    if errs:
        print("%s: %d difference(s) from %s" % (root, len(errs), name))
        for e in errs[:50]:
            print("  " + e)
        sys.exit(1)
    print("%s: matches %s (%d entries)" % (root, name, len(want)))


if __name__ == "__main__":
    main()
