#!/usr/bin/env python3
"""images.py - the test images of tests/env: built deterministically from Debian's
busybox-static, then pushed to a plain-HTTP registry. Python 3 stdlib + the zstd CLI.

  images.py build OUT [--no-big]   blobs, offline files and OUT/tags.json (skipped when
                                   the inputs are unchanged)
  images.py push OUT HOST:PORT     push every tag whose manifest digest differs, then
                                   check every tag

Everything is a pure function of the busybox binary, zlib and zstd: a fixed mtime, fixed
owners, no user names, pseudo-random data from SHAKE-256, gzip through zlib level 6
(no name, mtime 0), `zstd -3` reading a pipe. The digests of busybox:latest, :docker,
:zstd, :uncompressed and :mixed are asserted by tests/tests/images.rs.
"""

import hashlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor

MTIME = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_M = "application/vnd.oci.image.manifest.v1+json"
OCI_I = "application/vnd.oci.image.index.v1+json"
OCI_C = "application/vnd.oci.image.config.v1+json"
DOCKER_M = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_L = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_C = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
UP = "../" * 8  # climbs out of any unpack directory


def jbytes(obj):
    """The JSON encoding of every document: compact, keys in insertion order."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def noise(seed, n):
    return hashlib.shake_256(seed.encode()).digest(n)


def gzip6(data):
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


# ------------------------------------------------------------------------ layers
# A node: (path, kind, mode, uid, gid, extra) with kind d/f/l/h/c/b/p; extra is the
# content (f), the target (l, h) or (major, minor) (c, b).

TAR_KIND = {"d": tarfile.DIRTYPE, "f": tarfile.REGTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE,
            "c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE, "p": tarfile.FIFOTYPE}


class Layer:
    def __init__(self, name, nodes=(), dot=False):
        self.name, self.nodes, self.dot = name, list(nodes), dot
        self._tar, self._blobs = None, {}

    # builders
    def d(self, p, mode=0o755, uid=0, gid=0):
        self.nodes.append((p, "d", mode, uid, gid, None))
        return self

    def f(self, p, data, mode=0o644, uid=0, gid=0):
        self.nodes.append((p, "f", mode, uid, gid, data.encode() if isinstance(data, str) else data))
        return self

    def l(self, p, target):
        self.nodes.append((p, "l", 0o777, 0, 0, target))
        return self

    def h(self, p, target):
        self.nodes.append((p, "h", 0o644, 0, 0, target))
        return self

    def dev(self, p, kind, major, minor, mode):
        self.nodes.append((p, kind, mode, 0, 0, (major, minor)))
        return self

    def wh(self, p):
        head, _, base = p.rpartition("/")
        return self.f((head + "/" if head else "") + ".wh." + base, b"", 0)

    def opq(self, d):
        return self.f(d + "/.wh..wh..opq", b"", 0)

    # bytes
    def tar(self):
        if self._tar is None:
            pre = "./" if self.dot else ""
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as t:
                nodes = ([("", "d", 0o755, 0, 0, None)] if self.dot else []) + self.nodes
                for path, kind, mode, uid, gid, extra in nodes:
                    ti = tarfile.TarInfo(pre + path if path else "./")
                    ti.type, ti.mode, ti.uid, ti.gid = TAR_KIND[kind], mode, uid, gid
                    ti.uname = ti.gname = ""
                    ti.mtime = MTIME
                    if kind == "l":
                        ti.linkname = extra
                    elif kind == "h":
                        ti.linkname = pre + extra
                    elif kind in "cb":
                        ti.devmajor, ti.devminor = extra
                    if kind == "f":
                        ti.size = len(extra)
                        t.addfile(ti, io.BytesIO(extra))
                    else:
                        t.addfile(ti)
            self._tar = out.getvalue()
        return self._tar

    def diff_id(self):
        return digest(self.tar())

    def blob(self, comp):
        if comp not in self._blobs:
            raw = self.tar()
            if comp == "gzip":
                self._blobs[comp] = gzip6(raw)
            elif comp == "zstd":
                self._blobs[comp] = subprocess.run(["zstd", "-q", "-3", "-c"], input=raw,
                                                   stdout=subprocess.PIPE, check=True).stdout
            else:
                self._blobs[comp] = raw
        return self._blobs[comp]


class Bomb:
    """One file of `size` zero bytes, compressed as a stream (never whole in memory)."""

    def __init__(self, size):
        self.name, self.nodes, self.size, self._done = "evil-bomb", [], size, None

    def _make(self):
        if self._done is None:
            ti = tarfile.TarInfo("bomb/zeros")
            ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = self.size, 0o644, MTIME, "", ""
            head = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            end = len(head) + self.size + (-self.size) % 512 + 1024
            tail = bytes((-self.size) % 512 + 1024 + (-end) % tarfile.RECORDSIZE)
            h, z, out = hashlib.sha256(head), zlib.compressobj(6, zlib.DEFLATED, 31), [b""]
            out.append(z.compress(head))
            zero = bytes(1 << 20)
            for _ in range(self.size >> 20):
                h.update(zero)
                out.append(z.compress(zero))
            h.update(tail)
            out += [z.compress(tail), z.flush()]
            self._done = ("sha256:" + h.hexdigest(), b"".join(out))
        return self._done

    def diff_id(self):
        return self._make()[0]

    def blob(self, comp):
        assert comp == "gzip"
        return self._make()[1]


# ----------------------------------------------------------------------- content

def base_layer(busybox):
    """busybox:latest's only layer; every busybox image (and big) starts with it."""
    applets = subprocess.run([busybox, "--list-full"], stdout=subprocess.PIPE, text=True,
                             check=True).stdout.split()
    with open(busybox, "rb") as f:
        binary = f.read()
    nodes = [(p, "d", m, 0, 0, None) for p, m in [
        ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o755), ("root", 0o700),
        ("sbin", 0o755), ("sys", 0o755), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755),
        ("usr/sbin", 0o755), ("var", 0o755)]]
    nodes.append(("sandbox", "d", 0o755, 1000, 1000, None))
    nodes.append(("bin/busybox", "f", 0o755, 0, 0, binary))
    nodes += [(a, "l", 0o777, 0, 0, "/bin/busybox") for a in applets if a not in ("bin/busybox", "linuxrc")]
    for p, text in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\n"
                       "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("etc/group", "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"),
        ("etc/platform", "linux/amd64\n"),
        ("etc/os-release", 'NAME="os-testenv busybox"\nID=os-testenv-busybox\nVERSION_ID=1\n'),
    ]:
        nodes.append((p, "f", 0o644, 0, 0, text.encode()))
    return Layer("busybox-rootfs", sorted(nodes, key=lambda n: n[0]))


def multilayer():
    """Layers 2-4 of busybox:multilayer: whiteouts, opaque dirs, type changes, links,
    modes, owners, devices, long and odd names, implicit parents."""
    hidden3 = "hidden by the opaque whiteout in layer 3\n"
    two = (Layer("populate").d("data")
           .f("data/keep.txt", "keep: from layer 2\n")
           .f("data/modified.txt", "version 1 (layer 2)\n")
           .f("data/delete-me.txt", "deleted by a whiteout in layer 3\n")
           .d("data/gone-dir").d("data/gone-dir/nested")
           .f("data/gone-dir/nested/file.txt", "whole directory whited out in layer 3\n")
           .d("data/opaque").f("data/opaque/old-a.txt", hidden3)
           .d("data/opaque/old-sub").f("data/opaque/old-sub/old-b.txt", hidden3)
           .d("data/opaque-empty").f("data/opaque-empty/old.txt", "hidden by the opaque whiteout in layer 4\n")
           .d("data/dir-to-file").f("data/dir-to-file/inner.txt", "this directory becomes a file in layer 3\n")
           .f("data/file-to-dir", "this file becomes a directory in layer 3\n")
           .d("data/modes")
           .f("data/modes/mode-0000", "mode 0000\n", 0o000)
           .f("data/modes/mode-0400", "mode 0400\n", 0o400)
           .f("data/modes/mode-0600", "mode 0600\n", 0o600)
           .f("data/modes/mode-0755", "#!/bin/sh\necho mode-0755\n", 0o755)
           .f("data/modes/setuid", "#!/bin/sh\nid\n", 0o4755)
           .f("data/modes/setgid", "#!/bin/sh\nid\n", 0o2755)
           .d("data/modes/sticky-dir", 0o1777)
           .d("data/modes/dir-0700", 0o700).f("data/modes/dir-0700/inner.txt", "inside a 0700 dir\n")
           .d("data/modes/dir-0555", 0o555).f("data/modes/dir-0555/inner.txt", "inside a read-only dir\n", 0o444)
           .d("data/modes/dir-0000", 0o000).f("data/modes/dir-0000/inner.txt", "inside a 0000 dir\n")
           .d("data/owner")
           .f("data/owner/uid1000.txt", "owned by 1000:1000\n", 0o644, 1000, 1000)
           .f("data/owner/uid65534.txt", "owned by 65534:65534\n", 0o644, 65534, 65534)
           .d("data/owner/dir-uid1000", 0o750, 1000, 1000))
    three = (Layer("modify").wh("data/delete-me.txt").wh("data/gone-dir")
             .d("data/opaque").f("data/opaque/new.txt", "added in layer 3, next to the opaque marker\n")
             .opq("data/opaque")  # after new.txt on purpose: it only hides lower layers
             .f("data/dir-to-file", "was a directory in layer 2\n")
             .d("data/file-to-dir").f("data/file-to-dir/inner.txt", "was a file in layer 2\n")
             .f("data/modified.txt", "version 2 (layer 3)\n")
             .d("data/links")
             .l("data/links/abs", "/data/keep.txt").l("data/links/rel", "../keep.txt")
             .l("data/links/dangling", "/nonexistent/target")
             .l("data/links/escape", "../../../../../../etc/passwd").l("data/links/dir-link", "/etc")
             .l("data/links/long-target", "/data/" + "t" * 150)  # PAX linkpath
             .d("data/hardlinks").f("data/hardlinks/original.txt", "hard-linked content\n")
             .h("data/hardlinks/link1", "data/hardlinks/original.txt")
             .h("data/hardlinks/link2", "data/hardlinks/original.txt")
             .f("data/hardlinks/setuid-original", "#!/bin/sh\nid\n", 0o4755)
             .h("data/hardlinks/setuid-link", "data/hardlinks/setuid-original")
             .d("data/special")
             .dev("data/special/null", "c", 1, 3, 0o666).dev("data/special/loop7", "b", 7, 7, 0o660)
             .dev("data/special/fifo", "p", 0, 0, 0o644)
             .d("data/names").f("data/names/" + "long-" * 30 + "name.txt", "long path name\n")  # PAX path
             .f("data/names/unicode-\u00f1-\u540d\u524d.txt", "utf-8 name\n")
             .f("data/names/with space.txt", "space in name\n")
             .f("data/names/.hidden", "dot file\n"))
    four = (Layer("finalize").opq("data/opaque-empty").wh("data/links/dangling").wh("usr/bin/wget")
            .f("data/implicit/parent/file.txt", "parents have no tar entries\n")
            .f("data/modes/dir-0555/added-later.txt", "added into a read-only dir of a lower layer\n")
            .d("etc").f("etc/motd", "busybox:multilayer\n"))
    return [two, three, four]


def arm64_layer():
    return (Layer("arm64-dummy").d("etc").f("etc/platform", "linux/arm64/v8\n")
            .f("README", "dummy linux/arm64 image of the testenv multi-arch index; not runnable\n"))


def evil_layers():
    dotdot = Layer("evil-dotdot").d("data").f("data/ok.txt", "benign\n") \
        .f(UP + "tmp/os-testenv-evil-dotdot", "written outside the rootfs via ../\n")
    absolute = Layer("evil-absolute").d("data").f("data/ok.txt", "benign\n") \
        .f("/tmp/os-testenv-evil-absolute", "absolute member name\n")
    sym1 = (Layer("evil-symlink-1").d("data").l("escape-abs", "/tmp").l("escape-rel", UP + "tmp")
            .l("same-layer", "/tmp").f("same-layer/os-testenv-evil-symlink-same", "through a symlink of this layer\n"))
    sym2 = (Layer("evil-symlink-2")
            .f("escape-abs/os-testenv-evil-symlink-abs", "through an absolute symlink of a lower layer\n")
            .f("escape-rel/os-testenv-evil-symlink-rel", "through a relative symlink of a lower layer\n"))
    hard = Layer("evil-hardlink").d("data").f("data/ok.txt", "benign\n") \
        .h("data/passwd-rel", UP + "etc/passwd").h("data/passwd-abs", "/etc/passwd")
    return {"dotdot": [dotdot], "absolute": [absolute], "symlink": [sym1, sym2], "hardlink": [hard],
            "bomb": [Bomb(512 << 20)]}


def big_layers():
    """~165 MiB for pull benchmarks: 3000 small text files ("./" names as `tar -C dir .`
    writes them), 4 x 16 MiB random files, 256 files of half random, half zeros."""
    small = Layer("big-small-files", dot=True).d("big").d("big/small")
    for d in range(30):
        small.d("big/small/d%02d" % d)
        for i in range(d * 100, d * 100 + 100):
            n = 1024 + int.from_bytes(noise("size-%d" % i, 4), "big") % (31 * 1024)
            text = noise("text-%d" % i, n // 2 + 1).hex()[:n]
            small.f("big/small/d%02d/f%04d.txt" % (d, i),
                    "\n".join(text[j:j + 63] for j in range(0, n, 63))[:n])
    large = Layer("big-random-files").d("big").d("big/large")
    for i in range(4):
        large.f("big/large/random-%d.bin" % i, noise("large-%d" % i, 16 << 20))
    mixed = Layer("big-mixed-files").d("big").d("big/mixed")
    for i in range(256):
        mixed.f("big/mixed/m%03d.bin" % i, noise("mixed-%d" % i, 96 << 10) + bytes(96 << 10))
    return [small, large, mixed]


# ---------------------------------------------------------------- expected trees

def apply(layers):
    """The root filesystem after the layers, as the OCI image spec says: whiteouts hide
    lower layers only; implicit parents are 0755 root dirs; a non-dir replaces a tree."""
    tree = {}

    def drop(p, keep_self=False):
        if not keep_self:
            tree.pop(p, None)
        for k in [k for k in tree if k.startswith(p + "/" if p else "")]:
            del tree[k]

    for layer in layers:
        for path, *_ in layer.nodes:
            head, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                drop(head, keep_self=True)
            elif base.startswith(".wh."):
                drop((head + "/" if head else "") + base[4:])
        for node in layer.nodes:
            path, kind, mode, uid, gid, extra = node
            if path.rpartition("/")[2].startswith(".wh."):
                continue
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if tree.get(parent, (None, None))[1] != "d":
                    drop(parent)
                    tree[parent] = (parent, "d", 0o755, 0, 0, None)
            old = tree.get(path)
            if old and not (old[1] == "d" and kind == "d"):
                drop(path)
            if kind == "h":
                t = tree[extra]
                node = (path, "h", t[2], t[3], t[4], (t[5], extra))
            tree[path] = node
    return tree


def tsv(tree):
    out = ["# path\ttype\tmode\tuid\tgid\tsize\tdetail",
           "# d dir, f file (sha256), l symlink (target), h hard link (path linked to),",
           "# c/b device (major:minor), p fifo"]
    for p in sorted(tree):
        _, kind, mode, uid, gid, extra = tree[p]
        size, detail = 0, "-"
        if kind == "f":
            size, detail = len(extra), hashlib.sha256(extra).hexdigest()
        elif kind == "h":
            size, detail = len(extra[0]), extra[1]
        elif kind == "l":
            detail = extra
        elif kind in "cb":
            detail = "%d:%d" % extra
        out.append("%s\t%s\t%04o\t%d\t%d\t%d\t%s" % (p, kind, mode, uid, gid, size, detail))
    return ("\n".join(out) + "\n").encode()


# -------------------------------------------------------------------------- build

class Pool:
    """blobs/sha256/<hex> under OUT; every document and layer once."""

    def __init__(self, out):
        self.dir = os.path.join(out, "blobs", "sha256")
        os.makedirs(self.dir, exist_ok=True)

    def put(self, data):
        d = digest(data)
        p = self.path(d)
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as f:
                f.write(data)
            os.rename(p + ".tmp", p)
        return {"digest": d, "size": len(data)}

    def path(self, d):
        return os.path.join(self.dir, d[7:])


def config(layers, cfg, arch="amd64", variant=None):
    c = {"created": CREATED, "author": "os-testenv", "architecture": arch}
    if variant:
        c["variant"] = variant
    c.update({"os": "linux", "config": cfg,
              "rootfs": {"type": "layers", "diff_ids": [l.diff_id() for l in layers]},
              "history": [{"created": CREATED, "created_by": "os-testenv: layer %s" % l.name}
                          for l in layers]})
    return jbytes(c)


def build(out, busybox, with_big):
    pool = Pool(out)
    base = base_layer(busybox)
    ml = [base] + multilayer()
    arm = arm64_layer()
    evil = evil_layers()
    big = [base] + big_layers() if with_big else []
    work = [(base, c) for c in ("gzip", "zstd", "none")] + [(l, "gzip") for l in ml[1:] + [arm]]
    work += [(ml[1], "none"), (ml[2], "zstd")] + [(l, "gzip") for ls in evil.values() for l in ls]
    work += [(l, c) for l in big[1:] for c in ("gzip", "zstd")]
    # tars first (that part holds the GIL), then every compression in parallel, biggest
    # first: zlib, hashlib and the zstd child run outside the GIL
    size = {id(l): len(l.tar()) if isinstance(l, Layer) else l.size for l, _ in work}
    work.sort(key=lambda lc: -size[id(lc[0])])
    with ThreadPoolExecutor(os.cpu_count() or 2) as ex:
        list(ex.map(lambda lc: lc[0].blob(lc[1]), work))

    tags, docs = [], {}  # docs: manifest digest -> (media type, blobs it needs)

    def image(layers, comps, cfg_bytes, flavour="oci"):
        cfg = dict(pool.put(cfg_bytes), mediaType=OCI_C if flavour == "oci" else DOCKER_C)
        descs = [dict(mediaType=LAYER_TYPES[(flavour, c)], **pool.put(l.blob(c))) for l, c in zip(layers, comps)]
        mt = OCI_M if flavour == "oci" else DOCKER_M
        m = pool.put(jbytes({"schemaVersion": 2, "mediaType": mt,
                             "config": {"mediaType": cfg["mediaType"], "digest": cfg["digest"], "size": cfg["size"]},
                             "layers": descs}))
        docs[m["digest"]] = {"mediaType": mt, "blobs": [cfg["digest"]] + [d["digest"] for d in descs]}
        return dict(m, mediaType=mt)

    def index(children, flavour="oci"):
        mt = OCI_I if flavour == "oci" else DOCKER_L
        i = pool.put(jbytes({"schemaVersion": 2, "mediaType": mt, "manifests": children}))
        docs[i["digest"]] = {"mediaType": mt, "blobs": [], "manifests": [c["digest"] for c in children]}
        return dict(i, mediaType=mt)

    def tag(name, desc):
        repo, _, t = name.rpartition(":")
        tags.append({"repository": repo, "tag": t, "mediaType": desc["mediaType"], "digest": desc["digest"]})
        return desc

    latest_cfg = config([base], {
        "Env": [PATH], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hello from busybox"], "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.title": "busybox",
                   "org.opencontainers.image.description": "os-testenv busybox-static image"}})
    ml_cfg = config(ml, {
        "User": "sandbox", "Env": [PATH, "HOME=/sandbox", "TESTENV_IMAGE=busybox:multilayer"],
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["cat /etc/motd"], "WorkingDir": "/sandbox",
        "ExposedPorts": {"8080/tcp": {}}, "Volumes": {"/sandbox/volume": {}}, "StopSignal": "SIGTERM",
        "Labels": {"org.opencontainers.image.title": "busybox-multilayer"}})
    latest = tag("busybox:latest", image([base], ["gzip"], latest_cfg))
    multi = tag("busybox:multilayer", image(ml, ["gzip"] * 4, ml_cfg))
    tag("busybox:mixed", image(ml, ["gzip", "none", "zstd", "gzip"], ml_cfg))
    tag("busybox:zstd", image([base], ["zstd"], latest_cfg))
    tag("busybox:uncompressed", image([base], ["none"], latest_cfg))
    docker = tag("busybox:docker", image([base], ["gzip"], latest_cfg, "docker"))
    tag("private/busybox:latest", latest)

    arm_cfg = config([arm], {"Env": [PATH], "Cmd": ["/bin/false"]}, "arm64", "v8")
    arm_plat = {"architecture": "arm64", "os": "linux", "variant": "v8"}
    amd64 = {"architecture": "amd64", "os": "linux"}

    def child(desc, platform, **extra):
        return dict({"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"]},
                    platform=platform, **extra)

    # a buildx-style attestation (unknown/unknown) that clients must skip
    stmt = pool.put(jbytes({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://spdx.dev/Document",
                            "subject": [{"name": "busybox", "digest": {"sha256": latest["digest"][7:]}}],
                            "predicate": {"spdxVersion": "SPDX-2.3", "name": "openshell-testenv"}}))
    att_cfg = pool.put(jbytes({"architecture": "unknown", "os": "unknown", "config": {},
                               "rootfs": {"type": "layers", "diff_ids": [stmt["digest"]]}}))
    att = pool.put(jbytes({"schemaVersion": 2, "mediaType": OCI_M,
                           "config": dict(mediaType=OCI_C, **att_cfg),
                           "layers": [dict(mediaType="application/vnd.in-toto+json", **stmt)]}))
    docs[att["digest"]] = {"mediaType": OCI_M, "blobs": [att_cfg["digest"], stmt["digest"]]}
    tag("busybox:multiarch", index([
        child(image([arm], ["gzip"], arm_cfg), arm_plat),  # first on purpose
        child(latest, amd64),
        child(dict(att, mediaType=OCI_M), {"architecture": "unknown", "os": "unknown"},
              annotations={"vnd.docker.reference.digest": latest["digest"],
                           "vnd.docker.reference.type": "attestation-manifest"})]))
    tag("busybox:multiarch-docker", index([
        child(image([arm], ["gzip"], arm_cfg, "docker"), arm_plat), child(docker, amd64)], "docker"))

    evil_cfg = {"Env": [PATH], "Cmd": ["/bin/false"]}
    for name, layers in evil.items():
        tag("evil:" + name, image(layers, ["gzip"] * len(layers), config(layers, evil_cfg)))
    if big:
        big_cfg = config(big, {"Env": [PATH], "Cmd": ["/bin/sh"], "WorkingDir": "/big"})
        tag("big:latest", image(big, ["gzip"] * 4, big_cfg))
        tag("big:zstd", image(big, ["zstd"] * 4, big_cfg))

    # offline files of busybox:latest and :multilayer
    for sub in ("oci", "archives", "docker-archives", "expected"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for slug, t, desc, layers, cfg in [("busybox_latest", "latest", latest, [base], latest_cfg),
                                       ("busybox_multilayer", "multilayer", multi, ml, ml_cfg)]:
        with open(os.path.join(out, "expected", slug + ".tsv"), "wb") as f:
            f.write(tsv(apply(layers)))
        offline(out, pool, slug, t, desc, docs[desc["digest"]]["blobs"], layers, cfg)

    with open(os.path.join(out, "tags.json"), "w") as f:
        json.dump({"tags": tags, "documents": docs}, f, indent=1)


def tar_files(path, members):
    """A reproducible plain tar of (name, bytes or None for a directory)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.uname, ti.gname = MTIME, "", ""
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.mode, ti.size = 0o644, len(data)
                t.addfile(ti, io.BytesIO(data))


def offline(out, pool, slug, tag, desc, blobs, layers, cfg):
    """oci/SLUG (an OCI layout, ref name TAG), archives/SLUG.tar (the same as a tar),
    docker-archives/SLUG.tar (`docker save`: manifest.json, config, uncompressed layers)."""
    lay = os.path.join(out, "oci", slug)
    os.makedirs(os.path.join(lay, "blobs", "sha256"))
    files = [("oci-layout", jbytes({"imageLayoutVersion": "1.0.0"})),
             ("index.json", jbytes({"schemaVersion": 2, "mediaType": OCI_I, "manifests": [
                 {"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"],
                  "annotations": {"org.opencontainers.image.ref.name": tag}}]}))]
    for name, data in files:
        with open(os.path.join(lay, name), "wb") as f:
            f.write(data)
    members = [("blobs", None), ("blobs/sha256", None)]
    for d in sorted({desc["digest"], *blobs}):
        os.link(pool.path(d), os.path.join(lay, "blobs", "sha256", d[7:]))
        with open(pool.path(d), "rb") as f:
            members.append(("blobs/sha256/" + d[7:], f.read()))
    tar_files(os.path.join(out, "archives", slug + ".tar"), members + files)
    cfg_name = digest(cfg)[7:] + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": ["busybox:" + tag],
                 "Layers": [l.diff_id()[7:] + ".tar" for l in layers]}]
    tar_files(os.path.join(out, "docker-archives", slug + ".tar"),
              [(l.diff_id()[7:] + ".tar", l.tar()) for l in layers] +
              [(cfg_name, cfg), ("manifest.json", jbytes(manifest))])


def cmd_build(out, with_big, busybox="/bin/busybox"):
    """Build into OUT unless its stamp says the same inputs made it."""
    h = hashlib.sha256()
    for p in (__file__, busybox):
        with open(p, "rb") as f:
            h.update(f.read())
    zstd = subprocess.run(["zstd", "--version"], stdout=subprocess.PIPE, text=True, check=True).stdout
    h.update(("%s|%s|%s|%s" % (zlib.ZLIB_RUNTIME_VERSION, zstd, with_big, sys.version)).encode())
    stamp = h.hexdigest()
    try:
        with open(os.path.join(out, ".stamp")) as f:
            if f.read().strip() == stamp:
                return False
    except OSError:
        pass
    tmp = "%s.tmp%d" % (out, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        build(tmp, busybox, with_big)
        with open(os.path.join(tmp, ".stamp"), "w") as f:
            f.write(stamp + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = "%s.old%d" % (out, os.getpid())
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return True


# --------------------------------------------------------------------------- push

class Registry:
    def __init__(self, addr):
        host, _, port = addr.rpartition(":")
        self.addr = addr
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120, blocksize=1 << 20)

    def call(self, method, path, body=None, headers=None):
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            sys.exit("images.py: registry %s: %s %s: %s" % (self.addr, method, path, e))
        return r, data

    def need(self, ok, r, data, what):
        if r.status not in ok:
            sys.exit("images.py: registry %s: %s: HTTP %d %s" % (self.addr, what, r.status, data[:300]))

    def manifest_digest(self, repo, ref, media_type):
        r, _ = self.call("HEAD", "/v2/%s/manifests/%s" % (repo, ref), headers={"Accept": media_type})
        return r.getheader("Docker-Content-Digest") if r.status == 200 else None

    def push_blob(self, repo, pool, d):
        r, _ = self.call("HEAD", "/v2/%s/blobs/%s" % (repo, d))
        if r.status == 200:
            return
        r, data = self.call("POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
        self.need((202,), r, data, "start upload of %s" % d)
        loc = r.getheader("Location")
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        loc += ("&" if "?" in loc else "?") + "digest=" + d
        with open(pool.path(d), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            r, data = self.call("PUT", loc, body=f, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
        self.need((201,), r, data, "upload of %s" % d)

    def push_manifest(self, repo, ref, pool, d, media_type):
        with open(pool.path(d), "rb") as f:
            body = f.read()
        r, data = self.call("PUT", "/v2/%s/manifests/%s" % (repo, ref), body=body,
                            headers={"Content-Type": media_type})
        self.need((201,), r, data, "manifest %s:%s" % (repo, ref))


def cmd_push(out, addr, quiet):
    with open(os.path.join(out, "tags.json")) as f:
        index = json.load(f)
    pool, reg, docs = Pool(out), Registry(addr), index["documents"]
    pushed = 0
    for t in index["tags"]:
        repo, mt, d = t["repository"], t["mediaType"], t["digest"]
        if reg.manifest_digest(repo, t["tag"], mt) == d:
            continue

        def push_doc(dd):
            for c in docs[dd].get("manifests", []):
                push_doc(c)
            for b in docs[dd]["blobs"]:
                reg.push_blob(repo, pool, b)
            reg.push_manifest(repo, dd, pool, dd, docs[dd]["mediaType"])

        push_doc(d)
        reg.push_manifest(repo, t["tag"], pool, d, mt)
        pushed += 1
        if not quiet:
            print("images: pushed %s:%s %s" % (repo, t["tag"], d), file=sys.stderr)
    bad = [t for t in index["tags"]
           if reg.manifest_digest(t["repository"], t["tag"], t["mediaType"]) != t["digest"]]
    if bad:
        sys.exit("images.py: wrong digest in the registry for " +
                 ", ".join("%s:%s" % (t["repository"], t["tag"]) for t in bad))
    if not quiet:
        print("images: %d tags in %s (%d pushed)" % (len(index["tags"]), addr, pushed), file=sys.stderr)


def main():
    a = sys.argv[1:]
    quiet = "--quiet" in a
    a = [x for x in a if x != "--quiet"]
    if len(a) >= 2 and a[0] == "build":
        with_big = "--no-big" not in a
        if cmd_build(a[1], with_big) and not quiet:
            print("images: built %s" % a[1], file=sys.stderr)
    elif len(a) == 3 and a[0] == "push":
        cmd_push(a[1], a[2], quiet)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
