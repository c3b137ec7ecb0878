//! A kernel's files as the manager reads them (`ls` and `download` of the clients):
//! paths as the user sees them inside the kernel, resolved beneath its working directory
//! without following a symlink out of it, and never blocking on a FIFO or a device
//! ([`beneath`]).

use serde_json::{json, Value};

use crate::runtime::{RuntimeError, RuntimeResult};
use beneath::{self, BeneathError, Tree};

/// Largest archive a download returns (the contract's 1 MiB).
pub const MAX_DOWNLOAD: u64 = 1 << 20;

/// The path relative to the working directory: absolute paths must lie under one of
/// `homes` (the working directory as the kernel sees it: `/home/work`, or its host path
/// without bubblewrap); relative paths are taken from the working directory. `None`
/// for a path outside.
pub fn inside(path: &str, homes: &[&str]) -> Option<String> {
    let path = if path.is_empty() { "." } else { path };
    let rel = if path.starts_with('/') {
        homes.iter().find_map(|home| {
            let rest = path.strip_prefix(home.trim_end_matches('/'))?;
            (rest.is_empty() || rest.starts_with('/')).then(|| rest.trim_start_matches('/').to_owned())
        })?
    } else {
        path.to_owned()
    };
    beneath::relative(&rel).ok()
}

fn failure(e: BeneathError) -> RuntimeError {
    match e {
        BeneathError::Io(e) => RuntimeError::Failure(anyhow::Error::from(e)),
        other => RuntimeError::InvalidInput(other.to_string()),
    }
}

/// The listing of `path`: `{"files": "<JSON text of the entries>\n", "errors": "",
/// "abspath": "<path as the kernel sees it>/\n"}`, or `{"files": "", "errors": why}`.
pub fn list(scratch: &std::path::Path, inner_home: &str, homes: &[&str], path: &str) -> Value {
    let not_found = || json!({"files": "", "errors": "No such file or directory"});
    let Some(rel) = inside(path, homes) else { return not_found() };
    let listed = Tree::open(scratch).and_then(|tree| tree.list(&rel));
    match listed {
        Ok(entries) => {
            let text = serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into());
            let abspath = if rel.is_empty() { format!("{inner_home}/") } else { format!("{inner_home}/{rel}/") };
            json!({"files": format!("{text}\n"), "errors": "", "abspath": format!("{abspath}\n")})
        }
        Err(BeneathError::WrongKind(_)) => json!({"files": "", "errors": "Not a directory"}),
        Err(BeneathError::Io(e)) => json!({"files": "", "errors": e.to_string()}),
        Err(_) => not_found(),
    }
}

/// A tar archive of `path` (a file, or a directory with its tree), at most [`MAX_DOWNLOAD`].
pub fn archive(scratch: &std::path::Path, homes: &[&str], path: &str) -> RuntimeResult<Vec<u8>> {
    let rel = inside(path, homes)
        .ok_or_else(|| RuntimeError::InvalidInput(format!("{path:?}: No such file or directory")))?;
    let tree = Tree::open(scratch).map_err(failure)?;
    let tar = tree.tar(&rel, MAX_DOWNLOAD).map_err(|e| match e {
        BeneathError::NotFound => RuntimeError::InvalidInput(format!("{path:?}: No such file or directory")),
        BeneathError::TooLarge(_) => {
            RuntimeError::InvalidInput(format!("{path:?} is larger than {MAX_DOWNLOAD} bytes: download it in parts"))
        }
        e => failure(e),
    })?;
    if tar.len() as u64 > MAX_DOWNLOAD + (64 << 10) {
        return Err(RuntimeError::InvalidInput(format!("{path:?} is larger than {MAX_DOWNLOAD} bytes")));
    }
    Ok(tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_into_the_working_directory() {
        let homes = ["/home/work", "/var/scratch/k1"];
        assert_eq!(inside("/home/work", &homes).as_deref(), Some(""));
        assert_eq!(inside("/home/work/", &homes).as_deref(), Some(""));
        assert_eq!(inside("/home/work/a/b", &homes).as_deref(), Some("a/b"));
        assert_eq!(inside("/var/scratch/k1/x", &homes).as_deref(), Some("x"));
        assert_eq!(inside("a/./b", &homes).as_deref(), Some("a/b"));
        assert_eq!(inside("", &homes).as_deref(), Some(""));
        for outside in ["/etc", "/home/workers", "/home/work/../x", "../x", "/"] {
            assert_eq!(inside(outside, &homes), None, "{outside}");
        }
    }
}
