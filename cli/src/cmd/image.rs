//! `openshell image pull|list|inspect|rm|prune|login|logout`.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use openshell_images::auth::{self, Credentials};
use openshell_images::manifest::Platform;
use openshell_images::pull::{Limits, PullOptions};
use openshell_images::registry::{Client, RegistryOptions};
use openshell_images::unpack::Ownership;
use openshell_images::{ImageError, ImageRecord, Reference, Store};

use crate::output::{Format, fail, structured_times, table};

/// How to reach registries (shared by pull, login and run --from).
#[derive(Debug, Clone, Args, Default)]
pub struct RegistryArgs {
    /// Trust this CA certificate (PEM) for registry TLS, besides the system store.
    /// Repeatable.
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Allow plain http for this registry (host:port). Loopback registries may always
    /// use it. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Platform to pick from a multi-platform image (default: this host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure_registry.clone(),
            ca_files: self.registry_ca.clone(),
            credentials: None,
        }
    }

    /// Arguments to pass these settings on to a child `openshell image pull`.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for f in &self.registry_ca {
            v.push("--registry-ca".into());
            v.push(f.display().to_string());
        }
        for h in &self.insecure_registry {
            v.push("--insecure-registry".into());
            v.push(h.clone());
        }
        if let Some(p) = &self.platform {
            v.push("--platform".into());
            v.push(p.clone());
        }
        v
    }
}

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry (or import an offline one) into the local store.
    Pull {
        /// Image reference (python:3.12, host:port/name:tag, name@sha256:...), or
        /// oci:DIR[:tag], oci-archive:FILE[:tag], docker-archive:FILE.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print only the image digest.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List stored images.
    #[command(alias = "ls")]
    List {
        /// Print only digests.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show an image's record and config.
    Inspect {
        /// Name or digest (prefix).
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::images))]
        image: String,
    },
    /// Remove images (refused while a sandbox uses one, unless --force).
    Rm {
        /// Names or digests.
        #[arg(required = true)]
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::images))]
        images: Vec<String>,
        /// Remove even if a sandbox uses it.
        #[arg(short, long)]
        force: bool,
    },
    /// Delete layers and blobs no image uses, and leftovers of interrupted pulls.
    Prune,
    /// Store credentials for a registry.
    Login {
        /// Registry host[:port].
        registry: String,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Read the password from stdin (recommended).
        #[arg(long)]
        password_stdin: bool,
        /// Password (visible in the process list: prefer --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        #[command(flatten)]
        registry_args: RegistryArgs,
    },
    /// Remove stored credentials for a registry.
    Logout {
        /// Registry host[:port].
        registry: String,
    },
}

/// Run `f` where the store's files can be owned as the image says, and tell it how:
/// root shifts image ids into the sandbox's range; rootless with subordinate ids works
/// in a user namespace mapped like the sandbox (so ids are kept as they are); rootless
/// without them flattens ownership to the user.
pub fn in_store_userns(f: impl FnOnce(Ownership) -> i32) -> i32 {
    use openshell_runtime::api::host as idmap;
    let ids = idmap::plan(&idmap::facts(), 1000, 1000);
    if nix::unistd::geteuid().is_root() {
        return f(match (ids.outside_uid(1), ids.outside_gid(1)) {
            (Some(u), Some(g)) => Ownership::Shift {
                uid_base: u - 1,
                gid_base: g - 1,
            },
            _ => Ownership::Flatten,
        });
    }
    if ids.mode != openshell_runtime::api::host::IdMode::Subids {
        return f(Ownership::Flatten);
    }
    let identity = Ownership::Shift {
        uid_base: 0,
        gid_base: 0,
    };
    match idmap::run_mapped(&ids, || f(identity)) {
        Ok(code) => code,
        Err(e) => fail(format!("user namespace for the image store: {e}")),
    }
}

/// Open the default store.
pub fn store() -> Result<Store, ImageError> {
    Store::open(Store::default_root())
}

/// Pull `reference` (or import an `oci:`, `oci-archive:`, `docker-archive:` source).
pub fn pull(
    reference: &str,
    reg: &RegistryArgs,
    quiet: bool,
    ownership: Ownership,
) -> Result<ImageRecord, ImageError> {
    let platform = match &reg.platform {
        Some(p) => Platform::parse(p).map_err(ImageError::Invalid)?,
        None => Platform::host(),
    };
    let opts = PullOptions {
        registry: reg.options(),
        platform,
        ownership,
        limits: Limits::default(),
        quiet,
    };
    if let Some(src) = openshell_images::import::Source::parse(reference) {
        return openshell_images::import::import(&store()?, &src, reference, &opts);
    }
    let r = Reference::parse(reference).map_err(ImageError::Invalid)?;
    openshell_images::pull::pull(&store()?, &r, &opts)
}

fn age(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let d = now.saturating_sub(secs);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

pub fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if v < 1000.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1000.0;
    }
    format!("{v:.1} TB")
}

/// Sandboxes (by name) whose state says they use `digest`. Fails closed: a state
/// directory that cannot be read counts as a user named after the problem.
fn users_of(digest: &str) -> Vec<String> {
    let dir = openshell_runtime::api::state::base_dir().join("sandboxes");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec![],
        Err(e) => return vec![format!("(unknown: {}: {e})", dir.display())],
    };
    rd.flatten()
        .filter(|e| match std::fs::read_to_string(e.path().join("image")) {
            Ok(d) => d.trim() == digest,
            Err(err) => err.kind() != std::io::ErrorKind::NotFound,
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `image rm`: a name of an image with other names is only untagged; otherwise the
/// image goes with every name, and its layers and blobs that no other image uses.
fn remove(images: &[String], force: bool) -> i32 {
    let s = match store() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut code = 0;
    for name in images {
        match s.untag(name) {
            Ok(true) => {
                println!("untagged {name}");
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                code = fail(e);
                continue;
            }
        }
        let rec = match s.find(name) {
            Ok(r) => r,
            Err(e) => {
                code = fail(e);
                continue;
            }
        };
        if let Some(sb) = users_of(&rec.digest).first() {
            if !force {
                code = fail(ImageError::InUse {
                    image: name.clone(),
                    sandbox: sb.clone(),
                });
                continue;
            }
            // Its layers are mounted by the sandbox: only the names go now.
            match s.drop_names(&rec) {
                Ok(()) => println!(
                    "untagged {name}: its layers stay while sandbox {sb} uses them (`image prune` removes them after)"
                ),
                Err(e) => code = fail(e),
            }
            continue;
        }
        match s.remove(&rec) {
            Ok((layers, bytes)) => println!(
                "removed {name} {} ({layers} layers, {} of blobs)",
                rec.digest,
                human(bytes)
            ),
            Err(e) => code = fail(e),
        }
    }
    code
}

/// Run an image command.
pub fn run(cmd: ImageCommand, format: Format) -> i32 {
    match cmd {
        ImageCommand::Pull {
            reference,
            registry,
            quiet,
        } => in_store_userns(|own| match pull(&reference, &registry, quiet, own) {
            Ok(rec) => {
                if quiet {
                    println!("{}", rec.digest);
                } else {
                    println!(
                        "pulled {} {}",
                        rec.names.last().map_or("", String::as_str),
                        rec.digest
                    );
                }
                0
            }
            Err(e) => fail(e),
        }),
        ImageCommand::List { quiet } => {
            let list = match store().and_then(|s| s.list()) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            if quiet {
                list.iter().for_each(|r| println!("{}", r.digest));
            } else if !structured_times(format, &list, &["pulled"]) {
                // One row per name, as `docker images` does.
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .flat_map(|r| {
                        let names = if r.names.is_empty() {
                            vec!["<none>".to_string()]
                        } else {
                            r.names.clone()
                        };
                        names.into_iter().map(move |n| {
                            vec![
                                n,
                                r.digest.get(7..19).unwrap_or(&r.digest).to_string(),
                                human(r.size()),
                                r.layers.len().to_string(),
                                age(r.pulled),
                            ]
                        })
                    })
                    .collect();
                table(&["NAME", "DIGEST", "SIZE", "LAYERS", "PULLED"], &rows);
            }
            0
        }
        ImageCommand::Inspect { image } => {
            let s = match store() {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match s.find(&image).and_then(|r| s.config(&r).map(|c| (r, c))) {
                Ok((rec, cfg)) => {
                    let v = serde_json::json!({ "image": rec, "config": cfg });
                    if !structured_times(
                        if format == Format::Table {
                            Format::Json
                        } else {
                            format
                        },
                        &v,
                        &["pulled"],
                    ) {
                        unreachable!("json output always prints");
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }
        ImageCommand::Rm { images, force } => in_store_userns(|_| remove(&images, force)),
        ImageCommand::Prune => in_store_userns(|_| {
            match store().and_then(|s| {
                // Images without a name that no sandbox uses any more go first.
                let (mut layers, mut bytes) = (0, 0);
                for r in s.list()? {
                    if r.names.is_empty() && users_of(&r.digest).is_empty() {
                        let (l, b) = s.remove(&r)?;
                        layers += l;
                        bytes += b;
                    }
                }
                let (l, b) = s.prune()?;
                Ok((layers + l, bytes + b))
            }) {
                Ok((layers, bytes)) => {
                    println!("removed {layers} layers and {} of blobs", human(bytes));
                    0
                }
                Err(e) => fail(e),
            }
        }),
        ImageCommand::Login {
            registry,
            username,
            password_stdin,
            password,
            registry_args,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut p = String::new();
                    if let Err(e) = std::io::stdin().read_to_string(&mut p) {
                        return fail(e);
                    }
                    p.trim_end_matches(['\n', '\r']).to_string()
                }
                (None, false) => return fail("give the password with --password-stdin (or -p)"),
            };
            let creds = Credentials {
                user: username,
                password,
            };
            let r = match Reference::parse(&format!("{registry}/openshell-login-check")) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let mut opts = registry_args.options();
            opts.credentials = Some(creds.clone());
            if let Err(e) = Client::new(&r, &opts).and_then(|c| c.check_login()) {
                return fail(e);
            }
            match auth::store(&r.registry, &creds) {
                Ok(file) => {
                    println!("login succeeded; credentials stored in {}", file.display());
                    0
                }
                Err(e) => fail(e),
            }
        }
        ImageCommand::Logout { registry } => match auth::remove(&registry) {
            Ok(true) => {
                println!("removed credentials for {registry}");
                0
            }
            Ok(false) => fail(format!("not logged in to {registry}")),
            Err(e) => fail(e),
        },
    }
}
