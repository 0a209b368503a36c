//! The probe: run inside a sandbox, it reports what it sees and tries attacks.
//!
//! `openshell-probe status` prints `key: value` lines (NoNewPrivs, Seccomp, capability
//! sets, uid map, open fds, Landlock ABI). `openshell-probe attack NAME [ARGS]` tries
//! one attack with raw syscalls and prints `BLOCKED <errno>` (exit 0) or `ESCAPED
//! <detail>` (exit 1). The tests decide what each line means; the probe only reports.

use std::ffi::CString;
use std::io::Read;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errname(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::EACCES, "EACCES"),
        (libc::ENOENT, "ENOENT"),
        (libc::EROFS, "EROFS"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ESRCH, "ESRCH"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOTTY, "ENOTTY"),
        (libc::EBADF, "EBADF"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EXDEV, "EXDEV"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno{e}"), |(_, s)| (*s).to_string())
}

/// Outcome of a raw syscall: negative means blocked (with errno).
fn verdict(rc: i64, what: &str) -> i32 {
    if rc < 0 {
        println!("BLOCKED {}", errname(errno()));
        0
    } else {
        println!("ESCAPED {what} returned {rc}");
        1
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn status() -> i32 {
    let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in st.lines() {
        let key = line.split(':').next().unwrap_or("");
        if matches!(
            key,
            "NoNewPrivs"
                | "Seccomp"
                | "CapInh"
                | "CapPrm"
                | "CapEff"
                | "CapBnd"
                | "CapAmb"
                | "Uid"
                | "Gid"
        ) {
            println!("{}: {}", key, line[key.len() + 1..].trim());
        }
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    println!(
        "uid_map: {}",
        map.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    println!("fds: {}", fds.join(" "));
    // SAFETY: query-only landlock call with NULL attr.
    let abi = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u32) };
    println!("landlock_abi: {abi}");
    let mut core = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: getrlimit fills the struct.
    unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut core) };
    println!("rlimit_core: {}", core.rlim_cur);
    0
}

fn attack(name: &str, args: &[String]) -> i32 {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    // SAFETY: (whole match) raw syscalls with valid, NUL-terminated strings and plain
    // integer arguments; return values are only inspected, never trusted as pointers.
    unsafe {
        match name {
            "read" => {
                // read PATH [MARKER]: escaped if readable and (no marker or it appears).
                let mut s = String::new();
                match std::fs::File::open(arg(0)).and_then(|mut f| f.read_to_string(&mut s)) {
                    Err(e) => {
                        println!("BLOCKED {}", errname(e.raw_os_error().unwrap_or(0)));
                        0
                    }
                    Ok(_) if !arg(1).is_empty() && !s.contains(&arg(1)) => {
                        println!("BLOCKED read-but-no-marker ({} bytes)", s.len());
                        0
                    }
                    Ok(_) => {
                        println!("ESCAPED read {} bytes", s.len());
                        1
                    }
                }
            }
            "write" => {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(arg(0))
                {
                    Err(e) => {
                        println!("BLOCKED {}", errname(e.raw_os_error().unwrap_or(0)));
                        0
                    }
                    Ok(_) => {
                        println!("ESCAPED opened {} for writing", arg(0));
                        1
                    }
                }
            }
            "mount" => verdict(
                libc::mount(
                    cstr("tmpfs").as_ptr(),
                    cstr("/tmp").as_ptr(),
                    cstr("tmpfs").as_ptr(),
                    0,
                    std::ptr::null(),
                )
                .into(),
                "mount",
            ),
            "unshare-user" => verdict(libc::unshare(libc::CLONE_NEWUSER).into(), "unshare"),
            "unshare-net" => verdict(libc::unshare(libc::CLONE_NEWNET).into(), "unshare"),
            "clone-newuser" => {
                let rc = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64,
                    0,
                    0,
                    0,
                    0,
                );
                if rc == 0 {
                    libc::_exit(0);
                }
                verdict(rc, "clone(CLONE_NEWUSER)")
            }
            "clone3" => {
                let rc = libc::syscall(libc::SYS_clone3, 0usize, 0usize);
                println!(
                    "{} {}",
                    if errno() == libc::ENOSYS {
                        "BLOCKED"
                    } else {
                        "ESCAPED"
                    },
                    errname(errno())
                );
                i32::from(rc >= 0 || errno() != libc::ENOSYS)
            }
            "ptrace" => {
                let pid: i32 = arg(0).parse().unwrap_or(0);
                verdict(
                    libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0),
                    "ptrace attach",
                )
            }
            "process-vm-readv" => {
                let pid: i32 = arg(0).parse().unwrap_or(1);
                let mut buf = [0u8; 8];
                let local = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: 0x400000 as *mut libc::c_void,
                    iov_len: 8,
                };
                verdict(
                    libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) as i64,
                    "process_vm_readv",
                )
            }
            "keyctl" => verdict(
                libc::syscall(
                    libc::SYS_add_key,
                    cstr("user").as_ptr(),
                    cstr("openshell").as_ptr(),
                    cstr("x").as_ptr(),
                    1usize,
                    -2i32, // KEY_SPEC_PROCESS_KEYRING
                ),
                "add_key",
            ),
            "io-uring" => {
                let mut params = [0u8; 120];
                verdict(
                    libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()),
                    "io_uring_setup",
                )
            }
            "bpf" => {
                // BPF_MAP_CREATE of a tiny array map.
                let mut attr = [0u32; 30];
                attr[0] = 2; // BPF_MAP_TYPE_ARRAY
                attr[1] = 4;
                attr[2] = 4;
                attr[3] = 1;
                verdict(
                    libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), 120u32),
                    "bpf",
                )
            }
            "perf-event-open" => {
                let mut attr = [0u8; 128];
                attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
                verdict(
                    libc::syscall(libc::SYS_perf_event_open, attr.as_mut_ptr(), 0, -1, -1, 0),
                    "perf_event_open",
                )
            }
            "userfaultfd" => verdict(libc::syscall(libc::SYS_userfaultfd, 0), "userfaultfd"),
            // Read the LDT (func 0): harmless itself, refused as a whole.
            #[cfg(target_arch = "x86_64")]
            "modify-ldt" => {
                let mut buf = [0u8; 16];
                verdict(
                    libc::syscall(libc::SYS_modify_ldt, 0, buf.as_mut_ptr(), buf.len()),
                    "modify_ldt",
                )
            }
            // ADDR_NO_RANDOMIZE (ASLR off for what this process execs), or the value given.
            "personality" => {
                let v: u64 = args
                    .first()
                    .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                    .unwrap_or(0x0040000);
                verdict(libc::syscall(libc::SYS_personality, v), "personality")
            }
            // memfd_create is allowed (docs/security.md): prints ESCAPED when it works.
            "memfd" => verdict(
                libc::syscall(libc::SYS_memfd_create, cstr("x").as_ptr(), 0),
                "memfd_create",
            ),
            "open-by-handle" => {
                let mut h = [0u8; 136];
                h[0..4].copy_from_slice(&128u32.to_ne_bytes());
                verdict(
                    libc::syscall(
                        libc::SYS_open_by_handle_at,
                        libc::AT_FDCWD,
                        h.as_mut_ptr(),
                        0,
                    ),
                    "open_by_handle_at",
                )
            }
            "finit-module" => verdict(
                libc::syscall(libc::SYS_finit_module, 0, cstr("").as_ptr(), 0),
                "finit_module",
            ),
            "kexec" => verdict(
                libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0),
                "kexec_load",
            ),
            "setns" => {
                let fd = libc::open(cstr("/proc/1/ns/mnt").as_ptr(), libc::O_RDONLY);
                verdict(libc::setns(fd, 0).into(), "setns")
            }
            "chroot" => verdict(libc::chroot(cstr("/tmp").as_ptr()).into(), "chroot"),
            "mknod" => verdict(
                libc::mknod(
                    cstr("/tmp/evil-null").as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(1, 3),
                )
                .into(),
                "mknod",
            ),
            "socket" => {
                // socket DOMAIN TYPE PROTO
                let n = |i: usize| arg(i).parse::<i32>().unwrap_or(0);
                verdict(libc::socket(n(0), n(1), n(2)).into(), "socket")
            }
            "tiocsti" => {
                let c = b'x';
                let rc = libc::ioctl(0, libc::TIOCSTI, &c);
                verdict(rc.into(), "TIOCSTI")
            }
            "kill" => {
                let pid: i32 = arg(0).parse().unwrap_or(0);
                verdict(libc::kill(pid, libc::SIGKILL).into(), "kill")
            }
            "tcp-connect" | "udp-connect" => {
                let addr: std::net::SocketAddr = arg(0).parse().expect("ADDR:PORT");
                let ty = if name == "tcp-connect" {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                };
                let std::net::SocketAddr::V4(v4) = addr else {
                    return 2;
                };
                let fd = libc::socket(libc::AF_INET, ty, 0);
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v4.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                verdict(
                    libc::connect(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of_val(&sa) as u32,
                    )
                    .into(),
                    "connect",
                )
            }
            "tcp-exchange" => {
                // Connect, send a request, and see whether anything answers: a connect
                // that the sandbox redirects and resets is not an escape.
                let addr: std::net::SocketAddr = arg(0).parse().expect("ADDR:PORT");
                let start = std::time::Instant::now();
                match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
                {
                    Err(e) => {
                        println!(
                            "BLOCKED {} after {} ms",
                            errname(e.raw_os_error().unwrap_or(0)),
                            start.elapsed().as_millis()
                        );
                        0
                    }
                    Ok(mut s) => {
                        use std::io::Write;
                        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
                        let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
                        let mut b = [0u8; 64];
                        match std::io::Read::read(&mut s, &mut b) {
                            Ok(n) if n > 0 => {
                                println!("ESCAPED got {n} bytes");
                                1
                            }
                            Ok(_) => {
                                println!("BLOCKED EOF after {} ms", start.elapsed().as_millis());
                                0
                            }
                            Err(e) => {
                                println!(
                                    "BLOCKED {} after {} ms",
                                    errname(e.raw_os_error().unwrap_or(0)),
                                    start.elapsed().as_millis()
                                );
                                0
                            }
                        }
                    }
                }
            }
            "abstract-connect" => {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let mut sa: libc::sockaddr_un = std::mem::zeroed();
                sa.sun_family = libc::AF_UNIX as u16;
                let n = arg(0);
                for (i, b) in n.bytes().enumerate() {
                    sa.sun_path[i + 1] = b as libc::c_char;
                }
                let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + n.len()) as u32;
                verdict(
                    libc::connect(fd, (&sa as *const libc::sockaddr_un).cast(), len).into(),
                    "connect",
                )
            }
            "exists" => {
                let ok = std::path::Path::new(&arg(0)).exists();
                println!(
                    "{} {}",
                    if ok {
                        "ESCAPED exists"
                    } else {
                        "BLOCKED absent"
                    },
                    arg(0)
                );
                i32::from(ok)
            }
            "sethostname" => verdict(
                libc::sethostname(cstr("x").as_ptr(), 1).into(),
                "sethostname",
            ),
            _ => {
                println!("unknown attack {name}");
                2
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("status") => status(),
        Some("attack") if args.len() >= 2 => attack(&args[1], &args[2..]),
        _ => {
            eprintln!("usage: openshell-probe status | attack NAME [ARGS]");
            2
        }
    };
    std::process::exit(code);
}
