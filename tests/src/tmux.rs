//! A tmux server of a test's own (its socket in a temp dir, killed on drop), to drive
//! terminal programs as a user does: `send-keys`, then read the screen with
//! `capture-pane`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{TempDir, eventually, stderr, stdout};

/// Whether tmux is installed.
pub fn available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Quote for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One tmux server with one 80×24 session.
pub struct Tmux {
    sock: PathBuf,
    _dir: TempDir,
}

impl Tmux {
    /// Run the shell command line `line` in a new 80×24 session.
    pub fn start(line: &str) -> Self {
        let dir = TempDir::new("tmux");
        let t = Self {
            sock: dir.path().join("sock"),
            _dir: dir,
        };
        let o = t
            .cmd()
            .args(["new-session", "-d", "-x", "80", "-y", "24", line])
            .output()
            .expect("tmux");
        assert!(o.status.success(), "tmux: {}", stderr(&o));
        t
    }

    /// A tmux command on this server.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock).stdin(Stdio::null());
        c.env("TERM", "xterm-256color");
        c
    }

    /// Send keys. An Escape goes alone, followed by a pause: a terminal cannot tell
    /// Escape and then `/` from Alt-`/` when they arrive together.
    pub fn keys(&self, keys: &[&str]) {
        for chunk in keys.split_inclusive(|k| *k == "Escape") {
            let o = self.cmd().arg("send-keys").args(chunk).output().unwrap();
            assert!(o.status.success(), "send-keys: {}", stderr(&o));
            if chunk.last() == Some(&"Escape") {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
    }

    /// Paste `text` into the pane at once (a tmux buffer), as a user's paste does.
    pub fn paste(&self, text: &str) {
        use std::io::Write;
        let mut c = self.cmd();
        let mut child = c
            .args(["load-buffer", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "load-buffer");
        let o = self.cmd().args(["paste-buffer", "-d"]).output().unwrap();
        assert!(o.status.success(), "paste-buffer: {}", stderr(&o));
    }

    /// Resize the window.
    pub fn resize(&self, cols: u16, rows: u16) {
        let o = self
            .cmd()
            .args([
                "resize-window",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "resize: {}", stderr(&o));
    }

    /// The screen as text (`escapes`: with colour escape sequences).
    pub fn screen(&self, escapes: bool) -> String {
        let mut c = self.cmd();
        c.args(["capture-pane", "-p"]);
        if escapes {
            c.arg("-e");
        }
        stdout(&c.output().unwrap())
    }

    /// Wait until the screen shows `want`; panic with the screen otherwise.
    pub fn wait_for(&self, want: &str) -> String {
        let mut last = String::new();
        if eventually(20, || {
            last = self.screen(false);
            last.contains(want)
        }) {
            return last;
        }
        panic!("the screen never showed {want:?}:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}
