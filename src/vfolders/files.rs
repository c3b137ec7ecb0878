//! The files of virtual folders on disk: `<vfolder root>/<host>/<id hex>`. Every path a
//! client names is resolved beneath the folder's directory ([`beneath`]): kernels
//! write into mounted folders, so symlinks that lead out are assumed to be there. File
//! work runs on the blocking pool; uploads and downloads stream in bounded chunks.

use std::io::{Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use entity::vfolders;
use flate2::write::GzEncoder;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::error::{ApiError, Problem};
use beneath::{self, BeneathError, Entry, Tree};

/// The directory of `folder`.
pub fn dir_of(settings: &Settings, folder: &vfolders::Model) -> PathBuf {
    settings.vfolder_root().join(&folder.host).join(folder.id.simple().to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!(error = %e, "a file task failed");
        ApiError::new(Problem::InternalServerError)
    })?
}

fn tree(settings: &Settings, folder: &vfolders::Model) -> Result<Tree, ApiError> {
    Tree::open(&dir_of(settings, folder)).map_err(|e| match e {
        BeneathError::NotFound => {
            tracing::error!(folder = %folder.id, "a virtual folder's directory is missing");
            ApiError::new(Problem::InternalServerError)
        }
        e => e.into(),
    })
}

/// Creates the folder root at start. Kernels that run as their own uid reach the folders
/// they mount through it, so the root, and the data dir when the root is inside it (the
/// embedded default), can be searched by other users (0711: nothing in them can be
/// listed, and every file of the data dir is the manager's own, mode 0600).
pub fn prepare_root(settings: &Settings) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let root = settings.vfolder_root();
    std::fs::DirBuilder::new().recursive(true).mode(0o711).create(&root)?;
    let data_dir = std::path::absolute(&settings.db.data_dir)?;
    if root.parent() == Some(data_dir.as_path()) {
        let mode = std::fs::metadata(&data_dir)?.permissions().mode() & 0o7777;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(mode | 0o011))?;
    }
    Ok(())
}

/// Creates the folder's directory (and the root and host directories).
pub async fn make_dir(settings: &Settings, folder: &vfolders::Model) -> Result<(), ApiError> {
    let dir = dir_of(settings, folder);
    let gid = settings.vfolder.gid;
    blocking(move || {
        let failed = |e: std::io::Error| {
            tracing::error!(error = %e, dir = %dir.display(), "cannot create a virtual folder");
            ApiError::new(Problem::InternalServerError)
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        // The folder's group is the one kernels share (see `vfolder.gid`), kept by what is
        // created in it (the setgid bit); the root and host directories can be crossed but
        // not listed, so a folder is reached only by its id.
        use std::os::unix::fs::PermissionsExt;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, None, Some(gid)).map_err(failed)?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).map_err(failed)?;
        for parent in dir.ancestors().skip(1).take(2) {
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
        }
        Ok(())
    })
    .await
}

/// Removes the folder's directory and everything in it (never following a link out).
pub async fn remove_dir(settings: &Settings, folder: &vfolders::Model) {
    let parent = dir_of(settings, folder).parent().map(PathBuf::from).unwrap_or_default();
    let name = folder.id.simple().to_string();
    let removed = blocking(move || Ok(Tree::open(&parent).and_then(|t| t.remove(&name, true)))).await;
    match removed {
        Ok(Ok(()) | Err(BeneathError::NotFound)) => {}
        Ok(Err(e)) => tracing::warn!(folder = %folder.id, error = %e, "could not remove a virtual folder's files"),
        Err(e) => tracing::warn!(folder = %folder.id, error = %e, "could not remove a virtual folder's files"),
    }
}

/// A client's relative path, checked.
pub fn relative(path: &str) -> Result<String, ApiError> {
    Ok(beneath::relative(path)?)
}

/// The number of entries directly under the folder's root.
pub async fn num_files(settings: &Settings, folder: &vfolders::Model) -> Result<usize, ApiError> {
    let tree = tree(settings, folder)?;
    blocking(move || Ok(tree.list("")?.len())).await
}

/// The entries of the directory `rel`.
pub async fn list(settings: &Settings, folder: &vfolders::Model, rel: String) -> Result<Vec<Entry>, ApiError> {
    let tree = tree(settings, folder)?;
    blocking(move || Ok(tree.list(&rel)?)).await
}

/// Creates the directory `rel` with its parents.
pub async fn mkdir(settings: &Settings, folder: &vfolders::Model, rel: String) -> Result<(), ApiError> {
    if rel.is_empty() {
        return Err(ApiError::new(Problem::InvalidApiParams).with_detail("no path given"));
    }
    let tree = tree(settings, folder)?;
    blocking(move || Ok(tree.mkdir_all(&rel, None)?)).await
}

/// Removes entries; missing ones are skipped, a directory needs `recursive`.
pub async fn delete(
    settings: &Settings,
    folder: &vfolders::Model,
    rels: Vec<String>,
    recursive: bool,
) -> Result<(), ApiError> {
    let tree = tree(settings, folder)?;
    blocking(move || {
        for rel in rels {
            if rel.is_empty() {
                return Err(ApiError::new(Problem::InvalidApiParams).with_detail("cannot delete the folder's root"));
            }
            match tree.remove(&rel, recursive) {
                Ok(()) | Err(BeneathError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
    .await
}

/// Files and bytes in the folder now, measured on disk.
pub async fn usage(settings: &Settings, folder: &vfolders::Model) -> Result<(u64, u64), ApiError> {
    let tree = tree(settings, folder)?;
    let limit = u64::try_from(folder.max_files).unwrap_or(0);
    blocking(move || Ok(tree.usage(limit)?)).await
}

/// A file being uploaded into a folder: written chunk by chunk on the blocking pool,
/// counted against the folder's size quota.
pub struct Upload {
    file: Option<std::fs::File>,
    rel: String,
    tree: std::sync::Arc<Tree>,
    /// Bytes the folder may still take.
    room: u64,
    written: u64,
}

impl Upload {
    /// Creates (or truncates) `rel` in the folder; `room` bytes may be written.
    pub async fn start(
        settings: &Settings,
        folder: &vfolders::Model,
        rel: String,
        room: u64,
    ) -> Result<Self, ApiError> {
        let tree = std::sync::Arc::new(tree(settings, folder)?);
        let (t, r) = (tree.clone(), rel.clone());
        let file = blocking(move || Ok(t.create_file(&r, None)?)).await?;
        Ok(Self { file: Some(file), rel, tree, room, written: 0 })
    }

    /// Appends a chunk; past the quota the partial file is removed and the upload refused.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        self.written += chunk.len() as u64;
        if self.written > self.room {
            self.abort().await;
            return Err(ApiError::new(Problem::InvalidApiParams).with_detail("the folder's size quota is used up"));
        }
        let mut file = self.file.take().ok_or_else(|| ApiError::new(Problem::InternalServerError))?;
        let file = blocking(move || {
            file.write_all(&chunk).map_err(|e| {
                tracing::error!(error = %e, "writing an uploaded file failed");
                ApiError::new(Problem::InternalServerError)
            })?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Removes what was written.
    pub async fn abort(&mut self) {
        self.file = None;
        let (tree, rel) = (self.tree.clone(), self.rel.clone());
        let _ = blocking(move || Ok(tree.remove(&rel, false))).await;
    }
}

/// The files of a download, opened (so every error is known before the answer starts).
pub struct Download {
    files: Vec<(String, std::fs::File, u64)>,
}

impl Download {
    /// Opens regular files `rels` of the folder.
    pub async fn open(settings: &Settings, folder: &vfolders::Model, rels: Vec<String>) -> Result<Self, ApiError> {
        let tree = tree(settings, folder)?;
        blocking(move || {
            let mut files = Vec::new();
            for rel in rels {
                let (file, size) = tree.read_file(&rel).map_err(|e| match e {
                    BeneathError::WrongKind(_) => ApiError::new(Problem::InvalidApiParams)
                        .with_detail(format!("You cannot download {rel:?} because it is not a regular file.")),
                    e => e.into(),
                })?;
                let name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
                files.push((name, file, size));
            }
            Ok(Self { files })
        })
        .await
    }

    /// The sum of the files' sizes.
    pub fn total(&self) -> u64 {
        self.files.iter().map(|(_, _, size)| size).sum()
    }

    /// Streams the multipart/mixed body: one gzip-encoded part per file, named by its
    /// base name. At most a few chunks are in memory at any time.
    pub fn stream(self, boundary: String) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let send = |bytes: Vec<u8>| tx.blocking_send(Ok(Bytes::from(bytes))).is_ok();
            for (name, file, size) in self.files {
                let header = format!(
                    "--{boundary}\r\nContent-Encoding: gzip\r\nContent-Disposition: attachment; filename=\"{q}\"; \
                     filename*=utf-8''{e}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    q = name.replace(['"', '\r', '\n'], "_"),
                    e = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC),
                );
                if !send(header.into_bytes()) {
                    return;
                }
                if let Err(e) = gzip_into(file.take(size), &send) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                if !send(b"\r\n".to_vec()) {
                    return;
                }
            }
            send(format!("--{boundary}--\r\n").into_bytes());
        });
        rx
    }
}

/// Chunk size of a streamed download.
const CHUNK: usize = 64 << 10;

fn gzip_into(mut reader: impl Read, send: &impl Fn(Vec<u8>) -> bool) -> std::io::Result<()> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(CHUNK), flate2::Compression::fast());
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        encoder.write_all(&buf[..n])?;
        if encoder.get_ref().len() >= CHUNK {
            let out = std::mem::replace(encoder.get_mut(), Vec::with_capacity(CHUNK));
            if !send(out) {
                return Err(std::io::Error::other("the client went away"));
            }
        }
    }
    let out = encoder.finish()?;
    if !send(out) {
        return Err(std::io::Error::other("the client went away"));
    }
    Ok(())
}
