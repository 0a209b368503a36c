//! `openshell run`: the calling process becomes the sandbox's supervisor.
//!
//! Everything that can fail is built before clone (state dir and record, uploads,
//! policy-derived plans, seccomp program, id maps); then init is cloned while this
//! process is still single-threaded (`supervise`), the id maps are written, and while
//! init sets up, `policy.yaml` and `exec.env` are written (then the name's lock is let
//! go); the supervisor waits for the command, relaying the terminal and forwarding
//! signals. The sandbox's state is removed at the end unless `keep` is set.

use std::ffi::CString;
use std::path::PathBuf;

use openshell_fs::landlock::{gaps, usable_abi};
use openshell_fs::{RootSpec, UserMount};
use openshell_netns::NetworkMode;
use openshell_policy::{Compatibility, Policy};

use crate::idmap;
use crate::image::ImageSpec;
use crate::init::InitConfig;
use crate::record::{self, Record, Recorded, Supervisor};
use crate::spawn::ExecSpec;
use crate::state::{self, SandboxDir};
use crate::supervise::{NetSetup, start_and_wait};

/// What `run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Command and arguments.
    pub command: Vec<String>,
    /// The effective policy (already validated).
    pub policy: Option<Policy>,
    /// Sandbox name (generated when absent).
    pub name: Option<String>,
    /// Hostname (default: the name).
    pub hostname: Option<String>,
    /// Working directory inside (default /sandbox).
    pub workdir: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Host binds.
    pub mounts: Vec<UserMount>,
    /// `--upload` arguments (LOCAL[:DEST]).
    pub uploads: Vec<String>,
    /// Upload ignored files too.
    pub no_git_ignore: bool,
    /// Keep the state dir afterwards.
    pub keep: bool,
    /// Force a pty on/off; None = when stdin and stdout are terminals.
    pub tty: Option<bool>,
    /// Run on this image instead of the host view.
    pub image: Option<ImageSpec>,
    /// Route the network through the policy proxy (false: loopback only).
    pub network: bool,
    /// Echo network decisions on stderr.
    pub verbose: bool,
    /// Keep decision logs here (default: the sandbox's `logs/`).
    pub log_dir: Option<PathBuf>,
    /// Extra CAs the proxy trusts for upstream TLS (inspected endpoints).
    pub upstream_ca: Vec<PathBuf>,
    /// Start no command; keep the sandbox up until stopped (`sandbox create`).
    pub keepalive: bool,
    /// Bring back the existing (stopped) sandbox of this name (`sandbox start`).
    pub reuse: bool,
    /// User labels, recorded for `sandbox list --selector`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--memory`, `--cpus`, `--pids` (defaults when absent).
    pub limits: crate::limits::LimitRequest,
    /// Providers attached (names, for the record).
    pub providers: Vec<String>,
    /// Their environment: placeholders, base URLs, profile variables (before `env`).
    pub provider_env: Vec<(String, String)>,
    /// Their credentials, for the proxy only.
    pub credentials: Vec<openshell_proxy::secrets::Credential>,
    /// The inference.local route (`openshell inference set`).
    pub inference: Option<openshell_proxy::inference::Route>,
    /// Host ports forwarded to the sandbox's loopback (`--forward`).
    pub forwards: Vec<crate::forward::Spec>,
}

pub use crate::error::RunError;

/// Removes the sandbox's state when the run ends, unless kept.
struct Cleanup {
    dir: SandboxDir,
    /// Keep the directory; a `create`'s supervisor sets it once the sandbox is Ready, so
    /// a create that fails before leaves nothing (its name stays free).
    keep: std::cell::Cell<bool>,
    /// A `sandbox create`'s supervisor: keeping is its job, nothing to say (a create
    /// that fails is deleted by the CLI).
    quiet: bool,
    /// Rootless with subordinate ids: the upper dir holds files of other ids, which
    /// only a user namespace mapped like the sandbox can remove.
    mapped: Option<idmap::IdPlan>,
    /// The directory's identity at creation: a deleted sandbox's supervisor must not
    /// touch a new sandbox that took the name.
    ident: Option<(u64, u64, u128)>,
    /// The sandbox CA still being made: joined before anything here forks.
    material: Option<std::thread::JoinHandle<Result<crate::trust::Material, String>>>,
    /// The name's lock while the sandbox is set up (released first when dropped: the
    /// clean-up then takes it again to remove the lock file of a freed name).
    lock: Option<state::NameLock>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(h) = self.material.take() {
            let _ = h.join();
        }
        // The name's lock is held through the checks, the removal and the lock file's
        // removal: setup's own (a failure before it was released), or taken again.
        let names = self
            .dir
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .zip(self.dir.path.parent().and_then(std::path::Path::parent));
        let lock = self.lock.take().or_else(|| {
            names.as_ref().and_then(|(n, b)| {
                state::NameLock::acquire_within(b, n, std::time::Duration::from_secs(2))
            })
        });
        if state::identity(&self.dir.path) != self.ident {
            return; // deleted (and maybe replaced) while running
        }
        if self.keep.get() {
            if self.quiet {
                return;
            }
            eprintln!(
                "openshell: kept sandbox state in {}",
                self.dir.path.display()
            );
            return;
        }
        if let Some(plan) = self
            .mapped
            .as_ref()
            .filter(|_| self.dir.path.join("upper").exists())
        {
            let dir = self.dir.clone();
            let _ = idmap::run_mapped(plan, || i32::from(dir.remove().is_err()));
        }
        if self.dir.path.exists() {
            let _ = self.dir.remove();
        }
        if let (Some(lock), Some((name, base))) = (lock, names.as_ref()) {
            lock.release_forgetting(base, name);
        }
    }
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Names of `--env` keys that look like they carry a secret.
pub fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// The clean environment of a sandboxed command: our defaults, then the image's Env,
/// then `--env`.
pub fn environment(
    image: &[String],
    extra: &[(String, String)],
    tty: bool,
    proxied: bool,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), "/sandbox".into()),
        ("USER".into(), "sandbox".into()),
        ("LOGNAME".into(), "sandbox".into()),
        (
            "LANG".into(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
        ),
        ("OPENSHELL_SANDBOX".into(), "1".into()),
    ];
    if proxied {
        let url = format!(
            "http://{}:{}",
            openshell_netns::ROUTER_IP,
            openshell_netns::PROXY_PORT
        );
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "grpc_proxy",
        ] {
            env.push((k.into(), url.clone()));
        }
        for k in ["NO_PROXY", "no_proxy"] {
            env.push((k.into(), "127.0.0.1,localhost,::1".into()));
        }
        env.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    }
    let term = std::env::var("TERM")
        .ok()
        .or(tty.then(|| "xterm-256color".to_string()));
    if let Some(t) = term {
        env.push(("TERM".into(), t));
    }
    let image = image
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()));
    for (k, v) in image.chain(extra.iter().cloned()) {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env
}

fn cstrings<I: IntoIterator<Item = String>>(it: I) -> Result<Vec<CString>, RunError> {
    it.into_iter()
        .map(|s| {
            CString::new(s).map_err(|_| RunError::Invalid("argument contains a NUL byte".into()))
        })
        .collect()
}

/// Run a command in a new sandbox; returns its exit status.
pub fn run(opts: RunOptions) -> Result<i32, RunError> {
    let command = match &opts.image {
        Some(img) => img.command(&opts.command),
        None => opts.command.clone(),
    };
    if command.is_empty() && !opts.keepalive {
        return Err(RunError::Invalid(
            "no command given (and the image has no Entrypoint/Cmd): openshell run -- CMD [ARGS]"
                .into(),
        ));
    }
    // The policy's `process` wins; without one, the image's User (never root).
    let explicit_identity = opts.policy.as_ref().is_some_and(|p| p.process.is_some());
    let policy = opts.policy.clone().unwrap_or_else(|| match opts.image {
        Some(_) => Policy::image_default(),
        None => Policy::restrictive_default(),
    });
    let name = opts.name.clone().unwrap_or_else(state::generate_name);
    // The sandbox CA and its bundle (~0.4 ms) on a thread while the directory, records
    // and plans are made; joined before clone (which needs a single-threaded process).
    let material = opts.network.then(|| {
        let n = name.clone();
        std::thread::spawn(move || crate::trust::material(&n))
    });
    let hostname = opts.hostname.clone().unwrap_or_else(|| name.clone());
    let workdir = opts
        .workdir
        .clone()
        .or_else(|| {
            opts.image
                .as_ref()
                .and_then(|i| i.workdir.clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/sandbox".into());
    if !workdir.starts_with('/') {
        return Err(RunError::Invalid(format!(
            "--workdir {workdir}: must be absolute"
        )));
    }
    // Landlock: decide before anything exists whether this kernel is good enough.
    let abi = usable_abi();
    let missing = gaps(abi);
    let hard = policy.compatibility() == Compatibility::HardRequirement;
    if !missing.is_empty() {
        if hard {
            return Err(RunError::LandlockRequired {
                abi,
                missing: missing.join(", "),
            });
        }
        eprintln!(
            "openshell: warning: landlock best_effort on ABI {abi}: not enforced: {}",
            missing.join(", ")
        );
    }
    let (uid, gid) = match &opts.image {
        Some(img) if !explicit_identity => img
            .identity()
            .map_err(RunError::Invalid)?
            .unwrap_or_else(|| policy.identity()),
        _ => policy.identity(),
    };
    let ids = idmap::plan(&idmap::facts(), uid, gid);
    ids.check_identity(uid, gid).map_err(RunError::Invalid)?;
    let is_root = nix::unistd::geteuid().is_root();

    let lock = state::NameLock::acquire(&state::base_dir(), &name)?;
    let made = if opts.reuse {
        SandboxDir::open(&state::base_dir(), &name)
    } else {
        SandboxDir::create(&state::base_dir(), &name, is_root)
    };
    let dir = match made {
        Ok(d) => d,
        Err(e) => {
            // `sandbox start` of a name that is gone leaves no lock file behind.
            lock.release_forgetting(&state::base_dir(), &name);
            return Err(e.into());
        }
    };
    let previous = opts.reuse.then(|| Record::load(&dir.path).ok()).flatten();
    if let Some(p) = &previous
        && p.supervisor.is_some_and(|s| s.alive())
    {
        return Err(RunError::Invalid(format!(
            "sandbox {name} is already running"
        )));
    }
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        keep: std::cell::Cell::new(opts.keep && (opts.reuse || !opts.keepalive)),
        quiet: opts.keepalive,
        mapped: (ids.mode == idmap::IdMode::Subids).then(|| ids.clone()),
        ident: state::identity(&dir.path),
        material,
        lock: Some(lock),
    };
    let ident = cleanup.ident;
    let mount_grants: Vec<record::MountGrant> = opts
        .mounts
        .iter()
        .map(|m| record::MountGrant {
            dest: m.dest.clone(),
            readonly: m.readonly,
        })
        .collect();
    // Limits: a cgroup of the sandbox's own where this host gives one, rlimits else.
    let mut limits = crate::limits::resolve(&opts.limits);
    let cgroup = crate::limits::Cgroup::create(&name, &mut limits);
    if cgroup.is_none() && limits.cpus_milli.is_some() {
        limits.cpus_milli = None;
        let note = "--cpus not applied: it needs a cgroup of the sandbox's own, which this host does not give (see `openshell sandbox explain`)";
        eprintln!("openshell: warning: {note}");
        limits.notes.push(note.into());
    }
    let mut record = Record {
        name: name.clone(),
        image: opts
            .image
            .as_ref()
            .map_or_else(|| "host".into(), |i| i.name.clone()),
        image_digest: opts.image.as_ref().map(|i| i.digest.clone()),
        created: previous.as_ref().map_or_else(record::now, |p| p.created),
        last_active: record::now(),
        labels: opts.labels.clone(),
        providers: opts.providers.clone(),
        uid,
        gid,
        network: if opts.network {
            record::NetworkKind::Proxy
        } else {
            record::NetworkKind::None
        },
        recorded: Recorded::Provisioning,
        supervisor: Supervisor::current(),
        exit_code: None,
        reason: None,
        log_dir: opts.log_dir.clone(),
        init_pid: None,
        enforced: record::Enforced {
            landlock_abi: abi,
            landlock_dropped: missing.iter().map(|m| m.to_string()).collect(),
            id_mode: ids.mode,
            workdir: workdir.clone(),
            limits: limits.clone(),
            mounts: mount_grants.clone(),
            notes: Vec::new(),
        },
    };
    // Only a kept sandbox's files must survive a crash of the host (fsync).
    let durable = opts.keep;
    // The record (`provisioning`) before anything slow (uploads): list, get, delete and
    // `--selector` see the sandbox from here on.
    record
        .save_as(&dir.path, durable)
        .map_err(RunError::Invalid)?;
    // The policy it starts with, for `policy get` while it is stopped; `policy set`
    // replaces it. Written (with exec.env) while init sets up: nothing needs them before
    // the sandbox is Ready.
    let policy_yaml = policy.to_yaml();
    let workspace = dir.workspace();
    for up in &opts.uploads {
        let (local, rel) = state::parse_upload(up)?;
        state::upload(&local, &workspace, &rel, opts.no_git_ignore)?;
    }
    if is_root {
        // Root's sandbox user is an unprivileged host id: hand it its workspace.
        let (ou, og) = (ids.outside_uid(uid), ids.outside_gid(gid));
        chown_tree(&workspace, ou, og);
    }
    // Files only init's setup needs, on tmpfs where possible (removed when run ends).
    let scratch =
        crate::scratch::Scratch::create(&dir.path, &name, is_root).map_err(RunError::Invalid)?;
    let mut etc_files = dir.write_etc(
        &scratch.path,
        &hostname,
        uid,
        gid,
        opts.image.is_none(),
        opts.network,
    )?;
    // The sandbox CA, for inspected endpoints: its files inside, the distro bundles.
    let trust = if opts.network {
        let exists = |p: &str| match &opts.image {
            None => std::path::Path::new(p).exists(),
            // Resolved inside each layer: an image's symlink never makes us look at
            // (or decide on) a host path.
            Some(img) => img
                .layers
                .iter()
                .any(|l| openshell_fs::inroot::exists(l, std::path::Path::new(p))),
        };
        let m = cleanup
            .material
            .take()
            .ok_or_else(|| RunError::Invalid("no sandbox CA was made".into()))?
            .join()
            .map_err(|_| RunError::Invalid("sandbox CA: its thread panicked".into()))?
            .map_err(RunError::Invalid)?;
        Some(crate::trust::prepare(&scratch.path, m, &exists).map_err(RunError::Invalid)?)
    } else {
        None
    };
    if let Some(t) = &trust {
        etc_files.extend(t.bundles.iter().cloned());
    }
    let spec = RootSpec {
        root: scratch.rootfs(),
        workspace,
        etc_files,
        mounts: opts.mounts.clone(),
        own_files: trust
            .as_ref()
            .map(|t| t.own_files.clone())
            .unwrap_or_default(),
        tmp_size: limits.tmp,
        shm_size: limits.shm,
    };
    let mounts = match &opts.image {
        None => openshell_fs::plan::host_view(&openshell_fs::host_facts(), &spec),
        Some(img) => {
            let (upper, work) = dir.image_dirs(&img.digest)?;
            openshell_fs::plan::image_view(
                &openshell_fs::ImageLayers {
                    layers: img.layers.clone(),
                    upper,
                    work,
                },
                &spec,
            )
        }
    };
    let confinement = crate::confine::build(&crate::confine::Inputs {
        policy: &policy,
        workdir: &workdir,
        mounts: &mount_grants,
        abi,
        ca_inside: trust.is_some(),
        uid,
        gid,
        setgroups: ids.setgroups_allowed(),
        rlimits: cgroup.is_none().then_some(crate::spawn::ProcessLimits {
            nproc: limits.pids,
            data: limits.memory,
        }),
    });
    let tty = opts.tty.unwrap_or_else(|| {
        nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
            && nix::unistd::isatty(std::io::stdout()).unwrap_or(false)
    });
    for (k, _) in &opts.env {
        if looks_secret(k) {
            eprintln!(
                "openshell: warning: --env {k} looks like a secret; everything in the sandbox can read it"
            );
        }
    }
    let image_env = opts
        .image
        .as_ref()
        .map(|i| i.env.clone())
        .unwrap_or_default();
    let extra: Vec<(String, String)> = opts
        .provider_env
        .iter()
        .chain(opts.env.iter())
        .cloned()
        .collect();
    let mut env = environment(&image_env, &extra, tty, opts.network);
    if let Some(t) = &trust {
        for (k, v) in &t.env {
            if !opts.env.iter().any(|(ek, _)| ek == k) {
                env.retain(|(ek, _)| ek != k);
                env.push((k.clone(), v.clone()));
            }
        }
        // In front of the image's or the user's NODE_OPTIONS, not instead of them.
        let pre = format!("--require {}", crate::trust::NODE_PRELOAD);
        match env.iter_mut().find(|(k, _)| k == "NODE_OPTIONS") {
            Some((_, v)) => *v = format!("{pre} {v}"),
            None => env.push(("NODE_OPTIONS".into(), pre)),
        }
    }
    // What `sandbox exec` gives new processes (without the terminal's TERM): kept
    // private (0600), removed with the sandbox.
    let exec_env: Vec<String> = env
        .iter()
        .filter(|(k, _)| k != "TERM")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let net = if opts.network {
        NetworkMode::Proxied {
            nft: ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        }
    } else {
        NetworkMode::Isolated
    };
    if opts.network {
        let logs = opts
            .log_dir
            .clone()
            .unwrap_or_else(|| dir.path.join("logs"));
        std::fs::create_dir_all(&logs)
            .map_err(|e| RunError::Invalid(format!("--log-dir {}: {e}", logs.display())))?;
    }
    // The sandbox's files, written once init is on its way (its setup and this run on
    // two CPUs); the name's lock is held until they are: a delete never sees a sandbox
    // without its record. From then on the sandbox is whole and a delete may take it.
    let lock_fd = cleanup.lock.as_ref().map(state::NameLock::raw_fd);
    let mut lock = cleanup.lock.take();
    let mut write_files = || -> Result<(), RunError> {
        if lock.is_none() {
            return Ok(());
        }
        record::write_whole(
            &dir.path.join(record::POLICY),
            policy_yaml.as_bytes(),
            durable,
        )
        .and_then(|()| crate::exec::save_env(&dir.path, &exec_env))
        .map_err(RunError::Invalid)?;
        // Written: the sandbox is whole, a delete may take it. (On an error the lock
        // stays held until init is gone and the clean-up has run.)
        drop(lock.take());
        Ok(())
    };
    if !opts.forwards.is_empty() && !opts.network {
        return Err(RunError::Invalid(
            "--forward needs the sandbox's network (--network proxy): with --network none nothing serves the host side"
                .into(),
        ));
    }
    let net_setup = opts.network.then(|| NetSetup {
        ca: trust.as_ref().map(|t| t.ca.clone()),
        upstream_ca: opts.upstream_ca.clone(),
        policy: policy.clone(),
        log_dir: opts.log_dir.clone().or_else(|| Some(dir.path.join("logs"))),
        verbose: opts.verbose,
        control: dir.path.join("control.sock"),
        credentials: opts.credentials.clone(),
        inference: opts.inference.clone(),
        forwards: opts.forwards.clone(),
    });
    let cfg = InitConfig {
        net,
        mounts,
        hostname,
        setgroups: ids.setgroups_allowed(),
        tty: tty && !opts.keepalive,
        keepalive: opts.keepalive,
        exec: ExecSpec {
            argv: cstrings(command)?,
            env: cstrings(env.into_iter().map(|(k, v)| format!("{k}={v}")))?,
            cwd: PathBuf::from(&workdir),
        },
        confinement,
        close: lock_fd.into_iter().collect(),
    };
    let ready = |r: &mut Record, init: i32, notes: &[String]| {
        if opts.keep {
            cleanup.keep.set(true);
        }
        r.enforced.notes = notes.to_vec();
        r.recorded = Recorded::Running;
        r.init_pid = Some(init);
        r.last_active = record::now();
        if state::identity(&dir.path) == ident {
            let _ = r.save_as(&dir.path, durable);
        }
    };
    let mut setup_notes = Vec::new();
    let result = start_and_wait(
        &cfg,
        &ids,
        cgroup.as_ref(),
        net_setup,
        &mut write_files,
        &mut |init, notes| {
            setup_notes = notes.to_vec();
            ready(&mut record.clone(), init, notes)
        },
    )
    .map_err(|e| {
        if state::identity(&dir.path) == ident {
            e
        } else {
            RunError::Invalid(format!(
                "sandbox {name} was deleted while it was being set up ({e})"
            ))
        }
    });
    // Setup failed before its files were written: the lock is still ours, and the
    // clean-up (which takes it to remove the directory) must get this one, not wait
    // for it on a second descriptor.
    cleanup.lock = lock.take();
    record.supervisor = None;
    record.last_active = record::now();
    record.enforced.notes = setup_notes;
    match &result {
        Ok(code) => {
            record.recorded = Recorded::Stopped;
            record.exit_code = Some(*code);
        }
        Err(e) => {
            record.recorded = Recorded::Failed;
            record.reason = Some(e.to_string());
        }
    }
    // A sandbox that is not kept is removed right below: its last record would be
    // written only to be deleted.
    if cleanup.keep.get() && state::identity(&dir.path) == ident {
        let _ = record.save_as(&dir.path, durable);
    }
    drop(cleanup);
    result
}

fn chown_tree(path: &std::path::Path, uid: Option<u32>, gid: Option<u32>) {
    let (u, g) = (
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
    );
    let _ = nix::unistd::chown(path, u, g);
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                chown_tree(&p, uid, gid);
            } else {
                let _ = nix::unistd::fchownat(
                    nix::fcntl::AT_FDCWD,
                    &p,
                    u,
                    g,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landlock_plan_from_policy() {
        let p = Policy::parse(
            "version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_only: [/usr]\n  read_write: [/tmp]\nlandlock:\n  compatibility: hard_requirement\n",
        )
        .unwrap();
        let plan = crate::confine::landlock_plan(&p, "/work", &[], 7);
        assert_eq!(
            plan,
            openshell_fs::landlock::LandlockPlan {
                read_only: vec![PathBuf::from("/usr")],
                read_write: vec![PathBuf::from("/tmp"), PathBuf::from("/work")],
                list_only: vec![PathBuf::from("/")],
                hard: true,
                abi: 7,
            }
        );
        let d = crate::confine::landlock_plan(&Policy::restrictive_default(), "/sandbox", &[], 6);
        assert!(!d.hard);
        assert!(d.read_write.contains(&PathBuf::from("/sandbox")));
        assert!(!d.read_write.iter().any(|p| p == std::path::Path::new("/")));
    }

    #[test]
    fn environment_is_clean_and_overridable() {
        let env = environment(
            &["PATH=/img".into(), "HOME=/img".into()],
            &[("HOME".into(), "/x".into()), ("A".into(), "1".into())],
            false,
            true,
        );
        assert!(env.contains(&("PATH".into(), "/img".into())));
        assert!(env.contains(&("HTTPS_PROXY".into(), "http://10.200.0.1:3128".into())));
        assert!(env.contains(&("HOME".into(), "/x".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert!(env.contains(&("OPENSHELL_SANDBOX".into(), "1".into())));
        assert!(looks_secret("ANTHROPIC_API_KEY") && looks_secret("gh_token"));
        assert!(!looks_secret("EDITOR"));
    }
}
