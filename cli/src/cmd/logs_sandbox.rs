//! `logs --source sandbox`: the output of a sandbox's first command, as its session
//! keeper wrote it (`logs/sandbox.log`, one rotated `.log.1` kept). It is a terminal's
//! output: lines end in `\r\n` (the `\r` is dropped) and may carry colours, printed as
//! they are, like `docker logs`. It has no times, so `--since` and `--level` do not
//! apply to it.

use std::path::Path;

use super::tail::FileTail;

/// The followed output file.
pub struct OutputTail(FileTail);

impl OutputTail {
    /// The sandbox in `dir`'s output, from its start (the rotated file first).
    pub fn open(dir: &Path) -> (Self, Vec<String>) {
        let path = super::session::log_path(dir);
        let mut old = FileTail::open(path.with_extension("log.1"), None);
        let mut first: Vec<String> = old.poll().iter().map(|l| line(l)).collect();
        first.extend(old.rest().map(|l| line(&l)));
        let mut t = FileTail::open(path, None);
        first.extend(t.poll().iter().map(|l| line(l)));
        (Self(t), first)
    }

    /// Complete lines written since the last call; follows a rotation.
    pub fn poll(&mut self) -> Vec<String> {
        self.0.poll().iter().map(|l| line(l)).collect()
    }

    /// What is left of a last line without its newline (at the end).
    pub fn rest(&mut self) -> Option<String> {
        self.0.rest().map(|l| line(&l))
    }
}

/// A line of terminal output: its `\r` dropped.
fn line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

/// Whether the first command still runs: its keeper answers on its socket (a socket
/// left by a keeper that was killed does not count, so `-f` ends).
pub fn running(dir: &Path) -> bool {
    super::attach::available(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rotation_and_half_lines() {
        let dir = std::env::temp_dir().join(format!("os-logsb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let log = super::super::session::log_path(&dir);
        std::fs::write(log.with_extension("log.1"), "old 1\r\nold 2\r\n").unwrap();
        std::fs::write(&log, "new 1\r\nhal").unwrap();
        let (mut t, first) = OutputTail::open(&dir);
        assert_eq!(first, ["old 1", "old 2", "new 1"]);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"f\r\n").unwrap();
        assert_eq!(t.poll(), ["half"]);
        std::fs::rename(&log, log.with_extension("log.1")).unwrap();
        std::fs::write(&log, "after\r\nend").unwrap();
        assert_eq!(t.poll(), ["after"]);
        assert_eq!(t.rest().as_deref(), Some("end"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
