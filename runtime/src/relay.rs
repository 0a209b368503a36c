//! The supervisor's side of a running sandbox: wait for init, forward signals, and (with
//! a terminal) relay bytes between the user's terminal and the sandbox's pty.
//!
//! Single-threaded: one poll loop over a signalfd, stdin and the pty master. Input to
//! the pty is buffered and written only when the pty can take it, so a command that
//! stops reading never blocks its own output.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Exit code for a wait status: the code, or 128 + signal.
pub fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

fn reap(init: Pid) -> Option<i32> {
    match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
        Ok(ws) => exit_code(ws),
        Err(Errno::ECHILD) => Some(crate::spawn::EXIT_SETUP),
        Err(_) => None,
    }
}

/// Handle one signal read from the signalfd; returns init's exit code once it is gone.
fn on_signal(sfd: &SignalFd, init: Pid, master: Option<BorrowedFd<'_>>) -> Option<i32> {
    let Ok(Some(info)) = sfd.read_signal() else {
        return None;
    };
    let sig = Signal::try_from(info.ssi_signo as i32).ok()?;
    match sig {
        Signal::SIGCHLD => reap(init),
        Signal::SIGWINCH => {
            if let Some(m) = master {
                copy_winsize(m);
            }
            None
        }
        other => {
            // With a pty, ^C arrives as a byte and the pty's line discipline signals the
            // foreground job; a signal sent to openshell itself is passed on to init,
            // which forwards it to the command.
            let _ = kill(init, other);
            None
        }
    }
}

/// No terminal: the command has our stdio already; just wait and forward signals.
pub fn wait_plain(init: Pid, sfd: &SignalFd) -> i32 {
    loop {
        if let Some(code) = on_signal(sfd, init, None) {
            return code;
        }
    }
}

/// Restores the terminal's mode when dropped.
struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
        let saved = termios::tcgetattr(&fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw).ok()?;
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

fn copy_winsize(master: BorrowedFd<'_>) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it from our stdout terminal and
    // TIOCSWINSZ reads it; both fds are open.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::NONE);
            }
            Err(_) => return,
        }
    }
}

/// With a terminal: raw mode, relay both ways, follow the window size.
pub fn relay_pty(init: Pid, sfd: &SignalFd, master: OwnedFd) -> i32 {
    let _raw = RawMode::enter();
    copy_winsize(master.as_fd());
    let _ = fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let stdin_tty = nix::unistd::isatty(&stdin).unwrap_or(false);
    let mut buf = vec![0u8; 64 * 1024];
    let code = loop {
        let mut master_ev = PollFlags::POLLIN;
        if !pending.is_empty() {
            master_ev |= PollFlags::POLLOUT;
        }
        let stdin_ev = if stdin_open && pending.len() < 1 << 20 {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let mut fds = [
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), master_ev),
            PollFd::new(stdin.as_fd(), stdin_ev),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break crate::spawn::EXIT_SETUP,
        }
        let ev = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let (sig_ev, m_ev, in_ev) = (ev(0), ev(1), ev(2));
        if m_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(&master, &mut buf) {
                Ok(n) if n > 0 => write_all(stdout.as_fd(), &buf[..n]),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                // EIO: every slave end is closed; the command is gone.
                _ => {}
            }
        }
        if m_ev.contains(PollFlags::POLLOUT) && !pending.is_empty() {
            match nix::unistd::write(&master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if in_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                _ => {
                    stdin_open = false;
                    if stdin_tty {
                        // Our terminal hung up: so does the sandbox's (as a terminal
                        // would), or an interactive shell inside would wait forever.
                        let _ = kill(init, Signal::SIGHUP);
                    } else {
                        // End of piped input: the pty's end-of-file character.
                        pending.push(0x04);
                    }
                }
            }
        }
        if sig_ev.contains(PollFlags::POLLIN)
            && let Some(code) = on_signal(sfd, init, Some(master.as_fd()))
        {
            break code;
        }
    };
    drain(&master, &mut buf);
    code
}

/// After the command ended: copy what is left in the pty to stdout.
fn drain(master: &OwnedFd, buf: &mut [u8]) {
    let stdout = std::io::stdout();
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u8)) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        match nix::unistd::read(master, buf) {
            Ok(n) if n > 0 => write_all(stdout.as_fd(), &buf[..n]),
            _ => return,
        }
    }
}
