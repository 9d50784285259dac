//! The default backend: one file per blob under a directory.
//!
//! A blob is written to `<root>/.tmp/<random>.part`, fsynced, renamed to its
//! key's path and the directory fsynced, so after a crash a key holds the
//! whole blob or nothing. Files are 0600, directories 0700. Leftover `.part`
//! files (a crash mid-upload) are removed by [`LocalDir::open`] once they are
//! older than [`STALE_TEMP_AGE`].

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;

use crate::backend::{Backend, ByteStream};
use crate::{BlobError, BlobKey};

const TMP_DIR: &str = ".tmp";
/// Temp files older than this are a crashed upload's (no upload takes this
/// long); younger ones may belong to another process sharing the directory.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 3600);
const READ_BUF: usize = 256 * 1024;
/// Pieces (sealed chunks, 64 KiB each) queued for the writer thread.
const WRITE_QUEUE: usize = 16;
/// Writeback is started every this many bytes, so the final fsync waits for
/// the last few MiB rather than the whole file.
const WRITEBACK_STEP: u64 = 8 << 20;

enum Write {
    Data(bytes::Bytes),
    Commit,
}

#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// Creates `root` (0700) if needed, tightens it to 0700 and sweeps stale
    /// temp files.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalDir, BlobError> {
        let root = root.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(BlobError::io("create directory", &root))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(BlobError::io("set permissions of", &root))?;
        let tmp = root.join(TMP_DIR);
        match std::fs::DirBuilder::new().mode(0o700).create(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BlobError::io("create directory", &tmp)(e)),
        }
        let dir = LocalDir { root };
        dir.sweep_temp(STALE_TEMP_AGE)?;
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key`. Keys are validated ([`BlobKey`]) so the
    /// path never leaves the root.
    pub fn path_of(&self, key: &BlobKey) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(key.segments());
        p
    }

    /// Removes temp files older than `age`; returns how many.
    pub fn sweep_temp(&self, age: Duration) -> Result<usize, BlobError> {
        let tmp = self.root.join(TMP_DIR);
        let entries = std::fs::read_dir(&tmp).map_err(BlobError::io("list", &tmp))?;
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= age)
                .unwrap_or(false);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %tmp.display(), "removed stale blob temp files");
        }
        Ok(removed)
    }

    async fn put_file(&self, key: &BlobKey, mut body: ByteStream<'_>) -> Result<u64, BlobError> {
        let target = self.path_of(key);
        let mut name = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut name);
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{}.part", hex::encode(name)));
        // Writes, fsyncs and the rename happen on one blocking thread fed
        // through a short queue, so sealing (here) and disk I/O (there) run
        // side by side and at most WRITE_QUEUE pieces wait in memory.
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let root = self.root.clone();
        let writer = tokio::task::spawn_blocking(move || write_blob(rx, &root, &tmp, &target));
        let fed = async {
            while let Some(piece) = body.next().await {
                if tx.send(Write::Data(piece?)).await.is_err() {
                    // The writer failed; its error is the one to report.
                    return Ok(());
                }
            }
            let _ = tx.send(Write::Commit).await;
            Ok(())
        }
        .await;
        // Without a Commit the writer removes its temp file (also when this
        // future is dropped and `tx` with it).
        drop(tx);
        let written = writer.await.map_err(|e| BlobError::Io {
            op: "run the writer of",
            path: self.path_of(key),
            source: std::io::Error::other(e),
        });
        fed?;
        written?
    }

    async fn get_file(&self, key: &BlobKey) -> Result<ByteStream<'static>, BlobError> {
        let path = self.path_of(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound {
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(BlobError::io("open", &path)(e)),
        };
        Ok(tokio_util::io::ReaderStream::with_capacity(file, READ_BUF)
            .map_err(move |e| BlobError::io("read", path.clone())(e))
            .boxed())
    }

    async fn delete_file(&self, key: &BlobKey) -> Result<(), BlobError> {
        let path = self.path_of(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                let parent = path.parent().unwrap_or(&self.root).to_path_buf();
                blocking(move || fsync_dir(&parent)).await
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::io("remove", &path)(e)),
        }
    }
}

impl Backend for LocalDir {
    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        body: ByteStream<'a>,
    ) -> BoxFuture<'a, Result<u64, BlobError>> {
        Box::pin(self.put_file(key, body))
    }

    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
    ) -> BoxFuture<'a, Result<ByteStream<'static>, BlobError>> {
        Box::pin(self.get_file(key))
    }

    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(self.delete_file(key))
    }
}

/// The writer thread: temp file, data, fsync, rename, directory fsync. Any
/// failure, or the queue closing without [`Write::Commit`], removes the temp
/// file.
fn write_blob(
    mut rx: tokio::sync::mpsc::Receiver<Write>,
    root: &Path,
    tmp: &Path,
    target: &Path,
) -> Result<u64, BlobError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let guard = RemoveOnDrop(Some(tmp.to_path_buf()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(BlobError::io("create", tmp))?;
    let mut len = 0u64;
    let mut flushed = 0u64;
    loop {
        match rx.blocking_recv() {
            Some(Write::Data(piece)) => {
                file.write_all(&piece)
                    .map_err(BlobError::io("write", tmp))?;
                len += piece.len() as u64;
                if len - flushed >= WRITEBACK_STEP {
                    start_writeback(&file, flushed, len - flushed);
                    flushed = len;
                }
            }
            Some(Write::Commit) => break,
            // The body failed or the put was dropped: the guard cleans up.
            None => {
                return Err(BlobError::Io {
                    op: "finish",
                    path: tmp.to_path_buf(),
                    source: std::io::Error::other("upload abandoned before its end"),
                });
            }
        }
    }
    file.sync_all().map_err(BlobError::io("fsync", tmp))?;
    drop(file);
    let parent = target.parent().unwrap_or(root);
    make_dirs(root, parent)?;
    std::fs::rename(tmp, target).map_err(BlobError::io("rename into place", target))?;
    guard.disarm();
    // The rename is durable only once the directory entry is.
    fsync_dir(parent)?;
    Ok(len)
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk now,
/// without waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`); a hint,
/// so failures are ignored (the final fsync reports real errors).
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor that `file` keeps open for
    // the duration of the call; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // A small unlink; fine to do synchronously even on a runtime thread.
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io {
            op: "run blocking file operation",
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })?
}

/// Creates the directories from `root` down to `dir` (0700), fsyncing each
/// parent whose listing changed.
fn make_dirs(root: &Path, dir: &Path) -> Result<(), BlobError> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut at = root.to_path_buf();
    for part in rel.components() {
        let parent = at.clone();
        at.push(part);
        match std::fs::DirBuilder::new().mode(0o700).create(&at) {
            Ok(()) => fsync_dir(&parent)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(BlobError::io("create directory", &at)(e)),
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BlobError::io("fsync directory", dir))
}
