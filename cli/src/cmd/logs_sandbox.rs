//! `logs --source sandbox`: the output of a sandbox's first command, as its session
//! keeper wrote it (`logs/sandbox.log`, one rotated `.log.1` kept). It is a terminal's
//! output: lines end in `\r\n` (the `\r` is dropped) and may carry colours, printed as
//! they are, like `docker logs`. It has no times, so `--since` and `--level` do not
//! apply to it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The followed output file.
pub struct OutputTail {
    path: PathBuf,
    reader: Option<BufReader<std::fs::File>>,
    pending: Vec<u8>,
}

impl OutputTail {
    /// The sandbox in `dir`'s output, from its start (the rotated file first).
    pub fn open(dir: &Path) -> (Self, Vec<String>) {
        let path = super::session::log_path(dir);
        let mut first = Vec::new();
        if let Ok(f) = std::fs::File::open(path.with_extension("log.1")) {
            let mut t = Self {
                path: path.clone(),
                reader: Some(BufReader::new(f)),
                pending: Vec::new(),
            };
            first = t.read_new();
            if !t.pending.is_empty() {
                first.push(line(&std::mem::take(&mut t.pending)));
            }
        }
        let mut t = Self {
            reader: std::fs::File::open(&path).ok().map(BufReader::new),
            path,
            pending: Vec::new(),
        };
        first.extend(t.read_new());
        (t, first)
    }

    /// Complete lines written since the last call; follows a rotation.
    pub fn poll(&mut self) -> Vec<String> {
        let mut new = self.read_new();
        let ours = self
            .reader
            .as_ref()
            .and_then(|r| r.get_ref().metadata().ok())
            .map(|m| m.ino());
        let now = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if ours != now {
            if !self.pending.is_empty() {
                new.push(line(&std::mem::take(&mut self.pending)));
            }
            self.reader = std::fs::File::open(&self.path).ok().map(BufReader::new);
            new.extend(self.read_new());
        }
        new
    }

    /// What is left of a last line without its newline (at the end).
    pub fn rest(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| line(&std::mem::take(&mut self.pending)))
    }

    fn read_new(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(r) = self.reader.as_mut() else {
            return out;
        };
        loop {
            let mut buf = Vec::new();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    self.pending.extend_from_slice(&buf);
                    if self.pending.ends_with(b"\n") {
                        out.push(line(&std::mem::take(&mut self.pending)));
                    } else if self.pending.len() > 1 << 20 {
                        // A line that never ends is cut, not kept growing.
                        out.push(line(&std::mem::take(&mut self.pending)));
                    }
                }
            }
        }
        out
    }
}

fn line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\n')
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
