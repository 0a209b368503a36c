//! The image store on disk: content-addressed blobs (manifests, configs), unpacked layers
//! keyed by diff-id and shared by every image, image records, and the name → image map.
//!
//! ```text
//! images/blobs/sha256/<hex>       manifests, indexes, configs (verified before rename)
//! images/layers/<diffid-hex>/     one unpacked layer, complete or absent (renamed in)
//! images/records/<hex>.json       one per image (manifest digest)
//! images/refs.json                name -> manifest digest
//! images/locks/, images/tmp/      flock files; in-progress work (removed by prune)
//! ```
//! Every write is temp-then-rename; a layer or blob either exists whole or not at all.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::digest::{hex, sha256};
use crate::error::{ImageError, Result};
use crate::manifest::{ImageConfig, Platform};

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed.
    pub digest: String,
    /// Uncompressed digest (the key of the unpacked dir).
    pub diff_id: String,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Manifest digest: the image's identity.
    pub digest: String,
    /// Index digest when pulled through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Config blob digest.
    pub config: String,
    /// Layers, base first.
    pub layers: Vec<LayerRecord>,
    /// Platform.
    pub platform: Platform,
    /// Names pointing at it.
    #[serde(default)]
    pub names: Vec<String>,
    /// Unix seconds of the pull.
    pub pulled: u64,
}

impl ImageRecord {
    /// Total size of the layer blobs.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A held lock; released on drop.
pub struct Lock(#[allow(dead_code)] Flock<File>);

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The default location: `$OPENSHELL_IMAGE_DIR`, `$XDG_DATA_HOME/openshell/images`,
    /// `~/.local/share/openshell/images`, or `/var/lib/openshell/images` for root.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("OPENSHELL_IMAGE_DIR") {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("openshell/images");
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/openshell/images");
        }
        // Never a shared directory such as /tmp/.local (another user could plant
        // layers there): the account's home, else a private /tmp directory.
        openshell_fs::home::per_user(".local/share/openshell/images", "openshell-images")
    }

    /// Open (creating) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "records", "locks", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ImageError::io("create", &p))?;
        }
        // The store is untraversable (0700) for everyone else: layers keep the image's
        // modes, set-id bits included, and those must never be reachable from the host
        // by another local user (inside a sandbox nosuid and no_new_privs apply).
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                .map_err(ImageError::io("chmod 0700", &root))?;
        }
        Ok(Self { root })
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex(digest))
    }

    /// Path of an unpacked layer.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex(diff_id))
    }

    /// A fresh private directory for in-progress work, on the store's filesystem.
    pub fn tmp_dir(&self, tag: &str) -> Result<PathBuf> {
        let mut rnd = [0u8; 6];
        let _ = File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd));
        let name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let p = self.root.join("tmp").join(format!("{tag}-{name}"));
        fs::create_dir(&p).map_err(ImageError::io("create", &p))?;
        Ok(p)
    }

    /// Take an exclusive lock named `name` (blocks until free).
    pub fn lock(&self, name: &str) -> Result<Lock> {
        let p = self.root.join("locks").join(format!("{name}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(ImageError::io("open", &p))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map(Lock)
            .map_err(|(_, e)| ImageError::io("lock", &p)(e.into()))
    }

    /// Store a small blob after checking its digest.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let got = sha256(bytes);
        if got != digest {
            return Err(ImageError::Integrity {
                what: "blob",
                digest: digest.to_string(),
                detail: format!("content hashes to {got}"),
            });
        }
        write_atomic(&self.blob_path(digest), bytes)
    }

    /// Read a stored blob, checking it still matches its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest);
        let bytes = fs::read(&p).map_err(ImageError::io("read", &p))?;
        if sha256(&bytes) != digest {
            return Err(ImageError::Integrity {
                what: "stored blob",
                digest: digest.to_string(),
                detail: "corrupted on disk; pull the image again".into(),
            });
        }
        Ok(bytes)
    }

    /// The image config of a record.
    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfig> {
        let bytes = self.read_blob(&rec.config)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Document {
            reference: rec.digest.clone(),
            detail: format!("bad image config: {e}"),
        })
    }

    fn record_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("records")
            .join(format!("{}.json", hex(digest)))
    }

    /// Record an image and point `name` at it (under the store lock).
    pub fn save(&self, rec: &ImageRecord, name: &str) -> Result<ImageRecord> {
        let _l = self.lock("store")?;
        let mut refs = self.refs()?;
        // The name moves: drop it from the image it pointed to before.
        if let Some(old) = refs.get(name).filter(|d| **d != rec.digest).cloned()
            && let Ok(mut o) = self.record(&old)
        {
            o.names.retain(|n| n != name);
            self.write_record(&o)?;
        }
        let mut rec = match self.record(&rec.digest) {
            Ok(existing) => ImageRecord {
                names: existing.names,
                ..rec.clone()
            },
            Err(_) => rec.clone(),
        };
        if !rec.names.iter().any(|n| n == name) {
            rec.names.push(name.to_string());
        }
        self.write_record(&rec)?;
        refs.insert(name.to_string(), rec.digest.clone());
        self.write_refs(&refs)?;
        Ok(rec)
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(rec).map_err(|e| ImageError::Invalid(e.to_string()))?;
        write_atomic(&self.record_path(&rec.digest), &bytes)
    }

    /// The record of an image by manifest digest.
    pub fn record(&self, digest: &str) -> Result<ImageRecord> {
        let p = self.record_path(digest);
        let bytes = fs::read(&p).map_err(|_| ImageError::Missing(digest.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Document {
            reference: digest.to_string(),
            detail: format!("corrupt record {}: {e}", p.display()),
        })
    }

    /// name → manifest digest.
    pub fn refs(&self) -> Result<BTreeMap<String, String>> {
        let p = self.root.join("refs.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Document {
                reference: "refs.json".into(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::io("read", p)(e)),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(refs).map_err(|e| ImageError::Invalid(e.to_string()))?;
        write_atomic(&self.root.join("refs.json"), &bytes)
    }

    /// Find an image by name, manifest/index digest, or a unique digest prefix.
    pub fn find(&self, what: &str) -> Result<ImageRecord> {
        let refs = self.refs()?;
        if let Some(d) = refs.get(what) {
            return self.record(d);
        }
        let all = self.list()?;
        let key = what.strip_prefix("sha256:").unwrap_or(what);
        let hits: Vec<&ImageRecord> = all
            .iter()
            .filter(|r| {
                key.len() >= 6
                    && key.bytes().all(|b| b.is_ascii_hexdigit())
                    && (hex(&r.digest).starts_with(key)
                        || r.index_digest
                            .as_deref()
                            .is_some_and(|i| hex(i).starts_with(key)))
            })
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ImageError::Missing(what.to_string())),
            _ => Err(ImageError::Invalid(format!(
                "{what} matches several images; give more digits"
            ))),
        }
    }

    /// Every image record.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("records");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(ImageError::io("read", &dir))?
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "json")
                && let Ok(b) = fs::read(e.path())
                && let Ok(r) = serde_json::from_slice::<ImageRecord>(&b)
            {
                out.push(r);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.pulled));
        Ok(out)
    }

    /// Remove one name of an image that has others (`image rm NAME` of a tagged image):
    /// the image and its other names stay. Returns false when `name` is not one of
    /// several names (the caller then removes the image).
    pub fn untag(&self, name: &str) -> Result<bool> {
        let _l = self.lock("store")?;
        let mut refs = self.refs()?;
        let Some(digest) = refs.get(name).cloned() else {
            return Ok(false);
        };
        let mut rec = self.record(&digest)?;
        if rec.names.iter().filter(|n| *n != name).count() == 0 {
            return Ok(false);
        }
        rec.names.retain(|n| n != name);
        refs.remove(name);
        self.write_record(&rec)?;
        self.write_refs(&refs)?;
        Ok(true)
    }

    /// Drop every name of an image but keep it (and its layers): what `image rm
    /// --force` does to an image a sandbox still runs on. `image prune` removes it once
    /// no sandbox uses it.
    pub fn drop_names(&self, rec: &ImageRecord) -> Result<()> {
        let _l = self.lock("store")?;
        let mut refs = self.refs()?;
        refs.retain(|_, d| *d != rec.digest);
        let mut rec = self.record(&rec.digest)?;
        rec.names.clear();
        self.write_record(&rec)?;
        self.write_refs(&refs)
    }

    /// Remove an image, all its names, and the layers and blobs no other image uses.
    /// Returns (layers removed, bytes of blobs removed).
    pub fn remove(&self, rec: &ImageRecord) -> Result<(usize, u64)> {
        let _l = self.lock("store")?;
        let mut refs = self.refs()?;
        refs.retain(|_, d| *d != rec.digest);
        self.write_refs(&refs)?;
        let p = self.record_path(&rec.digest);
        fs::remove_file(&p).map_err(ImageError::io("remove", &p))?;
        let keep = self.in_use()?;
        let mut layers = 0;
        for l in &rec.layers {
            let name = hex(&l.diff_id).to_string();
            let dir = self.layer_dir(&l.diff_id);
            if !keep.contains(&name) && dir.exists() {
                let _busy = self.lock(&format!("layer-{name}"))?;
                force_remove(&dir)?;
                layers += 1;
            }
        }
        let mut bytes = 0;
        let blobs = [&rec.digest, &rec.config]
            .into_iter()
            .chain(rec.index_digest.as_ref())
            .chain(rec.layers.iter().map(|l| &l.digest));
        for d in blobs {
            if !keep.contains(&hex(d).to_string()) {
                let p = self.blob_path(d);
                if let Ok(m) = fs::symlink_metadata(&p) {
                    bytes += m.len();
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok((layers, bytes))
    }

    /// The hex names of what a recorded image needs: its manifest, index and config
    /// blobs and its unpacked layers (compressed layer blobs are not kept).
    fn in_use(&self) -> Result<Vec<String>> {
        let mut keep: Vec<String> = Vec::new();
        for r in &self.list()? {
            keep.push(hex(&r.digest).to_string());
            keep.push(hex(&r.config).to_string());
            if let Some(i) = &r.index_digest {
                keep.push(hex(i).to_string());
            }
            keep.extend(r.layers.iter().map(|l| hex(&l.diff_id).to_string()));
        }
        Ok(keep)
    }

    /// Delete layers and blobs no image uses, and leftovers of interrupted pulls.
    /// Returns (layers removed, bytes of blobs removed).
    pub fn prune(&self) -> Result<(usize, u64)> {
        let _l = self.lock("store")?;
        let keep = self.in_use()?;
        let mut layers = 0;
        let ldir = self.root.join("layers");
        for e in fs::read_dir(&ldir)
            .map_err(ImageError::io("read", &ldir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                // Another pull may be writing this layer right now: skip it if locked.
                let _busy = self.lock(&format!("layer-{name}"))?;
                force_remove(&e.path())?;
                layers += 1;
            }
        }
        let mut bytes = 0;
        let bdir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&bdir)
            .map_err(ImageError::io("read", &bdir))?
            .flatten()
        {
            if !keep.contains(&e.file_name().to_string_lossy().into_owned()) {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(e.path());
            }
        }
        let tdir = self.root.join("tmp");
        for e in fs::read_dir(&tdir)
            .map_err(ImageError::io("read", &tdir))?
            .flatten()
        {
            let _ = force_remove(&e.path());
        }
        Ok((layers, bytes))
    }
}

/// Write a file atomically: temp name, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(ImageError::io("create", &tmp))?;
    f.write_all(bytes).map_err(ImageError::io("write", &tmp))?;
    f.sync_all().map_err(ImageError::io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(ImageError::io("rename", path))
}

/// Remove a tree even where its directories are read-only (unpacked images have 0555
/// and 0000 directories).
pub fn force_remove(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p)
            && m.is_dir()
        {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    open_up(path);
    fs::remove_dir_all(path).map_err(ImageError::io("remove", path))
}
