//! Pull an image: resolve the reference (and the platform, through an index), store the
//! manifest and config, then fetch every missing layer in parallel — one thread each —
//! decompressing, verifying both digests and unpacking as the bytes stream in.
//!
//! A layer is unpacked into the store's tmp/ and renamed into layers/ only once its blob
//! digest, size and diff-id all check out: an interrupted or corrupt pull leaves nothing
//! that is ever used. A per-layer lock makes concurrent pulls of the same layer wait for
//! each other instead of racing.

use std::io::{IsTerminal, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::digest::{Shared, Tap, hex, sha256};
use crate::error::{ImageError, Result};
use crate::manifest::{self, Compression, Document, ImageConfig, MAX_DOCUMENT, Platform};
use crate::reference::Reference;
use crate::registry::{Client, RegistryOptions};
use crate::store::{ImageRecord, LayerRecord, Store, force_remove};
use crate::unpack::{self, Ownership};

/// Limits against hostile layers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most uncompressed bytes one layer may have.
    pub max_layer_bytes: u64,
    /// Uncompressed/compressed ratio above which a layer is a decompression bomb ...
    pub bomb_ratio: u64,
    /// ... once it has produced this many bytes.
    pub bomb_min_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let env = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Self {
            max_layer_bytes: env("OPENSHELL_MAX_LAYER_BYTES", 32 << 30),
            bomb_ratio: env("OPENSHELL_MAX_LAYER_RATIO", 500),
            bomb_min_bytes: 128 << 20,
        }
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registry access.
    pub registry: RegistryOptions,
    /// Platform wanted from an index.
    pub platform: Platform,
    /// Ownership of unpacked files.
    pub ownership: Ownership,
    /// Hostile-content limits.
    pub limits: Limits,
    /// Print nothing but errors.
    pub quiet: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn doc_err(reference: &Reference, detail: impl Into<String>) -> ImageError {
    ImageError::Document {
        reference: reference.to_string(),
        detail: detail.into(),
    }
}

/// Pull `reference` into `store`; returns the stored record.
pub fn pull(store: &Store, reference: &Reference, opts: &PullOptions) -> Result<ImageRecord> {
    let client = Client::new(reference, &opts.registry)?;
    let (bytes, ct) = client.manifest(reference.manifest_ref())?;
    let top_digest = sha256(&bytes);
    if let Some(want) = &reference.digest
        && *want != top_digest
    {
        return Err(ImageError::Integrity {
            what: "manifest",
            digest: want.clone(),
            detail: format!("the registry sent content hashing to {top_digest}"),
        });
    }
    let (manifest, manifest_bytes, index_digest) =
        match manifest::parse_document(&bytes, ct.as_deref()).map_err(|e| doc_err(reference, e))? {
            Document::Image(m) => (m, bytes, None),
            Document::Index(idx) => {
                let desc =
                    manifest::select(&idx, &opts.platform).map_err(|e| doc_err(reference, e))?;
                let (mbytes, mct) = client.manifest(&desc.digest)?;
                if sha256(&mbytes) != desc.digest {
                    return Err(ImageError::Integrity {
                        what: "manifest",
                        digest: desc.digest.clone(),
                        detail: "content does not match the index".into(),
                    });
                }
                store.put_blob(&top_digest, &bytes)?;
                match manifest::parse_document(&mbytes, mct.as_deref())
                    .map_err(|e| doc_err(reference, e))?
                {
                    Document::Image(m) => (m, mbytes, Some(top_digest.clone())),
                    Document::Index(_) => {
                        return Err(doc_err(reference, "an index inside an index"));
                    }
                }
            }
        };
    complete(
        store,
        &client,
        &reference.to_string(),
        &manifest,
        &manifest_bytes,
        index_digest,
        opts,
    )
}

/// Where blobs come from: a registry, or an image layout on disk.
pub trait BlobSource: Sync {
    /// Open a blob for reading.
    fn open_blob(&self, digest: &str) -> Result<crate::registry::Blob>;
}

impl BlobSource for Client {
    fn open_blob(&self, digest: &str) -> Result<crate::registry::Blob> {
        self.blob(digest)
    }
}

/// Given a resolved manifest: store it, fetch the config and every missing layer, and
/// record the image under `name`.
pub fn complete(
    store: &Store,
    source: &dyn BlobSource,
    name: &str,
    manifest: &manifest::Manifest,
    manifest_bytes: &[u8],
    index_digest: Option<String>,
    opts: &PullOptions,
) -> Result<ImageRecord> {
    let doc_err = |detail: String| ImageError::Document {
        reference: name.to_string(),
        detail,
    };
    let digest = sha256(manifest_bytes);
    store.put_blob(&digest, manifest_bytes)?;
    let config = fetch_config(store, source, &manifest.config.digest, manifest.config.size)?;
    let cfg: ImageConfig =
        serde_json::from_slice(&config).map_err(|e| doc_err(format!("bad image config: {e}")))?;
    if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(doc_err(format!(
            "config lists {} diff-ids for {} layers",
            cfg.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let layers: Vec<LayerRecord> = manifest
        .layers
        .iter()
        .zip(&cfg.rootfs.diff_ids)
        .map(|(d, diff)| {
            crate::reference::parse_digest(diff)
                .and_then(|_| crate::reference::parse_digest(&d.digest))
                .map_err(doc_err)?;
            Ok(LayerRecord {
                digest: d.digest.clone(),
                diff_id: diff.clone(),
                size: d.size,
                media_type: d.media_type.clone(),
            })
        })
        .collect::<Result<_>>()?;
    let implicit = fetch_layers(store, source, &layers, opts)?;
    inherit_implicit_dirs(store, &layers, &implicit);
    let rec = ImageRecord {
        digest,
        index_digest,
        config: manifest.config.digest.clone(),
        layers,
        platform: Platform {
            architecture: cfg.architecture.clone(),
            os: cfg.os.clone(),
            variant: None,
        },
        names: vec![],
        pulled: now(),
    };
    store.save(&rec, name)
}

fn fetch_config(
    store: &Store,
    client: &dyn BlobSource,
    digest: &str,
    size: u64,
) -> Result<Vec<u8>> {
    if let Ok(b) = store.read_blob(digest) {
        return Ok(b);
    }
    if size > MAX_DOCUMENT {
        return Err(ImageError::Limit(format!(
            "image config of {size} bytes is over the {MAX_DOCUMENT}-byte limit"
        )));
    }
    let blob = client.open_blob(digest)?;
    let mut bytes = Vec::new();
    blob.reader
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Unreachable {
            registry: "config".into(),
            detail: e.to_string(),
        })?;
    store.put_blob(digest, &bytes)?;
    Ok(bytes)
}

fn short(d: &str) -> &str {
    &hex(d)[..12.min(hex(d).len())]
}

/// A directory a layer created only as the parent of an entry takes the mode, owner and
/// mtime of the same directory in the nearest lower layer (as flattening unpackers see it).
fn inherit_implicit_dirs(
    store: &Store,
    layers: &[LayerRecord],
    implicit: &[Vec<std::path::PathBuf>],
) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for (i, dirs) in implicit.iter().enumerate() {
        let here = store.layer_dir(&layers[i].diff_id);
        for rel in dirs.iter().rev() {
            let lower = layers[..i]
                .iter()
                .rev()
                .map(|l| store.layer_dir(&l.diff_id).join(rel))
                .find_map(|p| std::fs::symlink_metadata(&p).ok().filter(|m| m.is_dir()));
            if let Some(m) = lower {
                let p = here.join(rel);
                let _ = std::os::unix::fs::lchown(&p, Some(m.uid()), Some(m.gid()));
                let _ = std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode(m.mode() & 0o7777),
                );
                let t = nix::sys::time::TimeSpec::new(m.mtime(), 0);
                let _ = nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    &p,
                    &t,
                    &t,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                );
            }
        }
    }
}

fn fetch_layers(
    store: &Store,
    client: &dyn BlobSource,
    layers: &[LayerRecord],
    opts: &PullOptions,
) -> Result<Vec<Vec<std::path::PathBuf>>> {
    let bars = (!opts.quiet && std::io::stderr().is_terminal()).then(MultiProgress::new);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    // One bar per layer and a total under them.
    let total = bars.as_ref().map(|m| {
        let t = m.add(ProgressBar::new(layers.iter().map(|l| l.size).sum()));
        t.set_style(style.clone());
        t.set_prefix("total       ".to_string());
        t
    });
    let results: Vec<Result<Vec<std::path::PathBuf>>> = std::thread::scope(|s| {
        let handles: Vec<_> = layers
            .iter()
            .map(|l| {
                let bar = bars.as_ref().map(|m| {
                    let b = m.insert_from_back(1, ProgressBar::new(l.size));
                    b.set_style(style.clone());
                    b.set_prefix(short(&l.digest).to_string());
                    (b, total.clone().unwrap_or_else(ProgressBar::hidden))
                });
                s.spawn(move || fetch_layer(store, client, l, opts, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ImageError::Invalid("layer thread panicked".into())))
            })
            .collect()
    });
    if let Some(t) = total {
        t.finish();
    }
    results.into_iter().collect()
}

fn fetch_layer(
    store: &Store,
    client: &dyn BlobSource,
    layer: &LayerRecord,
    opts: &PullOptions,
    bar: Option<(ProgressBar, ProgressBar)>,
) -> Result<Vec<std::path::PathBuf>> {
    let dest = store.layer_dir(&layer.diff_id);
    if dest.exists() {
        tracing::debug!("layer {}: already in the store", short(&layer.digest));
        if let Some((b, t)) = bar {
            t.inc(layer.size);
            b.finish_with_message("exists");
        }
        return Ok(vec![]);
    }
    let compression = manifest::compression(&layer.media_type).map_err(ImageError::Invalid)?;
    let _lock = store.lock(&format!("layer-{}", hex(&layer.diff_id)))?;
    if dest.exists() {
        return Ok(vec![]); // another pull finished it while we waited
    }
    let tmp = store.tmp_dir(&format!("layer-{}", short(&layer.diff_id)))?;
    let result = download_and_unpack(client, layer, compression, &tmp, opts, bar.clone());
    match result {
        Ok(stats) => {
            std::fs::rename(&tmp, &dest).map_err(ImageError::io("rename", &dest))?;
            if let Some((b, _)) = &bar {
                b.finish();
            } else if !opts.quiet {
                eprintln!("layer {} {} bytes done", layer.digest, layer.size);
            }
            if !stats.skipped_devices.is_empty() && !opts.quiet {
                eprintln!(
                    "layer {}: skipped {} device node(s) (sandboxes have their own /dev): {}",
                    short(&layer.digest),
                    stats.skipped_devices.len(),
                    stats.skipped_devices.join(", ")
                );
            }
            Ok(stats.implicit_dirs)
        }
        Err(e) => {
            let _ = force_remove(&tmp);
            if let Some((b, _)) = &bar {
                b.abandon();
            }
            Err(e)
        }
    }
}

fn download_and_unpack(
    client: &dyn BlobSource,
    layer: &LayerRecord,
    compression: Compression,
    tmp: &std::path::Path,
    opts: &PullOptions,
    bar: Option<(ProgressBar, ProgressBar)>,
) -> Result<unpack::Stats> {
    let integrity = |detail: String| ImageError::Integrity {
        what: "layer",
        digest: layer.digest.clone(),
        detail,
    };
    let blob = client.open_blob(&layer.digest)?;
    if let Some(len) = blob.length
        && len != layer.size
    {
        return Err(integrity(format!(
            "the registry sends {len} bytes, the manifest says {}",
            layer.size
        )));
    }
    let (tap, compressed) = Tap::new(
        blob.reader,
        layer.size,
        "layer blob (larger than its manifest size)",
    );
    let tap = match bar {
        Some((b, t)) => tap.on_read(move |n| {
            b.inc(n);
            t.inc(n);
        }),
        None => tap,
    };
    let raw = Shared(std::rc::Rc::new(std::cell::RefCell::new(tap)));
    let decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(raw.clone()),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw.clone())),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(raw.clone())
                .map_err(|e| integrity(format!("zstd: {e}")))?,
        ),
    };
    let limits = opts.limits;
    let (mut tar, uncompressed) = Tap::new(decoder, limits.max_layer_bytes, "uncompressed layer");
    let name = layer.digest.clone();
    let (c2, u2) = (compressed.clone(), uncompressed.clone());
    let mut check = move || {
        let (c, u) = (c2.borrow().count(), u2.borrow().count());
        if u > limits.bomb_min_bytes && u > c.saturating_mul(limits.bomb_ratio) {
            return Err(format!(
                "decompression bomb: {u} bytes from {c} compressed (ratio over {}; raise OPENSHELL_MAX_LAYER_RATIO if this is legitimate)",
                limits.bomb_ratio
            ));
        }
        Ok(())
    };
    let stats = unpack::unpack(&mut tar, tmp, opts.ownership, &mut check).map_err(|detail| {
        if detail.contains("No space left on device") {
            ImageError::Limit(format!(
                "no space left on the device holding the image store ({}): free some space (openshell image prune) and retry",
                tmp.parent().and_then(|p| p.parent()).unwrap_or(tmp).display()
            ))
        } else if detail.contains("exceeds the limit") || detail.contains("decompression bomb") {
            ImageError::Limit(format!("layer {name}: {detail}"))
        } else if detail.contains("broken tar stream") || detail.contains("not a tar stream") {
            integrity(detail)
        } else {
            ImageError::Unpack {
                layer: name.clone(),
                detail,
            }
        }
    })?;
    // Hash what the tar reader left (end-of-archive padding), then the compressed rest.
    std::io::copy(&mut tar, &mut std::io::sink()).map_err(|e| integrity(e.to_string()))?;
    drop(tar);
    std::io::copy(&mut raw.clone(), &mut std::io::sink()).map_err(|e| integrity(e.to_string()))?;
    let (c, u) = (compressed.borrow().clone(), uncompressed.borrow().clone());
    if c.count() != layer.size || c.digest() != layer.digest {
        return Err(integrity(format!(
            "got {} bytes hashing to {}",
            c.count(),
            c.digest()
        )));
    }
    if u.digest() != layer.diff_id {
        return Err(integrity(format!(
            "uncompressed content hashes to {}, the image config says {}",
            u.digest(),
            layer.diff_id
        )));
    }
    Ok(stats)
}
