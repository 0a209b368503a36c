//! The supervisor's side of a running sandbox: wait for init, forward signals, and (with
//! a terminal) relay bytes between the user's terminal and the sandbox's pty.
//!
//! Single-threaded: one poll loop over a signalfd, stdin and the pty master. Input to
//! the pty is buffered and written only when the pty can take it, so a command that
//! stops reading never blocks its own output.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

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

/// How long a command may take to end after openshell was asked to stop (SIGTERM,
/// SIGHUP) before it is killed: as `docker stop` does. An interactive shell ignores
/// SIGTERM; without this a `kill` of openshell would be ignored too.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Set once a stop was asked: when the command gets killed.
#[derive(Default)]
struct Stop(Option<Instant>);

impl Stop {
    /// How long poll may sleep: until the kill, else `idle`.
    fn timeout(&self, idle: Option<Duration>) -> PollTimeout {
        let left = self
            .0
            .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
        let t = match (left, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        t.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX)
        })
    }

    /// Start the grace time (once).
    fn begin(&mut self) {
        self.0.get_or_insert_with(|| Instant::now() + STOP_GRACE);
    }

    /// Past the grace time: kill the command and its process group (`exec`'s child
    /// leads one; init's death ends its whole pid namespace).
    fn enforce(&mut self, child: Pid) {
        if self.0.is_some_and(|d| Instant::now() >= d) {
            let _ = kill(child, Signal::SIGKILL);
            let _ = kill(Pid::from_raw(-child.as_raw()), Signal::SIGKILL);
            self.0 = None;
        }
    }
}

/// Handle one signal read from the signalfd; returns the child's exit code once it is
/// gone.
fn on_signal(
    sfd: &SignalFd,
    child: Pid,
    master: Option<BorrowedFd<'_>>,
    stop: &mut Stop,
) -> Option<i32> {
    let Ok(Some(info)) = sfd.read_signal() else {
        return None;
    };
    let sig = Signal::try_from(info.ssi_signo as i32).ok()?;
    match sig {
        Signal::SIGCHLD => reap(child),
        Signal::SIGWINCH => {
            if let Some(m) = master {
                copy_winsize(m);
            }
            None
        }
        other => {
            // With a pty, ^C arrives as a byte and the pty's line discipline signals the
            // foreground job; a signal sent to openshell itself is passed on (init
            // forwards it to the command).
            let _ = kill(child, other);
            // SIGTERM asks the command to end: it is killed if it has not after the
            // grace time. SIGHUP does too for a pty session (its terminal is going
            // away); without a pty it is only passed on (a program may reload on it).
            if other == Signal::SIGTERM || (other == Signal::SIGHUP && master.is_some()) {
                // An interactive shell ignores SIGTERM, not a hang-up.
                if master.is_some() && other != Signal::SIGHUP {
                    let _ = kill(child, Signal::SIGHUP);
                }
                stop.begin();
            }
            None
        }
    }
}

/// No terminal: the command has our stdio already; just wait and forward signals.
pub fn wait_plain(child: Pid, sfd: &SignalFd) -> i32 {
    let mut stop = Stop::default();
    loop {
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, stop.timeout(None)) {
            Ok(n) if n > 0 => {
                if let Some(code) = on_signal(sfd, child, None, &mut stop) {
                    return code;
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return crate::spawn::EXIT_SETUP,
        }
        stop.enforce(child);
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

/// Set the window size of the terminal `fd` (a pty master: its slave's readers get
/// the new size; `ssh-proxy` relays an SSH client's window changes this way).
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize, which `ws` is; `fd` is open (borrowed).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The window size (columns, rows) of the terminal `fd`, if it is one.
pub fn get_winsize(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize, which `ws` is; `fd` is open (borrowed).
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0)
            .then_some((ws.ws_col, ws.ws_row))
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
///
/// An input or a pty that is done (end of file, hang-up, EIO) leaves the poll set:
/// a pipe with no writer, or a pty whose every slave is closed, reports POLLHUP for
/// ever, and polling it again would spin.
pub fn relay_pty(init: Pid, sfd: &SignalFd, master: OwnedFd) -> i32 {
    let _raw = RawMode::enter();
    copy_winsize(master.as_fd());
    let _ = fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let mut master_open = true;
    let stdin_tty = nix::unistd::isatty(&stdin).unwrap_or(false);
    let mut buf = vec![0u8; 64 * 1024];
    let mut stop = Stop::default();
    // After piped input ends: the terminal mode the last end-of-file went into.
    let mut eof_sent_in: Option<bool> = None;
    let code = loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let m_at = master_open.then(|| {
            let mut ev = PollFlags::POLLIN;
            if !pending.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(master.as_fd(), ev));
            fds.len() - 1
        });
        let in_at = (stdin_open && pending.len() < 1 << 20).then(|| {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let idle = eof_sent_in
            .filter(|_| master_open)
            .map(|_| Duration::from_millis(100));
        match poll(&mut fds, stop.timeout(idle)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break crate::spawn::EXIT_SETUP,
        }
        let ev = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents())
                .unwrap_or(PollFlags::empty())
        };
        let (sig_ev, m_ev, in_ev) = (ev(Some(0)), ev(m_at), ev(in_at));
        drop(fds);
        if m_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(&master, &mut buf) {
                Ok(n) if n > 0 => write_all(stdout.as_fd(), &buf[..n]),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                // EOF/EIO: every slave end is closed. The command may live on without
                // a terminal; we wait for it (or a signal) without polling the pty.
                _ => {
                    master_open = false;
                    pending.clear();
                }
            }
        }
        if master_open && m_ev.contains(PollFlags::POLLOUT) && !pending.is_empty() {
            match nix::unistd::write(&master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if in_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                _ => {
                    stdin_open = false;
                    if stdin_tty {
                        // Our terminal hung up: so does the sandbox's (as a terminal
                        // would), or an interactive shell inside would wait forever;
                        // what ignores the hang-up is killed after the grace time.
                        let _ = kill(init, Signal::SIGHUP);
                        stop.begin();
                    } else if master_open {
                        // End of piped input: the pty's end-of-file character.
                        pending.push(0x04);
                        eof_sent_in = Some(canonical(master.as_fd()));
                    }
                }
            }
        }
        // A program that switched its terminal's mode since (readline, at start-up)
        // may have lost that end-of-file in the switch: give it another.
        if let Some(was) = eof_sent_in
            && master_open
            && pending.is_empty()
            && canonical(master.as_fd()) != was
        {
            pending.push(0x04);
            eof_sent_in = Some(!was);
        }
        if sig_ev.contains(PollFlags::POLLIN)
            && let Some(code) = on_signal(sfd, init, Some(master.as_fd()), &mut stop)
        {
            break code;
        }
        stop.enforce(init);
    };
    if master_open {
        drain(&master, &mut buf);
    }
    code
}

/// Is the pty's line discipline in canonical (line) mode?
fn canonical(master: BorrowedFd<'_>) -> bool {
    termios::tcgetattr(master)
        .map(|t| t.local_flags.contains(termios::LocalFlags::ICANON))
        .unwrap_or(true)
}

/// After the command ended: copy what is left in the pty to stdout — for a second at
/// most: what the command left running may write on for ever.
fn drain(master: &OwnedFd, buf: &mut [u8]) {
    let stdout = std::io::stdout();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
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
