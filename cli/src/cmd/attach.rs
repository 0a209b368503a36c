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

/// Detach keys: Ctrl-P then Ctrl-Q, as a terminal sends them plainly (0x10, 0x11), with
/// xterm's modifyOtherKeys (`CSI 27;5;112~`) or with the kitty keyboard protocol
/// (`CSI 112;5u`, also with Caps Lock or Num Lock on — `CSI 112;69u` — and as press
/// events `CSI 112;5:1u`): the command inside may turn either protocol on, and must not
/// thereby take the way out from the user. Between the two, kitty's release events and
/// presses of modifier keys alone are let by (`ignorable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    P,
    Q,
}

const MODIFY_OTHER_KEYS: [(&[u8], Key); 2] =
    [(b"\x1b[27;5;112~", Key::P), (b"\x1b[27;5;113~", Key::Q)];

/// A kitty keyboard protocol key event at the start of `input` (`CSI code[:alt...]
/// [;mods[:event][;text]] u`): its key code, modifier bits (mods - 1), event type (1
/// press, 2 repeat, 3 release) and length. At most 48 bytes are looked at.
fn csi_u(input: &[u8]) -> Option<(u32, u32, u32, usize)> {
    let body = input.strip_prefix(b"\x1b[")?;
    let end = body
        .iter()
        .take(48)
        .position(|b| !(b.is_ascii_digit() || *b == b';' || *b == b':'))?;
    if body[end] != b'u' {
        return None;
    }
    let text = std::str::from_utf8(&body[..end]).ok()?;
    let mut fields = text.split(';');
    let code: u32 = fields.next()?.split(':').next()?.parse().ok()?;
    let (mods, event) = match fields.next() {
        None => (1, 1),
        Some(f) => {
            let mut m = f.split(':');
            let mods: u32 = m.next()?.parse().ok()?;
            let event: u32 = m.next().map_or(Some(1), |e| e.parse().ok())?;
            (mods, event)
        }
    };
    Some((code, mods.checked_sub(1)?, event, 2 + end + 1))
}

/// Ctrl, with Caps Lock and Num Lock allowed on (kitty reports them as modifiers).
fn ctrl_only(bits: u32) -> bool {
    const CTRL: u32 = 4;
    const LOCKS: u32 = 64 | 128;
    bits & CTRL != 0 && bits & !(CTRL | LOCKS) == 0
}

/// A detach key pressed at the start of `input`, and its length.
fn key_at(input: &[u8]) -> Option<(Key, usize)> {
    match input.first()? {
        0x10 => return Some((Key::P, 1)),
        0x11 => return Some((Key::Q, 1)),
        _ => {}
    }
    if let Some((form, k)) = MODIFY_OTHER_KEYS.iter().find(|(f, _)| input.starts_with(f)) {
        return Some((*k, form.len()));
    }
    let (code, bits, event, len) = csi_u(input)?;
    let key = match code {
        112 => Key::P,
        113 => Key::Q,
        _ => return None,
    };
    (ctrl_only(bits) && event != 3).then_some((key, len))
}

/// A kitty event that may come between Ctrl-P and Ctrl-Q without breaking them up: any
/// release, or a press of a modifier key alone (left/right Shift … Meta, Caps Lock,
/// Num Lock).
fn ignorable(input: &[u8]) -> Option<usize> {
    let (code, _, event, len) = csi_u(input)?;
    let modifier = (57441..=57452).contains(&code) || code == 57358 || code == 57360;
    (event == 3 || modifier).then_some(len)
}

/// The most held back after a Ctrl-P while waiting for what follows it.
const HELD_MAX: usize = 4096;

/// What the terminal is told when this client lets go of it, whatever the command
/// left on (and the main screen when it was left on the alternate one): a visible cursor, no mouse reporting, no bracketed paste,
/// the keyboard protocols off, plain colours.
const TERMINAL_RESET: &[u8] =
    b"\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[<u\x1b[>4;0m\x1b[0m";

/// Frames on their way to the keeper.
const INPUT_QUEUE: usize = 64;
/// Input held here, in order, while the command reads slower than it comes (a large
/// paste): kept whole up to this size; beyond it (a command that stopped reading) new
/// keys are dropped — and still watched for the detach keys.
const PENDING_MAX: usize = 8 << 20;

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
/// Ctrl-P (and what may follow it unnoticed, `ignorable`) is held back until the next
/// key says what it was.
#[derive(Default)]
struct DetachKeys {
    held: Vec<u8>,
}

impl DetachKeys {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + 16);
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            if !self.held.is_empty() {
                if let Some((Key::Q, _)) = key_at(rest) {
                    self.held.clear();
                    return (out, true);
                }
                if let Some(n) = ignorable(rest).filter(|_| self.held.len() < HELD_MAX) {
                    self.held.extend_from_slice(&rest[..n]);
                    i += n;
                    continue;
                }
                out.append(&mut self.held);
            }
            if let Some((Key::P, n)) = key_at(rest) {
                self.held.extend_from_slice(&rest[..n]);
                i += n;
            } else {
                out.push(rest[0]);
                i += 1;
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
    let (c, r) = openshell_runtime::api::session::get_winsize(std::io::stdout().as_fd())?;
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&c.to_be_bytes());
    b[2..].copy_from_slice(&r.to_be_bytes());
    Some(b)
}

async fn relay(s: UnixStream) -> Result<Attached, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut r, mut w) = s.into_split();
    // Frames to the keeper go through a bounded queue and a task of their own: a
    // command that stops reading its input must not stop this loop from reading the
    // keyboard (and seeing the detach keys).
    let (to_keeper, mut queue) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(INPUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((kind, data)) = queue.recv().await {
            if write_frame(&mut w, kind, &data).await.is_err() {
                return;
            }
        }
    });
    // Frames from it are read whole by a task of their own too: a frame read inside the
    // select below could be cut in two when another branch wins.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Option<(u8, Vec<u8>)>>(16);
    tokio::spawn(async move {
        loop {
            let f = read_frame(&mut r).await.ok().flatten();
            let end = f.is_none();
            if frames_tx.send(f).await.is_err() || end {
                return;
            }
        }
    });
    let mut size_due: Option<[u8; 4]> = winsize();
    let mut alt_screen = AltScreen::default();
    let sig = |k: SignalKind, n: &str| signal(k).map_err(|e| format!("{n}: {e}"));
    let mut winch = sig(SignalKind::window_change(), "SIGWINCH")?;
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut keys = DetachKeys::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    let mut pending: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut pending_bytes = 0usize;
    // Past PENDING_MAX: input is dropped until what is held has gone (one cut, not holes).
    let mut cut = false;
    let ended = loop {
        tokio::select! {
            permit = to_keeper.reserve(), if !pending.is_empty() => {
                let Ok(permit) = permit else { break Attached::Exited(255) };
                if let Some(data) = pending.pop_front() {
                    pending_bytes -= data.len();
                    permit.send((b'd', data));
                }
                if pending.is_empty() {
                    cut = false;
                }
            }
            f = frames.recv() => match f.flatten() {
                Some((b'd', data)) => {
                    alt_screen.see(&data);
                    stdout.write_all(&data).await.map_err(|e| format!("stdout: {e}"))?;
                    stdout.flush().await.map_err(|e| format!("stdout: {e}"))?;
                }
                Some((b'e', code)) if code.len() == 4 => {
                    break Attached::Exited(i32::from_be_bytes([code[0], code[1], code[2], code[3]]));
                }
                Some(_) => {}
                // The keeper went away without a status (killed with its sandbox).
                None => break Attached::Exited(255),
            },
            permit = to_keeper.reserve(), if size_due.is_some() && pending.is_empty() => {
                let Ok(permit) = permit else { break Attached::Exited(255) };
                if let Some(ws) = size_due.take() {
                    permit.send((b'w', ws.to_vec()));
                }
            }
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let (send, detach) = keys.feed(&buf[..n]);
                    if !send.is_empty() {
                        if !pending.is_empty() {
                            hold(&mut pending, &mut pending_bytes, &mut cut, send);
                        } else if let Err(tokio::sync::mpsc::error::TrySendError::Full((_, send))) =
                            to_keeper.try_send((b'd', send))
                        {
                            hold(&mut pending, &mut pending_bytes, &mut cut, send);
                        }
                    }
                    if detach {
                        break Attached::Detached;
                    }
                }
            },
            // The newest size goes when the queue has room (never lost, never stale).
            _ = winch.recv() => size_due = winsize().or(size_due),
            // Killed or hung up: let go of the terminal (the caller restores its mode).
            _ = term.recv() => break Attached::Detached,
            _ = hup.recv() => break Attached::Detached,
        }
    };
    // What was typed and not yet sent still goes (briefly): detaching must not eat it.
    drop(to_keeper);
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), writer).await;
    if std::io::stdout().is_terminal() {
        if alt_screen.on {
            let _ = stdout.write_all(b"\x1b[?1049l").await;
        }
        let _ = stdout.write_all(TERMINAL_RESET).await;
        let _ = stdout.flush().await;
    }
    Ok(ended)
}

/// Keep `data` for the keeper, after what is already held, within [`PENDING_MAX`];
/// once over it, nothing more until the held input has gone (`cut`).
fn hold(
    pending: &mut std::collections::VecDeque<Vec<u8>>,
    bytes: &mut usize,
    cut: &mut bool,
    data: Vec<u8>,
) {
    if *cut || *bytes + data.len() > PENDING_MAX {
        *cut = true;
        return;
    }
    *bytes += data.len();
    pending.push_back(data);
}

/// Whether the command's output left the terminal on its alternate screen (the last
/// of `CSI ?1049h`/`?1047h`/`?47h` and their `l` forms seen), so that letting go
/// switches back only then: elsewhere `?1049l` also restores a saved cursor.
#[derive(Default)]
struct AltScreen {
    on: bool,
}

impl AltScreen {
    fn see(&mut self, out: &[u8]) {
        const FORMS: [&[u8]; 3] = [b"\x1b[?1049", b"\x1b[?1047", b"\x1b[?47"];
        for i in 0..out.len() {
            let rest = &out[i..];
            for f in FORMS {
                if rest.starts_with(f) {
                    match rest.get(f.len()) {
                        Some(b'h') => self.on = true,
                        Some(b'l') => self.on = false,
                        _ => {}
                    }
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
        assert_eq!(k.feed(b"x\x10\x11y"), (b"x".to_vec(), true));
        let mut k = DetachKeys::default();
        // Ctrl-P alone goes through, late.
        assert_eq!(k.feed(b"\x10"), (vec![], false));
        assert_eq!(k.feed(b"z"), (b"\x10z".to_vec(), false));
        assert_eq!(k.feed(b"\x10\x10\x11"), (b"\x10".to_vec(), true));
    }

    #[test]
    fn the_alternate_screen_is_followed() {
        let mut a = AltScreen::default();
        a.see(b"x\x1b[?1049hy");
        assert!(a.on);
        a.see(b"\x1b[?1049l");
        assert!(!a.on);
        a.see(b"\x1b[?47h");
        assert!(a.on);
        a.see(b"\x1b[?1047l\x1b[?1049");
        assert!(!a.on);
    }

    #[test]
    fn input_past_the_limit_is_cut_once_not_holed() {
        let (mut p, mut b, mut cut) = (Default::default(), 0, false);
        hold(&mut p, &mut b, &mut cut, vec![0; PENDING_MAX - 10]);
        hold(&mut p, &mut b, &mut cut, vec![1; 20]);
        // Smaller input after the cut is not let in: no hole in the middle.
        hold(&mut p, &mut b, &mut cut, vec![2; 5]);
        assert!(cut);
        assert_eq!(p.len(), 1);
        assert_eq!(b, PENDING_MAX - 10);
    }

    #[test]
    fn the_keyboard_protocols_forms_detach_too() {
        // kitty's CSI u, within one read and across two.
        let mut k = DetachKeys::default();
        assert_eq!(k.feed(b"a\x1b[112;5u\x1b[113;5u"), (b"a".to_vec(), true));
        let mut k = DetachKeys::default();
        assert_eq!(k.feed(b"\x1b[112;5u"), (vec![], false));
        assert_eq!(k.feed(b"\x11"), (vec![], true));
        // modifyOtherKeys.
        let mut k = DetachKeys::default();
        assert_eq!(k.feed(b"\x1b[27;5;112~\x1b[27;5;113~"), (vec![], true));
        // A held CSI-u Ctrl-P followed by something else goes through as it came.
        let mut k = DetachKeys::default();
        assert_eq!(k.feed(b"\x1b[112;5ux"), (b"\x1b[112;5ux".to_vec(), false));
        // Other CSI sequences are untouched.
        assert_eq!(
            k.feed(b"\x1b[A\x1b[113;5u"),
            (b"\x1b[A\x1b[113;5u".to_vec(), false)
        );
    }

    #[test]
    fn kitty_lock_modifiers_and_event_types() {
        // Caps Lock (64) and Num Lock (128) on: still Ctrl-P Ctrl-Q.
        for (p, q) in [
            (&b"\x1b[112;69u"[..], &b"\x1b[113;69u"[..]),
            (b"\x1b[112;133u", b"\x1b[113;133u"),
            (b"\x1b[112;197u", b"\x1b[113;5u"),
            // Explicit press events, and alternate key codes.
            (b"\x1b[112:80;5:1u", b"\x1b[113;5:1u"),
        ] {
            let mut k = DetachKeys::default();
            let input = [p, q].concat();
            assert_eq!(
                k.feed(&input),
                (vec![], true),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
        // Releases and a modifier pressed alone in between (report-all-keys mode).
        let mut k = DetachKeys::default();
        assert_eq!(
            k.feed(b"\x1b[112;5u\x1b[112;5:3u\x1b[57442;5u\x1b[113;5u"),
            (vec![], true)
        );
        // Ctrl-Shift-P or Alt-Ctrl-P is not the detach key; a release of Ctrl-P alone
        // neither.
        for not in [&b"\x1b[112;6u"[..], b"\x1b[112;7u", b"\x1b[112;5:3u"] {
            let mut k = DetachKeys::default();
            let input = [not, b"\x1b[113;5u"].concat();
            assert_eq!(k.feed(&input), (input.clone(), false));
        }
        // Held events go through in order when something else follows.
        let mut k = DetachKeys::default();
        assert_eq!(
            k.feed(b"\x1b[112;5u\x1b[112;5:3ux"),
            (b"\x1b[112;5u\x1b[112;5:3ux".to_vec(), false)
        );
        // Hostile or broken sequences neither panic nor detach.
        for junk in [
            &b"\x1b[;u"[..],
            b"\x1b[112;0u",
            b"\x1b[99999999999;5u",
            b"\x1b[112;5:u",
        ] {
            let mut k = DetachKeys::default();
            assert!(!k.feed(junk).1);
        }
    }
}
