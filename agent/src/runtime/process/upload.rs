//! Writing uploaded files into a scratch dir without ever leaving it.
//!
//! The kernel owns its scratch dir and may race us by swapping a directory for a symlink, so
//! paths are never resolved as strings: each component is opened relative to its parent's
//! descriptor with `O_NOFOLLOW`, directories with `O_DIRECTORY`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, Gid, Uid};

use crate::runtime::{RuntimeError, RuntimeResult};

/// Largest accepted file.
pub const MAX_UPLOAD: usize = 1 << 20;

/// Checks an upload path: relative, no `..`, no empty or over-long names, no NUL.
pub fn validate(path: &str) -> RuntimeResult<Vec<String>> {
    let bad = |why: &str| Err(RuntimeError::InvalidInput(format!("bad file path: {why}")));
    if path.is_empty() || path.len() > 4096 {
        return bad("empty or too long");
    }
    if path.contains('\0') {
        return bad("NUL byte");
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return bad("absolute path");
    }
    let mut parts = Vec::new();
    for component in p.components() {
        match component {
            Component::Normal(name) => {
                let name = name.to_string_lossy().into_owned();
                if name.len() > 255 {
                    return bad("name too long");
                }
                parts.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => return bad("`..` is not allowed"),
            Component::RootDir | Component::Prefix(_) => return bad("absolute path"),
        }
    }
    if parts.is_empty() {
        return bad("no file name");
    }
    Ok(parts)
}

/// Writes `data` to `path` under `scratch`, creating directories, owned by `owner`.
pub fn write(scratch: &Path, path: &str, data: &[u8], owner: Option<(u32, u32)>) -> RuntimeResult<()> {
    if data.len() > MAX_UPLOAD {
        return Err(RuntimeError::TooLarge);
    }
    let parts = validate(path)?;
    let escape = |e: nix::Error| match e {
        nix::Error::ELOOP | nix::Error::ENOTDIR => {
            RuntimeError::InvalidInput("bad file path: it leaves the scratch dir".into())
        }
        e => RuntimeError::Failure(anyhow::anyhow!("writing {path}: {e}")),
    };
    // Nothing the kernel controls is opened in a way that can block: O_NONBLOCK (a FIFO
    // would block open() until a reader comes), O_NOFOLLOW, and a type check by fstat.
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY | OFlag::O_NONBLOCK;
    let mut dir: OwnedFd = nix::fcntl::open(scratch, dir_flags, Mode::empty()).map_err(escape)?;
    let chown = |fd: &OwnedFd| {
        if let Some((uid, gid)) = owner {
            let _ = fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        }
    };
    let (name, dirs) =
        parts.split_last().ok_or_else(|| RuntimeError::InvalidInput("bad file path: no file name".into()))?;
    for part in dirs {
        match mkdirat(dir.as_fd(), part.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                let sub = openat(dir.as_fd(), part.as_str(), dir_flags, Mode::empty()).map_err(escape)?;
                chown(&sub);
                dir = sub;
            }
            Err(nix::Error::EEXIST) => {
                dir = openat(dir.as_fd(), part.as_str(), dir_flags, Mode::empty()).map_err(escape)?;
            }
            Err(e) => return Err(escape(e)),
        }
    }
    let file = openat(
        dir.as_fd(),
        name.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| match e {
        // A FIFO without a reader, or a device that refuses the open.
        nix::Error::ENXIO | nix::Error::EAGAIN | nix::Error::EISDIR => {
            RuntimeError::InvalidInput("bad file path: not a plain file".into())
        }
        e => escape(e),
    })?;
    // A hard link to a file elsewhere would be written through: refuse non-regular or
    // multiply linked targets (before truncating anything).
    let meta = nix::sys::stat::fstat(&file).map_err(escape)?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFREG || meta.st_nlink > 1 {
        return Err(RuntimeError::InvalidInput("bad file path: not a plain file".into()));
    }
    nix::unistd::ftruncate(&file, 0).map_err(escape)?;
    chown(&file);
    let _ = fchmod(&file, Mode::from_bits_truncate(0o644));
    let mut f = std::fs::File::from(file);
    use std::io::Write;
    f.write_all(data).map_err(|e| RuntimeError::Failure(anyhow::anyhow!("writing {path}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escaping_paths() {
        for p in ["", "/etc/passwd", "../x", "a/../../x", "a/\0b", ".", "./"] {
            assert!(validate(p).is_err(), "{p:?} accepted");
        }
        assert_eq!(validate("a/./b.txt").ok(), Some(vec!["a".into(), "b.txt".into()]));
    }
}
