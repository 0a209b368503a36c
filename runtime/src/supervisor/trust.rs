//! The sandbox CA as programs inside see it: a per-sandbox CA (for inspected endpoints)
//! whose key never leaves the supervisor, its certificate and a combined bundle (the
//! host's roots + the CA) under /run/openshell, the bundle bound over the distro trust
//! paths present in the root (so Go, OpenSSL, GnuTLS and friends trust it unmodified),
//! the environment variables the common runtimes read, and a preload that makes node
//! older than 22.21 use the proxy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openshell_proxy::tls::SandboxCa;

/// Where the CA files appear inside.
pub use crate::confine::CA_DIR as DIR;

/// The preload that routes old node's default agents through the proxy (node ignores
/// NODE_USE_ENV_PROXY before 22.21): `NODE_OPTIONS=--require` it.
pub const NODE_PRELOAD: &str = "/run/openshell/node-proxy.cjs";

const NODE_PRELOAD_JS: &str = include_str!("node-proxy.cjs");

/// Distro trust bundle paths the combined bundle is bound over (when present).
pub const DISTRO_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Everything `run` needs to hand the CA to the sandbox.
pub struct Trust {
    /// The CA (kept by the supervisor's proxy).
    pub ca: Arc<SandboxCa>,
    /// (sandbox path, host file) created wherever they go.
    pub own_files: Vec<(PathBuf, PathBuf)>,
    /// (distro path, host file) bound over existing trust bundles.
    pub bundles: Vec<(PathBuf, PathBuf)>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

/// What takes time and needs no sandbox directory: the CA (key + certificate) and the
/// combined bundle (the host's roots + the CA). `run` makes it on a thread of its own
/// while it sets the sandbox's directory up.
pub struct Material {
    ca: SandboxCa,
    pem: String,
    bundle: String,
}

/// Generate the CA of sandbox `sandbox` and its bundle.
pub fn material(sandbox: &str) -> Result<Material, String> {
    let ca = SandboxCa::generate(sandbox).map_err(|e| format!("sandbox CA: {e}"))?;
    let pem = ca.cert_pem();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut bundle = std::fs::read_to_string(&system).unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(&pem);
    Ok(Material { ca, pem, bundle })
}

/// Write the CA's files in `state`; `exists` tells whether a path exists in the
/// sandbox's root (host view: on the host; image: in a layer).
pub fn prepare(
    state: &Path,
    material: Material,
    exists: &dyn Fn(&str) -> bool,
) -> Result<Trust, String> {
    let Material { ca, pem, bundle } = material;
    let dir = state.join("ca");
    // Not create_dir_all: a sandbox directory deleted meanwhile must not come back.
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("create {}: {e}", dir.display()));
        }
        _ => {}
    }
    let (ca_file, bundle_file) = (dir.join("ca.pem"), dir.join("ca-bundle.pem"));
    let node_file = dir.join("node-proxy.cjs");
    for (f, content) in [
        (&ca_file, pem.as_str()),
        (&bundle_file, bundle.as_str()),
        (&node_file, NODE_PRELOAD_JS),
    ] {
        std::fs::write(f, content).map_err(|e| format!("write {}: {e}", f.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644));
    }
    let inside_ca = format!("{DIR}/ca.pem");
    let inside_bundle = format!("{DIR}/ca-bundle.pem");
    let mut env = Vec::new();
    for k in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ] {
        env.push((k.to_string(), inside_bundle.clone()));
    }
    for k in ["NODE_EXTRA_CA_CERTS", "DENO_CERT"] {
        env.push((k.to_string(), inside_ca.clone()));
    }
    Ok(Trust {
        ca: Arc::new(ca),
        own_files: vec![
            (PathBuf::from(&inside_ca), ca_file),
            (PathBuf::from(&inside_bundle), bundle_file.clone()),
            (PathBuf::from(NODE_PRELOAD), node_file),
        ],
        bundles: DISTRO_BUNDLES
            .iter()
            .filter(|p| exists(p))
            .map(|p| (PathBuf::from(p), bundle_file.clone()))
            .collect(),
        env,
    })
}
