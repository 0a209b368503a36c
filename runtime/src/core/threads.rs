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
    // A thread that was just joined may still be listed for a moment: `join` returns
    // once the kernel clears its tid, early in its exit, before it leaves the thread
    // group. It runs no user code any more (holds no lock), so it is waited out here
    // (briefly) rather than reported; zombies are not counted at all.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
    loop {
        let Some(n) = live_threads() else {
            return Ok(());
        };
        if n <= 1 {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(format!(
                "internal error: {op} in a process with {n} threads (fork is only sound single-threaded); please report it"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Threads of this process that are not zombies; `None` without procfs.
fn live_threads() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        dir.flatten()
            .filter(|e| {
                // Gone since the listing, or a zombie: not a thread that runs.
                std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                    let state = st
                        .rfind(')')
                        .and_then(|i| st[i + 1..].split_whitespace().next());
                    !matches!(state, Some("Z" | "X"))
                })
            })
            .count(),
    )
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
        // (a live thread is reported after the short wait for exiting ones)
        let e = super::check("fork for the test").unwrap_err();
        assert!(
            e.contains("fork for the test") && e.contains("threads"),
            "{e}"
        );
        drop(tx);
        t.join().unwrap();
    }
}
