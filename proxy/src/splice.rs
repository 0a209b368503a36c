//! Zero-copy relay of a raw tunnel: splice(2) moves the bytes socket → pipe → socket
//! inside the kernel, never through the proxy's memory. Opt-in (`OPENSHELL_SPLICE=1`):
//! on the 2-core VM of bench/RESULTS.md it was no faster than copying through 256 KiB
//! buffers and varied more, so the buffered copy is the default for L4 tunnels and
//! transparent TCP. Inspected (L7) connections go through TLS and hyper instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
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

/// Move everything from `from` to `to` until EOF, then half-close `to`. Reading and
/// writing overlap: the pipe fills from `from` while it drains into `to`, so neither
/// side waits for the other's whole chunk.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let (mut in_pipe, mut total) = (0usize, 0u64);
    let (mut eof, mut pipe_full) = (false, false);
    loop {
        if eof && in_pipe == 0 {
            let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(to), Shutdown::Write);
            return Ok(total);
        }
        tokio::select! {
            r = from.readable(), if !eof && !pipe_full && in_pipe < CHUNK => {
                r?;
                match splice(from.as_fd(), None, pw.as_fd(), None, CHUNK - in_pipe, flags) {
                    Ok(0) => eof = true,
                    Ok(n) => in_pipe += n,
                    // With bytes in the pipe, EAGAIN may mean the pipe is out of slots:
                    // wait for the writer rather than for the socket.
                    Err(Errno::EAGAIN) if in_pipe > 0 => pipe_full = true,
                    Err(Errno::EAGAIN) => {
                        let _ = from.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            r = to.writable(), if in_pipe > 0 => {
                r?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(pr.as_fd(), None, to.as_fd(), None, in_pipe, flags)
                        .map_err(io::Error::from)
                }) {
                    Ok(m) => {
                        in_pipe -= m;
                        total += m as u64;
                        pipe_full = false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Relay both ways with splice until both sides are done (or one fails), or until the
/// policy changes (since `generation` was taken, when the connection was accepted).
pub async fn relay(a: &TcpStream, b: &TcpStream, mut generation: watch::Receiver<u64>) {
    tokio::select! {
        _ = async { tokio::join!(one_way(a, b), one_way(b, a)) } => {}
        _ = generation.changed() => {}
    }
}
