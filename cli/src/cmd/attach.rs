//! Attaching this terminal to a sandbox's first command, kept by its session keeper
//! (`session`): the screen so far comes back from the replay buffer, keys go to the
//! command, window changes follow, and Ctrl-P Ctrl-Q detaches (docker's keys) leaving
//! it running. Ends with the command's exit status when it ends while attached.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::session::{read_frame, write_frame};

/// How an attachment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    /// The command ended with this status.
    Exited(i32),
    /// Ctrl-P Ctrl-Q: the command keeps running.
    Detached,
}

/// Detach keys: Ctrl-P then Ctrl-Q.
const CTRL_P: u8 = 0x10;
const CTRL_Q: u8 = 0x11;

/// Whether `dir`'s sandbox has a first command kept that one can attach to.
pub fn available(dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(super::session::socket_path(dir)).is_ok()
}

/// Restores the terminal when dropped.
struct Raw(Option<Termios>);

impl Raw {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, t);
        }
    }
}

/// Splits input at the detach keys: what to send, and whether they were pressed. A
/// Ctrl-P at the end of a read is held back until the next byte says what it was.
#[derive(Default)]
struct DetachKeys {
    held: bool,
}

impl DetachKeys {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + 1);
        for &b in input {
            if self.held {
                self.held = false;
                if b == CTRL_Q {
                    return (out, true);
                }
                out.push(CTRL_P);
            }
            if b == CTRL_P {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// Attach to the command kept for the sandbox in `dir`.
pub fn attach(dir: &Path) -> Result<Attached, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let sock = super::session::socket_path(dir);
    let r = rt.block_on(async {
        let s = UnixStream::connect(&sock)
            .await
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        let _raw = Raw::enter();
        relay(s).await
    });
    // The stdin reader may be blocked in a read: do not wait for it.
    rt.shutdown_background();
    r
}

fn winsize() -> Option<[u8; 4]> {
    let (c, r) = openshell_runtime::relay::get_winsize(std::io::stdout().as_fd())?;
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&c.to_be_bytes());
    b[2..].copy_from_slice(&r.to_be_bytes());
    Some(b)
}

async fn relay(s: UnixStream) -> Result<Attached, String> {
    let (mut r, mut w) = s.into_split();
    if let Some(ws) = winsize() {
        let _ = write_frame(&mut w, b'w', &ws).await;
    }
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| format!("SIGWINCH: {e}"))?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut keys = DetachKeys::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            f = read_frame(&mut r) => match f {
                Ok(Some((b'd', data))) => {
                    stdout.write_all(&data).await.map_err(|e| format!("stdout: {e}"))?;
                    stdout.flush().await.map_err(|e| format!("stdout: {e}"))?;
                }
                Ok(Some((b'e', code))) if code.len() == 4 => {
                    return Ok(Attached::Exited(i32::from_be_bytes([code[0], code[1], code[2], code[3]])));
                }
                Ok(Some(_)) => {}
                // The keeper went away without a status (killed with its sandbox).
                Ok(None) | Err(_) => return Ok(Attached::Exited(255)),
            },
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let (send, detach) = keys.feed(&buf[..n]);
                    if !send.is_empty() {
                        let _ = write_frame(&mut w, b'd', &send).await;
                    }
                    if detach {
                        return Ok(Attached::Detached);
                    }
                }
            },
            _ = winch.recv() => {
                if let Some(ws) = winsize() {
                    let _ = write_frame(&mut w, b'w', &ws).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_p_ctrl_q_detaches_and_nothing_else_does() {
        let mut k = DetachKeys::default();
        assert_eq!(k.feed(b"ab"), (b"ab".to_vec(), false));
        assert_eq!(k.feed(&[b'x', CTRL_P, CTRL_Q, b'y']), (b"x".to_vec(), true));
        let mut k = DetachKeys::default();
        // Ctrl-P alone goes through, late.
        assert_eq!(k.feed(&[CTRL_P]), (vec![], false));
        assert_eq!(k.feed(b"z"), (vec![CTRL_P, b'z'], false));
        assert_eq!(k.feed(&[CTRL_P, CTRL_P, CTRL_Q]), (vec![CTRL_P], true));
    }
}
