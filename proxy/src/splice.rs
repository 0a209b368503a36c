//! Zero-copy relay of a raw tunnel: splice(2) moves the bytes socket → pipe → socket
//! inside the kernel, never through the proxy's memory. Opt-in (`OPENSHELL_SPLICE=1`):
//! on the 2-core VM of bench/RESULTS.md it was no faster than copying through 256 KiB
//! buffers and varied more, so the buffered copy is the default for L4 tunnels and
//! transparent TCP. Inspected (L7) connections go through TLS and hyper instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

const CHUNK: usize = 1 << 20;

/// Whether tunnels use splice (`OPENSHELL_SPLICE=1` in the supervisor's environment).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("OPENSHELL_SPLICE").is_some_and(|v| v == "1"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // A larger pipe means fewer round trips; the default (64 KiB) still works.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    Ok((r, w))
}

/// Move everything from `from` to `to` until EOF, then half-close `to`.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), None, pw.as_fd(), None, CHUNK, flags).map_err(io::Error::from)
        }) {
            Ok(0) => {
                let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(to), Shutdown::Write);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pr.as_fd(), None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

/// Relay both ways with splice until both sides are done (or one fails), or until the
/// policy changes.
pub async fn relay(a: &TcpStream, b: &TcpStream, mut generation: watch::Receiver<u64>) {
    generation.mark_unchanged();
    tokio::select! {
        _ = async { tokio::join!(one_way(a, b), one_way(b, a)) } => {}
        _ = generation.changed() => {}
    }
}
