//! Process titles: the supervisor and init show `openshell: supervisor NAME` and
//! `openshell: init NAME` in `ps` and `/proc/PID/cmdline` instead of the CLI's argv,
//! which may hold `-e SECRET=...` (a detached supervisor and init are forks of the CLI,
//! not new programs, so they inherit its argument strings).
//!
//! `prctl(PR_SET_MM_ARG_START)` would move the area, but needs CAP_SYS_RESOURCE (which
//! even root lacks on some hosts), so the argument area itself is overwritten, as
//! setproctitle(3) implementations do: the kernel reads `cmdline` from the memory
//! between `arg_start` and `arg_end` (fields 48 and 49 of `/proc/self/stat`). Rust's
//! std copies arguments when `env::args()` is called; nothing in these processes calls
//! it after the title is set.

/// Replace this process's argument area with `title` (truncated to fit), NUL-filled.
/// Also sets the thread name (`comm`, 15 bytes) to the title's last word's prefix.
pub fn set(title: &str) {
    let Some((start, end)) = arg_area() else {
        return;
    };
    if end <= start {
        return;
    }
    let len = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(len.saturating_sub(1));
    // SAFETY: [start, end) is this process's argument area as the kernel reports it: the
    // argv strings it copied onto our stack at exec, mapped and writable for the life
    // of the process. The process is single-threaded here (supervisor right after its
    // fork, init before any thread) and no Rust value borrows that memory: std keeps
    // only the raw argv pointers and copies strings out when asked.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
    let comm: Vec<u8> = title.bytes().filter(|b| *b != 0).take(15).collect();
    if let Ok(c) = std::ffi::CString::new(comm) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

/// `arg_start`, `arg_end` from `/proc/self/stat` (after the `(comm)` field, which may
/// contain spaces and parentheses: split after the last `)`).
fn arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); arg_start is field 48.
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(45)?.parse().ok()?, f.get(46)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_argument_area_is_found() {
        let (s, e) = super::arg_area().unwrap();
        assert!(e > s);
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(cmdline.len(), e - s);
    }
}
