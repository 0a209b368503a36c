//! Decision and lifecycle logs: one short human line and one OCSF JSON line per event,
//! appended to the sandbox's `logs/` files (and echoed to stderr when verbose).
//! Never secrets, never query strings.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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
    human: Option<Mutex<File>>,
    ocsf: Option<Mutex<File>>,
    verbose: bool,
}

fn open(p: &Path) -> Option<Mutex<File>> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .ok()
        .map(Mutex::new)
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
        Self {
            human: dir.and_then(|d| open(&d.join("openshell.log"))),
            ocsf: dir.and_then(|d| open(&d.join("openshell.ocsf.jsonl"))),
            verbose,
        }
    }

    fn write(&self, line: &str, json: serde_json::Value) {
        if self.verbose {
            eprintln!("openshell: {line}");
        }
        // One write per line: lines of concurrent connections never interleave.
        if let Some(f) = &self.human {
            let _ = f
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(format!("{line}\n").as_bytes());
        }
        if let Some(f) = &self.ocsf {
            let _ = f
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(format!("{json}\n").as_bytes());
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
        self.write(&line, json);
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
        self.write(&line, json);
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
        self.write(&line, json);
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
        self.write(&line, json);
    }
}
