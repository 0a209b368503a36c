//! Dropping start-up code from an idle process's resident set. The supervisor and init
//! run a lot of code once (argument parsing, policy parsing, mount plans, seccomp
//! compilation, namespace setup) and then sit in a small loop for the sandbox's whole
//! life; the text pages of that one-off code stay mapped (and counted in their RSS)
//! unless released — the same idea as the kernel freeing its `__init` sections.
//!
//! Only executable, never-written mappings (`r-xp`) are released, with MADV_DONTNEED:
//! for a private file mapping that was never written this only drops the page-table
//! entries, and a later use faults the same bytes back in from the page cache. Data,
//! relocated read-only data (RELRO) and anonymous memory are left alone.

/// How long a process waits idle before releasing its start-up code: a short run ends
/// before that and would only pay for faulting the code back in.
pub const AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// `set.wait()`, except that the first time no signal comes for [`AFTER`], the start-up
/// code is released (`trimmed` remembers it), then the wait goes on.
pub fn wait_signal(
    set: &nix::sys::signal::SigSet,
    trimmed: &mut bool,
) -> nix::Result<nix::sys::signal::Signal> {
    if !*trimmed {
        let ts = libc::timespec {
            tv_sec: AFTER.as_secs() as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: `set` is a valid, initialised sigset_t; siginfo may be null; `ts` is a
        // valid timespec that outlives the call.
        let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
        if r > 0 {
            return nix::sys::signal::Signal::try_from(r);
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EAGAIN => {
                release_startup_code();
                *trimmed = true;
            }
            e => return Err(e),
        }
    }
    set.wait()
}

/// Release the text pages of every executable file mapping of this process.
pub fn release_startup_code() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        // File-backed (inode != 0), executable, not writable, private.
        if perms != "r-xp" || inode == "0" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if end <= start {
            continue;
        }
        // SAFETY: the range is one whole r-xp file mapping of this process taken from
        // /proc/self/maps; such pages are never written (no text relocations in our
        // PIE binary or in shared libraries), so dropping their page-table entries only
        // makes the next access fault the identical file bytes back in. No memory is
        // unmapped and no pointer into it is invalidated.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_still_runs_after_its_pages_are_released() {
        let before = std::fs::read_to_string("/proc/self/status").unwrap();
        super::release_startup_code();
        // Everything after this line runs from re-faulted pages.
        let after = std::fs::read_to_string("/proc/self/status").unwrap();
        let rss = |s: &str| -> u64 {
            s.lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!(rss(&after) <= rss(&before), "{before}\n{after}");
        assert_eq!(format!("{:?}", vec![1, 2, 3]), "[1, 2, 3]");
    }
}
