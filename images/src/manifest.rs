//! OCI and Docker schema-2 documents: manifests, indexes (manifest lists), image configs,
//! and platform selection. Pure serde types and functions, no I/O.

use serde::{Deserialize, Serialize};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest type we accept, for the Accept header.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or config we read (absurd ones are refused).
pub const MAX_DOCUMENT: u64 = 4 * 1024 * 1024;
/// Most layers an image may have.
pub const MAX_LAYERS: usize = 512;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name` in layouts).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// os/architecture/variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Variant (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this host.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8".to_string())),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7".to_string())),
            other => (other, None),
        };
        Self {
            architecture: architecture.into(),
            os: "linux".into(),
            variant,
        }
    }

    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: parts.get(2).map(|v| (*v).to_string()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64"
            )),
        }
    }

    fn matches(&self, want: &Platform) -> bool {
        let variant_ok = match (&want.variant, &self.variant) {
            (Some(w), Some(v)) => w == v,
            // arm64 images often omit v8.
            (Some(w), None) => w == "v8" && self.architecture == "arm64",
            (None, _) => true,
        };
        self.os == want.os && self.architecture == want.architecture && variant_ok
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when present in the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One entry per platform (and attestations).
    pub manifests: Vec<Descriptor>,
}

/// A manifest document of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// A single-platform image.
    Image(Manifest),
    /// A multi-platform index.
    Index(Index),
}

/// Parse a manifest or index, telling which from the media type (document or header).
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<Document, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        schema_version: Option<u32>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if probe.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported (deprecated since 2017)".into());
    }
    let mt = probe.media_type.as_deref().or(content_type).unwrap_or("");
    let is_index = mt == OCI_INDEX || mt == DOCKER_LIST || probe.manifests.is_some();
    if is_index {
        let idx: Index =
            serde_json::from_slice(bytes).map_err(|e| format!("bad image index: {e}"))?;
        Ok(Document::Index(idx))
    } else {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("bad image manifest: {e}"))?;
        if m.layers.len() > MAX_LAYERS {
            return Err(format!(
                "image has {} layers; the limit is {MAX_LAYERS}",
                m.layers.len()
            ));
        }
        Ok(Document::Image(m))
    }
}

/// Pick the manifest for `want` from an index; attestations (`unknown/unknown`) never match.
pub fn select<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor, String> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(want)))
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(ToString::to_string)
                .collect();
            format!(
                "no image for platform {want} (the index has: {})",
                have.join(", ")
            )
        })
}

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer media type says, or an error for what we cannot unpack.
pub fn compression(media_type: &str) -> Result<Compression, String> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        other => Err(format!("unsupported layer media type {other:?}")),
    }
}

/// The image config blob (the parts we use).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
    /// Run settings.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Layer diff ids.
    pub rootfs: RootFs,
}

/// `config` inside the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `name`, `uid`, `uid:gid`, `name:group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `K=V` strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// `rootfs` of the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_selection_skips_attestations_and_other_arches() {
        let idx: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
              {"mediaType":"x","digest":"sha256:a","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
              {"mediaType":"x","digest":"sha256:b","size":1,"platform":{"architecture":"amd64","os":"linux"}},
              {"mediaType":"x","digest":"sha256:c","size":1,"platform":{"architecture":"unknown","os":"unknown"}}]}"#,
        )
        .unwrap();
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(select(&idx, &amd).unwrap().digest, "sha256:b");
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(select(&idx, &arm).unwrap().digest, "sha256:a");
        let err = select(&idx, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert!(err.contains("linux/arm64/v8, linux/amd64"), "{err}");
        assert!(Platform::parse("amd64").is_err());
    }

    #[test]
    fn documents_and_compression() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"c","digest":"sha256:x","size":2},"layers":[]}"#;
        assert!(matches!(
            parse_document(m, None).unwrap(),
            Document::Image(_)
        ));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_document(i, None).unwrap(),
            Document::Index(_)
        ));
        assert!(
            parse_document(br#"{"schemaVersion":1}"#, None)
                .unwrap_err()
                .contains("schema 1")
        );
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Ok(Compression::Zstd)
        );
        assert!(compression("application/x-foo").is_err());
    }
}
