//! Offline image sources: `oci:DIR[:tag]` (OCI image layout), `oci-archive:FILE[:tag]`
//! (the same as a tar) and `docker-archive:FILE` (`docker save`). They go through the
//! same verification, unpacking and store as a registry pull.
//!
//! Archives are first unpacked (with the same safe unpacker as layers) into the store's
//! tmp/, which is removed afterwards.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::{Tap, hex, sha256};
use crate::error::{ImageError, Result};
use crate::manifest::{self, Descriptor, Document, MAX_DOCUMENT, Manifest};
use crate::pull::{BlobSource, PullOptions, complete};
use crate::registry::Blob;
use crate::store::{ImageRecord, Store, force_remove};
use crate::unpack::{self, Ownership};

/// An offline source as written after `--from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory, with an optional tag (ref.name annotation).
    OciDir(PathBuf, Option<String>),
    /// An OCI layout as a tar file.
    OciArchive(PathBuf, Option<String>),
    /// A `docker save` tar.
    DockerArchive(PathBuf),
}

/// Split `PATH[:tag]`: a tag is the part after the last `:` if it has no `/`.
fn path_and_tag(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !t.is_empty() && !p.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

impl Source {
    /// Recognise `oci:`, `oci-archive:` and `docker-archive:` sources.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (p, t) = path_and_tag(rest);
            return Some(Source::OciDir(p, t));
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (p, t) = path_and_tag(rest);
            return Some(Source::OciArchive(p, t));
        }
        s.strip_prefix("docker-archive:")
            .map(|rest| Source::DockerArchive(PathBuf::from(rest)))
    }
}

/// Blobs of an OCI layout directory.
struct Layout(PathBuf);

impl BlobSource for Layout {
    fn open_blob(&self, digest: &str) -> Result<Blob> {
        let d = crate::reference::parse_digest(digest).map_err(ImageError::Invalid)?;
        let p = self.0.join("blobs/sha256").join(hex(&d));
        let f = File::open(&p).map_err(ImageError::io("open", &p))?;
        let length = f.metadata().ok().map(|m| m.len());
        Ok(Blob {
            reader: Box::new(f),
            length,
        })
    }
}

/// Blobs of an unpacked `docker save` archive, by digest.
struct Files(BTreeMap<String, PathBuf>);

impl BlobSource for Files {
    fn open_blob(&self, digest: &str) -> Result<Blob> {
        let p = self
            .0
            .get(digest)
            .ok_or_else(|| ImageError::Invalid(format!("blob {digest} not in the archive")))?;
        let f = File::open(p).map_err(ImageError::io("open", p))?;
        let length = f.metadata().ok().map(|m| m.len());
        Ok(Blob {
            reader: Box::new(f),
            length,
        })
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(ImageError::io("open", path))?;
    let mut v = Vec::new();
    f.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut v)
        .map_err(ImageError::io("read", path))?;
    if v.len() as u64 > MAX_DOCUMENT {
        return Err(ImageError::Limit(format!(
            "{} is over the {MAX_DOCUMENT}-byte limit",
            path.display()
        )));
    }
    Ok(v)
}

/// Import an offline source under the name `name`.
pub fn import(
    store: &Store,
    source: &Source,
    name: &str,
    opts: &PullOptions,
) -> Result<ImageRecord> {
    match source {
        Source::OciDir(dir, tag) => import_layout(store, dir, tag.as_deref(), name, opts),
        Source::OciArchive(file, tag) => {
            let tmp = extract(store, file)?;
            let r = import_layout(store, &tmp, tag.as_deref(), name, opts);
            let _ = force_remove(&tmp);
            r
        }
        Source::DockerArchive(file) => {
            let tmp = extract(store, file)?;
            let r = import_docker(store, &tmp, name, opts);
            let _ = force_remove(&tmp);
            r
        }
    }
}

fn extract(store: &Store, file: &Path) -> Result<PathBuf> {
    let f = File::open(file).map_err(ImageError::io("open", file))?;
    let tmp = store.tmp_dir("archive")?;
    unpack::unpack(f, &tmp, Ownership::Flatten, &mut || Ok(())).map_err(|detail| {
        let _ = force_remove(&tmp);
        ImageError::Unpack {
            layer: file.display().to_string(),
            detail,
        }
    })?;
    Ok(tmp)
}

fn import_layout(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    name: &str,
    opts: &PullOptions,
) -> Result<ImageRecord> {
    let doc = |detail: String| ImageError::Document {
        reference: name.to_string(),
        detail,
    };
    let index: manifest::Index = serde_json::from_slice(&read_small(&dir.join("index.json"))?)
        .map_err(|e| doc(format!("index.json: {e}")))?;
    let tag_of = |d: &Descriptor| {
        d.annotations
            .get("org.opencontainers.image.ref.name")
            .cloned()
    };
    let desc = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| tag_of(d).is_some_and(|n| n == t || n.ends_with(&format!(":{t}"))))
            .ok_or_else(|| doc(format!("no image tagged {t:?} in {}", dir.display())))?,
        None => match index.manifests.as_slice() {
            [one] => one,
            many => {
                let tags: Vec<String> = many.iter().filter_map(tag_of).collect();
                return Err(doc(format!(
                    "several images in the layout; pick one with :TAG ({})",
                    tags.join(", ")
                )));
            }
        },
    };
    let layout = Layout(dir.to_path_buf());
    let read_verified = |d: &str| -> Result<Vec<u8>> {
        let d = crate::reference::parse_digest(d).map_err(ImageError::Invalid)?;
        let bytes = read_small(&dir.join("blobs/sha256").join(hex(&d)))?;
        if sha256(&bytes) != d {
            return Err(ImageError::Integrity {
                what: "blob",
                digest: d,
                detail: "content does not match its name in the layout".into(),
            });
        }
        Ok(bytes)
    };
    let bytes = read_verified(&desc.digest)?;
    let (m, mbytes, index_digest) =
        match manifest::parse_document(&bytes, Some(&desc.media_type)).map_err(doc)? {
            Document::Image(m) => (m, bytes, None),
            Document::Index(idx) => {
                store.put_blob(&desc.digest, &bytes)?;
                let d = manifest::select(&idx, &opts.platform).map_err(doc)?;
                let mb = read_verified(&d.digest)?;
                match manifest::parse_document(&mb, Some(&d.media_type)).map_err(doc)? {
                    Document::Image(m) => (m, mb, Some(desc.digest.clone())),
                    Document::Index(_) => return Err(doc("an index inside an index".into())),
                }
            }
        };
    complete(store, &layout, name, &m, &mbytes, index_digest, opts)
}

/// Hash a file (streamed) for its digest.
fn file_digest(p: &Path) -> Result<(String, u64)> {
    let f = File::open(p).map_err(ImageError::io("open", p))?;
    let (mut tap, meter) = Tap::new(f, u64::MAX, "file");
    std::io::copy(&mut tap, &mut std::io::sink()).map_err(ImageError::io("read", p))?;
    let m = meter.borrow();
    Ok((m.digest(), m.count()))
}

fn layer_media_type(p: &Path) -> Result<&'static str> {
    let mut magic = [0u8; 4];
    let n = File::open(p)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(ImageError::io("read", p))?;
    Ok(match &magic[..n.min(4)] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    })
}

fn import_docker(store: &Store, dir: &Path, name: &str, opts: &PullOptions) -> Result<ImageRecord> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let doc = |detail: String| ImageError::Document {
        reference: name.to_string(),
        detail,
    };
    let entries: Vec<Entry> = serde_json::from_slice(&read_small(&dir.join("manifest.json"))?)
        .map_err(|e| doc(format!("manifest.json: {e}")))?;
    let entry = match entries.as_slice() {
        [one] => one,
        _ => {
            return Err(doc(format!(
                "{} images in the archive; only single-image archives are supported",
                entries.len()
            )));
        }
    };
    let _ = &entry.repo_tags;
    let inside = |rel: &str| -> Result<PathBuf> {
        let r = unpack::normalize(Path::new(rel))
            .map_err(doc)?
            .ok_or_else(|| doc(format!("bad path {rel:?} in manifest.json")))?;
        Ok(dir.join(r))
    };
    let config_path = inside(&entry.config)?;
    let config_bytes = read_small(&config_path)?;
    let config_digest = sha256(&config_bytes);
    let mut blobs = BTreeMap::new();
    blobs.insert(config_digest.clone(), config_path);
    let mut layers = Vec::new();
    for l in &entry.layers {
        let p = inside(l)?;
        let (digest, size) = file_digest(&p)?;
        layers.push(Descriptor {
            media_type: layer_media_type(&p)?.to_string(),
            digest: digest.clone(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        });
        blobs.insert(digest, p);
    }
    let m = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers,
    };
    let bytes = serde_json::to_vec(&m).map_err(|e| doc(e.to_string()))?;
    complete(store, &Files(blobs), name, &m, &bytes, None, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("oci:/x/y:latest"),
            Some(Source::OciDir("/x/y".into(), Some("latest".into())))
        );
        assert_eq!(
            Source::parse("oci:/x/y"),
            Some(Source::OciDir("/x/y".into(), None))
        );
        assert_eq!(
            Source::parse("oci:./a:b/c"),
            Some(Source::OciDir("./a:b/c".into(), None))
        );
        assert_eq!(
            Source::parse("oci-archive:/f.tar"),
            Some(Source::OciArchive("/f.tar".into(), None))
        );
        assert_eq!(
            Source::parse("docker-archive:/f.tar"),
            Some(Source::DockerArchive("/f.tar".into()))
        );
        assert_eq!(Source::parse("busybox:latest"), None);
    }
}
