//! Hostile images built by the tests themselves: `docker save`-style archives
//! (manifest.json, config, uncompressed layer tars) with whatever a test wants in the
//! layers (symlinks to host paths, FIFOs, devices, odd ids) and in the config (`User`,
//! `WorkingDir`, ...). The base is the host's static busybox, so the image runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Node {
    /// A regular file with its content and mode.
    File(Vec<u8>, u32),
    /// A directory with its mode.
    Dir(u32),
    /// A symlink to the target.
    Link(String),
    /// A FIFO.
    Fifo,
}

/// A layer: paths (relative, no leading `/`) and what is there, in order.
pub type Layer = Vec<(String, Node)>;

/// The base layer: `/bin/busybox` (the host's static one) with `sh`, `cat`, `id`, `ls`,
/// `echo`, `test`, `touch`, `stat`, `readlink`, `sleep`, `mkdir` as links, an
/// `/etc/passwd` with `root`, `app` (1500:1600) and `sandbox`, and `/etc/group`.
pub fn base() -> Layer {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (Debian's busybox-static, installed by tests/env/install.sh)");
    let mut l: Layer = vec![
        ("bin".into(), Node::Dir(0o755)),
        ("bin/busybox".into(), Node::File(busybox, 0o755)),
        ("etc".into(), Node::Dir(0o755)),
    ];
    for tool in [
        "sh", "cat", "id", "ls", "echo", "test", "touch", "stat", "readlink", "sleep", "mkdir",
        "wc", "head",
    ] {
        l.push((format!("bin/{tool}"), Node::Link("busybox".into())));
    }
    l
}

/// `/etc/passwd` and `/etc/group` entries for [`base`].
pub fn accounts() -> Layer {
    vec![
        (
            "etc/passwd".into(),
            Node::File(
                b"root:x:0:0:root:/root:/bin/sh\napp:x:1500:1600::/sandbox:/bin/sh\nsandbox:x:1000:1000::/sandbox:/bin/sh\n".to_vec(),
                0o644,
            ),
        ),
        (
            "etc/group".into(),
            Node::File(b"root:x:0:\napp:x:1600:\nsandbox:x:1000:\n".to_vec(), 0o644),
        ),
    ]
}

fn layer_tar(layer: &Layer) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in layer {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match node {
            Node::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Node::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            Node::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a docker-archive at `out` with `layers` (base first) and the config's `config`
/// object (e.g. `{"User": "4294967295:1000", "Cmd": ["id"]}`). Returns `out` as a
/// `docker-archive:` reference.
pub fn docker_archive(out: &Path, layers: &[Layer], config: serde_json::Value) -> String {
    let mut tars = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let t = layer_tar(l);
        diff_ids.push(format!("sha256:{}", hex(&Sha256::digest(&t))));
        tars.push(t);
    }
    let cfg = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_name = format!("{}.json", hex(&Sha256::digest(&cfg_bytes)));
    let layer_names: Vec<String> = (0..tars.len()).map(|i| format!("l{i}/layer.tar")).collect();
    let manifest = serde_json::json!([{
        "Config": cfg_name,
        "RepoTags": ["hostile:latest"],
        "Layers": layer_names,
    }]);
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add(&cfg_name, &cfg_bytes);
    for (name, t) in layer_names.iter().zip(&tars) {
        add(name, t);
    }
    b.into_inner().unwrap().flush().unwrap();
    format!("docker-archive:{}", out.display())
}

/// A directory for a test's hostile archives and canaries (world-traversable so an
/// unprivileged run can read them; removed on drop).
pub fn scratch(tag: &str) -> crate::TempDir {
    let d = crate::TempDir::new(tag);
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755));
    d
}

/// A host path for a canary that must never be created.
pub fn canary(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("canary-{name}"))
}
