//! Run a short function in a child that shares this process's memory while this
//! process waits: `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, what glibc's
//! `posix_spawn` does. A fork-style child costs a copy of the page tables, copy-on-write
//! faults in both processes afterwards and, when it exits, the tear-down of the copied
//! address space — about half a millisecond of a start for the supervisor's
//! short-lived helper (bench/RESULTS.md); this child costs none of that.
//!
//! The price is discipline in the child, stated on [`spawn`]: it runs on the caller's
//! heap and globals, so it must never free, move or unlock anything the caller owns and
//! must leave with `_exit` (never by returning: the closure returns `Infallible`, so no
//! destructor of the caller's values runs in it). A fork-style clone made *from* the
//! child gets a private copy of that memory and may do as any forked child does.

use std::convert::Infallible;
use std::ffi::c_void;
use std::io;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};

/// Below the stack: a page that faults, so an overflow is a crash and not a write into
/// whatever is mapped beneath.
const GUARD: usize = 64 << 10;

/// An anonymous mapping used as a child's stack (reserved, not committed: only the
/// pages the child touches are ever allocated). Unmapped when dropped.
#[derive(Debug)]
pub struct Stack {
    base: NonNull<c_void>,
    len: usize,
}

impl Stack {
    /// `len` usable bytes above a guard area.
    pub fn new(len: usize) -> io::Result<Self> {
        let total = len + GUARD;
        // SAFETY: a new private anonymous mapping, at an address the kernel picks; no
        // existing memory is touched.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self {
            base: NonNull::new(p).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?,
            len: total,
        };
        // SAFETY: the range lies inside the mapping made above.
        let rw = unsafe {
            libc::mprotect(
                p.cast::<u8>().add(GUARD).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rw != 0 {
            return Err(io::Error::last_os_error()); // `stack` unmaps it
        }
        Ok(stack)
    }

    /// The highest address (stacks grow down); 16-byte aligned (mmap is page-aligned).
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of our own mapping.
        unsafe { self.base.as_ptr().cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no child runs on it any more (`spawn` returns only
        // once its child has exited or exec'd), and a fork-style child of that child has
        // its own copy.
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

/// Run `f` in a child sharing this process's memory (`CLONE_VM | CLONE_VFORK`,
/// `SIGCHLD` on exit) on `stack`; returns the child's pid once it has exited (or
/// exec'd). The child is this process's child, to be waited for.
///
/// # Safety
///
/// - The caller is single-threaded: only the calling thread is suspended while `f`
///   runs, and another thread could hold a lock `f` needs or change memory under it.
/// - `f` must not free, move out of, or write to anything of the caller's except
///   through what it was given for the purpose, must not allocate (the allocator's
///   state is the caller's), must not unwind, and must end the child with `_exit` or a
///   successful exec. Its captures must be plain values and references.
pub unsafe fn spawn<F: FnOnce() -> Infallible>(stack: &Stack, f: F) -> io::Result<i32> {
    // (`f()` cannot return: the lint sees the match after it as dead, which it is.)
    #[allow(unreachable_code)]
    extern "C" fn trampoline<F: FnOnce() -> Infallible>(arg: *mut c_void) -> libc::c_int {
        // SAFETY: `arg` points at the `ManuallyDrop<F>` of `spawn` below, alive while
        // the caller is suspended; it is read once, here, and never dropped by the
        // caller, so `f` has one owner.
        let f = unsafe { ptr::read(arg.cast::<F>()) };
        match f() {}
    }
    let mut f = ManuallyDrop::new(f);
    let arg: *mut F = &mut *f;
    // SAFETY: the stack is ours and unused; the flags make a child that shares memory
    // and suspends this thread until it exits or execs, so `f` (on this thread's stack)
    // outlives its use; the contract above covers what the child does.
    let pid = unsafe {
        libc::clone(
            trampoline::<F>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg.cast(),
        )
    };
    if pid < 0 {
        // Never read: dropping it is ours again.
        // SAFETY: the child does not exist, so nothing else holds `f`.
        unsafe { ManuallyDrop::drop(&mut f) };
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_writes_the_callers_memory_and_the_caller_waits_for_it() {
        // Shared memory: the child's write is seen; the caller resumed only after
        // the child's exit, whose status is the one it chose.
        let stack = Stack::new(256 << 10).unwrap();
        let mut seen = 0u32;
        let p: *mut u32 = &mut seen;
        // SAFETY: the test is the only thread that touches `seen`; the child writes
        // through the pointer it was given and leaves with _exit.
        let pid = unsafe {
            spawn(&stack, move || -> Infallible {
                *p = 7;
                libc::_exit(3)
            })
        }
        .unwrap();
        assert_eq!(seen, 7);
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 3)
        );
    }

    #[test]
    fn a_child_that_overflows_its_stack_dies_on_the_guard() {
        fn deep(n: u64) -> u64 {
            let buf = [n as u8; 1024];
            std::hint::black_box(&buf);
            if n == 0 {
                0
            } else {
                deep(n - 1) + u64::from(buf[0])
            }
        }
        let stack = Stack::new(64 << 10).unwrap();
        // SAFETY: the child only recurses (no allocation) and never returns normally.
        let pid = unsafe {
            spawn(&stack, || -> Infallible {
                std::hint::black_box(deep(1 << 20));
                libc::_exit(0)
            })
        }
        .unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert!(
            matches!(
                status,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSEGV, _)
            ),
            "{status:?}"
        );
    }
}
