//! `openshell run`: parse flags into [`RunOptions`] and hand over to the runtime.

use std::path::PathBuf;

use clap::Args;
use openshell_policy::Policy;
use openshell_runtime::api::EXIT_SETUP;
use openshell_runtime::api::ImageSpec;
use openshell_runtime::api::{RunOptions, run as run_sandbox};

/// `--network` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    /// Router/agent namespaces and the policy proxy.
    Proxy,
    /// Loopback only.
    None,
}

/// When to pull the `--from` image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull even if the image is in the store.
    Always,
    /// Pull only when it is not in the store.
    Missing,
    /// Never pull; fail when it is not in the store.
    Never,
}

/// `openshell run [OPTIONS] -- CMD [ARGS]...`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Root filesystem: an image reference (python:3.12, host:port/name:tag,
    /// name@sha256:...), an OCI layout (oci:DIR[:tag]), an archive
    /// (oci-archive:FILE, docker-archive:FILE) or a directory holding a rootfs.
    /// Default: the host's own /usr, /etc, ... read-only (no image needed).
    #[arg(long, value_name = "IMAGE|DIR")]
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::images))]
    pub from: Option<String>,
    /// When to pull the --from image.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub registry: super::image::RegistryArgs,
    /// Policy file (OpenShell YAML). Default: read-only system, writable /sandbox and
    /// /tmp, no network.
    #[arg(long, value_name = "FILE", env = "OPENSHELL_SANDBOX_POLICY")]
    pub policy: Option<PathBuf>,
    /// Sandbox name (default: generated, e.g. sbx-3f9a1c).
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside the sandbox (default: the name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Working directory inside the sandbox (default: the image's WorkingDir, else
    /// /sandbox).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set an environment variable (K=V, or K to copy it from here). Repeatable.
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Bind a host path into the sandbox, live (HOST:DEST[:ro]). Repeatable.
    #[arg(long, value_name = "HOST:DEST[:ro]")]
    pub mount: Vec<String>,
    /// Copy a local file or directory into the workspace before starting
    /// (LOCAL[:DEST], DEST under /sandbox; .gitignore'd files are skipped). Repeatable.
    #[arg(long, value_name = "LOCAL[:DEST]")]
    pub upload: Vec<String>,
    /// Upload files that .gitignore excludes too.
    #[arg(long)]
    pub no_git_ignore: bool,
    /// Keep the sandbox (workspace, files, record) after the command exits; see
    /// `openshell sandbox list`.
    #[arg(long)]
    pub keep: bool,
    /// Label the sandbox (K=V), for `sandbox list --selector`. Repeatable.
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Network: `proxy` (every connection through the policy proxy; deny by default)
    /// or `none` (loopback only).
    #[arg(long, value_enum, default_value_t = NetworkArg::Proxy)]
    pub network: NetworkArg,
    /// Print every network decision on stderr: the global `-v`.
    #[arg(skip)]
    pub verbose: bool,
    /// Write the decision logs (human and OCSF JSON lines) into this directory
    /// (default: the sandbox's logs/, removed with it unless --keep).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Trust this CA (PEM) for the proxy's own TLS to upstreams of inspected
    /// (`protocol: rest`) endpoints, besides the host's store. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Memory limit of the whole sandbox: 512m, 4g, 4Gi (default: half the host's
    /// memory, at most 8 GiB). /tmp gets half of it, /dev/shm a quarter.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit: 2, 1.5, 500m (default: none). Needs a cgroup of the sandbox's own.
    #[arg(long, visible_alias = "cpu", value_name = "CPUS")]
    pub cpus: Option<String>,
    /// Most processes and threads at once (default 4096).
    #[arg(long, value_name = "N")]
    pub pids: Option<String>,
    /// Forward a host port ([ADDR:]PORT, default address 127.0.0.1) to the same port
    /// on the sandbox's loopback (a dev server started inside). Repeatable.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub forward: Vec<String>,
    #[command(flatten)]
    pub providers: super::provider::ProviderArgs,
    /// The policy file is the sandbox's own (`sandbox start`): `_provider_` entries
    /// are allowed in it.
    #[arg(skip)]
    pub stored_policy: bool,
    /// Allocate a pty even when not on a terminal (-t) ...
    #[arg(long, short = 't', conflicts_with = "no_tty")]
    pub tty: bool,
    /// ... or never allocate one.
    #[arg(long, short = 'T')]
    pub no_tty: bool,
    /// The command and its arguments (default with --from: the image's Entrypoint and
    /// Cmd).
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_env(items: &[String]) -> Result<Vec<(String, String)>, String> {
    items
        .iter()
        .map(|item| {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = std::env::var(item).map_err(|_| {
                        format!("--env {item}: not set here; use --env {item}=VALUE")
                    })?;
                    (item.clone(), v)
                }
            };
            if k.is_empty() || k.contains('\0') {
                return Err(format!("--env {item}: expected K=V"));
            }
            Ok((k, v))
        })
        .collect()
}

/// `--label K=V` pairs; keys like Kubernetes label names (letters, digits, `-_./`).
fn parse_labels(items: &[String]) -> Result<std::collections::BTreeMap<String, String>, String> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if key_ok(k) && !v.contains(['\n', '\0']) => Ok((k.into(), v.into())),
            _ => Err(format!(
                "--label {item:?}: expected KEY=VALUE (key: letters, digits, -_./)"
            )),
        })
        .collect()
}

/// Load and validate a policy file, rendering errors as `file:line:col: ...`.
pub fn load_policy(path: &PathBuf) -> Result<Policy, String> {
    let src =
        std::fs::read_to_string(path).map_err(|e| format!("policy {}: {e}", path.display()))?;
    Policy::parse(&src).map_err(|e| e.render(&path.display().to_string()))
}

pub fn options(args: RunArgs) -> Result<RunOptions, String> {
    if let Some(h) = &args.hostname {
        check_hostname(h)?;
    }
    let policy = match &args.policy {
        Some(p) if args.stored_policy => {
            let src =
                std::fs::read_to_string(p).map_err(|e| format!("policy {}: {e}", p.display()))?;
            Some(Policy::parse_stored(&src).map_err(|e| e.render(&p.display().to_string()))?)
        }
        Some(p) => Some(load_policy(p)?),
        None => None,
    };
    let mounts = args
        .mount
        .iter()
        .map(|m| openshell_fs::plan::parse_user_mount(m))
        .collect::<Result<Vec<_>, _>>()?;
    let image = args
        .from
        .as_deref()
        .map(|f| resolve_image(f, args.pull, &args.registry))
        .transpose()?;
    let limits = openshell_runtime::api::limits::LimitRequest {
        memory: args
            .memory
            .as_deref()
            .map(openshell_runtime::api::limits::parse_memory)
            .transpose()?,
        cpus_milli: args
            .cpus
            .as_deref()
            .map(openshell_runtime::api::limits::parse_cpus)
            .transpose()?,
        pids: args
            .pids
            .as_deref()
            .map(openshell_runtime::api::limits::parse_pids)
            .transpose()?,
    };
    // Providers: their entries join the policy the sandbox would have had.
    let base = policy.clone().unwrap_or_else(|| {
        if image.is_some() {
            Policy::image_default()
        } else {
            Policy::restrictive_default()
        }
    });
    let agent_cmd: Vec<String> = if args.command.is_empty() {
        image.as_ref().map(|i| i.command(&[])).unwrap_or_default()
    } else {
        args.command.clone()
    };
    let att = super::provider::resolve(&args.providers, &agent_cmd, base)?;
    if !att.names.is_empty() && args.network == NetworkArg::None {
        return Err(format!(
            "providers ({}) need the proxy: their credentials are swapped in by it; drop --network none (or pass --no-auto-providers)",
            att.names.join(", ")
        ));
    }
    let policy = att.policy.or(policy);
    // The inference route; one that cannot be resolved (its provider deleted) leaves
    // inference.local answering 503, with a warning, rather than refusing to start.
    let inference = if args.network == NetworkArg::Proxy {
        openshell_providers::routes::for_sandbox(args.name.as_deref()).unwrap_or_else(|e| {
            eprintln!("openshell: warning: inference route: {e}");
            None
        })
    } else {
        None
    };
    let forwards = args
        .forward
        .iter()
        .map(|f| openshell_runtime::api::forward::Spec::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunOptions {
        forwards,
        inference,
        providers: att.names,
        provider_env: att.env,
        credentials: att.credentials,
        limits,
        network: args.network == NetworkArg::Proxy,
        verbose: args.verbose,
        log_dir: args.log_dir,
        upstream_ca: args.upstream_ca,
        image,
        command: args.command,
        policy,
        name: args.name,
        hostname: args.hostname,
        workdir: args.workdir,
        env: parse_env(&args.env)?,
        mounts,
        uploads: args.upload,
        no_git_ignore: args.no_git_ignore,
        keep: args.keep,
        labels: parse_labels(&args.label)?,
        keepalive: false,
        reuse: false,
        tty: if args.tty {
            Some(true)
        } else if args.no_tty {
            Some(false)
        } else {
            None
        },
    })
}

/// A bare `--from NAME` (no registry, repository path, tag or digest) with
/// `OPENSHELL_COMMUNITY_REGISTRY` set names `PREFIX/NAME:latest`, as in OpenShell.
/// Without the variable a bare name stays a Docker Hub name (`alpine`), as in podman;
/// docs/images.md says why.
fn community_name(from: &str, prefix: Option<String>) -> Option<String> {
    let prefix = prefix?;
    let prefix = prefix.trim().trim_end_matches('/');
    let bare = !from.is_empty()
        && from
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    (bare && !prefix.is_empty()).then(|| format!("{prefix}/{from}:latest"))
}

/// Turn `--from` into the layers and config the runtime needs, pulling if asked to.
/// The pull runs in a child process: this one must stay single-threaded until the
/// sandbox is cloned.
fn resolve_image(
    from: &str,
    pull: PullPolicy,
    reg: &super::image::RegistryArgs,
) -> Result<ImageSpec, String> {
    let path = std::path::Path::new(from);
    let path_like = from.starts_with('/') || from.starts_with("./") || from.starts_with("../");
    if path_like || (path.is_dir() && !from.contains(':')) {
        let dir = std::fs::canonicalize(path).map_err(|e| format!("--from {from}: {e}"))?;
        if !dir.is_dir() {
            return Err(format!("--from {from}: not a directory"));
        }
        return Ok(ImageSpec {
            name: dir.display().to_string(),
            digest: format!("dir:{}", dir.display()),
            layers: vec![dir],
            ..Default::default()
        });
    }
    let store = super::image::store().map_err(|e| e.to_string())?;
    let (name, have) = match openshell_images::import::Source::parse(from) {
        // Offline sources are (re)imported every time: unchanged layers are kept.
        Some(_) => (from.to_string(), false),
        None => {
            let community =
                community_name(from, std::env::var("OPENSHELL_COMMUNITY_REGISTRY").ok());
            if let Some(c) = &community {
                eprintln!("openshell: --from {from}: community image {c}");
            }
            let from = community.as_deref().unwrap_or(from);
            let r = openshell_images::Reference::parse(from).map_err(|e| format!("--from: {e}"))?;
            let name = r.to_string();
            let have = store.find(&name).is_ok();
            (name, have)
        }
    };
    let fetch = match pull {
        PullPolicy::Always => true,
        PullPolicy::Missing => !have,
        PullPolicy::Never if !have => {
            return Err(format!(
                "image {name} is not in the store and --pull never was given"
            ));
        }
        PullPolicy::Never => false,
    };
    if fetch {
        let exe = std::env::current_exe().map_err(|e| format!("find openshell itself: {e}"))?;
        let status = std::process::Command::new(exe)
            .args(["image", "pull"])
            .args(reg.to_args())
            .arg(&name)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("start the pull: {e}"))?;
        if !status.success() {
            return Err(format!("could not pull {name} (see above)"));
        }
    }
    let rec = store.find(&name).map_err(|e| e.to_string())?;
    let cfg = store.config(&rec).map_err(|e| e.to_string())?;
    let layers: Vec<PathBuf> = rec
        .layers
        .iter()
        .map(|l| store.layer_dir(&l.diff_id))
        .collect();
    if let Some(missing) = layers.iter().find(|l| !l.is_dir()) {
        return Err(format!(
            "image {name}: layer {} is missing from the store; pull it again with --pull always",
            missing.display()
        ));
    }
    let rc = cfg.config.unwrap_or_default();
    Ok(ImageSpec {
        name,
        digest: rec.digest,
        layers,
        env: rc.env.unwrap_or_default(),
        user: rc.user,
        workdir: rc.working_dir,
        entrypoint: rc.entrypoint.unwrap_or_default(),
        cmd: rc.cmd.unwrap_or_default(),
    })
}

/// Run and return the exit status (125 when openshell itself failed).
pub fn run(args: RunArgs) -> i32 {
    if args.command.is_empty() && args.from.is_none() {
        eprintln!("openshell: no command given: openshell run [OPTIONS] -- CMD [ARGS]");
        return 2;
    }
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("openshell: {e}");
            return EXIT_SETUP;
        }
    };
    match run_sandbox(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openshell: {e}");
            EXIT_SETUP
        }
    }
}

/// A hostname the kernel takes (RFC 1123 labels; at most 64 bytes, the UTS limit).
fn check_hostname(h: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if h.len() <= 64 && h.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "--hostname {h:?}: not a hostname (letters, digits and '-', dot-separated labels, at most 64 characters)"
        ))
    }
}

#[cfg(test)]
mod hostname_tests {
    #[test]
    fn hostnames() {
        for ok in ["a", "box-1", "dev.example", &"a".repeat(63)] {
            assert!(super::check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "ü", &"a".repeat(65), "a b"] {
            assert!(super::check_hostname(bad).is_err(), "{bad}");
        }
    }
}
