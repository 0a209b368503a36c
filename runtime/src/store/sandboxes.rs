//! The set of sandboxes on disk: find, list and delete them.
//!
//! Deleting first renames the directory out of the way (so the name is free at once
//! and of two deletes exactly one proceeds), then stops a running sandbox through its
//! supervisor (SIGTERM, which the supervisor forwards to the command; SIGKILL after a
//! grace period — init dies with its supervisor, and every mount lives in the
//! sandbox's own mount namespace), then removes the files; files owned by subordinate
//! ids are removed from a user namespace mapped like the sandbox.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::idmap;
use crate::record::{Phase, Record};
use crate::state::SandboxDir;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such sandbox.
    #[error("no sandbox named {0}; see 'openshell sandbox list'")]
    NotFound(String),
    /// Its supervisor would not stop.
    #[error("sandbox {name}: its supervisor (pid {pid}) did not stop; try again")]
    Stuck { name: String, pid: i32 },
    /// Removing its files failed.
    #[error("sandbox {name}: remove {}: {source}; remove it by hand", path.display())]
    Remove {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One sandbox directory and what its record says.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its name (the directory's).
    pub name: String,
    /// `sandboxes/<name>`.
    pub dir: PathBuf,
    /// The record, or why it could not be read.
    pub record: Result<Record, String>,
}

fn sandboxes_dir(base: &Path) -> PathBuf {
    base.join("sandboxes")
}

/// How long a directory without a record counts as being created.
const CREATING_GRACE_SECS: u64 = 60;

impl Entry {
    /// Its phase and the reason of an Error. A directory whose record is not written
    /// yet is a sandbox being created — unless that was long ago (its creator died).
    pub fn phase(&self) -> (Phase, Option<String>) {
        match &self.record {
            Ok(r) => r.phase(),
            Err(why) if why == NO_RECORD => {
                let age = fs::metadata(&self.dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .map_or(u64::MAX, |d| d.as_secs());
                if age < CREATING_GRACE_SECS {
                    (Phase::Provisioning, None)
                } else {
                    (
                        Phase::Error,
                        Some(format!(
                            "its creation was interrupted (no record); remove it with 'openshell sandbox delete {}'",
                            self.name
                        )),
                    )
                }
            }
            Err(why) => (Phase::Error, Some(format!("unreadable record: {why}"))),
        }
    }
}

/// Read a sandbox's record, riding out a creator or a delete working on it right now:
/// None when the directory went away (deleted), the record when it appeared meanwhile.
fn load(dir: &Path) -> Option<Result<Record, String>> {
    let first = Record::load(dir);
    if first.is_ok() {
        return Some(first);
    }
    if !dir.exists() {
        return None;
    }
    if dir.join(crate::record::FILE).exists() {
        return Some(Record::load(dir));
    }
    Some(Err(NO_RECORD.into()))
}

/// The record error of a directory that has no record (yet).
const NO_RECORD: &str = "no record";

/// Every sandbox, by name.
pub fn list(base: &Path) -> Vec<Entry> {
    let Ok(rd) = fs::read_dir(sandboxes_dir(base)) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') || !e.file_type().ok()?.is_dir() {
                return None;
            }
            let dir = e.path();
            Some(Entry {
                record: load(&dir)?,
                name,
                dir,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The sandbox called `name`.
pub fn find(base: &Path, name: &str) -> Result<Entry, StoreError> {
    let dir = sandboxes_dir(base).join(name);
    if crate::state::check_name(name).is_err() || !dir.is_dir() {
        return Err(StoreError::NotFound(name.to_string()));
    }
    Ok(Entry {
        name: name.to_string(),
        record: load(&dir).ok_or_else(|| StoreError::NotFound(name.to_string()))?,
        dir,
    })
}

/// Stop the sandbox's processes if it runs; true when something was stopped.
pub fn stop(entry: &Entry) -> Result<bool, StoreError> {
    let Some(sup) = entry
        .record
        .as_ref()
        .ok()
        .and_then(|r| r.supervisor)
        .filter(|s| s.alive())
    else {
        return Ok(false);
    };
    let pid = Pid::from_raw(sup.pid);
    for (signal, grace) in [
        (Signal::SIGTERM, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        let _ = kill(pid, signal);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !sup.alive() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(StoreError::Stuck {
        name: entry.name.clone(),
        pid: sup.pid,
    })
}

/// Stop and remove a sandbox with everything it has on disk.
pub fn delete(base: &Path, name: &str) -> Result<(), StoreError> {
    let r = delete_locked(base, name);
    // Whatever the outcome, a free name keeps no lock file (taking the lock made one).
    crate::state::forget_lock(base, name);
    r
}

fn delete_locked(base: &Path, name: &str) -> Result<(), StoreError> {
    let lock = crate::state::NameLock::acquire(base, name)
        .map_err(|_| StoreError::NotFound(name.to_string()))?;
    let entry = find(base, name)?;
    // Claim it first: of concurrent deletes exactly one wins the rename, and the name
    // is free from here on. A running supervisor is stopped afterwards; its own
    // clean-up then finds nothing at the old path.
    let doomed = sandboxes_dir(base).join(format!(".deleting-{name}-{}", std::process::id()));
    if let Err(source) = fs::rename(&entry.dir, &doomed) {
        if !entry.dir.exists() {
            // Another delete (or the sandbox's own supervisor) got there first.
            return Err(StoreError::NotFound(name.to_string()));
        }
        return Err(StoreError::Remove {
            name: name.to_string(),
            path: entry.dir,
            source,
        });
    }
    drop(lock);
    let claimed = Entry {
        record: Record::load(&doomed).or(entry.record),
        dir: doomed.clone(),
        name: entry.name,
    };
    stop(&claimed)?;
    remove_tree(name, &doomed, claimed.record.as_ref().ok())?;
    // A created sandbox's supervisor log goes with it.
    let _ = fs::remove_file(base.join("supervisors").join(format!("{name}.log")));
    Ok(())
}

fn remove_tree(name: &str, path: &Path, record: Option<&Record>) -> Result<(), StoreError> {
    let dir = SandboxDir {
        path: path.to_path_buf(),
    };
    if let Some(r) = record.filter(|_| path.join("upper").exists()) {
        let plan = idmap::plan(&idmap::facts(), r.uid, r.gid);
        if plan.mode == crate::idmap::IdMode::Subids {
            let d = dir.clone();
            let _ = idmap::run_mapped(&plan, || i32::from(d.remove().is_err()));
        }
    }
    if path.exists() && dir.remove().is_err() {
        fs::remove_dir_all(path).map_err(|source| StoreError::Remove {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Remove what interrupted deletes left behind (`.deleting-*` of dead processes).
pub fn sweep(base: &Path) {
    let Ok(rd) = fs::read_dir(sandboxes_dir(base)) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(".deleting-") else {
            continue;
        };
        // `.deleting-<name>-<pid>`: leave it to a delete that is still running.
        let owner = rest.rsplit_once('-').map(|(_, pid)| pid);
        if owner.is_some_and(|pid| Path::new("/proc").join(pid).exists()) {
            continue;
        }
        {
            let record = Record::load(&e.path()).ok();
            let _ = remove_tree(rest, &e.path(), record.as_ref());
        }
    }
}
