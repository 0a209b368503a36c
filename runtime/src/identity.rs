//! Who owns a sandbox connection: from the agent-side address, find the socket's inode
//! in the agent namespace's /proc/<init>/net/tcp, then the sandbox process holding it
//! (walking init's descendants), its executable and its ancestors' executables, and the
//! SHA-256 of the executable (cached by inode and mtime).
//!
//! Runs in the supervisor, on the host; reads /proc only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use openshell_proxy::{Identify, Peer};

/// dev, inode, mtime (s, ns), size: one version of a file.
type FileVersion = (u64, u64, i64, i64, u64);

/// Identifies connections of one sandbox.
pub struct SandboxProcs {
    init: u32,
    diag: Option<Mutex<std::os::fd::OwnedFd>>,
    hashes: Mutex<HashMap<FileVersion, String>>,
}

impl SandboxProcs {
    /// For the sandbox whose init has host pid `init`.
    pub fn new(init: u32, diag: Option<std::os::fd::OwnedFd>) -> Self {
        Self {
            init,
            diag: diag.map(Mutex::new),
            hashes: Mutex::new(HashMap::new()),
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

    fn descendants(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![self.init];
        while let Some(p) = todo.pop() {
            out.push(p);
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        out
    }

    /// Every process of the sandbox holding the socket `inode`.
    fn holders(&self, inode: u64) -> Vec<u32> {
        let needle = format!("socket:[{inode}]");
        self.descendants()
            .into_iter()
            .filter(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
                    rd.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|l| l.as_os_str() == needle.as_str())
                    })
                })
            })
            .collect()
    }

    fn parent(pid: u32) -> Option<u32> {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &st[st.rfind(')')? + 2..];
        after.split_whitespace().nth(1)?.parse().ok()
    }

    fn sha256(&self, pid: u32) -> Option<String> {
        let path = format!("/proc/{pid}/exe");
        let meta = std::fs::metadata(&path).ok()?;
        // Rewritten in place within the same second keeps dev/ino/mtime: nanoseconds and
        // size tell the versions apart.
        let key = (
            meta.dev(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.size(),
        );
        if let Some(h) = self
            .hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(h.clone());
        }
        let mut f = std::fs::File::open(&path).ok()?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).ok()?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
        }
        let h: String = sha2::Digest::finalize(hasher)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h.clone());
        Some(h)
    }
}

fn exe(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
}

impl Identify for SandboxProcs {
    fn identify(&self, agent: SocketAddr, remote: SocketAddr) -> Option<Peer> {
        let inode = self.inode_of(agent, remote)?;
        let holders = self.holders(inode);
        let pid = *holders.first()?;
        let mut chain = vec![exe(pid)?];
        // A socket held by several processes (one created it, another inherited it)
        // is attributed to a program only when they all run that same program.
        let mut shared_with: Vec<String> = holders[1..]
            .iter()
            .filter_map(|p| exe(*p))
            .filter(|e| *e != chain[0])
            .collect();
        shared_with.sort();
        shared_with.dedup();
        let mut p = pid;
        while let Some(pp) = Self::parent(p) {
            if pp == self.init || pp <= 1 {
                break;
            }
            if let Some(e) = exe(pp) {
                chain.push(e);
            }
            p = pp;
        }
        Some(Peer {
            pid,
            exe: chain[0].clone(),
            sha256: self.sha256(pid),
            chain,
            shared_with,
        })
    }
}
