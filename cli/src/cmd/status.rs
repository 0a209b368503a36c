//! `openshell status`: how many sandboxes and which run, where things are stored, and
//! whether `openshell serve` runs, and the kernel features sandboxes get on this host
//! (the same probes as `doctor`).

use openshell_images::store::Store;
use openshell_runtime::api::host::{Level, probe};
use openshell_runtime::api::record::Phase;
use openshell_runtime::api::{state, store};
use serde::Serialize;

use crate::output::{Format, structured};

#[derive(Serialize)]
struct Status {
    sandboxes: usize,
    running: Vec<String>,
    stopped: usize,
    error: usize,
    state_dir: String,
    image_dir: String,
    images: usize,
    serve: Serve,
    features: Vec<Feature>,
}

/// Whether `openshell serve` runs for the default socket.
#[derive(Serialize)]
struct Serve {
    running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    socket: String,
}

#[derive(Serialize)]
struct Feature {
    name: String,
    ok: bool,
    detail: String,
}

/// Print the status; exit 0.
pub fn run(format: Format) -> i32 {
    let base = state::base_dir();
    let entries = store::list(&base);
    let phase = |e: &store::Entry| e.phase().0;
    let running: Vec<String> = entries
        .iter()
        .filter(|e| matches!(phase(e), Phase::Ready | Phase::Provisioning))
        .map(|e| e.name.clone())
        .collect();
    let image_dir = Store::default_root();
    // Count images only where a store exists: status never creates one.
    let images = if image_dir.is_dir() {
        Store::open(&image_dir)
            .and_then(|s| s.list())
            .map_or(0, |l| l.len())
    } else {
        0
    };
    let status = Status {
        sandboxes: entries.len(),
        stopped: entries
            .iter()
            .filter(|e| phase(e) == Phase::Stopped)
            .count(),
        error: entries.iter().filter(|e| phase(e) == Phase::Error).count(),
        running,
        state_dir: base.display().to_string(),
        image_dir: image_dir.display().to_string(),
        images,
        serve: {
            let socket = super::serve::default_socket();
            let pid = super::serve::running(&socket);
            Serve {
                running: pid.is_some(),
                pid,
                socket: socket.display().to_string(),
            }
        },
        features: probe()
            .into_iter()
            .map(|c| Feature {
                name: c.name.to_string(),
                ok: c.level == Level::Ok,
                detail: c.detail,
            })
            .collect(),
    };
    if !structured(format, &status) {
        let running = if status.running.is_empty() {
            String::new()
        } else {
            format!(": {}", status.running.join(", "))
        };
        println!(
            "Sandboxes: {} ({} running{running}; {} stopped; {} error)",
            status.sandboxes,
            status.running.len(),
            status.stopped,
            status.error
        );
        println!("State:     {}", status.state_dir);
        println!("Images:    {} ({} images)", status.image_dir, status.images);
        match status.serve.pid {
            Some(pid) => println!("Serve:     running (pid {pid}) on {}", status.serve.socket),
            None => println!(
                "Serve:     not running (optional: openshell serve, or systemctl --user start openshell)"
            ),
        }
        println!("Kernel:");
        for f in &status.features {
            let mark = if f.ok { "ok  " } else { "warn" };
            println!("  {mark} {:<20} {}", f.name, f.detail);
        }
    }
    0
}
