//! Run a short function in a child that shares this process's memory while this
//! process waits: `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, the clone
//! glibc's `posix_spawn` makes (callers block every signal around it, as posix_spawn
//! does, so no handler runs in the child on the caller's memory). A fork-style child
//! costs a copy of the page tables, copy-on-write faults in both processes afterwards
//! and, when it exits or execs, the tear-down of the copied address space — about a
//! millisecond of a start for each of the two places this is used (bench/RESULTS.md);
//! this child costs none of that.
//!
//! The price is discipline in the child, stated on [`spawn`]: it runs on the caller's
//! heap and globals, so it must never free, move or unlock anything the caller owns and
//! must leave with `_exit` or exec (never by returning: the closure returns
//! `Infallible`, so no destructor of the caller's values runs in it). A fork-style clone
//! made *from* the child gets a private copy of that memory and may do as any forked
//! child does — except that the kernel does not carry restartable sequences (rseq)
//! over a CLONE_VM clone, so in such a grandchild glibc's `sched_getcpu` may be stale
//! (init uses no such thing; exec'd programs register afresh). Users: the rootless nested clone helper (core/userns.rs) and init's
//! start of the command (core/init.rs).

use std::convert::Infallible;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};

use nix::errno::Errno;

/// Below the stack: an inaccessible area, so an overflow is a crash (a plain SIGSEGV:
/// std's "stack overflow" message knows only the main thread's guard) and not a write
/// into whatever is mapped beneath.
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
    pub fn new(len: usize) -> Result<Self, Errno> {
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
            return Err(Errno::last());
        }
        let stack = Self {
            base: NonNull::new(p).ok_or(Errno::ENOMEM)?,
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
            return Err(Errno::last()); // `stack` unmaps it
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
///   through what it was given for the purpose, must not unwind, and must end the child
///   with `_exit` or a successful exec. Its captures must be plain values and
///   references. It may allocate (the allocator's state is consistent: the caller is
///   single-threaded and suspended outside it); what it does not free stays allocated
///   in the caller.
/// - Process-wide state it changes must be state the child does not share: without
///   CLONE_THREAD, CLONE_SIGHAND, CLONE_FILES and CLONE_FS its credentials, signal
///   handlers and mask, descriptors, cwd, rlimits, Landlock domain and seccomp filter
///   are its own; its memory, thread-locals (errno), libc's bookkeeping and the address
///   space's flags (dumpable: see [`dumpable`]) are not.
pub unsafe fn spawn<F: FnOnce() -> Infallible>(stack: &Stack, f: F) -> Result<i32, Errno> {
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
        return Err(Errno::last());
    }
    Ok(pid)
}

/// This process's "dumpable" flag (`PR_GET_DUMPABLE`). It belongs to the address
/// space, so a child sharing it changes it by changing its credentials (the kernel
/// clears it then): callers read it before [`spawn`] and put it back after.
pub fn dumpable() -> libc::c_int {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }
}

/// Put back a flag read by [`dumpable`] (nothing if that read failed).
pub fn set_dumpable(flag: libc::c_int) {
    if flag >= 0 && dumpable() != flag {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, flag as libc::c_ulong, 0, 0, 0) };
    }
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
        // SAFETY: the harness runs other tests on other threads, which the
        // single-thread rule is about: this child takes no lock and allocates nothing
        // they could hold or use, writes only `seen` (nobody else's) and leaves with
        // _exit.
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
        // SAFETY: as above: the child only recurses on its own stack (no lock, no
        // allocation) and never returns normally.
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
