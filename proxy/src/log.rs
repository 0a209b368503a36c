//! Decision and lifecycle logs: one short human line and one OCSF JSON line per event,
//! appended to the sandbox's `logs/` files (and echoed to stderr when verbose).
//! Never secrets, never query strings.
//!
//! What a sandboxed program controls (executable paths, names, paths) can hold any
//! byte: control characters are escaped (`\n`, `\x1b`, ...) in every line, so no line
//! can be forged and no escape sequence reaches a terminal. The files are bounded:
//! each is rotated to `NAME.1` past [`MAX_FILE`] (so at most twice that per file), and a
//! denial repeated within [`REPEAT_WINDOW`] is counted, not written again, then
//! summarised once (`[repeated N times]`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Size at which a log file is rotated.
pub const MAX_FILE: u64 = 16 << 20;
/// Identical denials within this window are counted instead of written.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10);
/// Most distinct denials tracked for counting.
const MAX_TRACKED: usize = 1024;

/// `s` with control characters (C0, DEL, C1) and backslashes escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One log file: appended, rotated when full.
struct Sink {
    file: File,
    path: PathBuf,
    size: u64,
}

impl Sink {
    fn open(path: PathBuf) -> Option<Self> {
        let file = open_file(&path)?;
        let size = file.metadata().map_or(0, |m| m.len());
        Some(Self { file, path, size })
    }

    fn append(&mut self, line: &str) {
        if self.size + line.len() as u64 > MAX_FILE {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, &old);
            if let Some(f) = open_file(&self.path) {
                self.file = f;
                self.size = 0;
            }
        }
        // One write per line: lines of concurrent connections never interleave.
        if self.file.write_all(line.as_bytes()).is_ok() {
            self.size += line.len() as u64;
        }
    }
}

fn open_file(p: &Path) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
        .ok()
}

/// Denials seen recently: when first written, and how many were not written since.
#[derive(Default)]
struct Repeats {
    seen: HashMap<String, (Instant, u64)>,
}

/// What happened to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEvent<'a> {
    /// `NET:OPEN`, `NET:BYPASS`, `NET:DNS`.
    pub kind: &'a str,
    /// Allowed or denied.
    pub allowed: bool,
    /// Executable path of the socket owner ("?" when unknown).
    pub binary: &'a str,
    /// Its pid (0 when unknown).
    pub pid: u32,
    /// Destination host (name or address).
    pub host: &'a str,
    /// Destination port.
    pub port: u16,
    /// The policy entry that allowed it.
    pub policy: Option<&'a str>,
    /// Why it was denied.
    pub reason: Option<&'a str>,
}

/// The log sink.
pub struct Logger {
    human: Option<Mutex<Sink>>,
    ocsf: Option<Mutex<Sink>>,
    verbose: bool,
    repeats: Mutex<Repeats>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Logger {
    /// Log into `dir` (`openshell.log`, `openshell.ocsf.jsonl`); `verbose` also echoes
    /// the human lines to stderr.
    pub fn new(dir: Option<&Path>, verbose: bool) -> Self {
        // The caller creates the directory; creating its parents here could bring
        // back a sandbox directory deleted meanwhile.
        if let Some(d) = dir {
            let _ = std::fs::create_dir(d);
        }
        let sink = |name: &str| dir.and_then(|d| Sink::open(d.join(name))).map(Mutex::new);
        Self {
            human: sink("openshell.log"),
            ocsf: sink("openshell.ocsf.jsonl"),
            verbose,
            repeats: Mutex::new(Repeats::default()),
        }
    }

    /// Write an event; `line` is escaped here (and becomes the JSON's `message`).
    /// A `denial` repeated within the window is only counted.
    fn write(&self, line: &str, mut json: serde_json::Value, denial: bool) {
        let line = escape(line);
        let mut summaries = Vec::new();
        {
            let mut r = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Summaries of counts whose window has passed (or all, when too many).
            let full = r.seen.len() >= MAX_TRACKED;
            r.seen.retain(|l, (at, n)| {
                let expired = full || now.duration_since(*at) >= REPEAT_WINDOW;
                if expired && *n > 0 {
                    summaries.push(format!("{l} [repeated {n} times]"));
                }
                !expired
            });
            if denial {
                if let Some((_, n)) = r.seen.get_mut(&line) {
                    *n += 1;
                    drop(r);
                    self.emit_summaries(&summaries);
                    return;
                }
                r.seen.insert(line.clone(), (now, 0));
            }
        }
        self.emit_summaries(&summaries);
        json["message"] = serde_json::Value::String(line.clone());
        self.emit(&line, &json);
    }

    fn emit_summaries(&self, lines: &[String]) {
        for l in lines {
            let json = serde_json::json!({
                "class_uid": 4001,
                "class_name": "Network Activity",
                "activity_name": "Repeated",
                "message": l,
                "time": now_ms(),
            });
            self.emit(l, &json);
        }
    }

    fn emit(&self, line: &str, json: &serde_json::Value) {
        if self.verbose {
            eprintln!("openshell: {line}");
        }
        if let Some(f) = &self.human {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&format!("{line}\n"));
        }
        if let Some(f) = &self.ocsf {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&format!("{json}\n"));
        }
    }

    /// A network decision.
    pub fn net(&self, e: &NetEvent<'_>) {
        let verdict = if e.allowed { "ALLOWED" } else { "DENIED" };
        let tail = match (e.policy, e.reason) {
            (Some(p), _) if e.allowed => format!("[policy:{p}]"),
            (_, Some(r)) => format!("[reason:{r}]"),
            _ => String::new(),
        };
        let line = format!(
            "{} {verdict} {}({}) -> {}:{} {tail}",
            e.kind, e.binary, e.pid, e.host, e.port
        );
        let name = e.binary.rsplit('/').next().unwrap_or(e.binary);
        let json = serde_json::json!({
            "class_uid": 4001,
            "class_name": "Network Activity",
            "activity_id": 1,
            "activity_name": if e.kind == "NET:BYPASS" { "Bypass" } else { "Open" },
            "action": if e.allowed { "Allowed" } else { "Denied" },
            "disposition": if e.allowed { "Allowed" } else { "Blocked" },
            "severity": if e.allowed { "Informational" } else { "Medium" },
            "dst_endpoint": {"hostname": e.host, "port": e.port},
            "actor": {"process": {"name": name, "path": e.binary, "pid": e.pid}},
            "firewall_rule": {"name": e.policy.unwrap_or("")},
            "status_detail": e.reason.unwrap_or(""),
            "message": line,
            "time": now_ms(),
        });
        self.write(&line, json, !e.allowed);
    }

    /// An inspected request: `HTTP:POST DENIED POST https://h/p [policy:x]`. `url`
    /// never carries the query string.
    pub fn http(
        &self,
        method: &str,
        url: &str,
        verdict: &str,
        who: &crate::Peer,
        policy: Option<&str>,
        reason: Option<&str>,
    ) {
        let mut line = format!(
            "HTTP:{method} {verdict} {method} {url} {}({})",
            who.exe, who.pid
        );
        if let Some(p) = policy {
            line.push_str(&format!(" [policy:{p}]"));
        }
        if let Some(r) = reason {
            line.push_str(&format!(" [reason:{r}]"));
        }
        let name = who.exe.rsplit('/').next().unwrap_or(&who.exe);
        let json = serde_json::json!({
            "class_uid": 4002,
            "class_name": "HTTP Activity",
            "activity_name": method,
            "action": if verdict == "DENIED" { "Denied" } else { "Allowed" },
            "disposition": verdict,
            "http_request": {"http_method": method, "url": {"url_string": url}},
            "actor": {"process": {"name": name, "path": who.exe, "pid": who.pid}},
            "firewall_rule": {"name": policy.unwrap_or("")},
            "status_detail": reason.unwrap_or(""),
            "message": line,
            "time": now_ms(),
        });
        self.write(&line, json, verdict == "DENIED");
    }

    /// One call through inference.local (`API:INFERENCE`): provider, model, status,
    /// latency to the response head.
    pub fn inference(
        &self,
        provider: &str,
        model: &str,
        call: &str,
        (status, latency_ms, tokens): (u16, u128, Option<(u64, u64)>),
        who: &crate::Peer,
    ) {
        let counted = tokens.map_or(String::new(), |(i, o)| format!(" [tokens:{i}/{o}]"));
        let line = format!(
            "API:INFERENCE {call} -> {status} [provider:{provider}] [model:{model}] {latency_ms}ms{counted} {}({})",
            who.exe, who.pid
        );
        let json = serde_json::json!({
            "class_uid": 6003,
            "class_name": "API Activity",
            "activity_name": call,
            "action": if status < 400 { "Allowed" } else { "Denied" },
            "status_code": status,
            "api": {"operation": call, "service": {"name": "inference.local"}},
            "ai_operation": {
                "provider": provider,
                "model": model,
                "latency_ms": latency_ms,
                "input_tokens": tokens.map(|t| t.0),
                "output_tokens": tokens.map(|t| t.1),
            },
            "actor": {"process": {"path": who.exe, "pid": who.pid}},
            "message": line,
            "time": now_ms(),
        });
        self.write(&line, json, false);
    }

    /// A lifecycle note (`NET:MODE ...`).
    pub fn note(&self, tag: &str, msg: &str) {
        let line = format!("{tag} {msg}");
        let json = serde_json::json!({
            "class_uid": 1006,
            "class_name": "Process Activity",
            "activity_name": tag,
            "status_detail": msg,
            "message": line,
            "time": now_ms(),
        });
        self.write(&line, json, false);
    }

    /// A policy (re)load.
    pub fn config(&self, version: u64, sha256: &str, loaded: bool, detail: &str) {
        let line = if loaded {
            format!("CONFIG:LOADED policy v{version} {sha256}")
        } else {
            format!("CONFIG:REJECTED policy (v{version} stays) [reason:{detail}]")
        };
        let json = serde_json::json!({
            "class_uid": 5002,
            "class_name": "Device Config State Change",
            "activity_name": if loaded { "Loaded" } else { "Rejected" },
            "action": if loaded { "Allowed" } else { "Denied" },
            "status_detail": detail,
            "message": line,
            "time": now_ms(),
        });
        self.write(&line, json, false);
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        let pending: Vec<String> = self
            .repeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .drain()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(l, (_, n))| format!("{l} [repeated {n} times]"))
            .collect();
        self.emit_summaries(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oslog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn dns(log: &Logger, host: &str) {
        log.net(&NetEvent {
            kind: "NET:DNS",
            allowed: false,
            binary: "?",
            pid: 0,
            host,
            port: 53,
            policy: None,
            reason: Some("no policy allows this name"),
        });
    }

    #[test]
    fn control_characters_never_reach_a_line() {
        assert_eq!(
            escape("a\nb\x1b[31mc\u{9b}d\\"),
            "a\\nb\\x{1b}[31mc\\x{9b}d\\\\"
        );
        let d = dir("esc");
        let log = Logger::new(Some(&d), false);
        dns(&log, "x.com\nNET:OPEN ALLOWED /usr/bin/curl(1) -> evil:443");
        drop(log);
        let text = std::fs::read_to_string(d.join("openshell.log")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("x.com\\nNET:OPEN"), "{text}");
        let json = std::fs::read_to_string(d.join("openshell.ocsf.jsonl")).unwrap();
        assert_eq!(json.lines().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn repeated_denials_are_counted_and_files_rotate() {
        let d = dir("rep");
        let log = Logger::new(Some(&d), false);
        for _ in 0..10_000 {
            dns(&log, "same.example");
        }
        drop(log);
        let text = std::fs::read_to_string(d.join("openshell.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[1].ends_with("[repeated 9999 times]"), "{text}");
        // Distinct denials: bounded by rotation, never more than two files' worth.
        let log = Logger::new(Some(&d), false);
        let long = "a".repeat(240);
        for i in 0..70_000 {
            dns(&log, &format!("{long}{i}"));
        }
        drop(log);
        for f in ["openshell.log", "openshell.ocsf.jsonl"] {
            let cur = std::fs::metadata(d.join(f)).unwrap().len();
            let old = std::fs::metadata(d.join(format!("{f}.1"))).unwrap().len();
            assert!(cur <= MAX_FILE && old <= MAX_FILE, "{f}: {cur} {old}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("openshell.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }
}
