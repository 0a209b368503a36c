//! What a sandbox takes from an image: its layers, and the config's Env, WorkingDir,
//! User and Entrypoint/Cmd — as plain data handed over by the CLI (the runtime does not
//! depend on the images crate).

use std::path::{Path, PathBuf};

/// An image root and the settings of its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// What the user named (for messages and `sandbox get`).
    pub name: String,
    /// Manifest digest (recorded in the sandbox's state so `image rm` can refuse).
    pub digest: String,
    /// Unpacked layer directories, base first (a plain rootfs directory is one layer).
    pub layers: Vec<PathBuf>,
    /// `K=V` from the config.
    pub env: Vec<String>,
    /// `User` from the config.
    pub user: Option<String>,
    /// `WorkingDir` from the config.
    pub workdir: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

impl ImageSpec {
    /// The command to run: the user's if given (run directly, as `--entrypoint` would),
    /// else Entrypoint + Cmd.
    pub fn command(&self, given: &[String]) -> Vec<String> {
        if !given.is_empty() {
            return given.to_vec();
        }
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// The topmost layer's copy of `rel`, resolved inside that layer (an
    /// `etc/passwd -> /etc/passwd` symlink never reads the host's file), regular files
    /// of at most 4 MiB only. Whiteouts are ignored: good enough for account lookups.
    fn read(&self, rel: &str) -> Result<String, String> {
        for layer in self.layers.iter().rev() {
            match openshell_fs::inroot::read_file(layer, Path::new(rel), 4 << 20) {
                Ok(Some(bytes)) => return Ok(String::from_utf8_lossy(&bytes).into_owned()),
                Ok(None) => continue,
                Err(e) => return Err(format!("image user lookup: {e}")),
            }
        }
        Ok(String::new())
    }

    /// Resolve the config's `User` (`name`, `uid`, `uid:gid`, `name:group`) against the
    /// image's /etc/passwd and /etc/group. `None` when unset or root: the sandbox user
    /// is used then, never root. Every id, given or looked up, must be 1..=65534
    /// (`4294967295` is "unchanged" to setresuid, and would leave the process root).
    pub fn identity(&self) -> Result<Option<(u32, u32)>, String> {
        let Some(spec) = self.user.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let num = |s: &str, what: &str| -> Result<Option<u32>, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(None);
            }
            match s.parse::<u32>() {
                Ok(n) if n <= openshell_policy::MAX_ID => Ok(Some(n)),
                _ => Err(format!(
                    "image User {spec:?}: {what} {s} is out of range (1..={}): fix the image or set process.run_as_user in a policy",
                    openshell_policy::MAX_ID
                )),
            }
        };
        let checked = |n: u32, what: &str| -> Result<u32, String> {
            if n > openshell_policy::MAX_ID {
                return Err(format!(
                    "image User {spec:?}: the image's {what} {n} is out of range (1..={})",
                    openshell_policy::MAX_ID
                ));
            }
            Ok(n)
        };
        let passwd = self.read("/etc/passwd")?;
        let lookup = |db: &str, name: &str| -> Option<(u32, u32)> {
            db.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[0] == name)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
            })
        };
        let (uid, primary) = match num(user, "uid")? {
            Some(n) => (n, lookup_by_uid(&passwd, n).unwrap_or(n)),
            None => lookup(&passwd, user)
                .ok_or_else(|| format!("image user {user:?} is not in the image's /etc/passwd"))?,
        };
        let uid = checked(uid, "uid")?;
        let gid = match group {
            None => checked(primary, "primary gid")?,
            Some(g) => match num(g, "gid")? {
                Some(n) => n,
                None => {
                    let groups = self.read("/etc/group")?;
                    let found = groups
                        .lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() > 2 && f[0] == g).then(|| f[2].parse().ok())?
                        })
                        .ok_or_else(|| {
                            format!("image group {g:?} is not in the image's /etc/group")
                        })?;
                    checked(found, "gid")?
                }
            },
        };
        if uid == 0 || gid == 0 {
            return Ok(None);
        }
        Ok(Some((uid, gid)))
    }
}

fn lookup_by_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_passwd(user: &str) -> (ImageSpec, PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "openshell-imgspec-{}-{}",
            std::process::id(),
            user.len()
        ));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nsandbox:x:1000:1000::/sandbox:/bin/sh\napp:x:1500:1600::/app:/bin/sh\nhuge:x:4294967295:1000::/:/bin/sh\n").unwrap();
        std::fs::write(
            d.join("etc/group"),
            "root:x:0:\nsandbox:x:1000:\nstaff:x:50:\n",
        )
        .unwrap();
        (
            ImageSpec {
                layers: vec![d.clone()],
                user: Some(user.into()),
                ..Default::default()
            },
            d,
        )
    }

    #[test]
    fn users_resolve_through_the_image() {
        for (user, want) in [
            ("sandbox", Ok(Some((1000, 1000)))),
            ("app", Ok(Some((1500, 1600)))),
            ("1500", Ok(Some((1500, 1600)))),
            ("1234:99", Ok(Some((1234, 99)))),
            ("app:staff", Ok(Some((1500, 50)))),
            ("root", Ok(None)),
            ("0:0", Ok(None)),
        ] {
            let (s, d) = spec_with_passwd(user);
            assert_eq!(s.identity(), want, "{user}");
            let _ = std::fs::remove_dir_all(d);
        }
        for bad in [
            "4294967295",
            "4294967295:1000",
            "1000:4294967295",
            "65535",
            "1000:65536",
            "99999999999",
            "huge",
        ] {
            let (s, d) = spec_with_passwd(bad);
            let e = s.identity().unwrap_err();
            assert!(
                e.contains("out of range") || e.contains("not in"),
                "{bad}: {e}"
            );
            let _ = std::fs::remove_dir_all(d);
        }
        let (s, d) = spec_with_passwd("ghost");
        assert!(
            s.identity()
                .unwrap_err()
                .contains("not in the image's /etc/passwd")
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn command_choice() {
        let s = ImageSpec {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            ..Default::default()
        };
        assert_eq!(s.command(&[]), vec!["/bin/sh", "-c", "echo hi"]);
        assert_eq!(s.command(&["ls".into()]), vec!["ls"]);
    }
}
