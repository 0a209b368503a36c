//! Dropping start-up code from an idle process's resident set. The supervisor and init
//! run a lot of code once (argument parsing, policy parsing, mount plans, seccomp
//! compilation, namespace setup) and then sit in a small loop for the sandbox's whole
//! life; the text pages of that one-off code stay mapped (and counted in their RSS)
//! unless released — the same idea as the kernel freeing its `__init` sections.
//!
//! Only read-only, never-written file mappings (`r-xp` code, `r--p` read-only data with
//! no anonymous page in /proc/self/smaps) are released, with MADV_DONTNEED: for a
//! private file mapping that was never written this only drops the page-table entries,
//! and a later use faults the same bytes back in from the page cache. Data, relocated
//! read-only data (RELRO: written by the loader, so it holds anonymous pages) and
//! anonymous memory are left alone.

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

/// Release the pages of every never-written, read-only file mapping of this process:
/// its code (`r-xp`) and its read-only data (`r--p`: string tables, unwind tables) —
/// only mappings with no anonymous (copied-on-write) page, so RELRO, which the loader
/// wrote before making it read-only, is never touched.
pub fn release_startup_code() {
    // smaps, not maps: each mapping's `Anonymous:` line tells whether it was written.
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            let written = kb.split_whitespace().next() != Some("0");
            if let Some((start, end)) = current.take()
                && !written
            {
                // SAFETY: the range is one whole read-only, private file mapping of
                // this process (from /proc/self/smaps) holding no anonymous page: every
                // resident page is the file's own bytes from the page cache, and being
                // read-only it cannot be written (and so copied) meanwhile. Dropping
                // the page-table entries only makes the next access fault the identical
                // bytes back in; nothing is unmapped, no pointer is invalidated.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            // A field line ("Rss: ...") rather than a mapping's header.
            continue;
        };
        // A new mapping: file-backed (inode != 0), private, readable, never writable.
        current = (matches!(perms, "r-xp" | "r--p") && inode != "0" && end > start)
            .then_some((start, end));
    }
    // And the heap's free memory left by start-up (parsed policies, plans, buffers).
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it is
    // thread-safe and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
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
        // Read-only data (a string table) reads back the same from re-faulted pages,
        // and relocated data (a static holding a pointer: RELRO) still points right.
        static WORDS: [&str; 3] = ["landlock", "seccomp", "namespaces"];
        assert_eq!(WORDS.concat(), "landlockseccompnamespaces");
        let f: fn() -> u32 = || 42;
        static F: std::sync::OnceLock<fn() -> u32> = std::sync::OnceLock::new();
        assert_eq!(F.get_or_init(|| f)(), 42);
    }
}
