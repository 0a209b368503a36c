//! Who owns a sandbox connection: from the agent-side address, find the socket's inode
//! (sock_diag in the agent namespace, or its /proc/net/tcp), then the sandbox process
//! holding it, its executable and its ancestors' executables, and the SHA-256 of the
//! executable (cached by file version).
//!
//! The processes are those of the sandbox's pid namespace, read through the sandbox's
//! own procfs (`proc` resolved inside `/proc/<init>/root` without symlinks, checked to
//! be a procfs whose pid 1 shares init's pid namespace): that takes in processes started by `sandbox
//! exec` (children of a host CLI, not of init) and gives the pids the sandbox itself
//! sees. Runs in the supervisor, on the host; reads /proc only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use openshell_proxy::{Identify, Peer};

/// Largest executable whose SHA-256 is computed (larger ones are refused, not hashed).
const MAX_HASHED: u64 = 1 << 30;

/// File versions whose SHA-256 is kept (the cache is emptied when it is full).
const MAX_CACHED_HASHES: usize = 4096;

/// dev, inode, mtime (s, ns), ctime (s, ns), size: one version of a file. The ctime is
/// what a sandboxed program cannot set back (`utimensat` sets the mtime, and changes the
/// ctime): rewriting an executable in place and restoring its mtime is a new version.
type FileVersion = (u64, u64, i64, i64, i64, i64, u64);

/// Identifies connections of one sandbox.
pub struct SandboxProcs {
    init: u32,
    diag: Option<Mutex<OwnedFd>>,
    /// The sandbox's procfs, opened at the first lookup (init has mounted it by then:
    /// nothing in the sandbox runs before).
    procfs: OnceLock<OwnedFd>,
    /// The process that held the last identified socket: looked at first.
    last: AtomicU32,
    hashes: Mutex<HashMap<FileVersion, String>>,
    /// Per process, the descriptors (sorted) that held no socket at the last look.
    quiet: Mutex<HashMap<u32, Vec<u32>>>,
}

/// Processes whose quiet descriptors are remembered (the map is emptied when full).
const MAX_QUIET_PIDS: usize = 1024;
/// Quiet descriptors remembered per process.
const MAX_QUIET_FDS: usize = 256;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;

impl SandboxProcs {
    /// For the sandbox whose init has host pid `init`.
    pub fn new(init: u32, diag: Option<OwnedFd>) -> Self {
        Self {
            init,
            diag: diag.map(Mutex::new),
            procfs: OnceLock::new(),
            last: AtomicU32::new(0),
            hashes: Mutex::new(HashMap::new()),
            quiet: Mutex::new(HashMap::new()),
        }
    }

    fn inode_of(&self, agent: SocketAddr, remote: SocketAddr) -> Option<u64> {
        if let (Some(d), SocketAddr::V4(a), SocketAddr::V4(r)) = (&self.diag, agent, remote) {
            let fd = d.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = openshell_netns::netlink::socket_inode(&fd, a, r) {
                return Some(i);
            }
        }
        // Without sock_diag: scan the agent namespace's TCP table.
        let IpAddr::V4(ip) = agent.ip() else {
            return None;
        };
        // /proc/net/tcp prints the address as the raw 32-bit value in host order.
        let want = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(ip.octets()),
            agent.port()
        );
        let table = std::fs::read_to_string(format!("/proc/{}/net/tcp", self.init)).ok()?;
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == want).then(|| f[9].parse().ok())?
        })
    }

    /// The sandbox's procfs; only a real procfs of the sandbox's own pid namespace is
    /// accepted (fail closed otherwise). `proc` is resolved inside init's root with no
    /// symlink allowed (an image's `/proc -> /proc` would otherwise lead to the host's
    /// procfs, whose processes would count as the sandbox's), and its pid 1 must be in
    /// the same pid namespace as init.
    fn procfs(&self) -> Option<&OwnedFd> {
        if let Some(fd) = self.procfs.get() {
            return Some(fd);
        }
        let path = format!("/proc/{}/root", self.init);
        let open = || {
            nix::fcntl::open(
                path.as_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        // Init's memory is briefly not dumpable while it starts the command (its child
        // shares it until the exec; core/vfork.rs), which denies a rootless supervisor
        // /proc/<init>/root: a connection the command opens at once may come in that
        // window. Wait it out (a few ms at most) rather than refuse the connection.
        let mut root = open();
        for _ in 0..50 {
            if !matches!(
                root,
                Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM)
            ) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            root = open();
        }
        let root: OwnedFd = root.ok()?;
        let fd = openshell_fs::inroot::open_with(
            std::os::fd::AsFd::as_fd(&root),
            std::path::Path::new("/proc"),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
        .ok()?;
        let fs = nix::sys::statfs::fstatfs(&fd).ok()?;
        if fs.filesystem_type().0 as i64 != PROC_SUPER_MAGIC {
            return None;
        }
        if !Self::same_pid_ns(&fd, self.init) {
            return None;
        }
        Some(self.procfs.get_or_init(|| fd))
    }

    /// Is pid 1 of `procfs` in init's pid namespace (so this procfs is the sandbox's)?
    fn same_pid_ns(procfs: &OwnedFd, init: u32) -> bool {
        let theirs = nix::sys::stat::fstatat(procfs, "1/ns/pid", nix::fcntl::AtFlags::empty());
        let ours = nix::sys::stat::stat(format!("/proc/{init}/ns/pid").as_str());
        matches!((theirs, ours), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    /// The sandbox's processes (pids in its namespace), init (1) left out: init holds
    /// no socket of the sandbox's programs and runs none of them.
    fn pids(procfs: &OwnedFd) -> Vec<u32> {
        let mut out = Vec::new();
        each_entry(procfs, ".", |name| {
            if let Some(p) = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|p| *p > 1)
            {
                out.push(p);
            }
        });
        out
    }

    /// Whether `pid` holds the socket `needle` (`socket:[inode]`). The fd table is read
    /// through one directory fd: each readlinkat walks one path component. Descriptors
    /// that held no socket at the last look (a program's files, pipes, event fds:
    /// mostly there for its whole life) are looked at last, so the lookup of a new
    /// connection usually reads a few links, not the whole table; the order changes
    /// only how soon the answer is found, never the answer.
    fn holds(&self, procfs: &OwnedFd, pid: u32, needle: &[u8]) -> bool {
        let Ok(fd) = nix::fcntl::openat(
            procfs,
            format!("{pid}/fd").as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let Ok(mut dir) = rustix::fs::Dir::new(fd) else {
            return false;
        };
        let mut fds: Vec<u32> = Vec::new();
        while let Some(Ok(e)) = dir.read() {
            if let Some(fd) = std::str::from_utf8(e.file_name().to_bytes())
                .ok()
                .and_then(|n| n.parse().ok())
            {
                fds.push(fd);
            }
        }
        // The entries are read; the descriptor is used for the links only.
        let Ok(dfd) = dir.fd() else {
            return false;
        };
        let quiet: Vec<u32> = self
            .quiet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned()
            .unwrap_or_default();
        // Stable: the likely ones first, each group in table order.
        fds.sort_by_key(|fd| quiet.binary_search(fd).is_ok());
        let (mut now_quiet, mut now_socket) = (Vec::new(), Vec::new());
        let mut found = false;
        for fd in fds {
            let mut buf = [0u8; 64];
            let Ok(n) = rustix::fs::readlinkat_raw(dfd, fd.to_string().as_str(), &mut buf[..])
            else {
                continue;
            };
            let target = &buf[..n.min(buf.len())];
            if target == needle {
                found = true;
                break;
            }
            if target.starts_with(b"socket:") {
                now_socket.push(fd);
            } else {
                now_quiet.push(fd);
            }
        }
        let mut all = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_QUIET_PIDS && !all.contains_key(&pid) {
            all.clear();
        }
        let entry = all.entry(pid).or_default();
        // What was read this time replaces what was known of those descriptors; the
        // ones not read keep their last state.
        for fd in &now_socket {
            if let Ok(i) = entry.binary_search(fd) {
                entry.remove(i);
            }
        }
        for fd in now_quiet {
            if let Err(i) = entry.binary_search(&fd) {
                if entry.len() < MAX_QUIET_FDS {
                    entry.insert(i, fd);
                }
            }
        }
        found
    }

    fn parent(procfs: &OwnedFd, pid: u32) -> Option<u32> {
        let st = read_at(procfs, &format!("{pid}/stat"))?;
        let after = &st[st.rfind(')')? + 2..];
        after.split_whitespace().nth(1)?.parse().ok()
    }

    fn sha256(&self, procfs: &OwnedFd, pid: u32) -> Result<String, String> {
        let exe = format!("{pid}/exe");
        let unreadable =
            || format!("could not read the executable of pid {pid} to check its sha256");
        // Rewritten in place within the same second keeps dev/ino/mtime: nanoseconds and
        // size tell the versions apart.
        let key = |st: &nix::sys::stat::FileStat| -> FileVersion {
            (
                st.st_dev,
                st.st_ino,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ctime,
                st.st_ctime_nsec,
                st.st_size as u64,
            )
        };
        let cached = |k: &FileVersion| {
            self.hashes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(k)
                .cloned()
        };
        // Known version: one stat through the link, no open.
        let st = nix::sys::stat::fstatat(procfs, exe.as_str(), nix::fcntl::AtFlags::empty())
            .map_err(|_| unreadable())?;
        if let Some(h) = cached(&key(&st)) {
            return Ok(h);
        }
        // New: hash what is opened, filed under that file's own version.
        let fd = nix::fcntl::openat(
            procfs,
            exe.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|_| unreadable())?;
        let st = nix::sys::stat::fstat(&fd).map_err(|_| unreadable())?;
        // A sandboxed program controls its executable: a huge (or sparse) file must not
        // keep the proxy hashing. Checked before reading and again while reading (the
        // file may grow).
        let too_big = || {
            format!(
                "the executable of pid {pid} is larger than {} MiB and is not hashed",
                MAX_HASHED >> 20
            )
        };
        if st.st_size as u64 > MAX_HASHED {
            return Err(too_big());
        }
        let k = key(&st);
        let mut f = std::io::Read::take(std::fs::File::from(fd), MAX_HASHED + 1);
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(|_| unreadable())?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_HASHED {
                return Err(too_big());
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
        }
        let h: String = sha2::Digest::finalize(hasher)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a sandbox that keeps making new executables (or touching one) must
        // not grow the supervisor's memory; dropping the cache only costs re-hashing.
        if hashes.len() >= MAX_CACHED_HASHES && !hashes.contains_key(&k) {
            hashes.clear();
        }
        hashes.insert(k, h.clone());
        Ok(h)
    }
}

/// A small /proc file (`stat`, `cmdline`): one read of up to 8 KiB, which procfs fills
/// in one call (no size probe, no second read for the end). A file that fills it is
/// taken as unreadable (a `cmdline` that long names no script we would trust).
fn read_at(procfs: &OwnedFd, path: &str) -> Option<String> {
    let fd = nix::fcntl::openat(
        procfs,
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 8192];
    let n = nix::unistd::read(&fd, &mut buf).ok()?;
    if n == buf.len() {
        return None;
    }
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Calls `f` with each entry name of the directory `path` under `at` (`.` and `..`
/// left out). getdents64 through rustix on a descriptor of our own: no `fdopendir`
/// checks or rewinding around it.
fn each_entry(at: &OwnedFd, path: &str, mut f: impl FnMut(&[u8])) {
    let Ok(fd) = nix::fcntl::openat(
        at,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(mut dir) = rustix::fs::Dir::new(fd) else {
        return;
    };
    while let Some(Ok(e)) = dir.read() {
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            f(name);
        }
    }
}

impl SandboxProcs {
    /// The script `pid` (an interpreter, `exe`) runs: its argv[1], when that is an
    /// absolute path of a file inside the sandbox starting with `#!` naming this
    /// interpreter (directly or through `/usr/bin/env NAME`). Returns the path as given
    /// and what it resolves to. A process can rewrite its own argv, like it can load
    /// code with LD_PRELOAD: this is identity for policies, not a security boundary
    /// (docs/security.md).
    fn script(&self, procfs: &OwnedFd, pid: u32, exe: &str) -> Vec<String> {
        let Some(cmdline) = read_at(procfs, &format!("{pid}/cmdline")) else {
            return vec![];
        };
        let Some(arg1) = cmdline.split('\0').nth(1).filter(|a| a.starts_with('/')) else {
            return vec![];
        };
        let Some(real) = self.resolve(arg1) else {
            return vec![];
        };
        let Ok(root) = nix::fcntl::open(
            format!("/proc/{}/root", self.init).as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return vec![];
        };
        let Ok(fd) = openshell_fs::inroot::open_with(
            std::os::fd::AsFd::as_fd(&root),
            std::path::Path::new(&real),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW,
            nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS,
        ) else {
            return vec![];
        };
        if !nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
            return vec![];
        }
        let mut head = [0u8; 256];
        let n = nix::unistd::read(&fd, &mut head).unwrap_or(0);
        let line = String::from_utf8_lossy(&head[..n]);
        let Some(shebang) = line.strip_prefix("#!").and_then(|l| l.lines().next()) else {
            return vec![];
        };
        let mut words = shebang.split_whitespace();
        let interp = words.next().unwrap_or("");
        let base = exe.rsplit('/').next().unwrap_or(exe);
        let ok = if interp.ends_with("/env") {
            words
                .find(|w| !w.starts_with('-'))
                .is_some_and(|name| base == name || base.starts_with(&format!("{name}.")))
        } else {
            self.resolve(interp).as_deref() == Some(exe)
        };
        if !ok {
            return vec![];
        }
        let mut out = vec![arg1.to_string()];
        if real != arg1 {
            out.push(real);
        }
        out
    }
}

fn exe(procfs: &OwnedFd, pid: u32) -> Option<String> {
    nix::fcntl::readlinkat(procfs, format!("{pid}/exe").as_str())
        .ok()
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
}

impl Identify for SandboxProcs {
    fn resolve(&self, path: &str) -> Option<String> {
        let root: OwnedFd = nix::fcntl::open(
            format!("/proc/{}/root", self.init).as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        openshell_fs::inroot::realpath(std::os::fd::AsFd::as_fd(&root), std::path::Path::new(path))
            .map(|p| p.display().to_string())
    }

    fn identify(&self, agent: SocketAddr, remote: SocketAddr) -> Option<Peer> {
        let inode = self.inode_of(agent, remote)?;
        let procfs = self.procfs()?;
        let needle = format!("socket:[{inode}]");
        let mut pids = Self::pids(procfs);
        {
            // What is remembered of processes that are gone goes once it adds up.
            let mut quiet = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
            if quiet.len() > pids.len() + 32 {
                let alive: std::collections::HashSet<u32> = pids.iter().copied().collect();
                quiet.retain(|p, _| alive.contains(p));
            }
        }
        // The last holder first: a client opening many connections is found at once.
        let last = self.last.load(Ordering::Relaxed);
        if let Some(i) = pids.iter().position(|p| *p == last) {
            pids.swap(0, i);
        }
        let i = pids
            .iter()
            .position(|p| self.holds(procfs, *p, needle.as_bytes()))?;
        let pid = pids.swap_remove(i);
        self.last.store(pid, Ordering::Relaxed);
        let mut chain = vec![exe(procfs, pid)?];
        // A socket held by several processes (one created it, another inherited it)
        // is attributed to a program only when they all run that same program: the
        // fd tables of processes running the holder's program need no look.
        // Each process's executable is read once per lookup (an ancestor is usually
        // one of the processes looked at here).
        let mut exes: HashMap<u32, Option<String>> = HashMap::new();
        let mut shared_with: Vec<String> = pids
            .iter()
            .filter_map(|p| {
                let e = exe(procfs, *p);
                exes.insert(*p, e.clone());
                let e = e.unwrap_or_else(|| "?".into());
                (e != chain[0] && self.holds(procfs, *p, needle.as_bytes())).then_some(e)
            })
            .collect();
        shared_with.sort();
        shared_with.dedup();
        let mut p = pid;
        while let Some(pp) = Self::parent(procfs, p) {
            if pp <= 1 {
                break;
            }
            let e = match exes.remove(&pp) {
                Some(known) => known,
                None => exe(procfs, pp),
            };
            if let Some(e) = e {
                // An ancestor running a script (`node /usr/bin/codex`, shebang
                // launchers) counts as that script too: a policy may name the launcher.
                let script = self.script(procfs, pp, &e);
                chain.push(e);
                chain.extend(script);
            }
            p = pp;
        }
        Some(Peer {
            pid,
            exe: chain[0].clone(),
            sha256: self.sha256(procfs, pid),
            chain,
            shared_with,
        })
    }
}
