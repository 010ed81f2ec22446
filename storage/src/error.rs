//! The one error type of object storage; every variant names the URI (or key) it is about so
//! that a log line alone says which object failed.

use std::io;

/// Why an object-storage operation failed.
///
/// Callers branch on [`AlreadyExists`](Self::AlreadyExists) (create-only writes),
/// [`NotFound`](Self::NotFound) and [`TooLarge`](Self::TooLarge); the rest are reported.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The base or object URI is not one this module understands.
    #[error("invalid storage URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The object key is not a safe relative `/`-separated path.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A full URI was given that does not lie under this store's base URI.
    #[error("{uri} is outside this store's base {base}")]
    OutsideBase {
        /// The URI as given.
        uri: String,
        /// The store's base URI.
        base: String,
    },

    /// A create-only write found an object already at the key; the existing object is intact.
    #[error("an object already exists at {uri}")]
    AlreadyExists {
        /// The object's URI.
        uri: String,
    },

    /// No object exists at the URI.
    #[error("no object at {uri}")]
    NotFound {
        /// The object's URI.
        uri: String,
    },

    /// Something is at the key that is not a regular file (a symbolic link, a named pipe, a
    /// device…), on `file://` storage where jobs share the file system. It is refused without
    /// being opened for reading, so nothing of what it points at is read or quoted.
    #[error("{uri} is {what}, not a regular file; refused")]
    NotAnObject {
        /// The object's URI.
        uri: String,
        /// What is there instead ("a symbolic link", "a named pipe", …).
        what: &'static str,
    },

    /// The object is larger than the caller's read limit.
    #[error("the object at {uri} is larger than the read limit of {limit} bytes")]
    TooLarge {
        /// The object's URI.
        uri: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// The bytes written did not match the size or sha256 the caller expected; nothing was
    /// stored at the key.
    #[error("content written to {uri} does not match: expected {what} {expected}, got {actual}")]
    Mismatch {
        /// The object's URI.
        uri: String,
        /// `"sha256"` or `"size_bytes"`.
        what: &'static str,
        /// The expected value.
        expected: String,
        /// The value computed from the bytes.
        actual: String,
    },

    /// The caller's body stream failed; nothing was stored at the key.
    #[error("reading the body for {uri} failed: {source}")]
    Body {
        /// The object's URI.
        uri: String,
        /// The stream's error.
        #[source]
        source: io::Error,
    },

    /// A local file-system operation failed.
    #[error("I/O error on {uri}: {source}")]
    Io {
        /// The object's (or store's) URI.
        uri: String,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },

    /// The remote service failed or could not be reached.
    #[error("object storage request for {uri} failed: {source}")]
    Backend {
        /// The object's (or store's) URI.
        uri: String,
        /// The client library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The URI's scheme is valid but this build cannot serve it (e.g. `gs://` without the
    /// `gcs` feature).
    #[error("{uri}: {reason}")]
    Unsupported {
        /// The URI as given.
        uri: String,
        /// Why it cannot be served.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(uri: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            uri: uri.into(),
            source,
        }
    }
}
