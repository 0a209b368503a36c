//! `openshell logs NAME`: a sandbox's supervisor log (policy loads, every network
//! decision), read from its OCSF JSON lines, filtered, optionally followed.
//!
//! The JSON lines are the source of truth (they carry the time and the severity); the
//! human form printed here is `TIME LEVEL MESSAGE`. `-f` polls the file and ends when
//! the sandbox is no longer running and everything has been printed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use openshell_runtime::api::record::{self, Phase};
use openshell_runtime::api::{state, store};

use crate::output::{Format, fail};

/// Log levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Level {
    /// Everything (accepted for OpenShell's `--level debug`; nothing is logged below
    /// info).
    Debug,
    /// Everything allowed, loads.
    Info,
    /// Denials, rejected policies.
    Warn,
    /// Failures.
    Error,
}

/// Which logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The supervisor: policy loads and network decisions (`gateway`: OpenShell's name).
    #[value(alias = "gateway")]
    Supervisor,
    /// The output of the sandbox's first command (`create -- CMD`, also with
    /// --detach): what its terminal showed.
    Sandbox,
    /// Both: the supervisor's lines, then the command's output prefixed `sandbox| `.
    All,
}

/// `openshell logs NAME [...]`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The sandbox (default: the last one used).
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
    name: Option<String>,
    /// Keep printing new lines until the sandbox stops (`--tail`: OpenShell's spelling).
    #[arg(short, long, alias = "tail")]
    follow: bool,
    /// Only the last N lines (0: all).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 200)]
    lines: usize,
    /// Only lines newer than this (30s, 5m, 2h, 1d).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Which logs.
    #[arg(long, value_enum, default_value_t = Source::All)]
    source: Source,
    /// Only lines at this level or above.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    level: Level,
    /// With `--source sandbox`: the command's output exactly as written. Without it,
    /// colours pass and every other control character is shown escaped, so that what
    /// the sandbox printed cannot drive this terminal (titles, clipboard, replies).
    #[arg(long)]
    raw: bool,
}

fn level_of(v: &serde_json::Value) -> Level {
    match v["severity"].as_str() {
        Some("High" | "Critical" | "Fatal") => Level::Error,
        Some("Medium" | "Low") => Level::Warn,
        Some(_) => Level::Info,
        None if v["action"] == "Denied" => Level::Warn,
        None => Level::Info,
    }
}

/// Which lines `render` keeps, and how.
pub struct Filter {
    /// Only lines at or after this time (ms).
    pub since_ms: Option<u64>,
    /// Only lines at this level or above.
    pub level: Level,
    /// The JSON line (with `time_dt`) instead of the human form.
    pub json: bool,
}

/// The printed form of one JSON line, or None when filtered out.
pub fn render(line: &str, f: &Filter) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let time = v["time"].as_u64().unwrap_or_default();
    let level = level_of(&v);
    if level < f.level || f.since_ms.is_some_and(|s| time < s) {
        return None;
    }
    let stamp = record::rfc3339(time / 1000);
    let stamp = format!("{}.{:03}Z", stamp.trim_end_matches('Z'), time % 1000);
    if f.json {
        // The OCSF line as written, plus OCSF's Date/Time profile field `time_dt`
        // (RFC 3339, as every time in the CLI's JSON); `time` stays OCSF's epoch ms.
        let mut v = v;
        v["time_dt"] = stamp.into();
        return Some(v.to_string());
    }
    let lvl = match level {
        Level::Debug | Level::Info => "INFO ",
        Level::Warn => "WARN ",
        Level::Error => "ERROR",
    };
    // The proxy escapes control characters; a log written otherwise still never
    // sends one to the terminal.
    let message = escape_controls(v["message"].as_str().unwrap_or_default());
    Some(format!("{stamp} {lvl} {message}"))
}

/// `s` with its colour sequences (SGR: `ESC [ digits ; : m`) and tabs kept and every
/// other control character written `\x{..}`.
fn colours_only(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            let body = rest[1..].strip_prefix('[').map(|b| {
                b.find(|ch: char| !(ch.is_ascii_digit() || ch == ';' || ch == ':'))
                    .map_or((b, ""), |i| b.split_at(i))
            });
            if let Some((params, tail)) = body
                && tail.starts_with('m')
            {
                out.push('\x1b');
                out.push('[');
                out.push_str(params);
                out.push('m');
                rest = &tail[1..];
                continue;
            }
        }
        if c == '\t' || !c.is_control() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:x}}}", c as u32));
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `s` with every control character written `\x{..}`, so that a line shown among
/// others can neither move the cursor nor overwrite what came before it.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Run `logs`; returns the exit status.
pub fn run(mut args: LogsArgs, format: Format) -> i32 {
    let base = state::base_dir();
    let name = match super::sandbox::resolve(args.name.take()) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let entry = match store::find(&base, &name) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let since_ms = match args.since.as_deref() {
        None => None,
        Some(s) => match super::sandbox::duration("--since", s) {
            Ok(secs) => Some(record::now().saturating_sub(secs) * 1000),
            Err(e) => return fail(e),
        },
    };
    let filter = Filter {
        since_ms,
        level: args.level,
        json: format == Format::Json,
    };
    let dir: PathBuf = entry
        .record
        .as_ref()
        .ok()
        .and_then(|r| r.log_dir.clone())
        .unwrap_or_else(|| entry.dir.join("logs"));
    let json = format == Format::Json;
    // The first command's output (sandbox source): printed alone, or after the
    // supervisor's lines and then as it comes, prefixed (all).
    let (mut output, first) = super::logs_sandbox::OutputTail::open(&entry.dir);
    let show = |l: &str, prefixed: bool| {
        if json {
            println!("{}", serde_json::json!({"source": "sandbox", "message": l}));
        } else if prefixed {
            // Among the supervisor's lines the command's output is escaped: a `\r`
            // or an escape sequence cannot pass for a line of the log. Alone
            // (`--source sandbox`) it is the terminal output it was, as `docker logs`.
            println!("sandbox| {}", escape_controls(l));
        } else if args.raw {
            println!("{l}");
        } else {
            println!("{}", colours_only(l));
        }
    };
    let last_n = |v: &[String]| match args.lines {
        0 => 0,
        n => v.len().saturating_sub(n),
    };
    if args.source == Source::Sandbox {
        first[last_n(&first)..].iter().for_each(|l| show(l, false));
        while args.follow && super::logs_sandbox::running(&entry.dir) {
            std::thread::sleep(Duration::from_millis(200));
            output.poll().iter().for_each(|l| show(l, false));
        }
        if args.follow {
            output.poll().iter().for_each(|l| show(l, false));
        }
        if let Some(l) = output.rest() {
            show(&l, false);
        }
        return 0;
    }
    let with_output = args.source == Source::All;
    let path = dir.join("openshell.ocsf.jsonl");
    let mut printed: Vec<String> = Vec::new();
    let mut pending = String::new();
    // The rotated file first (the proxy keeps one: openshell.ocsf.jsonl.1).
    if let Ok(f) = std::fs::File::open(dir.join("openshell.ocsf.jsonl.1")) {
        read_lines(&mut BufReader::new(f), &mut pending, &filter, &mut printed);
        pending.clear();
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let mut reader = file.map(BufReader::new);
    if let Some(r) = reader.as_mut() {
        read_lines(r, &mut pending, &filter, &mut printed);
    }
    let skip = match args.lines {
        0 => 0,
        n => printed.len().saturating_sub(n),
    };
    for l in &printed[skip..] {
        println!("{l}");
    }
    if with_output {
        first[last_n(&first)..].iter().for_each(|l| show(l, true));
    }
    if !args.follow {
        return 0;
    }
    loop {
        let running = store::find(&base, &name).is_ok_and(|e| {
            e.record
                .as_ref()
                .is_ok_and(|r| matches!(r.phase().0, Phase::Ready | Phase::Provisioning))
        });
        // Rotated since we opened it: finish the old file, then follow the new one.
        let rotated = reader.as_ref().is_some_and(|r| {
            use std::os::unix::fs::MetadataExt;
            let ours = r.get_ref().metadata().map(|m| m.ino()).ok();
            let now = std::fs::metadata(&path).map(|m| m.ino()).ok();
            ours != now
        });
        if rotated {
            if let Some(r) = reader.as_mut() {
                let mut new = Vec::new();
                read_lines(r, &mut pending, &filter, &mut new);
                for l in new {
                    println!("{l}");
                }
            }
            pending.clear();
            reader = None;
        }
        if reader.is_none() {
            reader = std::fs::File::open(&path).ok().map(BufReader::new);
        }
        if let Some(r) = reader.as_mut() {
            let mut new = Vec::new();
            read_lines(r, &mut pending, &filter, &mut new);
            for l in new {
                println!("{l}");
            }
        }
        if with_output {
            output.poll().iter().for_each(|l| show(l, true));
        }
        if !running {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Read the complete lines available now; keep a partial last line for later.
fn read_lines(
    r: &mut BufReader<std::fs::File>,
    pending: &mut String,
    f: &Filter,
    out: &mut Vec<String>,
) {
    loop {
        let mut buf = String::new();
        match r.read_line(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                pending.push_str(&buf);
                if !pending.ends_with('\n') {
                    // A line still being written: the rest comes with a later read.
                    break;
                }
                if let Some(l) = render(pending, f) {
                    out.push(l);
                }
                pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_pass_and_nothing_else_does() {
        assert_eq!(
            colours_only("a\x1b[1;31mred\x1b[0m\tb"),
            "a\x1b[1;31mred\x1b[0m\tb"
        );
        // OSC 52 (clipboard), a clear line, a carriage return, a title, a bare ESC.
        assert_eq!(
            colours_only("\x1b]52;c;ZXZpbA==\x07x\x1b[2K\ry\x1b]0;t\x07\x1b"),
            "\\x{1b}]52;c;ZXZpbA==\\x{7}x\\x{1b}[2K\\x{d}y\\x{1b}]0;t\\x{7}\\x{1b}"
        );
        assert_eq!(colours_only("\x1b[5n\x1b[m"), "\\x{1b}[5n\x1b[m");
        assert_eq!(colours_only("é\u{9b}2J"), "é\\x{9b}2J");
    }

    #[test]
    fn renders_and_filters() {
        let f = Filter {
            since_ms: None,
            level: Level::Info,
            json: false,
        };
        let line = r#"{"action":"Denied","severity":"Medium","message":"NET:OPEN DENIED x","time":1795449608344}"#;
        assert_eq!(
            render(line, &f).unwrap(),
            "2026-11-23T16:00:08.344Z WARN  NET:OPEN DENIED x"
        );
        let warn_only = Filter {
            level: Level::Warn,
            ..f
        };
        let info = r#"{"severity":"Informational","message":"ok","time":1}"#;
        assert!(render(info, &warn_only).is_none());
        assert!(render("not json", &warn_only).is_none());
        let recent = Filter {
            since_ms: Some(2),
            level: Level::Info,
            json: true,
        };
        assert!(render(info, &recent).is_none());
    }
}
