//! `openshell sandbox explain NAME`: the effective policy of a sandbox and what this
//! kernel actually enforces of it — the Landlock ABI and what `best_effort` dropped,
//! the paths granted, seccomp, identity and id mapping, resource limits and how they
//! were applied (cgroup or rlimits), the network mode.
//!
//! Read from the sandbox's record (what was decided when it started) and its stored
//! policy, so it answers for stopped sandboxes too.

use openshell_policy::{Compatibility, Policy};
use openshell_runtime::api::record::Record;
use openshell_runtime::api::store::{self, Entry};
use openshell_runtime::api::{control, host, state};
use serde::Serialize;

use crate::output::{Format, fail, structured};

#[derive(Serialize)]
struct Explained {
    sandbox: String,
    phase: String,
    policy_sha256: String,
    identity: Identity,
    landlock: Landlock,
    seccomp: Seccomp,
    process: Vec<&'static str>,
    limits: openshell_runtime::api::limits::Applied,
    /// Fallbacks the setup took (from init's notes).
    fallbacks: Vec<String>,
    network: Network,
}

#[derive(Serialize)]
struct Identity {
    uid: u32,
    gid: u32,
    id_mapping: String,
}

#[derive(Serialize)]
struct Landlock {
    compatibility: &'static str,
    abi: i32,
    enforced: bool,
    dropped: Vec<String>,
    read_only: Vec<String>,
    read_write: Vec<String>,
}

#[derive(Serialize)]
struct Seccomp {
    refused_syscall_rules: usize,
    other_architectures: &'static str,
    x32_abi: &'static str,
}

#[derive(Serialize)]
struct Network {
    mode: String,
    policies: Vec<String>,
}

fn explain(e: &Entry, r: &Record, policy: &Policy) -> Explained {
    let en = &r.enforced;
    let workdir = if en.workdir.is_empty() {
        "/sandbox"
    } else {
        &en.workdir
    };
    let plan =
        openshell_runtime::api::host::landlock_plan(policy, workdir, &en.mounts, en.landlock_abi);
    let paths = |v: &[std::path::PathBuf]| v.iter().map(|p| p.display().to_string()).collect();
    Explained {
        sandbox: e.name.clone(),
        phase: r.phase().0.to_string(),
        policy_sha256: control::policy_hash(policy),
        identity: Identity {
            uid: r.uid,
            gid: r.gid,
            id_mapping: en.id_mode.to_string(),
        },
        landlock: Landlock {
            compatibility: match policy.compatibility() {
                Compatibility::HardRequirement => "hard_requirement",
                _ => "best_effort",
            },
            abi: en.landlock_abi,
            enforced: en.landlock_abi > 0,
            dropped: en.landlock_dropped.clone(),
            read_only: paths(&plan.read_only),
            read_write: paths(&plan.read_write),
        },
        seccomp: Seccomp {
            refused_syscall_rules: host::seccomp_rules().len(),
            other_architectures: "killed",
            x32_abi: "killed",
        },
        process: vec![
            "no_new_privs",
            "all capabilities dropped (bounding, ambient, effective, permitted, inheritable)",
            "core dumps off (RLIMIT_CORE 0)",
            "own pid, mount, ipc, uts, cgroup and user namespaces",
        ],
        limits: en.limits.clone(),
        fallbacks: en.notes.clone(),
        network: Network {
            mode: match r.network {
                openshell_runtime::api::record::NetworkKind::Proxy => {
                    "proxy: every connection through the policy proxy, deny by default".into()
                }
                _ => "none: loopback only".into(),
            },
            policies: policy.network_policies.keys().cloned().collect(),
        },
    }
}

/// Run `sandbox explain NAME`.
pub fn run(name: &str, format: Format) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let r = match &e.record {
        Ok(r) => r,
        Err(why) => return fail(format!("sandbox {name}: unreadable record: {why}")),
    };
    let path = e.dir.join(openshell_runtime::api::record::POLICY);
    let policy = match std::fs::read_to_string(&path)
        .map_err(|err| format!("{}: {err}", path.display()))
        .and_then(|t| {
            Policy::parse_stored(&t).map_err(|err| err.render(&path.display().to_string()))
        }) {
        Ok(p) => p,
        Err(err) => return fail(format!("sandbox {name}: {err}")),
    };
    let x = explain(&e, r, &policy);
    if structured(format, &x) {
        return 0;
    }
    println!("Sandbox:   {} ({})", x.sandbox, x.phase);
    println!("Policy:    {}", x.policy_sha256);
    println!(
        "Identity:  uid {} gid {} inside; id mapping: {}",
        x.identity.uid, x.identity.gid, x.identity.id_mapping
    );
    let l = &x.landlock;
    if l.enforced {
        println!("Landlock:  ABI {} ({})", l.abi, l.compatibility);
    } else {
        println!(
            "Landlock:  not available on this kernel ({})",
            l.compatibility
        );
    }
    if !l.dropped.is_empty() {
        println!("  not enforced: {}", l.dropped.join(", "));
    }
    println!("  read-only:  {}", l.read_only.join(" "));
    println!("  read-write: {}", l.read_write.join(" "));
    println!(
        "Seccomp:   {} refusal rules; other architectures and the x32 ABI: killed",
        x.seccomp.refused_syscall_rules
    );
    println!("Process:   {}", x.process.join("; "));
    let lim = &x.limits;
    if lim.pids == 0 {
        println!("Limits:    none recorded (the sandbox was made by an older openshell)");
    } else {
        use openshell_runtime::api::limits::human;
        let cpus = lim.cpus_milli.map_or_else(
            || "all".to_string(),
            |m| format!("{}", f64::from(m) / 1000.0),
        );
        println!(
            "Limits:    memory {}, cpus {cpus}, pids {}; /tmp {}, /dev/shm {} (by {})",
            human(lim.memory),
            lim.pids,
            human(lim.tmp),
            human(lim.shm),
            lim.how
        );
        for n in &lim.notes {
            println!("  {n}");
        }
    }
    println!("Network:   {}", x.network.mode);
    if !x.network.policies.is_empty() {
        println!("  policies: {}", x.network.policies.join(", "));
    }
    if !x.fallbacks.is_empty() {
        println!("Fallbacks:");
        for n in &x.fallbacks {
            println!("  {n}");
        }
    }
    0
}
