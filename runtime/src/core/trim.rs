//! Dropping start-up code from an idle process's resident set. The supervisor and init
//! run a lot of code once (argument parsing, policy parsing, mount plans, seccomp
//! compilation, namespace setup) and then sit in a small loop for the sandbox's whole
//! life; the text pages of that one-off code stay mapped (and counted in their RSS)
//! unless released — the same idea as the kernel freeing its `__init` sections.
//!
//! Only the read-only segments of loaded objects (code and read-only data, as the
//! loader lists them; RELRO and objects with text relocations excluded) are released,
//! with MADV_DONTNEED: for a private file mapping that was never written this only
//! drops the page-table entries, and a later use faults the same bytes back in from the
//! page cache. Data, relocated read-only data and anonymous memory are left alone; then
//! `malloc_trim` returns the heap's free memory.

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

/// Release the pages of every loaded object's read-only segments (code, read-only
/// data: string and unwind tables), then the heap's free memory.
///
/// The segments come from the loader (`dl_iterate_phdr`, which holds its lock so that
/// no object is unloaded meanwhile), not from /proc/self/maps: only `PT_LOAD` segments
/// without write permission, rounded inward to whole pages and minus the RELRO range
/// (written by the loader before being made read-only), of objects without text
/// relocations. Such pages only ever hold the file's own bytes, so dropping them —
/// whether resident or swapped — makes the next access fault the identical bytes back
/// in. A list read from /proc could be stale by the time it is used (another thread
/// loading a library maps it as one read-only region first, then maps its data over
/// it) and would not see swapped-out copies.
pub fn release_startup_code() {
    // SAFETY: sysconf has no preconditions.
    let mut page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return,
    };
    // SAFETY: dl_iterate_phdr calls `release_object` once per loaded object with a
    // valid `dl_phdr_info` (see there) and `data` pointing to the page size, which
    // outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(release_object), (&raw mut page).cast::<libc::c_void>());
    }
    // And the heap's free memory left by start-up (parsed policies, plans, buffers).
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it is
    // thread-safe and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An entry of an object's dynamic section (`Elf64_Dyn`).
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}
const DT_NULL: i64 = 0;
const DT_TEXTREL: i64 = 22;
const DT_FLAGS: i64 = 30;
const DF_TEXTREL: u64 = 0x4;

/// The page-aligned part of `[start, end)` outside `hole`, as up to two ranges.
fn outside(start: usize, end: usize, hole: Option<(usize, usize)>) -> [(usize, usize); 2] {
    match hole {
        Some((h0, h1)) if h0 < end && h1 > start => [(start, h0.max(start)), (h1.min(end), end)],
        _ => [(start, end), (0, 0)],
    }
}

/// `dl_iterate_phdr` callback: release one object's read-only segments.
///
/// # Safety
/// `info` must point to a valid `dl_phdr_info` whose program headers and dynamic
/// section are those of a loaded object (as `dl_iterate_phdr` guarantees while the
/// callback runs); `data` to the page size.
unsafe extern "C" fn release_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: per this function's contract.
    let page = unsafe { *data.cast::<usize>() };
    if page == 0 || !page.is_power_of_two() {
        return 0;
    }
    // SAFETY: per this function's contract.
    let info = unsafe { &*info };
    if !info.dlpi_name.is_null() {
        // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
        // The vDSO is the kernel's own mapping: leave it.
        if name.starts_with(b"linux-vdso") || name.starts_with(b"linux-gate") {
            return 0;
        }
    }
    if info.dlpi_phdr.is_null() || info.dlpi_phnum == 0 {
        return 0;
    }
    // SAFETY: dlpi_phdr points to dlpi_phnum program headers of the object. Copied:
    // they lie in the object's first read-only segment, which is about to be dropped
    // (reading them afterwards would fault it back in).
    let phdrs: Vec<libc::Elf64_Phdr> =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }.to_vec();
    let base = info.dlpi_addr as usize;
    // Text relocations mean read-only segments were written: leave such an object be.
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_DYNAMIC) {
        let mut d = (base + p.p_vaddr as usize) as *const Dyn;
        let last = (base + (p.p_vaddr + p.p_memsz) as usize) as *const Dyn;
        while d < last {
            // SAFETY: `d` lies inside the object's mapped dynamic section.
            let e = unsafe { &*d };
            if e.tag == DT_NULL {
                break;
            }
            if e.tag == DT_TEXTREL || (e.tag == DT_FLAGS && e.val & DF_TEXTREL != 0) {
                return 0;
            }
            // SAFETY: still inside the section (checked by the loop condition).
            d = unsafe { d.add(1) };
        }
    }
    let relro = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_GNU_RELRO)
        .map(|p| {
            let start = base + p.p_vaddr as usize;
            // Outward: any page the loader wrote.
            (
                start & !(page - 1),
                (start + p.p_memsz as usize).div_ceil(page) * page,
            )
        });
    for p in phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W == 0)
    {
        let start = base + p.p_vaddr as usize;
        // Inward: a page shared with a writable segment stays.
        let (start, end) = (
            start.div_ceil(page) * page,
            (start + p.p_memsz as usize) & !(page - 1),
        );
        for (a, b) in outside(start, end, relro) {
            if b > a {
                // SAFETY: [a, b) is whole pages of a read-only segment of a loaded
                // object without text relocations, outside its RELRO: pages that only
                // hold the file's bytes. MADV_DONTNEED drops their page-table entries
                // and the next access faults the same bytes back in; nothing is
                // unmapped and no pointer into them is invalidated.
                unsafe {
                    libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED);
                }
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_around_a_hole() {
        use super::outside;
        assert_eq!(outside(0, 10, None), [(0, 10), (0, 0)]);
        assert_eq!(outside(0, 10, Some((20, 30))), [(0, 10), (0, 0)]);
        assert_eq!(outside(0, 10, Some((4, 6))), [(0, 4), (6, 10)]);
        assert_eq!(outside(4, 10, Some((0, 6))), [(4, 4), (6, 10)]);
        assert_eq!(outside(0, 10, Some((8, 20))), [(0, 8), (10, 10)]);
    }

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
