//! The local-directory backend: the same layout as S3 under `storage.path`. Objects are written
//! to a hidden temporary name, fsynced, renamed into place and the directory fsynced (and its
//! parents up to the root, which hold the new folders' entries), so a crash leaves either the
//! whole object or a `.tmp` file that the next writer removes. What it writes is a database's
//! contents: files are 0600 and the folders it creates 0700, whatever the umask; run as root
//! (a CLI snapshot under sudo), they get the storage root's owner, so the daemon's own prune
//! can delete them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{ObjectReader, ObjectWriter, Storage, StorageError};

const TMP_MARK: &str = ".pgmedic-tmp-";

pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(path: PathBuf, prefix: &str) -> Self {
        let root = if prefix.is_empty() { path } else { path.join(prefix) };
        LocalStorage { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(&self, op: &'static str, key: &str, source: std::io::Error) -> StorageError {
        if source.kind() == std::io::ErrorKind::NotFound && op == "read" {
            return StorageError::NotFound { key: key.into(), location: self.location() };
        }
        StorageError::Io { location: self.location(), op, key: key.into(), source }
    }

    async fn start(&self, key: &str) -> Result<LocalWriter, StorageError> {
        let dest = self.path(key);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        let (root, d) = (self.root.clone(), dir.clone());
        tokio::task::spawn_blocking(move || private_dirs(&root, &d))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| self.io("create directory for", key, e))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}{TMP_MARK}{:08x}", rand::random::<u32>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|e| self.io("create", key, e))?;
        // The umask can only take bits away; set exactly 0600, and the root's owner as root.
        let private = async {
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).await?;
            owned_like_root(&self.root, &tmp)
        };
        if let Err(e) = private.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.io("create", key, e));
        }
        Ok(LocalWriter {
            file: Some(file),
            tmp,
            dest,
            dir,
            root: self.root.clone(),
            key: key.into(),
            location: self.location(),
            size: 0,
        })
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(self.start(key).await?))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let mut w = self.start(key).await?;
        if let Err(e) = w.write(data).await {
            Box::new(w).abort().await;
            return Err(e);
        }
        Box::new(w).finish().await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        tokio::fs::read(self.path(key)).await.map(Bytes::from).map_err(|e| self.io("read", key, e))
    }

    async fn open(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let f = tokio::fs::File::open(self.path(key)).await.map_err(|e| self.io("read", key, e))?;
        Ok(Box::pin(f))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let location = self.location();
        let result = tokio::task::spawn_blocking(move || walk(&root, &prefix))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()));
        result.and_then(|r| r).map_err(|source| StorageError::Io {
            location,
            op: "list",
            key: String::new(),
            source,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("delete", key, e)),
        }
        // An emptied snapshot folder goes too; a non-empty one stays (ENOTEMPTY is expected).
        if let Some(dir) = path.parent() {
            if dir != self.root {
                let _ = tokio::fs::remove_dir(dir).await;
            }
        }
        Ok(())
    }

    async fn abort_partial_writes(&self, prefix: &str) -> Result<usize, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let location = self.location();
        let found = tokio::task::spawn_blocking(move || walk_all(&root, &prefix))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|source| StorageError::Io { location, op: "list", key: String::new(), source })?;
        let mut removed = 0;
        for key in found.into_iter().filter(|k| k.contains(TMP_MARK)) {
            tracing::warn!(key = %key, "removing a partial write left by an earlier process");
            self.delete(&key).await?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn probe(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || private_dirs(Path::new("/"), &root))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| self.io("create directory", "", e))
    }
}

/// Creates the folders missing between `root` and `dir` (the root too, if missing) as 0700,
/// whatever the umask, each owned as the root's nearest existing ancestor is when we run as root.
fn private_dirs(root: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        let owner = if d.starts_with(root) && d != root { root } else { d.parent().unwrap_or(root) };
        owned_like_root(owner, d)?;
    }
    Ok(())
}

/// As root, gives `path` the owner of `like` (the storage root), so that a daemon running as
/// that user can replace and prune what a `sudo pgmedic snapshot` wrote.
fn owned_like_root(like: &Path, path: &Path) -> std::io::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Some(meta) = like.ancestors().find_map(|a| std::fs::metadata(a).ok()) else { return Ok(()) };
    if meta.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
}

/// Visible keys under `prefix`, sorted; temporary files are left out.
fn walk(root: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    Ok(walk_all(root, prefix)?.into_iter().filter(|k| !k.contains(TMP_MARK)).collect())
}

fn walk_all(root: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let start = root.join(prefix.trim_end_matches('/'));
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

struct LocalWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    /// The storage root: the folders between it and `dir` are fsynced too.
    root: PathBuf,
    key: String,
    location: String,
    size: u64,
}

impl LocalWriter {
    fn err(&self, op: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Io { location: self.location.clone(), op, key: self.key.clone(), source }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let file = self.file.as_mut().expect("write after finish");
        match file.write_all(&chunk).await {
            Ok(()) => {
                self.size += chunk.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.err("write", e)),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        let mut file = self.file.take().expect("finish twice");
        let synced = async {
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&self.tmp, &self.dest).await?;
            // The object's entry, and each new folder's entry in its parent, up to the root.
            for d in self.dir.ancestors().take_while(|d| d.starts_with(&self.root)) {
                tokio::fs::File::open(d).await?.sync_all().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        match synced {
            Ok(()) => Ok(self.size),
            Err(e) => Err(self.err("store", e)),
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        if let Err(e) = tokio::fs::remove_file(&self.tmp).await {
            tracing::warn!(file = %self.tmp.display(), error = %e, "could not remove a partial write");
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Neither finished nor aborted (a panic or a cancelled future): leave no partial file.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
