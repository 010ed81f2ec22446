//! `file://`: objects are files below a root directory, one path segment per key segment.
//!
//! A write streams into a file with no name yet, in the destination directory (`O_TMPFILE`),
//! fsyncs it, and publishes it with `link(2)` (through `/proc/self/fd`), which fails with
//! `EEXIST` instead of replacing: that is what makes writes create-only between concurrent
//! writers and processes, and what guarantees readers see either nothing or the complete
//! object. A file that is never published has no name to remove: an error, a dropped future
//! and a crash all leave nothing behind. Where the file system has no `O_TMPFILE` (or `/proc` is
//! not mounted), the file is written under a temporary name (`.runway-tmp-<uuid>`) instead,
//! removed on every path but a crash, which can leave one behind (never a partial object at the
//! key). Key validation ([`ObjectKey`]) keeps every path below the root.
//!
//! Jobs of the process and Docker backends share this file system, so a read trusts nothing
//! under the root but the names: it opens the key one segment at a time (`openat` with
//! `O_NOFOLLOW`, never through a symbolic link), opens the object itself without blocking
//! (`O_NONBLOCK`, so a named pipe cannot hold a thread), and checks the type on the opened
//! handle: anything but a regular file is refused ([`StorageError::NotAnObject`]) without a
//! byte of it being read.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    Body, BodyDigest, ByteStream, Expected, ObjectKey, ObjectMeta, ObjectStore, PutReceipt,
    RESERVED_SEGMENT_PREFIX, StorageError, StorageUri, limit_stream, sha256_version,
};

const READ_CHUNK: usize = 64 * 1024;

/// An object store in a local directory.
#[derive(Debug)]
pub struct FileStore {
    base: StorageUri,
    root: PathBuf,
    /// Whether an unnamed file can be given a name (`/proc/self/fd` is there to link from).
    unnamed: bool,
}

impl FileStore {
    /// Opens the store rooted at `base` (a `file://` URI), creating the directory if missing.
    pub async fn open(base: StorageUri) -> Result<Self, StorageError> {
        let root = PathBuf::from(base.prefix());
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| StorageError::io(base.to_string(), e))?;
        let unnamed = Path::new(PROC_FDS).is_dir();
        Ok(Self {
            base,
            root,
            unnamed,
        })
    }

    fn path_for(&self, key: &ObjectKey) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.segments());
        path
    }

    /// Opens the object at `key` for reading (see the module docs); `None` if there is no
    /// object (nothing there, or a directory).
    async fn open_object(
        &self,
        key: &ObjectKey,
        uri: &str,
    ) -> Result<Option<(tokio::fs::File, u64)>, StorageError> {
        let root = self.root.clone();
        let key = key.clone();
        let opened = blocking(uri, move || open_no_follow(&root, &key)).await?;
        match opened {
            Opened::File(file, len) => Ok(Some((tokio::fs::File::from_std(file), len))),
            Opened::Missing => Ok(None),
            Opened::NotAnObject(what) => Err(StorageError::NotAnObject {
                uri: uri.to_owned(),
                what,
            }),
        }
    }
}

/// What is at a key, opened without following links or blocking.
enum Opened {
    File(std::fs::File, u64),
    Missing,
    NotAnObject(&'static str),
}

fn open_no_follow(root: &Path, key: &ObjectKey) -> io::Result<Opened> {
    use rustix::fs::{FileType, Mode, OFlags, fstat, openat};
    use rustix::io::Errno;

    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The root is the operator's configuration, trusted as given.
    let mut dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let segments: Vec<&str> = key.segments().collect();
    let (leaf, parents) = segments
        .split_last()
        .expect("a key has at least one segment");
    for segment in parents {
        dir = match openat(&dir, *segment, dir_flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => return Ok(Opened::Missing),
            // With O_DIRECTORY, Linux says ENOTDIR for a symbolic link as for a file.
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let link =
                    rustix::fs::statat(&dir, *segment, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                return Ok(if link {
                    Opened::NotAnObject("reached through a symbolic link")
                } else {
                    Opened::Missing
                });
            }
            Err(e) => return Err(e.into()),
        };
    }
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match openat(&dir, *leaf, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(Opened::Missing),
        Err(Errno::LOOP) => return Ok(Opened::NotAnObject("a symbolic link")),
        Err(e) => return Err(e.into()),
    };
    let stat = fstat(&fd)?;
    let what = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {
            let len = u64::try_from(stat.st_size).unwrap_or(0);
            return Ok(Opened::File(std::fs::File::from(fd), len));
        }
        FileType::Directory => return Ok(Opened::Missing),
        FileType::Fifo => "a named pipe",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Symlink => "a symbolic link",
        FileType::Unknown => "of an unknown kind",
    };
    Ok(Opened::NotAnObject(what))
}

/// Why [`ObjectStore::read_bytes`] read nothing.
enum Unread {
    Missing,
    NotAnObject(&'static str),
    TooLarge,
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Runs `work` on the blocking pool; its I/O error (or the pool's) is an error about `uri`.
async fn blocking<T: Send + 'static>(
    uri: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::io(uri, io::Error::other(e)))?
        .map_err(|e| StorageError::io(uri, e))
}

/// Where a process's open files are named, to link an unnamed file from.
const PROC_FDS: &str = "/proc/self/fd";

/// Whether [`publish`] gave the object its name.
#[derive(Debug, PartialEq, Eq)]
enum Published {
    Published,
    Exists,
}

/// A file being written before it is published.
enum Staged {
    /// No name at all (`O_TMPFILE`): if it is never published, closing it frees it.
    Unnamed,
    /// A temporary name in the destination directory, removed when this is dropped.
    Named(TempFile),
}

/// Opens a new file to write in `dir` (which exists): unnamed if `unnamed` allows and the file
/// system supports it, otherwise under a temporary name.
fn stage(dir: &Path, unnamed: bool) -> io::Result<(std::fs::File, Staged)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    if unnamed {
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        match rustix::fs::open(dir, flags, Mode::from_raw_mode(0o666)) {
            Ok(fd) => return Ok((std::fs::File::from(fd), Staged::Unnamed)),
            // The file system has no O_TMPFILE (EISDIR: the kernel predates it).
            Err(Errno::OPNOTSUPP | Errno::ISDIR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let temp = TempFile(dir.join(format!(
        "{RESERVED_SEGMENT_PREFIX}tmp-{}",
        uuid::Uuid::new_v4().simple()
    )));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.0)?;
    Ok((file, Staged::Named(temp)))
}

/// Publishes the synced `file` at `path` with `link(2)` (which never replaces), drops a
/// temporary name, and syncs the directory: the new entry is durable only once the directory
/// itself is synced.
fn publish(file: std::fs::File, staged: Staged, path: &Path, dir: &Path) -> io::Result<Published> {
    use rustix::fs::{AtFlags, CWD};
    let linked = match &staged {
        Staged::Unnamed => {
            use std::os::fd::AsRawFd;
            let from = format!("{PROC_FDS}/{}", file.as_raw_fd());
            rustix::fs::linkat(CWD, from.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW)
        }
        Staged::Named(temp) => {
            rustix::fs::linkat(CWD, temp.0.as_path(), CWD, path, AtFlags::empty())
        }
    };
    match linked {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => return Ok(Published::Exists),
        Err(e) => return Err(e.into()),
    }
    drop(file);
    drop(staged);
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Published::Published)
}

/// Removes the temporary file when dropped, so that no exit path (error, mismatch, a dropped
/// future) leaves it behind.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // Once published the object has its own link; removing this name never touches it.
        let _ = std::fs::remove_file(&self.0);
    }
}

#[async_trait]
impl ObjectStore for FileStore {
    async fn hand_over(&self, prefix: &ObjectKey, owner: (u32, u32)) -> Result<(), StorageError> {
        let path = self.path_for(prefix);
        let uri = self.uri_for(prefix);
        blocking(&uri, move || -> io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&path)?;
            let (uid, gid) = owner;
            rustix::fs::chown(
                &path,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
            // Owner writes; everyone may read (the callback service reads the output).
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        })
        .await
    }

    fn base(&self) -> &StorageUri {
        &self.base
    }

    async fn put_new_expecting(
        &self,
        key: &ObjectKey,
        body: Body,
        expected: Expected,
    ) -> Result<PutReceipt, StorageError> {
        let uri = self.uri_for(key);
        let path = self.path_for(key);
        let Some(dir) = path.parent().map(Path::to_path_buf) else {
            return Err(StorageError::io(
                &uri,
                io::Error::other("object path has no parent"),
            ));
        };
        let unnamed = self.unnamed;
        let (published, (size_bytes, sha256)) = match body {
            // A body in memory is checked first, then written, synced and published in one
            // trip to the blocking pool (each tokio::fs call is a trip of its own).
            Body::Bytes(bytes) => {
                let mut digest = BodyDigest::default();
                digest.update(&bytes);
                let digested = digest.finish(&uri, &expected)?;
                let published = blocking(&uri, move || {
                    std::fs::create_dir_all(&dir)?;
                    if std::fs::symlink_metadata(&path).is_ok() {
                        return Ok(Published::Exists);
                    }
                    let (mut file, staged) = stage(&dir, unnamed)?;
                    io::Write::write_all(&mut file, &bytes)?;
                    file.sync_all()?;
                    publish(file, staged, &path, &dir)
                })
                .await?;
                (published, digested)
            }
            Body::Stream(mut stream) => {
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| StorageError::io(&uri, e))?;
                // Fail fast before consuming the body; `link` below is what actually decides.
                if tokio::fs::symlink_metadata(&path).await.is_ok() {
                    return Err(StorageError::AlreadyExists { uri });
                }
                let staging_dir = dir.clone();
                let (file, staged) = blocking(&uri, move || stage(&staging_dir, unnamed)).await?;
                let mut file = tokio::fs::File::from_std(file);
                let mut digest = BodyDigest::default();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|source| StorageError::Body {
                        uri: uri.clone(),
                        source,
                    })?;
                    digest.update(&chunk);
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| StorageError::io(&uri, e))?;
                }
                file.flush().await.map_err(|e| StorageError::io(&uri, e))?;
                let file = file.into_std().await;
                let digested = digest.finish(&uri, &expected)?;
                let published = blocking(&uri, move || {
                    file.sync_all()?;
                    publish(file, staged, &path, &dir)
                })
                .await?;
                (published, digested)
            }
        };
        if published == Published::Exists {
            return Err(StorageError::AlreadyExists { uri });
        }

        Ok(PutReceipt {
            storage_version: sha256_version(&sha256),
            uri,
            size_bytes,
            sha256,
        })
    }

    async fn get(&self, uri_or_key: &str, max_bytes: u64) -> Result<ByteStream, StorageError> {
        let key = self.base.resolve(uri_or_key)?;
        let uri = self.uri_for(&key);
        let Some((file, len)) = self.open_object(&key, &uri).await? else {
            return Err(StorageError::NotFound { uri });
        };
        if len > max_bytes {
            return Err(StorageError::TooLarge {
                uri,
                limit: max_bytes,
            });
        }
        let read_uri = uri.clone();
        let chunks = futures::stream::try_unfold(file, move |mut file| {
            let uri = read_uri.clone();
            async move {
                let mut buf = BytesMut::with_capacity(READ_CHUNK);
                let n = file
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| StorageError::io(uri, e))?;
                Ok((n > 0).then(|| (buf.freeze(), file)))
            }
        });
        Ok(limit_stream(chunks, uri, max_bytes))
    }

    async fn read_bytes(&self, uri_or_key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        // Open, check and read in one trip to the blocking pool: the objects read whole are
        // small (envelopes, models the mock inspects), and a stream costs a trip per chunk.
        let key = self.base.resolve(uri_or_key)?;
        let uri = self.uri_for(&key);
        let root = self.root.clone();
        let read = blocking(&uri, move || -> io::Result<Result<Vec<u8>, Unread>> {
            let (file, len) = match open_no_follow(&root, &key)? {
                Opened::File(file, len) => (file, len),
                Opened::Missing => return Ok(Err(Unread::Missing)),
                Opened::NotAnObject(what) => return Ok(Err(Unread::NotAnObject(what))),
            };
            if len > max_bytes {
                return Ok(Err(Unread::TooLarge));
            }
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            // One more byte than allowed tells a file that grew since the check.
            io::Read::read_to_end(
                &mut io::Read::take(file, max_bytes.saturating_add(1)),
                &mut bytes,
            )?;
            if bytes.len() as u64 > max_bytes {
                return Ok(Err(Unread::TooLarge));
            }
            Ok(Ok(bytes))
        })
        .await?;
        match read {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(Unread::Missing) => Err(StorageError::NotFound { uri }),
            Err(Unread::NotAnObject(what)) => Err(StorageError::NotAnObject { uri, what }),
            Err(Unread::TooLarge) => Err(StorageError::TooLarge {
                uri,
                limit: max_bytes,
            }),
        }
    }

    async fn head(&self, uri_or_key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let key = self.base.resolve(uri_or_key)?;
        let uri = self.uri_for(&key);
        let Some((mut file, _)) = self.open_object(&key, &uri).await? else {
            return Ok(None);
        };
        // The version is the content hash, so it has to be recomputed; objects are immutable,
        // and head is used rarely (salvaging outputs), so no side index is kept.
        let mut hasher = Sha256::new();
        let mut size_bytes = 0_u64;
        let mut buf = vec![0_u8; READ_CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| StorageError::io(&uri, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size_bytes += n as u64;
        }
        Ok(Some(ObjectMeta {
            size_bytes,
            storage_version: sha256_version(&hex::encode(hasher.finalize())),
        }))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let uri = self.uri_for(key);
        let path = self.path_for(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(StorageError::io(uri, e)),
        }
        // Folders the object alone needed go with it; a folder that still holds anything
        // stays (removing a non-empty folder fails, which ends the walk).
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(current) = dir {
            if current == self.root || tokio::fs::remove_dir(&current).await.is_err() {
                break;
            }
            dir = current.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        // Start from the deepest directory the prefix names in full, to avoid walking the tree.
        let start = prefix
            .rsplit_once('/')
            .and_then(|(dir, _)| ObjectKey::parse(dir).ok());
        let (dir, rel) = match &start {
            Some(dir_key) => (self.path_for(dir_key), dir_key.as_str().to_owned()),
            None => (self.root.clone(), String::new()),
        };
        let prefix = prefix.to_owned();
        let uri = self.base.to_string();
        let mut keys = blocking(&uri, move || {
            let mut keys = Vec::new();
            walk(&dir, &rel, &prefix, &mut keys)?;
            Ok(keys)
        })
        .await?;
        keys.sort();
        Ok(keys)
    }
}

/// Collects the keys of regular files below `dir` (whose key is `rel`) that start with
/// `prefix`; skips in-flight temporary files and does not follow symlinks.
fn walk(dir: &Path, rel: &str, prefix: &str, keys: &mut Vec<ObjectKey>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                walk(&entry.path(), &key, prefix, keys)?;
            }
        } else if file_type.is_file()
            && key.starts_with(prefix)
            && let Ok(key) = ObjectKey::parse(key)
        {
            keys.push(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A store in a new temp dir, writing unnamed files or (`unnamed: false`, as on a file system
    /// without `O_TMPFILE`) temporary names.
    async fn store(unnamed: bool) -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = StorageUri::parse(&format!("file://{}", dir.path().display())).expect("uri");
        let mut store = FileStore::open(base).await.expect("open");
        assert!(store.unnamed, "this machine has /proc/self/fd");
        store.unnamed = unnamed;
        (dir, store)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir exists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn failed_body_leaves_no_object_and_no_temp_file() {
        for unnamed in [true, false] {
            let (dir, store) = store(unnamed).await;
            let key = ObjectKey::parse("a/b.bin").expect("key");
            let body = Body::from_stream(futures::stream::iter([
                Ok(Bytes::from_static(b"partial")),
                Err(io::Error::other("client went away")),
            ]));
            let err = store.put_new(&key, body).await.expect_err("body failed");
            assert!(matches!(err, StorageError::Body { .. }), "{err}");
            assert!(
                names_in(&dir.path().join("a")).is_empty(),
                "unnamed: {unnamed}"
            );
            assert!(store.head("a/b.bin").await.expect("head").is_none());
        }
    }

    /// While its body is still coming, a write has no name in the folder at all (unnamed), or
    /// only a reserved temporary one (the fallback); either way it ends as the one object.
    #[tokio::test]
    async fn a_write_in_flight_has_no_name_where_the_file_system_allows() {
        for unnamed in [true, false] {
            let (dir, store) = store(unnamed).await;
            std::fs::create_dir(dir.path().join("a")).expect("mkdir");
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
            let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let key = ObjectKey::parse("a/b.bin").expect("key");
            let put = async { store.put_new(&key, body).await };
            let feed = async {
                tx.send(Ok(Bytes::from_static(b"first half, ")))
                    .await
                    .expect("send");
                // The first chunk is written once the second can be queued.
                tx.send(Ok(Bytes::from_static(b"second half")))
                    .await
                    .expect("send");
                let during = names_in(&dir.path().join("a"));
                drop(tx);
                during
            };
            let (put, during) = tokio::join!(put, feed);
            let receipt = put.expect("stored");
            if unnamed {
                assert_eq!(during, Vec::<String>::new(), "a name while writing");
            } else {
                assert_eq!(during.len(), 1, "{during:?}");
                assert!(during[0].starts_with(RESERVED_SEGMENT_PREFIX), "{during:?}");
            }
            assert_eq!(names_in(&dir.path().join("a")), ["b.bin"]);
            assert_eq!(receipt.size_bytes, 23);
            let bytes = store.read_bytes("a/b.bin", 100).await.expect("read");
            assert_eq!(&bytes[..], b"first half, second half");
            let again = store
                .put_new(&key, Body::from(b"other".to_vec()))
                .await
                .expect_err("create-only");
            assert!(
                matches!(again, StorageError::AlreadyExists { .. }),
                "{again}"
            );
        }
    }
}
