//! Mount plans as plain data: what the sandbox root is built from, step by step.
//!
//! Built by pure functions from facts gathered beforehand ([`HostFacts`]) and the
//! sandbox spec, so the whole table can be unit-tested by comparing values. Executing a
//! plan is `apply`'s job; nothing here touches the system.

use std::path::{Path, PathBuf};

/// One step of building the root. Destinations are paths *inside* the sandbox; before
/// pivot_root the executor prefixes them with the new root's host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// A directory (parents created as needed).
    Mkdir { path: PathBuf, mode: u32 },
    /// An empty regular file, as a mount point for a file bind.
    Touch { path: PathBuf },
    /// A symlink `path -> target`.
    Symlink { target: PathBuf, path: PathBuf },
    /// A fresh tmpfs.
    Tmpfs {
        path: PathBuf,
        mode: u32,
        noexec: bool,
        /// Largest content in bytes (`size=`); every tmpfs of a sandbox has one, so
        /// files written there cannot take the host's memory.
        size: u64,
    },
    /// A recursive bind of a host path.
    Bind {
        src: PathBuf,
        path: PathBuf,
        readonly: bool,
        device: bool,
    },
    /// A fresh procfs for the sandbox's pid namespace.
    Proc { path: PathBuf },
    /// A private devpts instance.
    Devpts { path: PathBuf },
    /// Hide a file by binding /dev/null over it (post-pivot).
    MaskFile { path: PathBuf },
    /// Hide a directory by an empty read-only tmpfs (post-pivot).
    MaskDir { path: PathBuf },
    /// Make an existing mount read-only in place (post-pivot).
    ReadOnly { path: PathBuf },
    /// An overlayfs of image layers (top first) with the sandbox's own upper dir; where
    /// overlay cannot be mounted, the layers are copied into `upper` and it is bound.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        path: PathBuf,
    },
}

/// The layers of an image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayers {
    /// Unpacked layer directories, base first.
    pub layers: Vec<PathBuf>,
    /// The sandbox's upper dir (its changes).
    pub upper: PathBuf,
    /// overlayfs work dir (same filesystem as `upper`).
    pub work: PathBuf,
}

/// What the host looks like, read before the sandbox is created.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// Top-level system entries that exist: (name, Some(symlink target) | None for a dir).
    pub system: Vec<(String, Option<PathBuf>)>,
    /// /etc files to hide (exist on the host).
    pub etc_secrets: Vec<String>,
}

/// A user-requested bind mount (`--mount HOST:DEST[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMount {
    /// Host path (absolute, canonical).
    pub src: PathBuf,
    /// Sandbox path (absolute).
    pub dest: PathBuf,
    /// Mount read-only.
    pub readonly: bool,
    /// The source is a directory (else a file).
    pub is_dir: bool,
}

/// Everything the host-view plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    /// The host directory where the new root tmpfs is mounted.
    pub root: PathBuf,
    /// The sandbox's workspace on the host, bound at /sandbox.
    pub workspace: PathBuf,
    /// Generated files bound over /etc entries: (sandbox path, host file).
    pub etc_files: Vec<(PathBuf, PathBuf)>,
    /// User mounts, in order.
    pub mounts: Vec<UserMount>,
    /// Files of ours created wherever they go (the sandbox CA under /run/openshell):
    /// (sandbox path, host file), bound read-only.
    pub own_files: Vec<(PathBuf, PathBuf)>,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_size: u64,
    /// Size of the `/dev/shm` tmpfs in bytes.
    pub shm_size: u64,
}

/// Size of the tmpfs that only hold mount points, links and device nodes (the host
/// view's `/`, `/dev`).
pub const SCAFFOLD_SIZE: u64 = 4 << 20;

/// The two halves of a plan: before and after pivot_root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Host directory that becomes `/`.
    pub root: PathBuf,
    /// Steps run with paths prefixed by `root`.
    pub before_pivot: Vec<MountOp>,
    /// Steps run inside the new root.
    pub after_pivot: Vec<MountOp>,
}

/// Top-level host entries shared read-only in the host view.
pub const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];

/// The sandbox's own mount points: never reached through a symlink of an image (a
/// `/dev -> /tmp/x` would have its tmpfs hidden by /tmp's, a `/proc -> /proc` would
/// loop); such an image is refused.
pub const OWN_MOUNT_POINTS: &[&str] =
    &["/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp", "/sandbox"];

/// /etc files never shown, even read-only.
pub const ETC_SECRETS: &[&str] = &["shadow", "gshadow", "shadow-", "gshadow-", "sudoers"];

/// Device nodes bound from the host.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /proc entries that leak host data or offer host control.
const PROC_MASK_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/kallsyms",
    "/proc/sysrq-trigger",
    "/proc/latency_stats",
    "/proc/config.gz",
];
const PROC_MASK_DIRS: &[&str] = &["/proc/acpi", "/proc/scsi", "/proc/asound", "/proc/driver"];
const PROC_READ_ONLY: &[&str] = &["/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs"];

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The host view: a tmpfs root holding read-only binds of the host's system dirs, a
/// private /proc, /dev and /tmp, and the workspace at /sandbox.
pub fn host_view(facts: &HostFacts, spec: &RootSpec) -> MountPlan {
    let mut ops = vec![MountOp::Tmpfs {
        path: p("/"),
        mode: 0o755,
        noexec: false,
        size: SCAFFOLD_SIZE,
    }];
    for (name, link) in &facts.system {
        let path = Path::new("/").join(name);
        match link {
            Some(target) => ops.push(MountOp::Symlink {
                target: target.clone(),
                path,
            }),
            None => {
                ops.push(MountOp::Mkdir {
                    path: path.clone(),
                    mode: 0o755,
                });
                ops.push(MountOp::Bind {
                    src: path.clone(),
                    path,
                    readonly: true,
                    device: false,
                });
            }
        }
    }
    common_tail(&mut ops, facts, spec, false);
    let mut after = after_pivot();
    // The host view's root is a scaffold of binds: nothing may be added to it.
    after.push(MountOp::ReadOnly { path: p("/") });
    MountPlan {
        root: spec.root.clone(),
        before_pivot: ops,
        after_pivot: after,
    }
}

/// The image view: overlayfs of the image's layers (shared, read-only) and the
/// sandbox's own upper dir, then the same /proc, /dev, /tmp, /sandbox as the host view.
/// The root stays writable (changes land in the upper dir); Landlock decides who may
/// write where.
pub fn image_view(img: &ImageLayers, spec: &RootSpec) -> MountPlan {
    let mut ops = vec![MountOp::Overlay {
        lowers: img.layers.iter().rev().cloned().collect(),
        upper: img.upper.clone(),
        work: img.work.clone(),
        path: p("/"),
    }];
    common_tail(&mut ops, &HostFacts::default(), spec, true);
    MountPlan {
        root: spec.root.clone(),
        before_pivot: ops,
        after_pivot: after_pivot(),
    }
}

/// Steps every root gets: /proc, /dev, /tmp, /sandbox, /etc overrides, user mounts.
fn common_tail(ops: &mut Vec<MountOp>, facts: &HostFacts, spec: &RootSpec, touch_etc: bool) {
    ops.push(MountOp::Mkdir {
        path: p("/proc"),
        mode: 0o555,
    });
    ops.push(MountOp::Proc { path: p("/proc") });
    ops.push(MountOp::Mkdir {
        path: p("/dev"),
        mode: 0o755,
    });
    ops.push(MountOp::Tmpfs {
        path: p("/dev"),
        mode: 0o755,
        noexec: true,
        size: SCAFFOLD_SIZE,
    });
    for dev in DEVICES {
        let path = Path::new("/dev").join(dev);
        ops.push(MountOp::Touch { path: path.clone() });
        ops.push(MountOp::Bind {
            src: path.clone(),
            path,
            readonly: false,
            device: true,
        });
    }
    ops.push(MountOp::Mkdir {
        path: p("/dev/pts"),
        mode: 0o755,
    });
    ops.push(MountOp::Devpts {
        path: p("/dev/pts"),
    });
    ops.push(MountOp::Symlink {
        target: p("pts/ptmx"),
        path: p("/dev/ptmx"),
    });
    ops.push(MountOp::Mkdir {
        path: p("/dev/shm"),
        mode: 0o1777,
    });
    ops.push(MountOp::Tmpfs {
        path: p("/dev/shm"),
        mode: 0o1777,
        noexec: true,
        size: spec.shm_size,
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(MountOp::Symlink {
            target: p(target),
            path: Path::new("/dev").join(name),
        });
    }
    ops.push(MountOp::Mkdir {
        path: p("/tmp"),
        mode: 0o1777,
    });
    ops.push(MountOp::Tmpfs {
        path: p("/tmp"),
        mode: 0o1777,
        noexec: false,
        size: spec.tmp_size,
    });
    ops.push(MountOp::Mkdir {
        path: p("/sandbox"),
        mode: 0o755,
    });
    ops.push(MountOp::Bind {
        src: spec.workspace.clone(),
        path: p("/sandbox"),
        readonly: false,
        device: false,
    });
    for secret in &facts.etc_secrets {
        ops.push(MountOp::Bind {
            src: p("/dev/null"),
            path: Path::new("/etc").join(secret),
            readonly: true,
            device: true,
        });
    }
    for (dest, src) in &spec.etc_files {
        if touch_etc {
            ops.push(MountOp::Touch { path: dest.clone() });
        }
        ops.push(MountOp::Bind {
            src: src.clone(),
            path: dest.clone(),
            readonly: true,
            device: false,
        });
    }
    for (dest, src) in &spec.own_files {
        ops.push(MountOp::Touch { path: dest.clone() });
        ops.push(MountOp::Bind {
            src: src.clone(),
            path: dest.clone(),
            readonly: true,
            device: false,
        });
    }
    for m in &spec.mounts {
        ops.push(if m.is_dir {
            MountOp::Mkdir {
                path: m.dest.clone(),
                mode: 0o755,
            }
        } else {
            MountOp::Touch {
                path: m.dest.clone(),
            }
        });
        ops.push(MountOp::Bind {
            src: m.src.clone(),
            path: m.dest.clone(),
            readonly: m.readonly,
            device: false,
        });
    }
}

/// Masks and read-only remounts done inside the new root, then `/` itself read-only.
fn after_pivot() -> Vec<MountOp> {
    let mut ops = Vec::new();
    ops.extend(
        PROC_MASK_FILES
            .iter()
            .map(|f| MountOp::MaskFile { path: p(f) }),
    );
    ops.extend(
        PROC_MASK_DIRS
            .iter()
            .map(|d| MountOp::MaskDir { path: p(d) }),
    );
    ops.extend(
        PROC_READ_ONLY
            .iter()
            .map(|d| MountOp::ReadOnly { path: p(d) }),
    );

    ops
}

/// Parse `HOST:DEST[:ro|:rw]`. The host path must exist; DEST must be absolute.
pub fn parse_user_mount(arg: &str) -> Result<UserMount, String> {
    let mut parts = arg.splitn(3, ':');
    let (src, dest) = match (parts.next(), parts.next()) {
        (Some(s), Some(d)) if !s.is_empty() && !d.is_empty() => (s, d),
        _ => return Err(format!("--mount {arg}: expected HOST:DEST[:ro]")),
    };
    let readonly = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(o) => {
            return Err(format!(
                "--mount {arg}: unknown option `{o}` (use ro or rw)"
            ));
        }
    };
    let dest = PathBuf::from(dest);
    if !dest.is_absolute() || dest.components().any(|c| c.as_os_str() == "..") {
        return Err(format!(
            "--mount {arg}: DEST must be an absolute path without `..`"
        ));
    }
    if dest == Path::new("/") || dest.starts_with("/proc") || dest.starts_with("/dev") {
        return Err(format!(
            "--mount {arg}: cannot mount over {}",
            dest.display()
        ));
    }
    let src =
        std::fs::canonicalize(src).map_err(|e| format!("--mount {arg}: host path {src}: {e}"))?;
    let is_dir = src.is_dir();
    Ok(UserMount {
        src,
        dest,
        readonly,
        is_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RootSpec {
        RootSpec {
            root: p("/state/root"),
            workspace: p("/state/ws"),
            etc_files: vec![(p("/etc/passwd"), p("/state/passwd"))],
            own_files: vec![],
            tmp_size: 1 << 30,
            shm_size: 1 << 29,
            mounts: vec![UserMount {
                src: p("/home/u/proj"),
                dest: p("/work"),
                readonly: true,
                is_dir: true,
            }],
        }
    }

    #[test]
    fn host_view_binds_system_dirs_read_only_and_keeps_symlinks() {
        let facts = HostFacts {
            system: vec![("usr".into(), None), ("bin".into(), Some(p("usr/bin")))],
            etc_secrets: vec!["shadow".into()],
        };
        let plan = host_view(&facts, &spec());
        let ops = &plan.before_pivot;
        assert_eq!(
            ops[0],
            MountOp::Tmpfs {
                path: p("/"),
                mode: 0o755,
                noexec: false,
                size: SCAFFOLD_SIZE
            }
        );
        assert_eq!(
            ops[1..4],
            [
                MountOp::Mkdir {
                    path: p("/usr"),
                    mode: 0o755
                },
                MountOp::Bind {
                    src: p("/usr"),
                    path: p("/usr"),
                    readonly: true,
                    device: false
                },
                MountOp::Symlink {
                    target: p("usr/bin"),
                    path: p("/bin")
                },
            ]
        );
        assert!(ops.contains(&MountOp::Bind {
            src: p("/dev/null"),
            path: p("/etc/shadow"),
            readonly: true,
            device: true
        }));
        assert!(ops.contains(&MountOp::Bind {
            src: p("/state/ws"),
            path: p("/sandbox"),
            readonly: false,
            device: false
        }));
        // User mounts come last so they can cover anything before them.
        assert_eq!(
            ops.last(),
            Some(&MountOp::Bind {
                src: p("/home/u/proj"),
                path: p("/work"),
                readonly: true,
                device: false
            })
        );
        // Nothing of the host's home, /root, /var or /run is planned.
        for op in ops {
            if let MountOp::Bind { src, .. } = op {
                for hidden in ["/home/u/.ssh", "/root", "/var", "/run"] {
                    assert!(!src.starts_with(hidden), "{op:?}");
                }
            }
        }
        assert_eq!(
            plan.after_pivot.last(),
            Some(&MountOp::ReadOnly { path: p("/") })
        );
    }

    #[test]
    fn image_view_overlays_layers_top_first_and_keeps_root_writable() {
        let img = ImageLayers {
            layers: vec![p("/s/l/base"), p("/s/l/top")],
            upper: p("/state/upper"),
            work: p("/state/work"),
        };
        let plan = image_view(&img, &spec());
        assert_eq!(
            plan.before_pivot[0],
            MountOp::Overlay {
                lowers: vec![p("/s/l/top"), p("/s/l/base")],
                upper: p("/state/upper"),
                work: p("/state/work"),
                path: p("/"),
            }
        );
        // Generated /etc files get a mount point first (the image may lack them).
        let i = plan
            .before_pivot
            .iter()
            .position(|o| {
                *o == MountOp::Touch {
                    path: p("/etc/passwd"),
                }
            })
            .expect("touch");
        assert!(
            matches!(&plan.before_pivot[i + 1], MountOp::Bind { path, .. } if path == &p("/etc/passwd"))
        );
        assert!(
            !plan
                .after_pivot
                .contains(&MountOp::ReadOnly { path: p("/") })
        );
        // No host /etc secrets to mask in an image.
        assert!(!plan.before_pivot.iter().any(
            |o| matches!(o, MountOp::Bind { src, path, .. } if src == &p("/dev/null") && path.starts_with("/etc"))
        ));
    }

    #[test]
    fn user_mount_parsing() {
        let m = parse_user_mount("/tmp:/data:ro").unwrap();
        assert!(m.readonly && m.is_dir && m.dest == p("/data"));
        assert!(parse_user_mount("/tmp").is_err());
        assert!(parse_user_mount("/tmp:rel").is_err());
        assert!(parse_user_mount("/tmp:/x/../y").is_err());
        assert!(parse_user_mount("/tmp:/proc/x").is_err());
        assert!(parse_user_mount("/tmp:/x:rx").is_err());
        assert!(
            parse_user_mount("/no/such/dir:/x")
                .unwrap_err()
                .contains("No such file")
        );
    }
}
