//! `openshell sandbox ssh-config NAME` and `--editor vscode|cursor`: OpenSSH config for
//! reaching a sandbox through `openshell ssh-proxy NAME` (no port, no sshd), and the
//! editors that use it.
//!
//! For an editor, the blocks live in a file openshell owns
//! (`$XDG_CONFIG_HOME/openshell/ssh_config`, rewritten whole each time: one block per
//! existing sandbox that was opened in an editor), and `~/.ssh/config` gets one
//! `Include` line for it, at its top (where an Include applies to every host), never a
//! second one. A `~/.ssh/config` that is a symlink (dotfile managers) is edited where it
//! points. Then `code`/`cursor --remote ssh-remote+openshell-NAME DIR` is started and
//! left running.

use std::io::Write;
use std::path::{Path, PathBuf};

use openshell_runtime::api::{state, store};

use crate::output::fail;

/// The editors `--editor` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Editor {
    /// Visual Studio Code (`code`), with its Remote - SSH extension.
    Vscode,
    /// Cursor (`cursor`).
    Cursor,
}

impl Editor {
    fn command(self) -> &'static str {
        match self {
            Self::Vscode => "code",
            Self::Cursor => "cursor",
        }
    }
}

/// The host alias of a sandbox.
pub fn host(name: &str) -> String {
    format!("openshell-{name}")
}

/// `s` quoted for the shell ssh runs `ProxyCommand` with, `%` doubled (ssh expands
/// `%h`, `%p`... there). A line break cannot be written in ssh_config: refused.
fn quote(s: &str) -> Result<String, String> {
    if s.contains(['\n', '\r']) {
        return Err(format!(
            "{s:?} has a line break, which ssh_config cannot hold: use another path"
        ));
    }
    Ok(format!("'{}'", s.replace('\'', r"'\''").replace('%', "%%")))
}

/// The `Host openshell-NAME` block: `ProxyCommand` is this binary's absolute path.
pub fn block(name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("find openshell itself: {e}"))?;
    let exe = exe.to_string_lossy().into_owned();
    // A state directory set by variable must reach the proxy too (ssh runs it with
    // its own environment, which may not have it).
    let env = match std::env::var_os("OPENSHELL_STATE_DIR") {
        Some(d) => format!("env OPENSHELL_STATE_DIR={} ", quote(&d.to_string_lossy())?),
        None => String::new(),
    };
    Ok(format!(
        "Host {host}\n\
         \x20   User sandbox\n\
         \x20   ProxyCommand {env}{exe} ssh-proxy {name}\n\
         \x20   # The proxy is the server (a pipe, no network): its key is new each time.\n\
         \x20   StrictHostKeyChecking no\n\
         \x20   UserKnownHostsFile /dev/null\n\
         \x20   GlobalKnownHostsFile /dev/null\n\
         \x20   LogLevel ERROR\n\
         \x20   ServerAliveInterval 30\n",
        host = host(name),
        exe = quote(&exe)?,
    ))
}

/// `sandbox ssh-config NAME`.
pub fn print(name: &str) -> i32 {
    if let Err(e) = store::find(&state::base_dir(), name) {
        return fail(e);
    }
    match block(name) {
        Ok(b) => {
            print!("{b}");
            0
        }
        Err(e) => fail(e),
    }
}

/// The file openshell owns.
pub fn managed_path() -> PathBuf {
    openshell_providers::config_dir().join("ssh_config")
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/nonexistent"), PathBuf::from)
}

/// Write `data` to `path` through a temp file and a rename, with `mode`.
fn write_atomic(path: &Path, data: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.openshell-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// Rewrite the managed file with a block for `name` and every other sandbox it had
/// that still exists.
pub fn write_managed(name: &str) -> Result<PathBuf, String> {
    let path = managed_path();
    let base = state::base_dir();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut names: Vec<String> = old
        .lines()
        .filter_map(|l| l.strip_prefix("Host openshell-"))
        .map(|n| n.trim().to_string())
        .filter(|n| state::check_name(n).is_ok() && store::find(&base, n).is_ok())
        .collect();
    names.push(name.to_string());
    names.sort();
    names.dedup();
    let mut text = String::from(
        "# Written by openshell (sandbox connect --editor); rewritten whole each time.\n",
    );
    for n in &names {
        text.push('\n');
        text.push_str(&block(n)?);
    }
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_atomic(&path, &text, 0o600)?;
    Ok(path)
}

/// Make sure `~/.ssh/config` includes `managed` (one line, at the top); returns
/// whether it was added.
pub fn ensure_include(managed: &Path) -> Result<bool, String> {
    let ssh = home().join(".ssh");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ssh)
            .map_err(|e| format!("{}: {e}", ssh.display()))?;
    }
    mine(&ssh)?;
    let link = ssh.join("config");
    // Edit a symlinked config where it points (a rename would replace the link), if
    // that file is ours too: as root with another user's HOME, never a file the link
    // names elsewhere.
    let config = std::fs::canonicalize(&link).unwrap_or(link);
    if config.exists() {
        mine(&config)?;
    }
    let (text, mode) = match std::fs::read_to_string(&config) {
        Ok(t) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config).map_or(0o600, |m| m.permissions().mode());
            (t, mode & 0o7777)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(e) => return Err(format!("{}: {e}", config.display())),
    };
    let path = managed.to_string_lossy();
    if path.contains(['"', '\n', '\r']) {
        return Err(format!(
            "{path:?} cannot be written in an Include line: set HOME to a plainer path"
        ));
    }
    let line = format!("Include \"{path}\"");
    let unquoted = format!("Include {path}");
    if text
        .lines()
        .any(|l| l.trim() == line || l.trim() == unquoted)
    {
        return Ok(false);
    }
    let new = format!("{line}\n{text}");
    write_atomic(&config, &new, mode)?;
    Ok(true)
}

/// `path` belongs to the user running this (ownership is checked, so that root with
/// someone else's HOME does not rewrite, and take over, their files).
fn mine(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to you (uid {me}): run this as its owner, or add the Include line yourself",
            path.display(),
            m.uid()
        ));
    }
    Ok(())
}

/// `sandbox connect NAME --editor E` (and `create --editor E`): config, then the editor.
pub fn open(name: &str, editor: Editor) -> i32 {
    let base = state::base_dir();
    let e = match store::find(&base, name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let dir = e
        .record
        .as_ref()
        .ok()
        .map(|r| r.enforced.workdir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/sandbox".into());
    let managed = match write_managed(name) {
        Ok(p) => p,
        Err(err) => return fail(err),
    };
    match ensure_include(&managed) {
        Ok(true) => eprintln!(
            "openshell: added 'Include \"{}\"' to ~/.ssh/config",
            managed.display()
        ),
        Ok(false) => {}
        Err(err) => return fail(err),
    }
    let cmd = editor.command();
    let remote = format!("ssh-remote+{}", host(name));
    let spawned = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(cmd)
            .args(["--remote", &remote, &dir])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
    };
    match spawned {
        Ok(_) => {
            let shown: String = dir.chars().filter(|c| !c.is_control()).collect();
            println!("opened {cmd} on {} ({shown})", host(name));
            0
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(format!(
            "`{cmd}` is not installed or not on PATH; 'ssh {}' works without it",
            host(name)
        )),
        Err(e) => fail(format!("start {cmd}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_quote_the_binary_path() {
        assert_eq!(quote("/a b/it's").unwrap(), r"'/a b/it'\''s'");
        // ssh expands %-tokens in ProxyCommand; a line break would start a directive.
        assert_eq!(quote("/x/100%h").unwrap(), "'/x/100%%h'");
        assert!(quote("/x\nProxyCommand evil").is_err());
        let b = block("dev").unwrap();
        assert!(b.starts_with("Host openshell-dev\n"), "{b}");
        assert!(b.contains(" ssh-proxy dev\n"), "{b}");
    }
}
