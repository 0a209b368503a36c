//! Following a log file that grows and is rotated (renamed away, a new one started):
//! complete lines as they are appended, a half-written last line held until its end
//! arrives, a new file at the same path picked up (by inode). A line that never ends
//! (a hostile writer) is cut at [`MAX_LINE`] rather than kept growing. Used by `logs
//! --source sandbox` and by `term`'s log pane.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The longest line kept whole.
pub const MAX_LINE: usize = 1 << 20;

/// One followed file.
pub struct FileTail {
    path: PathBuf,
    reader: Option<BufReader<std::fs::File>>,
    pending: Vec<u8>,
}

impl FileTail {
    /// Follow `path` from its start, or from about `tail` bytes before its end (the
    /// line cut there skipped).
    pub fn open(path: PathBuf, tail: Option<u64>) -> Self {
        let mut t = Self {
            path,
            reader: None,
            pending: Vec::new(),
        };
        t.reopen(tail);
        t
    }

    fn reopen(&mut self, tail: Option<u64>) {
        self.reader = std::fs::File::open(&self.path).ok().map(|mut f| {
            let len = f.metadata().map_or(0, |m| m.len());
            match tail.filter(|t| len > *t) {
                Some(t) => {
                    let _ = f.seek(SeekFrom::Start(len - t));
                    let mut r = BufReader::new(f);
                    let mut cut = Vec::new();
                    let _ = r.read_until(b'\n', &mut cut);
                    r
                }
                None => BufReader::new(f),
            }
        });
    }

    /// Complete lines (without their `\n`) appended since the last call; after a
    /// rotation, the old file's unfinished line and then the new file's lines.
    pub fn poll(&mut self) -> Vec<Vec<u8>> {
        let mut new = self.read_new();
        let ours = self
            .reader
            .as_ref()
            .and_then(|r| r.get_ref().metadata().ok())
            .map(|m| m.ino());
        let now = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if ours != now {
            new.extend(self.rest());
            self.reopen(None);
            new.extend(self.read_new());
        }
        new
    }

    /// What is left of a last line without its newline.
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    fn read_new(&mut self) -> Vec<Vec<u8>> {
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
                        self.pending.pop();
                        out.push(std::mem::take(&mut self.pending));
                    } else if self.pending.len() > MAX_LINE {
                        out.push(std::mem::take(&mut self.pending));
                    }
                }
            }
        }
        out
    }
}
