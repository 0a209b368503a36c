//! What `openshell term` shows, gathered without drawing anything: one row per sandbox
//! (from the store and, for running ones, the forwards their supervisor holds) and the
//! followed tail of the selected sandbox's log.
//!
//! The log is read incrementally: opened near its end (the last 256 KiB), then only new
//! complete lines; a rotated file is finished and the new one followed, as `logs -f`
//! does. At most [`MAX_LINES`] lines are kept, so a chatty sandbox cannot grow the
//! dashboard.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openshell_runtime::api::record::{self, Phase};
use openshell_runtime::api::store::{self, Entry};
use openshell_runtime::api::{control, state};

use super::logs::{Filter, Level, render};
use super::tail::FileTail;

/// Lines of log kept for the selected sandbox.
pub const MAX_LINES: usize = 2000;
/// How far back from the end a log is read when a sandbox is selected.
const TAIL_BYTES: u64 = 256 * 1024;
/// Per-sandbox wait for the supervisor's list of forwards.
const FORWARDS_TIMEOUT: Duration = Duration::from_millis(300);

/// One sandbox as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its name.
    pub name: String,
    /// Its phase.
    pub phase: Phase,
    /// The image (`host` for the embedded default).
    pub image: String,
    /// Attached providers, comma-separated.
    pub providers: String,
    /// Since creation.
    pub age: String,
    /// Since the last process started or ended.
    pub idle: String,
    /// `8000,0.0.0.0:9000,...` of a running sandbox (the port alone: on 127.0.0.1).
    pub forwards: String,
    /// Its state directory.
    pub dir: PathBuf,
    /// Where its log is.
    pub log_dir: PathBuf,
}

/// Every sandbox of this user, sorted by name.
pub fn rows() -> Vec<Row> {
    let now = record::now();
    let mut rows: Vec<Row> = store::list(&state::base_dir())
        .into_iter()
        .map(|e| row(&e, now))
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

fn row(e: &Entry, now: u64) -> Row {
    let log_dir = e
        .record
        .as_ref()
        .ok()
        .and_then(|r| r.log_dir.clone())
        .unwrap_or_else(|| e.dir.join("logs"));
    let (phase, _) = e.phase();
    let (image, providers, age, idle) = match &e.record {
        Ok(r) => (
            r.image.clone(),
            r.providers.join(","),
            record::age(now.saturating_sub(r.created)),
            record::age(now.saturating_sub(r.last_active)),
        ),
        Err(_) => ("?".into(), String::new(), "?".into(), "?".into()),
    };
    Row {
        name: e.name.clone(),
        phase,
        image,
        providers,
        age,
        idle,
        forwards: if phase == Phase::Ready {
            forwards(&e.dir)
        } else {
            String::new()
        },
        dir: e.dir.clone(),
        log_dir,
    }
}

/// `PORT` or `BIND:PORT`, comma-separated, from a running supervisor; empty when it has none or does not answer.
fn forwards(dir: &Path) -> String {
    let sock = dir.join("control.sock");
    if !sock.exists() {
        return String::new();
    }
    let Ok((200, v)) = control::request(&sock, "GET", "/v1/forwards", None, FORWARDS_TIMEOUT)
    else {
        return String::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            // Loopback, the default, is left out: the port says it.
            let port = f["port"].as_u64().unwrap_or_default();
            match f["bind"].as_str().unwrap_or("?") {
                "127.0.0.1" => port.to_string(),
                bind => format!("{bind}:{port}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What kind of line a log line is, for highlighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary line.
    Plain,
    /// A denial or a rejected policy.
    Denied,
    /// A call through inference.local.
    Inference,
}

/// One rendered log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `TIME LEVEL MESSAGE`.
    pub text: String,
    /// For highlighting.
    pub kind: Kind,
}

impl Line {
    fn new(text: String) -> Self {
        let kind = if text.contains("API:INFERENCE") {
            Kind::Inference
        } else if text.contains("DENIED") || text.contains(" WARN ") || text.contains(" ERROR ") {
            Kind::Denied
        } else {
            Kind::Plain
        };
        Self { text, kind }
    }
}

/// The followed log of one sandbox.
pub struct LogTail {
    file: FileTail,
    /// The last [`MAX_LINES`] lines, oldest first.
    pub lines: VecDeque<Line>,
}

impl LogTail {
    /// Start following the log in `dir` from near its end.
    pub fn open(dir: &Path) -> Self {
        let mut t = Self {
            file: FileTail::open(dir.join("openshell.ocsf.jsonl"), Some(TAIL_BYTES)),
            lines: VecDeque::new(),
        };
        t.poll();
        t
    }

    /// Read what was appended; follow a rotation. Returns whether lines were added.
    pub fn poll(&mut self) -> bool {
        let filter = Filter {
            since_ms: None,
            level: Level::Info,
            json: false,
        };
        let mut added = false;
        for l in self.file.poll() {
            if let Some(text) = render(String::from_utf8_lossy(&l).trim_end(), &filter) {
                self.lines.push_back(Line::new(text));
                if self.lines.len() > MAX_LINES {
                    self.lines.pop_front();
                }
                added = true;
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ocsf(i: usize, msg: &str) -> String {
        format!(
            "{{\"severity\":\"Informational\",\"message\":\"{msg} {i}\",\"time\":{}}}\n",
            1_700_000_000_000u64 + i as u64
        )
    }

    #[test]
    fn the_tail_follows_appends_halves_and_rotations() {
        let dir = std::env::temp_dir().join(format!("os-term-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("openshell.ocsf.jsonl");
        let mut text = String::new();
        for i in 0..(MAX_LINES + 10) {
            text.push_str(&ocsf(i, "NET:OPEN ALLOWED"));
        }
        std::fs::write(&log, &text).unwrap();
        let mut t = LogTail::open(&dir);
        assert!(t.lines.len() <= MAX_LINES && !t.lines.is_empty());
        assert!(
            t.lines
                .back()
                .unwrap()
                .text
                .ends_with(&format!("{}", MAX_LINES + 9))
        );
        // Half a line waits for the rest.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let denied = ocsf(1, "NET:OPEN DENIED");
        f.write_all(&denied.as_bytes()[..10]).unwrap();
        assert!(!t.poll());
        f.write_all(&denied.as_bytes()[10..]).unwrap();
        assert!(t.poll());
        assert_eq!(t.lines.back().unwrap().kind, Kind::Denied);
        // Rotation: the new file is followed.
        std::fs::rename(&log, dir.join("openshell.ocsf.jsonl.1")).unwrap();
        std::fs::write(&log, ocsf(2, "API:INFERENCE chat")).unwrap();
        assert!(t.poll());
        assert_eq!(t.lines.back().unwrap().kind, Kind::Inference);
        assert!(t.lines.len() <= MAX_LINES);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
