//! The one error type of the images crate; every message names the image or registry
//! concerned and, where there is one, what to do.

use std::path::PathBuf;

/// Something about an image went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference or option is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The registry could not be reached.
    #[error("registry {registry} unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    /// Credentials missing or refused.
    #[error("registry {registry} refused access to {reference}: {detail}")]
    Auth {
        registry: String,
        reference: String,
        detail: String,
    },
    /// Repository, tag or blob does not exist.
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    /// Any other HTTP failure.
    #[error("registry {registry}: {detail}")]
    Http { registry: String, detail: String },
    /// A blob's content does not match its digest or size.
    #[error("{what} {digest}: {detail}; nothing of it was kept")]
    Integrity {
        what: &'static str,
        digest: String,
        detail: String,
    },
    /// A limit against hostile or absurd content was hit.
    #[error("{0}")]
    Limit(String),
    /// A layer's tar stream is hostile or broken.
    #[error("layer {layer}: {detail}")]
    Unpack { layer: String, detail: String },
    /// A malformed manifest, index or config.
    #[error("{reference}: {detail}")]
    Document { reference: String, detail: String },
    /// A file operation in the store failed.
    #[error("{what} {}: {source}{}", path.display(), access_hint(source))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image is not in the store.
    #[error("image {0} is not in the store; pull it with 'openshell image pull {0}'")]
    Missing(String),
    /// The image is in use.
    #[error("image {image} is used by sandbox {sandbox}; delete the sandbox first or use --force")]
    InUse { image: String, sandbox: String },
}

impl ImageError {
    /// An I/O error with what was done and where.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                return ImageError::Limit(format!(
                    "no space left on the device holding {}: free some space (openshell image prune) and retry",
                    path.display()
                ));
            }
            ImageError::Io { what, path, source }
        }
    }
}

/// What to do when the image store cannot be written.
fn access_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::ReadOnlyFilesystem
        | std::io::ErrorKind::NotADirectory => {
            " (the image store must be writable by you: fix its owner or mode, or set OPENSHELL_IMAGE_DIR to a directory of yours)"
        }
        _ => "",
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ImageError>;
