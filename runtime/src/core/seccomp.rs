//! The seccomp filter: a deny list (with argument checks) compiled to classic BPF.
//!
//! The rule table is plain data ([`rules`]) and the compiler is a pure function, so both
//! are unit-tested; the supervisor compiles before clone and each child installs the
//! program last, just before execve. We emit BPF ourselves rather than through
//! seccompiler because we also need to refuse the x32 syscall ABI (numbers with bit 30
//! set), which seccompiler's programs let through on x86_64.

use libc::sock_filter;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i // low 32 bits on little-endian
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A test on the low 32 bits of one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// `arg == v`
    Eq(u8, u32),
    /// `arg != v`
    Ne(u8, u32),
    /// `arg & mask == v`
    MaskedEq(u8, u32, u32),
    /// `arg & bits != 0`
    AnyBit(u8, u32),
}

/// Deny `nr` with `errno` when every check holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Syscall number.
    pub nr: i64,
    /// All must hold (empty: always).
    pub when: Vec<Arg>,
    /// errno returned.
    pub errno: i32,
}

fn deny(nr: i64) -> Rule {
    Rule {
        nr,
        when: vec![],
        errno: libc::EPERM,
    }
}

/// Namespace-creating clone flags: a sandboxed process may not make new namespaces.
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u32;

/// Socket families a sandboxed process may use; everything else is refused.
const ALLOWED_FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// The filter's rules: at least as strict as OpenShell's.
pub fn rules() -> Vec<Rule> {
    use libc::*;
    let mut r: Vec<Rule> = [
        // Mount table and root changes.
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_move_mount,
        SYS_open_tree,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_mount_setattr,
        // Namespaces.
        SYS_setns,
        SYS_unshare,
        // Other processes' memory.
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_kcmp,
        SYS_pidfd_getfd,
        // Kernel attack surface.
        SYS_bpf,
        SYS_perf_event_open,
        SYS_userfaultfd,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_fanotify_init,
        SYS_lookup_dcookie,
        SYS_quotactl,
        SYS_quotactl_fd,
        // Host control.
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_syslog,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_vhangup,
    ]
    .into_iter()
    .map(deny)
    .collect();
    // modify_ldt: 16-bit segments (old exploits' favourite, only Wine and DOS emulators
    // use it); refused as docker's profile does.
    #[cfg(target_arch = "x86_64")]
    r.extend(
        [
            SYS_iopl,
            SYS_ioperm,
            SYS_uselib,
            SYS__sysctl,
            SYS_modify_ldt,
        ]
        .into_iter()
        .map(deny),
    );
    // personality: only the default persona (0) and the query (0xffffffff); anything
    // else (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...) would weaken what the process
    // execs next.
    r.push(Rule {
        nr: SYS_personality,
        when: vec![Arg::Ne(0, 0), Arg::Ne(0, 0xffff_ffff)],
        errno: EPERM,
    });
    // clone3 hides its flags in memory we cannot inspect: say it does not exist, so
    // glibc falls back to clone, whose flags we can check.
    r.push(Rule {
        nr: SYS_clone3,
        when: vec![],
        errno: ENOSYS,
    });
    r.push(Rule {
        nr: SYS_clone,
        when: vec![Arg::AnyBit(0, CLONE_NS_FLAGS)],
        errno: EPERM,
    });
    // Only unix, inet, inet6 and (route) netlink sockets.
    r.push(Rule {
        nr: SYS_socket,
        when: ALLOWED_FAMILIES
            .iter()
            .map(|f| Arg::Ne(0, *f as u32))
            .collect(),
        errno: EAFNOSUPPORT,
    });
    r.push(Rule {
        nr: SYS_socket,
        when: vec![
            Arg::Eq(0, AF_NETLINK as u32),
            Arg::Ne(2, NETLINK_ROUTE as u32),
        ],
        errno: EAFNOSUPPORT,
    });
    for family in [AF_INET, AF_INET6] {
        // 10 = SOCK_PACKET (obsolete packet sockets).
        for ty in [SOCK_RAW, 10] {
            r.push(Rule {
                nr: SYS_socket,
                when: vec![Arg::Eq(0, family as u32), Arg::MaskedEq(1, 0xf, ty as u32)],
                errno: EPERM,
            });
        }
    }
    // Typing into the terminal of whoever reads it later.
    for req in [TIOCSTI, TIOCLINUX] {
        r.push(Rule {
            nr: SYS_ioctl,
            when: vec![Arg::Eq(1, req as u32)],
            errno: EPERM,
        });
    }
    r
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Compile rules into a BPF program: check the arch (kill on mismatch), refuse x32,
/// then one block per rule, then allow.
pub fn compile(rules: &[Rule]) -> Vec<sock_filter> {
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32),
    ];
    for rule in rules {
        prog.extend(block(rule));
    }
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    prog
}

/// One rule: a chain of tests, each jumping to the block's end on failure, ending in
/// the errno return. Each block reloads the syscall number first.
fn block(rule: &Rule) -> Vec<sock_filter> {
    // Tests as (setup statements, jump code, k, jump-on-true-means-match).
    let mut tests: Vec<(Vec<sock_filter>, u16, u32, bool)> = vec![(
        vec![stmt(BPF_LD_W_ABS, OFF_NR)],
        BPF_JEQ_K,
        rule.nr as u32,
        true,
    )];
    for arg in &rule.when {
        let t = match *arg {
            Arg::Eq(i, v) => (
                vec![stmt(BPF_LD_W_ABS, off_arg(i.into()))],
                BPF_JEQ_K,
                v,
                true,
            ),
            Arg::Ne(i, v) => (
                vec![stmt(BPF_LD_W_ABS, off_arg(i.into()))],
                BPF_JEQ_K,
                v,
                false,
            ),
            Arg::MaskedEq(i, m, v) => (
                vec![stmt(BPF_LD_W_ABS, off_arg(i.into())), stmt(BPF_AND_K, m)],
                BPF_JEQ_K,
                v,
                true,
            ),
            Arg::AnyBit(i, bits) => (
                vec![stmt(BPF_LD_W_ABS, off_arg(i.into()))],
                BPF_JSET_K,
                bits,
                true,
            ),
        };
        tests.push(t);
    }
    let total: usize = tests.iter().map(|t| t.0.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(total);
    for (setup, code, k, on_true) in tests {
        out.extend(setup);
        // Distance from the instruction after this jump to the one after the return.
        let to_end = u8::try_from(total - out.len() - 1).expect("seccomp block too long");
        out.push(if on_true {
            jump(code, k, 0, to_end)
        } else {
            jump(code, k, to_end, 0)
        });
    }
    out.push(stmt(BPF_RET_K, RET_ERRNO | (rule.errno as u32 & 0xffff)));
    out
}

/// Install a compiled program on the calling thread. Requires no_new_privs (or
/// CAP_SYS_ADMIN). Must be the last step before execve: after it, our own setup
/// syscalls (mount, ...) would fail too.
pub fn install(prog: &[sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| std::io::Error::other("filter too long"))?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the
    // program and does not keep the pointer.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shape() {
        let prog = compile(&rules());
        assert_eq!(prog[0].k, OFF_ARCH);
        assert_eq!(prog[2].k, RET_KILL_PROCESS);
        assert_eq!(prog.last().unwrap().k, RET_ALLOW);
        assert!(prog.len() < 4096);
    }

    #[test]
    fn block_jumps_land_after_the_return() {
        let rule = Rule {
            nr: 41,
            when: vec![Arg::Eq(0, 2), Arg::MaskedEq(1, 0xf, 3)],
            errno: 1,
        };
        let b = block(&rule);
        // ld nr, jeq, ld a0, jeq, ld a1, and, jeq, ret
        assert_eq!(b.len(), 8);
        assert_eq!((b[1].jt, b[1].jf), (0, 6));
        assert_eq!((b[3].jt, b[3].jf), (0, 4));
        assert_eq!((b[6].jt, b[6].jf), (0, 1));
        assert_eq!(b[7].k, RET_ERRNO | 1);
        let ne = block(&Rule {
            nr: 41,
            when: vec![Arg::Ne(0, 1)],
            errno: 1,
        });
        assert_eq!((ne[3].jt, ne[3].jf), (1, 0));
    }

    /// Run the filter for real in a forked child and check the verdicts.
    #[test]
    fn filter_denies_in_a_forked_child() {
        let prog = compile(&rules());
        // SAFETY: the test harness may be multi-threaded; the child only makes raw
        // syscalls and _exit()s, touching no locks.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: plain syscalls in the child; results are checked.
                let code = unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if install(&prog).is_err() {
                        libc::_exit(10);
                    }
                    let raw_fail = libc::socket(libc::AF_INET, libc::SOCK_RAW, 1) < 0;
                    let pkt_fail = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) < 0;
                    let tcp_ok = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) >= 0;
                    let unshare_fail = libc::unshare(libc::CLONE_NEWUSER) < 0;
                    let x32_fail = libc::syscall(X32_SYSCALL_BIT as i64 + 39) < 0; // getpid
                    let pid_ok = libc::getpid() > 0;
                    match (raw_fail, pkt_fail, tcp_ok, unshare_fail, x32_fail, pid_ok) {
                        (true, true, true, true, true, true) => 0,
                        _ => 11,
                    }
                };
                // SAFETY: leaving the forked child without running destructors.
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "child died: {status}");
                assert_eq!(libc::WEXITSTATUS(status), 0);
            }
            _ => panic!("fork failed"),
        }
    }
}
