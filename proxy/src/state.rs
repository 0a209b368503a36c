//! The live policy of a sandbox: swapped atomically, versioned, hashed, with history.
//!
//! A new policy is validated completely before anything changes; a rejected one leaves
//! the active policy untouched. An identical policy (same canonical hash) keeps its
//! version. Each swap bumps a generation that open connections watch: connections
//! opened under an older policy are closed after the swap.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openshell_policy::Policy;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// One accepted (or rejected) policy revision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Revision {
    /// 1, 2, ... (rejected revisions carry the version they did not replace).
    pub version: u64,
    /// `sha256:<hex>` of the canonical YAML.
    pub sha256: String,
    /// `loaded`, `superseded` or `rejected`.
    pub status: String,
    /// Unix seconds.
    pub time: u64,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The policy of a loaded (or superseded) revision, for `policy get --rev N`.
    #[serde(skip)]
    pub policy: Option<Arc<Policy>>,
}

/// How many revisions are kept (the oldest go first): a sandbox whose policy is set in
/// a loop must not grow its supervisor without bound.
pub const MAX_REVISIONS: usize = 100;

/// The active policy as connections see it.
#[derive(Debug, Clone)]
pub struct Active {
    /// The policy.
    pub policy: Arc<Policy>,
    /// Its version.
    pub version: u64,
    /// Its hash.
    pub sha256: String,
}

/// Result of a `replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loaded {
    /// The active version afterwards.
    pub version: u64,
    /// Its hash.
    pub sha256: String,
    /// Whether the policy changed.
    pub changed: bool,
}

/// Shared policy state of one proxy.
pub struct PolicyState {
    active: RwLock<Active>,
    history: Mutex<Vec<Revision>>,
    generation: watch::Sender<u64>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Canonical hash of a policy: its serialised form.
pub fn hash(p: &Policy) -> String {
    let d = Sha256::digest(p.to_yaml().as_bytes());
    let mut s = String::from("sha256:");
    for b in d.as_slice() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl PolicyState {
    /// Start with `policy` as version 1.
    pub fn new(policy: Policy) -> Arc<Self> {
        let sha = hash(&policy);
        let policy = Arc::new(policy);
        let (generation, _) = watch::channel(1);
        Arc::new(Self {
            active: RwLock::new(Active {
                policy: policy.clone(),
                version: 1,
                sha256: sha.clone(),
            }),
            history: Mutex::new(vec![Revision {
                version: 1,
                sha256: sha,
                status: "loaded".into(),
                time: now(),
                error: None,
                policy: Some(policy.clone()),
            }]),
            generation,
        })
    }

    /// The active policy.
    pub fn current(&self) -> Active {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver that changes whenever the policy does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Every revision, oldest first.
    pub fn history(&self) -> Vec<Revision> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Revision `version` as it was loaded (`None`: unknown, rejected, or dropped
    /// from the history).
    pub fn revision(&self, version: u64) -> Option<Revision> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|r| r.version == version && r.policy.is_some())
            .cloned()
    }

    /// Append `r`, dropping the oldest revisions beyond [`MAX_REVISIONS`] — never the
    /// active (`loaded`) one, which `policy get` always shows.
    fn push(hist: &mut Vec<Revision>, r: Revision) {
        hist.push(r);
        while hist.len() > MAX_REVISIONS {
            match hist.iter().position(|r| r.status != "loaded") {
                Some(i) => {
                    hist.remove(i);
                }
                None => break,
            }
        }
    }

    /// Validate `yaml` completely and make it active, or reject it and keep the old one.
    /// Static sections (filesystem, landlock, process) cannot change on a live sandbox.
    pub fn replace(&self, yaml: &str) -> Result<Loaded, String> {
        // The provider entries stay the sandbox's own: whatever the new document says
        // about `_provider_*` is replaced by the active ones (providers change them).
        let result = Policy::parse_stored(yaml)
            .map_err(|e| e.render("policy"))
            .and_then(|mut p| {
                let cur = self.current();
                p.network_policies
                    .retain(|k, _| !k.starts_with(openshell_policy::PROVIDER_PREFIX));
                for (k, v) in &cur.policy.network_policies {
                    if k.starts_with(openshell_policy::PROVIDER_PREFIX) {
                        p.network_policies.insert(k.clone(), v.clone());
                    }
                }
                if p.filesystem_policy != cur.policy.filesystem_policy
                    || p.landlock != cur.policy.landlock
                    || p.process != cur.policy.process
                {
                    Err("filesystem_policy, landlock and process are fixed when the sandbox is created; only network_policies can change on a live sandbox".into())
                } else {
                    Ok(p)
                }
            });
        let mut hist = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let policy = match result {
            Ok(p) => p,
            Err(e) => {
                let cur = self.current();
                Self::push(
                    &mut hist,
                    Revision {
                        version: cur.version,
                        sha256: String::new(),
                        status: "rejected".into(),
                        time: now(),
                        error: Some(e.clone()),
                        policy: None,
                    },
                );
                return Err(e);
            }
        };
        let sha = hash(&policy);
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        if sha == active.sha256 {
            return Ok(Loaded {
                version: active.version,
                sha256: sha,
                changed: false,
            });
        }
        for r in hist.iter_mut().filter(|r| r.status == "loaded") {
            r.status = "superseded".into();
        }
        let version = active.version + 1;
        let policy = Arc::new(policy);
        *active = Active {
            policy: policy.clone(),
            version,
            sha256: sha.clone(),
        };
        Self::push(
            &mut hist,
            Revision {
                version,
                sha256: sha.clone(),
                status: "loaded".into(),
                time: now(),
                error: None,
                policy: Some(policy),
            },
        );
        drop(active);
        let _ = self.generation.send(version);
        Ok(Loaded {
            version,
            sha256: sha,
            changed: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_hashes_and_rejections() {
        let st = PolicyState::new(Policy::parse("version: 1\n").unwrap());
        let mut w = st.watch();
        let a = "version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: x.com, port: 443}]\n    binaries: [{path: /usr/bin/curl}]\n";
        let l = st.replace(a).unwrap();
        assert_eq!((l.version, l.changed), (2, true));
        assert!(w.has_changed().unwrap());
        w.mark_unchanged();
        // Identical: same version, nothing closed.
        assert_eq!(st.replace(a).unwrap().version, 2);
        assert!(!w.has_changed().unwrap());
        // Invalid: rejected, the old one stays.
        assert!(
            st.replace(
                "version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: \"*.com\", port: 1}]\n"
            )
            .is_err()
        );
        assert_eq!(st.current().version, 2);
        assert!(
            st.replace("version: 1\nprocess:\n  run_as_user: 1234\n")
                .unwrap_err()
                .contains("fixed when the sandbox is created")
        );
        let h = st.history();
        assert_eq!(
            h.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
            ["superseded", "loaded", "rejected", "rejected"]
        );
        // Each loaded revision keeps its policy; rejected ones have none.
        assert_eq!(st.revision(1).unwrap().status, "superseded");
        assert!(
            st.revision(1)
                .unwrap()
                .policy
                .unwrap()
                .network_policies
                .is_empty()
        );
        assert_eq!(
            st.revision(2)
                .unwrap()
                .policy
                .unwrap()
                .network_policies
                .len(),
            1
        );
        assert!(st.revision(3).is_none());
    }

    #[test]
    fn history_is_bounded() {
        let st = PolicyState::new(Policy::parse("version: 1\n").unwrap());
        for i in 0..(MAX_REVISIONS + 20) {
            let y = format!(
                "version: 1\nnetwork_policies:\n  a:\n    endpoints: [{{host: x.com, port: {}}}]\n    binaries: [{{path: /usr/bin/curl}}]\n",
                i + 1
            );
            st.replace(&y).unwrap();
        }
        let h = st.history();
        assert_eq!(h.len(), MAX_REVISIONS);
        assert_eq!(h.last().unwrap().version, (MAX_REVISIONS + 21) as u64);
        assert!(st.revision(1).is_none(), "the oldest were dropped");
        // Rejections never push the active revision out.
        for _ in 0..(MAX_REVISIONS + 5) {
            st.replace("version: 1\nbogus: 1\n").unwrap_err();
        }
        assert_eq!(st.history().len(), MAX_REVISIONS);
        let active = st.current().version;
        assert_eq!(st.revision(active).unwrap().status, "loaded");
    }
}
