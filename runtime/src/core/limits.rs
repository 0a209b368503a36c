//! A sandbox's resource limits: memory, CPUs, processes, and the sizes of its tmpfs.
//!
//! Every sandbox gets limits (defaults protect the host; `--memory`, `--cpus`, `--pids`
//! change them, in docker's `4g` and Kubernetes' `4Gi` / `500m` spellings). Where they
//! are enforced depends on the host (docs/security.md, "Resources"):
//! - a cgroup of the sandbox's own, when openshell runs as root: cgroup v2 under
//!   `<cgroup2>/openshell/openshell-NAME-PID`, or the v1 `memory`, `pids` and `cpu` hierarchies under
//!   this process's own cgroup there (hybrid hosts). Memory, processes and CPU time of
//!   the whole sandbox are bounded; an out-of-memory kill stays inside.
//! - otherwise (rootless without a delegated cgroup) rlimits on the sandbox's
//!   processes: `RLIMIT_NPROC` (counted per user namespace, so only the sandbox's own
//!   processes count) and `RLIMIT_DATA` (memory per process, not in total); CPUs are
//!   not limited, and `--cpus` says so.
//!
//! The tmpfs sizes (`/tmp` half the memory limit, `/dev/shm` a quarter) apply always.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the user asked for (`None`: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitRequest {
    /// Bytes.
    pub memory: Option<u64>,
    /// Thousandths of a CPU.
    pub cpus_milli: Option<u32>,
    /// Processes (and threads).
    pub pids: Option<u64>,
}

/// Limits as applied, recorded with the sandbox (`sandbox explain`, `exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Memory limit in bytes.
    pub memory: u64,
    /// CPU limit in thousandths of a CPU, if any.
    pub cpus_milli: Option<u32>,
    /// Process limit.
    pub pids: u64,
    /// `/tmp` size in bytes.
    pub tmp: u64,
    /// `/dev/shm` size in bytes.
    pub shm: u64,
    /// `cgroup v2`, `cgroup v1` or `rlimits`.
    pub how: String,
    /// The sandbox's cgroup directories (empty with rlimits).
    pub cgroups: Vec<PathBuf>,
    /// What could not be applied, and why.
    pub notes: Vec<String>,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Smallest memory limit accepted (a shell and a dynamic loader need a few MiB).
const MIN_MEMORY: u64 = 16 * MIB;
/// Default memory: half the host's, at most this.
const DEFAULT_MEMORY_CAP: u64 = 8 * GIB;
/// Default process limit.
pub const DEFAULT_PIDS: u64 = 4096;

/// `4g`, `4G`, `4Gi`, `4GiB`, `512m`, `1.5G`, `1073741824` (bytes). k/m/g/t are
/// binary like docker's; `Ki/Mi/Gi/Ti` are Kubernetes' (the same values).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kb" | "kib" => 1 << 10,
        "m" | "mi" | "mb" | "mib" => MIB,
        "g" | "gi" | "gb" | "gib" => GIB,
        "t" | "ti" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "--memory {s:?}: unknown unit {unit:?} (use e.g. 512m, 4g or 4Gi)"
            ));
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--memory {s:?}: not a size (use e.g. 512m, 4g or 4Gi)"))?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("--memory {s:?}: too large"));
    }
    let bytes = bytes as u64;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "--memory {s:?}: at least {} MiB is needed to run anything",
            MIN_MEMORY / MIB
        ));
    }
    Ok(bytes)
}

/// `2`, `1.5`, `500m` (Kubernetes' millicpus).
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let milli = match t.strip_suffix('m') {
        Some(m) => m.parse::<u32>().ok(),
        None => t
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 4096.0)
            .map(|v| (v * 1000.0).round() as u32),
    };
    match milli {
        Some(m) if (10..=4_096_000).contains(&m) => Ok(m),
        Some(_) => Err(format!(
            "--cpus {s:?}: out of range (from 10m, a hundredth of a CPU, to 4096)"
        )),
        None => Err(format!(
            "--cpus {s:?}: not a number of CPUs (use e.g. 2, 1.5 or 500m)"
        )),
    }
}

/// A process count, 16 ..= 4194304.
pub fn parse_pids(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (16..=4_194_304).contains(&n) => Ok(n),
        Ok(_) => Err(format!("--pids {s:?}: out of range (16 to 4194304)")),
        Err(_) => Err(format!("--pids {s:?}: not a number")),
    }
}

/// The host's memory (MemTotal), if readable.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The request with defaults filled in; nothing applied yet.
pub fn resolve(req: &LimitRequest) -> Applied {
    let memory = req.memory.unwrap_or_else(|| {
        host_memory()
            .map(|m| (m / 2).clamp(MIN_MEMORY, DEFAULT_MEMORY_CAP))
            .unwrap_or(4 * GIB)
    });
    Applied {
        memory,
        cpus_milli: req.cpus_milli,
        pids: req.pids.unwrap_or(DEFAULT_PIDS),
        tmp: (memory / 2).max(MIB),
        shm: (memory / 4).max(MIB),
        how: "rlimits".into(),
        cgroups: Vec::new(),
        notes: Vec::new(),
    }
}

/// The sandbox's cgroup, removed when dropped (after its processes are gone).
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Make the cgroup of sandbox `name` with `limits`, or say why there is none (then
    /// `limits` records rlimits and the reason).
    pub fn create(name: &str, limits: &mut Applied) -> Option<Cgroup> {
        if !nix::unistd::geteuid().is_root() {
            limits.notes.push(
                "no cgroup: rootless without a delegated cgroup; memory is limited per process (RLIMIT_DATA), processes by RLIMIT_NPROC".into(),
            );
            return None;
        }
        let made = match v2(name, limits) {
            Ok(cg) => Ok((cg, "cgroup v2")),
            Err(e2) => v1(name, limits)
                .map(|cg| (cg, "cgroup v1"))
                .map_err(|e1| (e2, e1)),
        };
        match made {
            Ok((cg, how)) => {
                limits.how = how.into();
                limits.cgroups = cg.dirs.clone();
                Some(cg)
            }
            Err((e2, e1)) => {
                limits
                    .notes
                    .push(format!("no cgroup (v2: {e2}; v1: {e1}); rlimits instead"));
                None
            }
        }
    }

    /// Move `pid` (init, before it starts anything) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), String> {
        join(&self.dirs, pid)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            // The pid namespace is gone, but its last processes may still be exiting.
            for _ in 0..100 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Move `pid` into every directory of a sandbox's cgroup (`sandbox exec` joins so).
pub fn join(dirs: &[PathBuf], pid: i32) -> Result<(), String> {
    for d in dirs {
        let f = d.join("cgroup.procs");
        std::fs::write(&f, pid.to_string())
            .map_err(|e| format!("join the sandbox's cgroup {}: {e}", f.display()))?;
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|e| format!("{}: {e}", p.display()))
}

fn is_fs(path: &Path, magic: nix::sys::statfs::FsType) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == magic)
}

const CGROUP2_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::CGROUP2_SUPER_MAGIC;
const CGROUP_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::CGROUP_SUPER_MAGIC;

/// `<cgroup2 mount>/openshell/openshell-NAME-PID` with memory, pids and cpu.
fn v2(name: &str, limits: &Applied) -> Result<Cgroup, String> {
    let root = [
        Path::new("/sys/fs/cgroup"),
        Path::new("/sys/fs/cgroup/unified"),
    ]
    .into_iter()
    .find(|p| is_fs(p, CGROUP2_MAGIC))
    .ok_or("no cgroup2 mount")?;
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|x| x == c);
    if !(has("memory") && has("pids")) {
        return Err(format!(
            "{} has no memory and pids controllers (they are bound to cgroup v1)",
            root.display()
        ));
    }
    let cpu = has("cpu");
    let ctl = if cpu {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    };
    write(root, "cgroup.subtree_control", ctl)?;
    let base = root.join("openshell");
    mkdir(&base)?;
    write(&base, "cgroup.subtree_control", ctl)?;
    let dir = base.join(leaf(name));
    mkdir_new(&dir)?;
    let cg = Cgroup {
        dirs: vec![dir.clone()],
    };
    write(&dir, "memory.max", &limits.memory.to_string())?;
    let _ = write(&dir, "memory.swap.max", "0");
    let _ = write(&dir, "memory.oom.group", "0");
    write(&dir, "pids.max", &limits.pids.to_string())?;
    if let Some(m) = limits.cpus_milli {
        if !cpu {
            return Err("no cpu controller for --cpus".into());
        }
        write(&dir, "cpu.max", &format!("{} 100000", u64::from(m) * 100))?;
    }
    Ok(cg)
}

/// This process's own cgroup in a v1 hierarchy.
fn own_v1(controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

/// `<hierarchy>/<our cgroup>/openshell-NAME-PID` in the v1 memory, pids and cpu
/// hierarchies.
fn v1(name: &str, limits: &Applied) -> Result<Cgroup, String> {
    let mut cg = Cgroup { dirs: Vec::new() };
    let mut dir_of = |ctrl: &str| -> Result<PathBuf, String> {
        let mount = Path::new("/sys/fs/cgroup").join(ctrl);
        if !is_fs(&mount, CGROUP_MAGIC) {
            return Err(format!("{} is not a cgroup v1 hierarchy", mount.display()));
        }
        let own = own_v1(ctrl).ok_or_else(|| format!("not in a v1 {ctrl} cgroup"))?;
        let dir = mount.join(own).join(leaf(name));
        mkdir_new(&dir)?;
        cg.dirs.push(dir.clone());
        Ok(dir)
    };
    let mem = dir_of("memory")?;
    write(&mem, "memory.limit_in_bytes", &limits.memory.to_string())?;
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        let _ = write(
            &mem,
            "memory.memsw.limit_in_bytes",
            &limits.memory.to_string(),
        );
    }
    let pids = dir_of("pids")?;
    write(&pids, "pids.max", &limits.pids.to_string())?;
    if let Some(m) = limits.cpus_milli {
        let cpu = dir_of("cpu")?;
        write(&cpu, "cpu.cfs_period_us", "100000")?;
        write(&cpu, "cpu.cfs_quota_us", &(u64::from(m) * 100).to_string())?;
    }
    Ok(cg)
}

/// The cgroup of one run of sandbox `name`: sandboxes of other state dirs (or users)
/// may share a name, never a cgroup.
fn leaf(name: &str) -> String {
    format!("openshell-{name}-{}", std::process::id())
}

/// A cgroup directory of our own: one left by an earlier process of the same pid is
/// removed first (it is empty, or rmdir fails and so do we).
fn mkdir_new(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(|e| format!("stale {}: {e}", dir.display()))?;
    }
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn mkdir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Human form of a size.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB && (bytes % GIB) * 10 % GIB == 0 {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling() {
        for (s, v) in [
            ("4g", 4 * GIB),
            ("4G", 4 * GIB),
            ("4Gi", 4 * GIB),
            ("4GiB", 4 * GIB),
            ("512m", 512 * MIB),
            ("512Mi", 512 * MIB),
            ("1.5G", 3 * GIB / 2),
            ("67108864", 64 * MIB),
        ] {
            assert_eq!(parse_memory(s), Ok(v), "{s}");
        }
        for bad in ["", "g", "4x", "-1g", "1k", "1e30t", "4 g b", "nan"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpus_and_pids() {
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert_eq!(parse_cpus("500m"), Ok(500));
        for bad in ["0", "0m", "5m", "-1", "x", "1e9", "inf", "NaN"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_pids("1024"), Ok(1024));
        for bad in ["0", "15", "-5", "99999999999", "many"] {
            assert!(parse_pids(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_protect_the_host() {
        let a = resolve(&LimitRequest::default());
        assert!(a.memory >= MIN_MEMORY && a.memory <= DEFAULT_MEMORY_CAP);
        assert_eq!(a.pids, DEFAULT_PIDS);
        assert_eq!((a.tmp, a.shm), (a.memory / 2, a.memory / 4));
        let b = resolve(&LimitRequest {
            memory: Some(GIB),
            ..Default::default()
        });
        assert_eq!((b.memory, b.tmp, b.shm), (GIB, GIB / 2, GIB / 4));
        assert_eq!(human(4 * GIB), "4.0 GiB");
        assert_eq!(human(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human(256 * MIB), "256 MiB");
        assert_eq!(human(GIB + MIB), "1025 MiB");
    }
}
