//! The `backendai-agent` binary, for tests that run agents as processes.
//!
//! It belongs to another package of the workspace, so cargo sets no `CARGO_BIN_EXE_` for
//! it here. `cargo test --workspace` builds it next to `backendai-manager`; when it is
//! missing or older than the agent's sources (a `cargo test -p backendai-manager` after a
//! change to the agent), it is built here first, with the same profile and target dir.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

/// Path of a fresh `backendai-agent` binary.
pub fn agent_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_if_stale).clone()
}

fn build_if_stale() -> PathBuf {
    let manager = Path::new(env!("CARGO_BIN_EXE_backendai-manager"));
    let profile_dir = manager.parent().unwrap();
    let binary = profile_dir.join("backendai-agent");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let sources = ["agent", "protocol", "beneath"].iter().filter_map(|c| newest(&workspace.join(c))).max();
    if matches!((built, sources), (Some(built), Some(sources)) if built >= sources) {
        return binary;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("no profile directory above {}", manager.display()),
    };
    eprintln!("building backendai-agent ({profile} profile): missing or older than its sources");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["build", "--quiet", "-p", "backendai-agent", "--bin", "backendai-agent", "--profile", &profile])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .current_dir(workspace)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p backendai-agent failed");
    binary
}

/// The newest modification time of a file under `dir`, leaving out `tests` and `target`
/// folders below it.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let time = if !meta.is_dir() {
            meta.modified().ok()
        } else if matches!(entry.file_name().to_str(), Some("tests" | "target")) {
            None
        } else {
            newest(&entry.path())
        };
        latest = latest.max(time);
    }
    latest
}
