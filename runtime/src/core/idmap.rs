//! User-namespace id maps: planned as plain data, then written by the supervisor.
//!
//! Three layouts, chosen by who runs openshell and what the host allows:
//! - **root**: inside 0 is host root (only init ever runs as it), every other inside id
//!   maps into an unprivileged range (root's `/etc/subuid` entry, else
//!   [`ROOT_FALLBACK_BASE`]), so the sandbox user is never a host user.
//! - **rootless with subordinate ids** (`/etc/subuid` + `newuidmap`): the sandbox user is
//!   the invoking user ("keep-id", so the workspace stays yours) and the other inside ids
//!   come from the subordinate range.
//! - **rootless, single id**: only the sandbox user exists inside; it is you.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Base of the inside→outside range used for root when it has no `/etc/subuid` entry.
pub const ROOT_FALLBACK_BASE: u32 = 2_000_000_000;
/// How many ids a ranged mapping covers.
pub const RANGE: u32 = 65536;

/// One `inside outside count` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// How maps get written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Write /proc/PID/{uid,gid}_map ourselves (root, or one id of our own).
    Direct {
        /// Write `deny` to /proc/PID/setgroups first (required for unprivileged).
        deny_setgroups: bool,
    },
    /// Run the setuid helpers newuidmap/newgidmap.
    Helper,
}

/// The complete id layout of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPlan {
    /// uid_map lines.
    pub uid_map: Vec<Extent>,
    /// gid_map lines.
    pub gid_map: Vec<Extent>,
    /// How to write them.
    pub writer: Writer,
    /// The layout.
    pub mode: IdMode,
    /// Subordinate ids: the per-user namespace a sandbox's own can be made in, so that
    /// its maps need no setuid helper (`userns.rs`): `0 → you, 1.. → your range`.
    pub holder: Option<HolderLayout>,
}

/// The maps of the per-user holder namespace (holder id → host id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderLayout {
    /// uid_map lines.
    pub uid_map: Vec<Extent>,
    /// gid_map lines.
    pub gid_map: Vec<Extent>,
}

/// How a sandbox's ids map to the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdMode {
    /// openshell runs as root: a range of unprivileged host ids.
    Root,
    /// Rootless with /etc/subuid and newuidmap: several ids inside.
    Subids,
    /// Rootless without subordinate ids: only the sandbox user exists inside.
    #[default]
    Single,
}

impl std::fmt::Display for IdMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Root => "root",
            Self::Subids => "subids",
            Self::Single => "single",
        })
    }
}

impl IdPlan {
    /// Whether processes inside may call setgroups(2).
    pub fn setgroups_allowed(&self) -> bool {
        !matches!(
            self.writer,
            Writer::Direct {
                deny_setgroups: true
            }
        )
    }

    /// Refuse ids a sandboxed process must never run as: 0, ids the kernel treats
    /// specially (65535, `(u32)-1`), and ids this plan does not map.
    pub fn check_identity(&self, uid: u32, gid: u32) -> Result<(), String> {
        for (what, id, mapped) in [
            ("uid", uid, self.outside_uid(uid).is_some()),
            ("gid", gid, self.outside_gid(gid).is_some()),
        ] {
            if id == 0 || id > openshell_policy::MAX_ID {
                return Err(format!(
                    "{what} {id} is not allowed: sandboxed processes run as 1..={}",
                    openshell_policy::MAX_ID
                ));
            }
            if !mapped {
                return Err(format!(
                    "{what} {id} is not mapped in the sandbox's user namespace ({} mode): choose an id the map covers",
                    self.mode
                ));
            }
        }
        Ok(())
    }

    /// The host id an inside id maps to, if mapped.
    pub fn outside_uid(&self, inside: u32) -> Option<u32> {
        lookup(&self.uid_map, inside)
    }

    /// The host gid an inside gid maps to, if mapped.
    pub fn outside_gid(&self, inside: u32) -> Option<u32> {
        lookup(&self.gid_map, inside)
    }
}

fn lookup(map: &[Extent], inside: u32) -> Option<u32> {
    map.iter()
        .find(|e| inside >= e.inside && inside - e.inside < e.count)
        .map(|e| e.outside + (inside - e.inside))
}

/// Inputs of [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdFacts {
    /// Our effective uid/gid on the host.
    pub euid: u32,
    /// Our effective gid on the host.
    pub egid: u32,
    /// Subordinate uid range (start, count) from /etc/subuid.
    pub subuid: Option<(u32, u32)>,
    /// Subordinate gid range from /etc/subgid.
    pub subgid: Option<(u32, u32)>,
    /// newuidmap and newgidmap are installed.
    pub helpers: bool,
}

/// Plan the maps for a sandbox whose processes run as inside `uid`:`gid`.
pub fn plan(facts: &IdFacts, uid: u32, gid: u32) -> IdPlan {
    if facts.euid == 0 {
        let ub = facts.subuid.map_or(ROOT_FALLBACK_BASE, |r| r.0);
        let gb = facts.subgid.map_or(ROOT_FALLBACK_BASE, |r| r.0);
        let ranged = |base| {
            vec![
                Extent {
                    inside: 0,
                    outside: 0,
                    count: 1,
                },
                Extent {
                    inside: 1,
                    outside: base + 1,
                    count: RANGE - 1,
                },
            ]
        };
        return IdPlan {
            uid_map: ranged(ub),
            gid_map: ranged(gb),
            writer: Writer::Direct {
                deny_setgroups: false,
            },
            mode: IdMode::Root,
            holder: None,
        };
    }
    match (facts.helpers, facts.subuid, facts.subgid) {
        (true, Some(su), Some(sg)) if su.1 > 0 && sg.1 > 0 => IdPlan {
            uid_map: keep_id(uid, facts.euid, su),
            gid_map: keep_id(gid, facts.egid, sg),
            writer: Writer::Helper,
            mode: IdMode::Subids,
            holder: Some(HolderLayout {
                uid_map: holder_map(facts.euid, su),
                gid_map: holder_map(facts.egid, sg),
            }),
        },
        _ => IdPlan {
            uid_map: vec![Extent {
                inside: uid,
                outside: facts.euid,
                count: 1,
            }],
            gid_map: vec![Extent {
                inside: gid,
                outside: facts.egid,
                count: 1,
            }],
            writer: Writer::Direct {
                deny_setgroups: true,
            },
            mode: IdMode::Single,
            holder: None,
        },
    }
}

/// The holder's layout: 0 is us, 1.. the whole subordinate range.
fn holder_map(host: u32, (start, count): (u32, u32)) -> Vec<Extent> {
    vec![
        Extent {
            inside: 0,
            outside: host,
            count: 1,
        },
        Extent {
            inside: 1,
            outside: start,
            count,
        },
    ]
}

/// `map` (inside → host) re-expressed in the ids of a namespace mapped by `parent`
/// (parent id → host): None when a host id of `map` is not in `parent`.
pub fn within(map: &[Extent], parent: &[Extent]) -> Option<Vec<Extent>> {
    map.iter()
        .map(|e| {
            let end = u64::from(e.outside) + u64::from(e.count);
            let p = parent.iter().find(|p| {
                p.outside <= e.outside && end <= u64::from(p.outside) + u64::from(p.count)
            })?;
            Some(Extent {
                inside: e.inside,
                outside: p.inside + (e.outside - p.outside),
                count: e.count,
            })
        })
        .collect()
}

/// Parse a /proc/PID/uid_map-style text (`inside outside count` per line).
pub fn parse_map(text: &str) -> Option<Vec<Extent>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u32>);
            let e = Extent {
                inside: f.next()?.ok()?,
                outside: f.next()?.ok()?,
                count: f.next()?.ok()?,
            };
            f.next().is_none().then_some(e)
        })
        .collect()
}

/// `own` inside is us; the ids around it come from the subordinate range.
fn keep_id(own: u32, host: u32, (start, count): (u32, u32)) -> Vec<Extent> {
    let mut map = vec![Extent {
        inside: own,
        outside: host,
        count: 1,
    }];
    let below = own.min(count);
    if below > 0 {
        map.push(Extent {
            inside: 0,
            outside: start,
            count: below,
        });
    }
    let above = (count - below).min(RANGE.saturating_sub(own + 1));
    if above > 0 {
        map.push(Extent {
            inside: own + 1,
            outside: start + below,
            count: above,
        });
    }
    map
}

/// Find the first range for `user` (name) or `uid` in an /etc/subuid-style file.
pub fn parse_subid(content: &str, user: &str, uid: u32) -> Option<(u32, u32)> {
    content.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who.parse::<u32>().ok() != Some(uid) {
            return None;
        }
        Some((start.parse().ok()?, count.parse().ok()?))
    })
}

/// Gather [`IdFacts`] for the current process. `OPENSHELL_NO_SUBIDS=1` forces the
/// single-id layout (tests, and users who want it).
pub fn facts() -> IdFacts {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let name = nix::unistd::User::from_uid(euid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let no_sub = std::env::var_os("OPENSHELL_NO_SUBIDS").is_some_and(|v| v == "1");
    let read = |f: &str| {
        if no_sub {
            return None;
        }
        std::fs::read_to_string(f)
            .ok()
            .and_then(|c| parse_subid(&c, &name, euid))
    };
    IdFacts {
        euid,
        egid,
        subuid: read("/etc/subuid"),
        subgid: read("/etc/subgid"),
        helpers: which("newuidmap") && which("newgidmap"),
    }
}

/// Is `cmd` an executable in /usr/bin or /bin (the setuid helpers live there)?
pub fn which(cmd: &str) -> bool {
    ["/usr/bin", "/bin", "/usr/sbin"]
        .iter()
        .any(|d| Path::new(d).join(cmd).exists())
}

/// Writing a map failed.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// Writing /proc/PID/... failed.
    #[error("write {file}: {source}")]
    Write {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// newuidmap/newgidmap failed.
    #[error("{helper} failed ({status}): {stderr}; check /etc/subuid and /etc/subgid")]
    Helper {
        helper: &'static str,
        status: String,
        stderr: String,
    },
}

/// Run `f` in a forked child inside a new user namespace with `plan`'s maps, and
/// return its exit code. Used rootless with subordinate ids so that image files keep
/// their owners (unpacking) and so that trees holding such files can be removed.
/// The caller must be single-threaded (it forks).
pub fn run_mapped(plan: &IdPlan, f: impl FnOnce() -> i32) -> Result<i32, IdMapError> {
    use std::io::Write;
    let pipe_err = |e: nix::errno::Errno| IdMapError::Write {
        file: "pipe".into(),
        source: e.into(),
    };
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(pipe_err)?;
    let (go_r, go_w) = nix::unistd::pipe().map_err(pipe_err)?;
    crate::threads::check("mapped child: fork").map_err(|e| IdMapError::Write {
        file: "fork".into(),
        source: std::io::Error::other(e),
    })?;
    // SAFETY: the CLI calls this before starting any thread (checked above), so fork
    // is sound.
    match unsafe { nix::unistd::fork() }.map_err(pipe_err)? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(go_w);
            // SAFETY: unshare with a flag only.
            if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
                // SAFETY: leave the child at once.
                unsafe { libc::_exit(125) }
            }
            let _ = nix::unistd::write(&ready_w, b"u");
            drop(ready_w);
            let mut b = [0u8; 1];
            if !matches!(nix::unistd::read(&go_r, &mut b), Ok(1)) || b[0] != b'm' {
                // SAFETY: the parent could not map us; leave.
                unsafe { libc::_exit(125) }
            }
            let code = f();
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(go_r);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&ready_r, &mut b);
            let mapped = apply(plan, child.as_raw());
            if mapped.is_ok() {
                let _ = nix::unistd::write(&go_w, b"m");
            }
            drop(go_w);
            let status = nix::sys::wait::waitpid(child, None);
            mapped?;
            Ok(match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 125,
            })
        }
    }
}

/// Write both maps for the process `pid` (called by the parent while the child waits).
pub fn apply(plan: &IdPlan, pid: i32) -> Result<(), IdMapError> {
    match plan.writer {
        Writer::Direct { deny_setgroups } => {
            if deny_setgroups {
                write_proc(pid, "setgroups", "deny")?;
            }
            write_proc(pid, "uid_map", &render(&plan.uid_map))?;
            write_proc(pid, "gid_map", &render(&plan.gid_map))
        }
        Writer::Helper => {
            // Both helpers at once: each is a setuid exec that costs milliseconds.
            let uid = helper("newuidmap", pid, &plan.uid_map)?;
            let gid = helper("newgidmap", pid, &plan.gid_map);
            let uid = finish("newuidmap", uid);
            finish("newgidmap", gid?).and(uid)
        }
    }
}

/// The text of a map file.
pub fn render(map: &[Extent]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect()
}

fn write_proc(pid: i32, file: &str, content: &str) -> Result<(), IdMapError> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, content).map_err(|source| IdMapError::Write { file: path, source })
}

fn helper(name: &'static str, pid: i32, map: &[Extent]) -> Result<Child, IdMapError> {
    let path = ["/usr/bin", "/bin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into());
    let mut cmd = Command::new(path);
    cmd.arg(pid.to_string());
    for e in map {
        cmd.args([e.inside, e.outside, e.count].map(|n| n.to_string()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().map_err(|e| IdMapError::Helper {
        helper: name,
        status: "not started".into(),
        stderr: e.to_string(),
    })
}

fn finish(name: &'static str, child: Child) -> Result<(), IdMapError> {
    let out = child.wait_with_output().map_err(|e| IdMapError::Helper {
        helper: name,
        status: "lost".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IdMapError::Helper {
            helper: name,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(euid: u32, sub: Option<(u32, u32)>, helpers: bool) -> IdFacts {
        IdFacts {
            euid,
            egid: euid,
            subuid: sub,
            subgid: sub,
            helpers,
        }
    }

    #[test]
    fn single_id_without_subids() {
        let p = plan(&facts(1234, None, true), 1000, 1000);
        assert_eq!(
            p.uid_map,
            vec![Extent {
                inside: 1000,
                outside: 1234,
                count: 1
            }]
        );
        assert_eq!(
            p.writer,
            Writer::Direct {
                deny_setgroups: true
            }
        );
        assert!(!p.setgroups_allowed());
        // Ranges but no helper: still single.
        assert_eq!(
            plan(&facts(1234, Some((100000, 65536)), false), 1000, 1000).mode,
            IdMode::Single
        );
    }

    #[test]
    fn keep_id_with_subids() {
        let p = plan(&facts(1234, Some((100000, 65536)), true), 1000, 1000);
        assert_eq!(
            p.uid_map,
            vec![
                Extent {
                    inside: 1000,
                    outside: 1234,
                    count: 1
                },
                Extent {
                    inside: 0,
                    outside: 100000,
                    count: 1000
                },
                Extent {
                    inside: 1001,
                    outside: 101000,
                    count: 64535
                },
            ]
        );
        assert_eq!(p.outside_uid(1000), Some(1234));
        assert_eq!(p.outside_uid(0), Some(100000));
        assert_eq!(p.outside_uid(65535), Some(165534));
        assert_eq!(p.writer, Writer::Helper);
    }

    #[test]
    fn a_sandbox_map_within_the_holder_composes_to_the_same_host_ids() {
        for own in [1000, 0, 1, 5000, 65534] {
            let p = plan(&facts(1234, Some((100000, 65536)), true), own, own);
            let h = p.holder.clone().unwrap();
            let nested = within(&p.uid_map, &h.uid_map).unwrap();
            // Composing nested (inside → holder) with the holder (holder → host) gives
            // the plan's inside → host for every inside id.
            for inside in [0, 1, own.saturating_sub(1), own, own + 1, 65534, 65535] {
                let via = lookup(&nested, inside).and_then(|hid| lookup(&h.uid_map, hid));
                assert_eq!(via, p.outside_uid(inside), "own {own}, inside {inside}");
            }
        }
        // A host id the holder does not map: no nesting.
        let h = holder_map(1234, (100000, 10));
        let big = [Extent {
            inside: 0,
            outside: 100000,
            count: 11,
        }];
        assert_eq!(within(&big, &h), None);
        let wrap = [Extent {
            inside: 0,
            outside: u32::MAX,
            count: 2,
        }];
        assert_eq!(within(&wrap, &h), None);
    }

    #[test]
    fn map_files_parse_strictly() {
        let m = parse_map("         0       1234          1\n         1     100000      65536\n")
            .unwrap();
        assert_eq!(m, holder_map(1234, (100000, 65536)));
        assert_eq!(parse_map(&render(&m)), Some(m));
        for bad in ["0 1", "0 1 2 3", "a 1 2", "0 -1 2", "0 1 99999999999"] {
            assert_eq!(parse_map(bad), None, "{bad}");
        }
    }

    #[test]
    fn root_never_maps_the_sandbox_user_to_a_host_user() {
        let p = plan(&facts(0, None, false), 1000, 1000);
        assert_eq!(p.outside_uid(0), Some(0));
        assert_eq!(p.outside_uid(1000), Some(ROOT_FALLBACK_BASE + 1000));
        let p = plan(&facts(0, Some((300000, 65536)), false), 1000, 1000);
        assert_eq!(p.outside_uid(1000), Some(301000));
    }

    #[test]
    fn subid_file_parsing() {
        let f = "alice:100000:65536\n1001:200000:1000\n";
        assert_eq!(parse_subid(f, "alice", 1000), Some((100000, 65536)));
        assert_eq!(parse_subid(f, "bob", 1001), Some((200000, 1000)));
        assert_eq!(parse_subid(f, "carol", 1002), None);
    }
}
