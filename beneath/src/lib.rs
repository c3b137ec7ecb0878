//! File operations confined to a directory tree whose contents an adversary controls.
//!
//! Kernels write into their working directory and into the virtual folders mounted in
//! them: they can plant symlinks to anywhere, swap a directory for a symlink between two
//! calls, or leave a FIFO where a file is expected. So a user's path is never resolved as
//! a string: every open goes through `openat2(2)` with `RESOLVE_BENEATH` relative to a
//! descriptor of the tree's root, which refuses (`EXDEV`) any resolution that would leave
//! the tree, symlinks included, and magic links of `/proc`. Every open is `O_NONBLOCK`
//! and checked with `fstat`, so a FIFO or a device never blocks a call and is never read.
//! Walks (listing, archiving, removal) go from descriptor to descriptor and never follow a
//! symlink: a link is listed, archived or removed as the link it is.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

/// Why a confined file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// The path is malformed: absolute, with `..`, empty, NUL, too long.
    #[error("{0}")]
    BadPath(String),
    /// Nothing at that path (or it would resolve outside the tree).
    #[error("No such file or directory")]
    NotFound,
    /// Something is there, but not of the kind the call needs.
    #[error("{0}")]
    WrongKind(String),
    /// A size or count limit was reached.
    #[error("{0}")]
    TooLarge(String),
    /// An I/O failure of the host.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for BeneathError {
    fn from(errno: Errno) -> Self {
        match errno {
            // EXDEV: resolution would leave the tree. ELOOP: a symlink where none may be.
            Errno::ENOENT | Errno::EXDEV | Errno::ELOOP | Errno::ENOTDIR => Self::NotFound,
            Errno::ENAMETOOLONG => Self::BadPath("name too long".into()),
            other => Self::Io(std::io::Error::from(other)),
        }
    }
}

/// Result alias.
pub type BeneathResult<T> = Result<T, BeneathError>;

/// Longest path accepted.
const MAX_PATH: usize = 4096;
/// Longest name of one component.
const MAX_NAME: usize = 255;

/// Checks a relative path inside a tree and normalises it: no `..`, no absolute path,
/// no NUL, no over-long name; `.` components dropped. The empty result is the root.
pub fn relative(path: &str) -> BeneathResult<String> {
    if path.len() > MAX_PATH {
        return Err(BeneathError::BadPath("path too long".into()));
    }
    if path.contains('\0') {
        return Err(BeneathError::BadPath("NUL in path".into()));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(BeneathError::BadPath("absolute path".into()));
    }
    let mut parts = Vec::new();
    for component in p.components() {
        match component {
            Component::Normal(name) => {
                let name = name.to_str().ok_or_else(|| BeneathError::BadPath("not UTF-8".into()))?;
                if name.len() > MAX_NAME {
                    return Err(BeneathError::BadPath("name too long".into()));
                }
                parts.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(BeneathError::BadPath("'..' is not allowed".into())),
            Component::RootDir | Component::Prefix(_) => return Err(BeneathError::BadPath("absolute path".into())),
        }
    }
    Ok(parts.join("/"))
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// A directory tree operations are confined to.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
}

impl Tree {
    /// Opens the tree at `root` (a trusted path: the agent's or the manager's own).
    pub fn open(root: &Path) -> BeneathResult<Self> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(root, flags, Mode::empty()).map_err(|e| match e {
            Errno::ENOENT => BeneathError::NotFound,
            e => BeneathError::Io(e.into()),
        })?;
        Ok(Self { root })
    }

    /// Opens `rel` (already checked by [`relative`]) beneath the root, without following
    /// a symlink out of it; `""` is the root itself.
    fn open_at(&self, rel: &str, flags: OFlag) -> BeneathResult<OwnedFd> {
        let path = if rel.is_empty() { "." } else { rel };
        Ok(openat2(self.root.as_fd(), path, how(flags))?)
    }

    /// The status of `rel`, following symlinks only within the tree.
    pub fn stat(&self, rel: &str) -> BeneathResult<FileStat> {
        let fd = self.open_at(rel, OFlag::O_PATH)?;
        Ok(fstat(&fd)?)
    }

    /// Opens the directory `rel`.
    pub fn dir(&self, rel: &str) -> BeneathResult<OwnedFd> {
        match self.open_at(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Err(BeneathError::Io(e)) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                Err(BeneathError::WrongKind(format!("{rel:?} is not a directory")))
            }
            other => other,
        }
    }

    /// Opens the regular file `rel` for reading; anything else is refused before a byte
    /// is read (a FIFO opened non-blocking never blocks).
    pub fn read_file(&self, rel: &str) -> BeneathResult<(File, u64)> {
        let fd = self.open_at(rel, OFlag::O_RDONLY)?;
        let stat = fstat(&fd)?;
        if kind(&stat) != SFlag::S_IFREG {
            return Err(BeneathError::WrongKind(format!("{rel:?} is not a regular file")));
        }
        set_blocking(&fd)?;
        Ok((File::from(fd), u64::try_from(stat.st_size).unwrap_or(0)))
    }

    /// Creates (or truncates) the regular file `rel`, creating its parent directories;
    /// a target that exists and is not a single-linked regular file is refused.
    pub fn create_file(&self, rel: &str, owner: Option<(u32, u32)>) -> BeneathResult<File> {
        let (parent, name) = split(rel)?;
        if !parent.is_empty() {
            self.mkdir_all(parent, owner)?;
        }
        let dir = self.dir(parent)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd =
            nix::fcntl::openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o664)).map_err(|e| match e {
                Errno::ENXIO | Errno::EAGAIN | Errno::EISDIR | Errno::ELOOP => {
                    BeneathError::WrongKind(format!("{rel:?} exists and is not a regular file"))
                }
                e => e.into(),
            })?;
        let stat = fstat(&fd)?;
        // A hard link to a file elsewhere would be written through.
        if kind(&stat) != SFlag::S_IFREG || stat.st_nlink > 1 {
            return Err(BeneathError::WrongKind(format!("{rel:?} exists and is not a regular file")));
        }
        nix::unistd::ftruncate(&fd, 0)?;
        chown(&fd, owner);
        // Group-writable, whatever the umask: folders are shared through their group.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o664))?;
        set_blocking(&fd)?;
        Ok(File::from(fd))
    }

    /// Creates the directory `rel` and its missing parents; an existing directory is fine,
    /// a file in the way is refused.
    pub fn mkdir_all(&self, rel: &str, owner: Option<(u32, u32)>) -> BeneathResult<()> {
        let mut dir = self.dir("")?;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let created = match nix::sys::stat::mkdirat(dir.as_fd(), part, Mode::from_bits_truncate(0o775)) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(e.into()),
            };
            let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            let sub = nix::fcntl::openat(dir.as_fd(), part, flags, Mode::empty()).map_err(|e| match e {
                Errno::ENOTDIR | Errno::ELOOP => BeneathError::WrongKind(format!("{part:?} is not a directory")),
                e => e.into(),
            })?;
            if created {
                chown(&sub, owner);
                // setgid: what is created inside keeps the directory's group.
                nix::sys::stat::fchmod(&sub, Mode::from_bits_truncate(0o2775))?;
            }
            dir = sub;
        }
        Ok(())
    }

    /// Removes `rel`: a file or link, or a directory (its whole tree with `recursive`,
    /// else only when empty). Never follows a symlink.
    pub fn remove(&self, rel: &str, recursive: bool) -> BeneathResult<()> {
        let (parent, name) = split(rel)?;
        let dir = self.dir(parent)?;
        let stat = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if kind(&stat) != SFlag::S_IFDIR {
            return Ok(nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir)?);
        }
        if recursive {
            let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            let sub = nix::fcntl::openat(dir.as_fd(), name, flags, Mode::empty())?;
            empty_dir(sub, 0)?;
        }
        match nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::RemoveDir) {
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(BeneathError::WrongKind(format!(
                "{rel:?} is a directory that is not empty (remove it recursively)"
            ))),
            other => Ok(other?),
        }
    }

    /// The entries of the directory `rel`, without following symlinks.
    pub fn list(&self, rel: &str) -> BeneathResult<Vec<Entry>> {
        let dir = self.dir(rel)?;
        entries(dir)
    }

    /// Files and bytes in the whole tree (regular files; links count as files of their
    /// own size), stopping early past `limit` entries.
    pub fn usage(&self, limit: u64) -> BeneathResult<(u64, u64)> {
        let mut usage = (0, 0);
        walk_usage(self.dir("")?, &mut usage, limit, 0)?;
        Ok(usage)
    }

    /// A tar archive of `rel` (a file, or a directory with its tree) named by its last
    /// component; at most `limit` bytes of file contents. Links are archived as links;
    /// FIFOs, sockets and devices are left out.
    pub fn tar(&self, rel: &str, limit: u64) -> BeneathResult<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        let name = rel.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(".");
        let fd = self.open_at(rel, OFlag::O_RDONLY)?;
        let stat = fstat(&fd)?;
        let mut budget = limit;
        match kind(&stat) {
            SFlag::S_IFREG => append_file(&mut builder, name, fd, &stat, &mut budget)?,
            SFlag::S_IFDIR => append_dir(&mut builder, name, fd, &stat, &mut budget, 0)?,
            _ => return Err(BeneathError::WrongKind(format!("{rel:?} is not a regular file or directory"))),
        }
        Ok(builder.into_inner()?)
    }
}

/// Splits a non-root relative path into its parent and last name.
fn split(rel: &str) -> BeneathResult<(&str, &str)> {
    if rel.is_empty() {
        return Err(BeneathError::BadPath("the root itself".into()));
    }
    Ok(rel.rsplit_once('/').unwrap_or(("", rel)))
}

fn set_blocking(fd: &OwnedFd) -> BeneathResult<()> {
    let flags = OFlag::from_bits_truncate(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

fn chown(fd: &OwnedFd, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        let _ = nix::unistd::fchown(fd, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
    }
}

/// Deepest directory nesting a walk descends into.
const MAX_DEPTH: usize = 64;

fn too_deep(depth: usize) -> BeneathResult<()> {
    if depth > MAX_DEPTH {
        return Err(BeneathError::TooLarge("directories nested too deep".into()));
    }
    Ok(())
}

/// The names in a directory, without `.` and `..` (the directory's fd is handed back).
fn names(dir: OwnedFd) -> BeneathResult<(OwnedFd, Vec<String>)> {
    let dup = nix::unistd::dup(&dir)?;
    let mut reader = Dir::from_fd(dup)?;
    let mut out = Vec::new();
    for entry in reader.iter() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    Ok((dir, out))
}

fn open_child(dir: BorrowedFd<'_>, name: &str, directory: bool) -> BeneathResult<OwnedFd> {
    let mut flags = OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    Ok(nix::fcntl::openat(dir, name, flags, Mode::empty())?)
}

fn empty_dir(dir: OwnedFd, depth: usize) -> BeneathResult<()> {
    too_deep(depth)?;
    let (dir, names) = names(dir)?;
    for name in names {
        let stat = match fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => continue,
            other => other?,
        };
        if kind(&stat) == SFlag::S_IFDIR {
            empty_dir(open_child(dir.as_fd(), &name, true)?, depth + 1)?;
            nix::unistd::unlinkat(dir.as_fd(), name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)?;
        } else {
            nix::unistd::unlinkat(dir.as_fd(), name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        }
    }
    Ok(())
}

fn walk_usage(dir: OwnedFd, usage: &mut (u64, u64), limit: u64, depth: usize) -> BeneathResult<()> {
    too_deep(depth)?;
    let (dir, names) = names(dir)?;
    for name in names {
        let Ok(stat) = fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        if kind(&stat) == SFlag::S_IFDIR {
            if let Ok(sub) = open_child(dir.as_fd(), &name, true) {
                walk_usage(sub, usage, limit, depth + 1)?;
            }
        } else {
            usage.0 += 1;
            usage.1 += u64::try_from(stat.st_size).unwrap_or(0);
        }
        if usage.0 > limit {
            return Ok(());
        }
    }
    Ok(())
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// `ls -l` style mode, e.g. `-rw-r--r--`.
    pub mode: String,
    /// Bytes.
    pub size: u64,
    /// Status change time, in epoch seconds.
    pub ctime: f64,
    /// Modification time, in epoch seconds.
    pub mtime: f64,
    /// Access time, in epoch seconds.
    pub atime: f64,
    /// The entry's name.
    pub filename: String,
}

fn entries(dir: OwnedFd) -> BeneathResult<Vec<Entry>> {
    let (dir, names) = names(dir)?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Ok(stat) = fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        let time = |secs: i64, nanos: i64| secs as f64 + nanos as f64 / 1e9;
        out.push(Entry {
            mode: filemode(stat.st_mode),
            size: u64::try_from(stat.st_size).unwrap_or(0),
            ctime: time(stat.st_ctime, stat.st_ctime_nsec),
            mtime: time(stat.st_mtime, stat.st_mtime_nsec),
            atime: time(stat.st_atime, stat.st_atime_nsec),
            filename: name,
        });
    }
    out.sort_by(|a, b| a.filename.cmp(&b.filename));
    Ok(out)
}

/// The mode as Python's `stat.filemode` writes it.
pub fn filemode(mode: u32) -> String {
    let kind = match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => 'd',
        SFlag::S_IFLNK => 'l',
        SFlag::S_IFIFO => 'p',
        SFlag::S_IFSOCK => 's',
        SFlag::S_IFCHR => 'c',
        SFlag::S_IFBLK => 'b',
        _ => '-',
    };
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

fn tar_header(stat: &FileStat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header
}

fn spend(budget: &mut u64, size: u64) -> BeneathResult<()> {
    *budget = budget.checked_sub(size).ok_or_else(|| BeneathError::TooLarge("the files are too large".into()))?;
    Ok(())
}

fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    fd: OwnedFd,
    stat: &FileStat,
    budget: &mut u64,
) -> BeneathResult<()> {
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    spend(budget, size)?;
    set_blocking(&fd)?;
    let mut header = tar_header(stat, tar::EntryType::Regular, size);
    // Exactly the size stat told, even if the file grows or shrinks meanwhile.
    let reader = File::from(fd).take(size).chain(std::io::repeat(0).take(size));
    builder.append_data(&mut header, path, reader.take(size))?;
    Ok(())
}

fn append_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    dir: OwnedFd,
    stat: &FileStat,
    budget: &mut u64,
    depth: usize,
) -> BeneathResult<()> {
    too_deep(depth)?;
    let mut header = tar_header(stat, tar::EntryType::Directory, 0);
    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
    let (dir, names) = names(dir)?;
    for name in names {
        let child = format!("{path}/{name}");
        let Ok(stat) = fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        match kind(&stat) {
            SFlag::S_IFREG => {
                let Ok(fd) = open_child(dir.as_fd(), &name, false) else { continue };
                // Swapped for something else between the two calls: left out.
                match fstat(&fd) {
                    Ok(now) if kind(&now) == SFlag::S_IFREG => append_file(builder, &child, fd, &now, budget)?,
                    _ => continue,
                }
            }
            SFlag::S_IFDIR => {
                let Ok(fd) = open_child(dir.as_fd(), &name, true) else { continue };
                append_dir(builder, &child, fd, &stat, budget, depth + 1)?;
            }
            SFlag::S_IFLNK => {
                let Ok(target) = nix::fcntl::readlinkat(dir.as_fd(), name.as_str()) else { continue };
                let mut header = tar_header(&stat, tar::EntryType::Symlink, 0);
                builder.append_link(&mut header, &child, Path::new(&target))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The raw descriptor of a tree's root, for tests.
impl AsRawFd for Tree {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.root.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(relative("a/./b").unwrap(), "a/b");
        assert_eq!(relative("").unwrap(), "");
        assert_eq!(relative(".").unwrap(), "");
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\0b"] {
            assert!(relative(bad).is_err(), "{bad:?}");
        }
        assert!(relative(&"x".repeat(300)).is_err());
    }

    #[test]
    fn modes_read_like_python() {
        assert_eq!(filemode(0o100644), "-rw-r--r--");
        assert_eq!(filemode(0o040755), "drwxr-xr-x");
        assert_eq!(filemode(0o120777), "lrwxrwxrwx");
        assert_eq!(filemode(0o104755), "-rwsr-xr-x");
        assert_eq!(filemode(0o041777), "drwxrwxrwt");
    }

    #[test]
    fn symlinks_never_lead_out() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../etc/passwd", root.path().join("rel")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).unwrap();
        std::fs::write(root.path().join("inside"), "ok").unwrap();
        std::os::unix::fs::symlink("inside", root.path().join("alias")).unwrap();
        let tree = Tree::open(root.path()).unwrap();
        for escape in ["abs", "rel", "dir/secret"] {
            assert!(matches!(tree.read_file(escape), Err(BeneathError::NotFound)), "{escape}");
        }
        assert!(tree.create_file("dir/new", None).is_err());
        assert!(matches!(tree.create_file("abs", None), Err(BeneathError::WrongKind(_))));
        assert!(!outside.path().join("new").exists());
        let mut text = String::new();
        tree.read_file("alias").unwrap().0.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ok");
        // Removing a link removes the link, not what it points at.
        tree.remove("dir", true).unwrap();
        assert!(outside.path().join("secret").exists());
        // An archive holds the links as links.
        let tar = tree.tar("", 1 << 20).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"abs".to_owned()), "{names:?}");
        assert!(!String::from_utf8_lossy(&tar).contains("s3cret"));
    }

    #[test]
    fn fifos_never_block() {
        let root = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&root.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let tree = Tree::open(root.path()).unwrap();
        assert!(matches!(tree.read_file("fifo"), Err(BeneathError::WrongKind(_))));
        assert!(matches!(tree.create_file("fifo", None), Err(BeneathError::WrongKind(_))));
        assert!(tree.tar("", 1 << 20).is_ok());
        let listed = tree.list("").unwrap();
        assert_eq!(listed[0].mode.chars().next(), Some('p'));
    }

    #[test]
    fn trees_are_made_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let tree = Tree::open(root.path()).unwrap();
        tree.mkdir_all("a/b/c", None).unwrap();
        use std::io::Write;
        tree.create_file("a/b/c/f.txt", None).unwrap().write_all(b"hello").unwrap();
        tree.create_file("a/g.txt", None).unwrap().write_all(b"hi").unwrap();
        assert_eq!(tree.usage(100).unwrap(), (2, 7));
        assert!(matches!(tree.remove("a", false), Err(BeneathError::WrongKind(_))));
        assert!(matches!(tree.mkdir_all("a/g.txt/x", None), Err(BeneathError::WrongKind(_))));
        tree.remove("a", true).unwrap();
        assert!(tree.list("").unwrap().is_empty());
        assert!(matches!(tree.tar("a", 10), Err(BeneathError::NotFound)));
    }
}
