//! The policy document as written in YAML: OpenShell's `version: 1` schema.
//!
//! Owns only the shape of the data (serde types with `deny_unknown_fields`, so a typo is
//! an error with its line and column). Semantic checks live in `validate`; nothing here
//! reads files or knows about the kernel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole sandbox policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Schema version; only `1` exists.
    pub version: u32,
    /// Static: which paths the sandboxed processes may read or write (Landlock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_policy: Option<FilesystemPolicy>,
    /// Static: how strictly Landlock must be enforced on this kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<LandlockPolicy>,
    /// Static: the identity the sandboxed processes run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessPolicy>,
    /// Dynamic (hot reloaded): which connections leave the sandbox.
    #[serde(default)]
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// OpenShell's custom middleware section. Parsed so that the error can point at it;
    /// validation rejects it as not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_middlewares: Option<serde_yaml_ng::Value>,
}

/// `filesystem_policy`: Landlock paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemPolicy {
    /// Add the working directory to `read_write`.
    #[serde(default)]
    pub include_workdir: bool,
    /// Paths readable (and executable) beneath.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// Paths readable and writable beneath.
    #[serde(default)]
    pub read_write: Vec<String>,
}

/// `landlock`: compatibility mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockPolicy {
    /// What to do when the kernel cannot enforce everything.
    #[serde(default)]
    pub compatibility: Compatibility,
}

/// Landlock compatibility mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// Enforce what the kernel supports and report what is not enforced.
    #[default]
    BestEffort,
    /// Refuse to start unless everything is enforced.
    HardRequirement,
}

/// `process`: the identity inside the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessPolicy {
    /// `sandbox` or a numeric uid; never 0/root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<IdSpec>,
    /// `sandbox` or a numeric gid; never 0/root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<IdSpec>,
}

/// A user or group given by name or number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdSpec {
    /// A numeric id (any integer YAML spells, so that a negative or huge one gets a
    /// range error rather than a shape error; validation accepts 1..=[`crate::MAX_ID`]).
    Id(i64),
    /// A name (`sandbox`, or `root` which validation rejects).
    Name(String),
}

/// One entry of `network_policies`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Display name used in logs and deny answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Destinations this entry allows.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Executables this entry applies to.
    #[serde(default)]
    pub binaries: Vec<Binary>,
}

/// A destination: host pattern, port(s) and how it is inspected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Exact host name, IP literal, or wildcard (`*.x.com`, `**.x.com`).
    pub host: String,
    /// A single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Several ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// `rest` (inspected HTTP) or `tcp` (transparent TCP); none = L4 tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// `skip` never terminates TLS; `terminate` does (the default for `rest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// `enforce` (default) or `audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// Method preset for `rest` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Explicit allow rules for `rest` endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Requests matching any of these are denied, whatever the allow rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_rules: Vec<RequestMatch>,
    /// CIDRs the resolved address may fall in (needed for private ranges of wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    /// Accept `%2F` in paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_encoded_slash: bool,
}

/// Endpoint protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Inspected HTTP (TLS terminated where needed).
    Rest,
    /// Transparent TCP relay.
    Tcp,
}

/// TLS handling of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Terminate TLS with the sandbox CA.
    Terminate,
    /// Never terminate: relay raw.
    Skip,
}

/// L7 enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Deny what the rules do not allow.
    Enforce,
    /// Forward everything, log what would be denied.
    Audit,
}

/// Method presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// GET, HEAD, OPTIONS.
    ReadOnly,
    /// read-only plus POST, PUT, PATCH.
    ReadWrite,
    /// Every method.
    Full,
}

/// `rules[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The request shape this rule allows.
    pub allow: RequestMatch,
}

/// Method, path glob and query matchers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// HTTP method, or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path glob (`*` in one segment, `**` across segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query parameter name → value glob.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
}

/// `binaries[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    /// Absolute path or glob (`*` one component, `**` any depth).
    pub path: String,
}
