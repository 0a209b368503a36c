//! Where openshell runs: a plain Linux host, WSL 2, a Lima VM, or inside a container
//! (Docker, Podman, Kubernetes, LXC, systemd-nspawn). `doctor` names it and tailors
//! what it says to fix: the remedy for a missing kernel feature differs between a
//! laptop's distro, the WSL kernel (`.wslconfig`) and a container (its runtime's
//! options). Detection reads files only (never runs a program), from a root that
//! tests can point elsewhere.

use std::path::Path;

/// The environment detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platform {
    /// A Linux host (or a VM that does not say what it is).
    Linux,
    /// Windows Subsystem for Linux 2 (its kernel release names it).
    Wsl2 {
        /// The kernel release.
        kernel: String,
    },
    /// WSL 1: no Linux kernel at all; sandboxes cannot work.
    Wsl1,
    /// A Lima VM (macOS or Linux host).
    Lima,
    /// Inside a container; `engine` says which when it can be told.
    Container {
        /// docker, podman, kubernetes, lxc, systemd-nspawn, or "unknown".
        engine: String,
    },
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_default()
}

/// Detect the platform, reading files under `root` (`/` for the real one).
pub fn detect(root: &Path) -> Platform {
    let release = read(root, "proc/sys/kernel/osrelease");
    let release = release.trim();
    let lower = release.to_ascii_lowercase();
    if lower.contains("microsoft") {
        // WSL 2 kernels say "-microsoft-standard-WSL2"; WSL 1 fakes "-Microsoft".
        return if lower.contains("wsl2") || lower.contains("microsoft-standard") {
            Platform::Wsl2 {
                kernel: release.to_string(),
            }
        } else {
            Platform::Wsl1
        };
    }
    // Containers before Lima: a container in a Lima VM is still a container.
    let engine = if root.join(".dockerenv").exists() {
        Some("docker")
    } else if root.join("run/.containerenv").exists() {
        Some("podman")
    } else if root
        .join("var/run/secrets/kubernetes.io/serviceaccount")
        .exists()
    {
        Some("kubernetes")
    } else {
        let env = std::fs::read(root.join("proc/1/environ")).unwrap_or_default();
        let container = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"container="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        match container.as_deref() {
            Some("lxc" | "lxc-libvirt") => Some("lxc"),
            Some("systemd-nspawn") => Some("systemd-nspawn"),
            Some("docker") => Some("docker"),
            Some("podman") => Some("podman"),
            Some(_) => Some("unknown"),
            None => None,
        }
    };
    if let Some(engine) = engine {
        return Platform::Container {
            engine: engine.into(),
        };
    }
    if root.join("mnt/lima-cidata").exists() || read(root, "etc/hostname").starts_with("lima-") {
        return Platform::Lima;
    }
    Platform::Linux
}

impl Platform {
    /// One line for `doctor`.
    pub fn describe(&self) -> String {
        match self {
            Self::Linux => "Linux".into(),
            Self::Wsl2 { kernel } => format!("WSL 2 (kernel {kernel})"),
            Self::Wsl1 => "WSL 1: no Linux kernel; sandboxes need WSL 2".into(),
            Self::Lima => "Lima VM".into(),
            Self::Container { engine } => format!("inside a container ({engine})"),
        }
    }

    /// What to do about missing user namespaces here.
    pub fn userns_fix(&self, host_fix: &str) -> String {
        match self {
            Self::Wsl1 => "convert the distribution: wsl --set-version <distro> 2".into(),
            Self::Container { engine } if engine == "kubernetes" => {
                "give the pod user namespaces (hostUsers: false) or run openshell on the node as its runtime (docs/platforms.md)".into()
            }
            Self::Container { engine } => format!(
                "let the container create user namespaces ({engine}: --security-opt seccomp=unconfined --security-opt apparmor=unconfined, or podman --userns=auto), or run openshell on the host; on the host: {host_fix}"
            ),
            _ => host_fix.into(),
        }
    }

    /// What to do about a missing or old Landlock here.
    pub fn landlock_fix(&self, host_fix: &str) -> String {
        match self {
            Self::Wsl2 { .. } => "update the WSL kernel (wsl --update; Linux >= 6.6) and enable the LSM in %UserProfile%\\.wslconfig: [wsl2] kernelCommandLine = lsm=landlock,lockdown,yama,integrity,apparmor,bpf — then wsl --shutdown".into(),
            Self::Lima => format!("use a newer VM image (the template's Debian 12 backports kernel, or Ubuntu 24.04); {host_fix}"),
            Self::Container { .. } => format!("Landlock is the host kernel's: on the host, {host_fix}"),
            _ => host_fix.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(files: &[(&str, &[u8])]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = std::env::temp_dir().join(format!("os-platform-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        for (p, body) in files {
            let f = r.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            if p.ends_with('/') {
                std::fs::create_dir_all(&f).unwrap();
            } else {
                std::fs::write(&f, body).unwrap();
            }
        }
        std::fs::create_dir_all(&r).unwrap();
        r
    }

    /// Files of a fake root, and what it should be detected as.
    type Case = (Vec<(&'static str, &'static [u8])>, Platform);

    #[test]
    fn detects_each_platform() {
        let rel = "proc/sys/kernel/osrelease";
        let cases: Vec<Case> = vec![
            (vec![(rel, b"6.1.0-26-amd64\n")], Platform::Linux),
            (
                vec![(rel, b"5.15.167.4-microsoft-standard-WSL2\n")],
                Platform::Wsl2 {
                    kernel: "5.15.167.4-microsoft-standard-WSL2".into(),
                },
            ),
            (vec![(rel, b"4.4.0-19041-Microsoft\n")], Platform::Wsl1),
            (vec![("mnt/lima-cidata/", b"")], Platform::Lima),
            (vec![("etc/hostname", b"lima-default\n")], Platform::Lima),
            (
                vec![(".dockerenv", b""), ("mnt/lima-cidata/", b"")],
                Platform::Container {
                    engine: "docker".into(),
                },
            ),
            (
                vec![("run/.containerenv", b"")],
                Platform::Container {
                    engine: "podman".into(),
                },
            ),
            (
                vec![("var/run/secrets/kubernetes.io/serviceaccount/", b"")],
                Platform::Container {
                    engine: "kubernetes".into(),
                },
            ),
            (
                vec![("proc/1/environ", b"PATH=/bin\0container=lxc\0")],
                Platform::Container {
                    engine: "lxc".into(),
                },
            ),
        ];
        for (files, want) in cases {
            let r = root(&files);
            assert_eq!(detect(&r), want, "{files:?}");
            let _ = std::fs::remove_dir_all(&r);
        }
    }

    #[test]
    fn fixes_name_the_platform_remedy() {
        let wsl = Platform::Wsl2 { kernel: "x".into() };
        assert!(wsl.landlock_fix("boot").contains(".wslconfig"));
        assert!(
            Platform::Wsl1
                .userns_fix("sysctl")
                .contains("--set-version")
        );
        let docker = Platform::Container {
            engine: "docker".into(),
        };
        assert!(docker.userns_fix("sysctl -w x").contains("sysctl -w x"));
        assert_eq!(Platform::Linux.landlock_fix("boot"), "boot");
    }
}
