//! Object storage: one create-only interface over `gs://`, `file://` and memory, and the
//! [`layout`] of runs and attempts in it (the only place object keys are made).
//!
//! A service calls [`open`] once at start-up with its configured base URI and keeps the
//! returned `Arc<dyn ObjectStore>`. Objects are addressed by a validated [`ObjectKey`] relative
//! to that base; reads and heads also accept a full URI (a callback's `result_uri`), which must
//! lie under the base.
//!
//! Invariants every backend keeps:
//! - **Create-only**: [`ObjectStore::put_new`] never replaces an object. A second write to the
//!   same key fails with [`StorageError::AlreadyExists`] and the first object stays intact;
//!   of two concurrent writers exactly one wins.
//! - **No partial objects**: a reader sees either nothing or the complete object; a write that
//!   fails (body error, size/sha256 mismatch, crash) leaves nothing at the key.
//! - **Bounded memory**: bodies and reads are streamed; sha256 and size are computed on the
//!   way through, and read limits are enforced while streaming.

pub mod capability;
mod error;
mod file;
#[cfg(feature = "gcs")]
mod gcs;
pub mod layout;
mod memory;
mod uri;

use std::fmt;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use error::StorageError;
pub use file::FileStore;
#[cfg(feature = "gcs")]
pub use gcs::GcsStore;
pub use memory::MemoryStore;
pub use uri::{ObjectKey, ObjectUri, RESERVED_SEGMENT_PREFIX, Scheme, StorageUri};

/// A stream of an object's bytes, as returned by [`ObjectStore::get`].
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// The body of a write: bytes already in memory, or a stream of chunks that is consumed once.
pub enum Body {
    /// A body already in memory.
    Bytes(Bytes),
    /// A body produced chunk by chunk; it is never collected whole (except by the memory store).
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl Body {
    /// A body from any stream of chunks.
    pub fn from_stream(stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Self {
        Self::Stream(stream.boxed())
    }

    /// A body read from `reader` in chunks of at most 64 KiB.
    pub fn from_reader(reader: impl AsyncRead + Send + Unpin + 'static) -> Self {
        const CHUNK: usize = 64 * 1024;
        let stream = futures::stream::try_unfold(reader, |mut reader| async move {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let n = reader.read_buf(&mut buf).await?;
            Ok((n > 0).then(|| (buf.freeze(), reader)))
        });
        Self::from_stream(stream)
    }

    /// Turns the body into a stream, whatever its form.
    pub(crate) fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        match self {
            Self::Bytes(bytes) => futures::stream::iter([Ok(bytes)]).boxed(),
            Self::Stream(stream) => stream,
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => f.debug_tuple("Bytes").field(&bytes.len()).finish(),
            Self::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes.into())
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Self {
        Self::Bytes(Bytes::from_static(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::Bytes(text.into())
    }
}

/// What the caller already knows about a body; a write whose bytes disagree fails with
/// [`StorageError::Mismatch`] and stores nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The expected sha256, lowercase or uppercase hex.
    pub sha256: Option<String>,
    /// The expected size in bytes.
    pub size_bytes: Option<u64>,
}

/// What a successful create-only write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    /// The object's full URI.
    pub uri: String,
    /// The number of bytes stored.
    pub size_bytes: u64,
    /// The sha256 of the bytes stored, lowercase hex.
    pub sha256: String,
    /// The backend's version of the object: the GCS generation for `gs://`, `sha256:<hex>`
    /// for `file://` and memory (the contract's `storage_version`).
    pub storage_version: String,
}

/// An existing object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's size in bytes.
    pub size_bytes: u64,
    /// As in [`PutReceipt::storage_version`].
    pub storage_version: String,
}

/// Create-only object storage rooted at a base URI. Chosen once at start-up by [`open`].
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The base URI every key is relative to.
    fn base(&self) -> &StorageUri;

    /// The full URI of `key` in this store.
    fn uri_for(&self, key: &ObjectKey) -> String {
        self.base().uri_for(key)
    }

    /// Writes a new object at `key`, failing with [`StorageError::AlreadyExists`] (and leaving
    /// the existing object intact) if there is one.
    async fn put_new(&self, key: &ObjectKey, body: Body) -> Result<PutReceipt, StorageError> {
        self.put_new_expecting(key, body, Expected::default()).await
    }

    /// As [`put_new`](Self::put_new), and fails with [`StorageError::Mismatch`] without storing
    /// anything if the bytes do not match `expected`.
    async fn put_new_expecting(
        &self,
        key: &ObjectKey,
        body: Body,
        expected: Expected,
    ) -> Result<PutReceipt, StorageError>;

    /// Streams the object at `uri_or_key` (a key, or a full URI under the base). The stream
    /// ends with [`StorageError::TooLarge`] as soon as more than `max_bytes` have been seen;
    /// when the size is known up front that error comes from this call instead.
    async fn get(&self, uri_or_key: &str, max_bytes: u64) -> Result<ByteStream, StorageError>;

    /// Reads the whole object into memory, refusing objects over `max_bytes`.
    async fn read_bytes(&self, uri_or_key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let mut stream = self.get(uri_or_key, max_bytes).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }

    /// The object's size and version, or `None` if there is no object at `uri_or_key`.
    async fn head(&self, uri_or_key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Removes the object at `key`; nothing there is not an error. Only for the objects of a
    /// request that was refused before anything referred to them (a run's staged uploads):
    /// objects a run refers to are never deleted, and nothing is ever replaced.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// The keys under this store that start with `prefix` (a plain string prefix, e.g.
    /// `runs/org/run/`), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError>;

    /// Makes the folder `prefix` writable by the user `owner` (uid, gid) and by nobody else,
    /// for a local job that writes its outputs there directly as that user. Only `file://`
    /// has owners; elsewhere this does nothing.
    async fn hand_over(&self, prefix: &ObjectKey, owner: (u32, u32)) -> Result<(), StorageError> {
        let _ = (prefix, owner);
        Ok(())
    }
}

/// Copies the object at `from` (a key, or a full URI under the store's base) to the new key
/// `to`, create-only and streaming (nothing is held whole in memory). The copy must have
/// exactly `size_bytes` and `sha256` — what a reader of the copy will rely on — else nothing is
/// stored at `to` ([`StorageError::Mismatch`], or [`StorageError::TooLarge`] for a larger
/// source); an existing object at `to` stays intact ([`StorageError::AlreadyExists`]); a
/// missing source is [`StorageError::NotFound`].
///
/// Built from [`ObjectStore::get`] and [`ObjectStore::put_new_expecting`], so every store has
/// it with the same guarantees as its own writes.
pub async fn copy_new(
    store: &dyn ObjectStore,
    from: &str,
    to: &ObjectKey,
    sha256: &str,
    size_bytes: u64,
) -> Result<PutReceipt, StorageError> {
    let source = store.get(from, size_bytes).await?;
    let body = Body::from_stream(source.map(|chunk| chunk.map_err(io::Error::other)));
    let expected = Expected {
        sha256: Some(sha256.to_owned()),
        size_bytes: Some(size_bytes),
    };
    store.put_new_expecting(to, body, expected).await
}

/// Options for [`open`]; only the fields of the chosen scheme are used.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Options for `gs://`.
    pub gcs: GcsOptions,
}

/// How to reach Google Cloud Storage.
#[derive(Debug, Clone, Default)]
pub struct GcsOptions {
    /// Overrides the endpoint (e.g. `http://127.0.0.1:4443` for fake-gcs-server); `None` for
    /// Google's.
    pub endpoint: Option<String>,
    /// Sends no credentials (emulators); otherwise Application Default Credentials are used.
    pub anonymous: bool,
    /// Sends this bearer token (an attempt-scoped one, see [`capability`]) instead of any
    /// other credentials.
    pub token: Option<capability::AttemptToken>,
}

/// Opens the store for `base_uri`: `gs://bucket[/prefix]`, `file:///absolute/dir` (created if
/// missing) or `memory://name` (a fresh, empty store on every call).
pub async fn open(
    base_uri: &str,
    options: &OpenOptions,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let base = StorageUri::parse(base_uri)?;
    match base.scheme() {
        Scheme::Memory => Ok(Arc::new(MemoryStore::new(base))),
        Scheme::File => Ok(Arc::new(FileStore::open(base).await?)),
        #[cfg(feature = "gcs")]
        Scheme::Gs => Ok(Arc::new(GcsStore::open(base, &options.gcs).await?)),
        #[cfg(not(feature = "gcs"))]
        Scheme::Gs => {
            let _ = options;
            Err(StorageError::Unsupported {
                uri: base_uri.to_owned(),
                reason: "this build has no GCS support (runway-core feature `gcs`)".to_owned(),
            })
        }
    }
}

/// Running sha256 and size of a body, plus the check against [`Expected`].
#[derive(Debug, Default)]
pub(crate) struct BodyDigest {
    hasher: Sha256,
    size: u64,
}

impl BodyDigest {
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    #[cfg_attr(
        not(feature = "gcs"),
        expect(dead_code, reason = "only gcs buffers ahead")
    )]
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The final size and lowercase hex sha256, or the mismatch with `expected`.
    pub(crate) fn finish(
        self,
        uri: &str,
        expected: &Expected,
    ) -> Result<(u64, String), StorageError> {
        let sha256 = hex::encode(self.hasher.finalize());
        if let Some(want) = expected.size_bytes
            && want != self.size
        {
            return Err(StorageError::Mismatch {
                uri: uri.to_owned(),
                what: "size_bytes",
                expected: want.to_string(),
                actual: self.size.to_string(),
            });
        }
        if let Some(want) = &expected.sha256
            && !want.eq_ignore_ascii_case(&sha256)
        {
            return Err(StorageError::Mismatch {
                uri: uri.to_owned(),
                what: "sha256",
                expected: want.clone(),
                actual: sha256,
            });
        }
        Ok((self.size, sha256))
    }
}

/// The `storage_version` of file and memory objects.
pub(crate) fn sha256_version(sha256_hex: &str) -> String {
    format!("sha256:{sha256_hex}")
}

/// Ends `stream` with [`StorageError::TooLarge`] once more than `limit` bytes have passed,
/// without yielding the chunk that crossed the limit.
pub(crate) fn limit_stream(
    stream: impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static,
    uri: String,
    limit: u64,
) -> ByteStream {
    let mut seen = 0_u64;
    stream
        .map(move |item| {
            let chunk = item?;
            seen = seen.saturating_add(chunk.len() as u64);
            if seen > limit {
                return Err(StorageError::TooLarge {
                    uri: uri.clone(),
                    limit,
                });
            }
            Ok(chunk)
        })
        .scan(false, |done, item| {
            // Nothing after the first error: a TooLarge must not be followed by more bytes.
            if *done {
                return futures::future::ready(None);
            }
            *done = item.is_err();
            futures::future::ready(Some(item))
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(limit: u64, chunks: &[&'static [u8]]) -> Result<Vec<u8>, StorageError> {
        let chunks: Vec<_> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        let source = futures::stream::iter(chunks);
        let mut stream = limit_stream(source, "memory://t/x".to_owned(), limit);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn limit_is_enforced_while_streaming() {
        let chunks: &[&[u8]] = &[b"abc", b"def", b"g"];
        assert_eq!(drain(7, chunks).await.expect("exact limit"), b"abcdefg");
        let err = drain(6, chunks).await.expect_err("one byte over");
        assert!(
            matches!(err, StorageError::TooLarge { limit: 6, .. }),
            "{err}"
        );
        assert!(matches!(
            drain(2, chunks).await,
            Err(StorageError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn nothing_follows_the_limit_error() {
        let source = futures::stream::iter([
            Ok(Bytes::from_static(b"abcd")),
            Ok(Bytes::from_static(b"e")),
        ]);
        let items: Vec<_> = limit_stream(source, "memory://t/x".to_owned(), 2)
            .collect()
            .await;
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Err(StorageError::TooLarge { .. })));
    }
}
