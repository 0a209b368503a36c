//! The rule that makes this crate's `fork`/`clone` calls sound: the calling process has
//! one thread. A child of a multi-threaded fork gets only the calling thread, with
//! whatever locks (the allocator's, stdio's) other threads held at that instant, and
//! may deadlock on its first allocation. The SAFETY comments of every fork site rely
//! on it; [`check`] makes it true at run time rather than a comment, so the first
//! thread someone adds before a fork fails loudly (tested: `tests` below) instead of
//! hanging one run in a thousand.

/// Err unless this process has exactly one thread (`/proc/self/task`). `op` names the
/// fork about to happen. Where procfs cannot be read (not mounted yet) nothing can be
/// checked and the call passes.
pub fn check(op: &str) -> Result<(), String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Ok(());
    };
    match dir.count() {
        0 | 1 => Ok(()),
        n => Err(format!(
            "internal error: {op} in a process with {n} threads (fork is only sound single-threaded); please report it"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_thread_is_caught() {
        // The test harness itself runs tests on threads: whatever the count, a thread
        // parked here makes it at least two.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let e = super::check("fork for the test").unwrap_err();
        assert!(
            e.contains("fork for the test") && e.contains("threads"),
            "{e}"
        );
        drop(tx);
        t.join().unwrap();
    }
}
