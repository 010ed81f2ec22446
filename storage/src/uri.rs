//! Parsed storage URIs and object keys.
//!
//! A store is rooted at a base [`StorageUri`] (`gs://bucket/prefix`, `file:///dir`,
//! `memory://name`); objects inside it are named by an [`ObjectKey`], a relative `/`-separated
//! path. The key rules are the only thing standing between a caller-supplied name and the file
//! system on `file://`, so they are strict and identical on every backend: no empty, `.` or `..`
//! segments, no leading `/`, no backslash, no NUL or other control characters, no segment longer
//! than 255 bytes (the longest file name Linux file systems store), and no segment starting with
//! [`RESERVED_SEGMENT_PREFIX`] (the file store's in-flight temporary files).
//!
//! URIs are compared textually: a store accepts a full URI only if it starts with its own base
//! followed by `/`, and the rest parses as a key. Parsing never touches the network or disk.

use std::fmt;

use super::StorageError;

/// Segments starting with this are reserved for in-flight writes and never valid in a key.
pub const RESERVED_SEGMENT_PREFIX: &str = ".runway-";

const MAX_KEY_BYTES: usize = 1024;
/// The longest segment: a file name on ext4, XFS and tmpfs (`NAME_MAX`). Checked on every backend,
/// so that a key that works on one works on all.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// The kind of store a URI points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Google Cloud Storage, `gs://bucket/prefix`.
    Gs,
    /// A local directory, `file:///absolute/dir`.
    File,
    /// A process-local map, `memory://name`.
    Memory,
}

impl Scheme {
    /// The scheme as written in URIs, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gs => "gs",
            Self::File => "file",
            Self::Memory => "memory",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated object key: relative, `/`-separated, no traversal (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key`.
    pub fn parse(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        let bad = |reason: &str| StorageError::InvalidKey {
            key: key.clone(),
            reason: reason.to_owned(),
        };
        if key.is_empty() {
            return Err(bad("a key must not be empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(bad("a key must be at most 1024 bytes"));
        }
        if key.starts_with('/') {
            return Err(bad("a key must be relative (no leading '/')"));
        }
        if key.contains('\\') {
            return Err(bad("a key must not contain '\\'"));
        }
        if key.chars().any(char::is_control) {
            return Err(bad("a key must not contain NUL or control characters"));
        }
        for segment in key.split('/') {
            match segment {
                "" => {
                    return Err(bad(
                        "a key must not contain empty segments ('//' or a trailing '/')",
                    ));
                }
                "." | ".." => return Err(bad("a key must not contain '.' or '..' segments")),
                s if s.starts_with(RESERVED_SEGMENT_PREFIX) => {
                    return Err(bad("segments starting with '.runway-' are reserved"));
                }
                s if s.len() > MAX_SEGMENT_BYTES => {
                    return Err(bad("a key's segments must be at most 255 bytes each"));
                }
                _ => {}
            }
        }
        Ok(Self(key))
    }

    /// Appends `rest` (itself a valid key) after a `/`.
    pub fn join(&self, rest: &str) -> Result<Self, StorageError> {
        Self::parse(format!("{}/{rest}", self.0))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = StorageError;
    fn try_from(key: &str) -> Result<Self, Self::Error> {
        Self::parse(key)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = StorageError;
    fn try_from(key: String) -> Result<Self, Self::Error> {
        Self::parse(key)
    }
}

/// A parsed object URI: scheme, bucket (the store name for `memory://`, empty for `file://`)
/// and path (the object name for `gs://`, the absolute file path for `file://`).
///
/// This says nothing about which store the object belongs to; use
/// [`StorageUri::resolve`] to check that.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectUri {
    /// The scheme.
    pub scheme: Scheme,
    /// The bucket or memory store name; empty for `file://`.
    pub bucket: String,
    /// Everything after the bucket: `gs://b/a/c` → `a/c`; `file:///d/a` → `/d/a`.
    pub path: String,
}

impl ObjectUri {
    /// Splits `uri` into scheme, bucket and path; rejects unknown schemes and malformed URIs.
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::InvalidUri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        if uri.chars().any(char::is_control) || uri.contains('\\') {
            return Err(bad("URIs must not contain control characters or '\\'"));
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(bad(
                "expected gs://bucket/…, file:///dir/… or memory://name/…",
            ));
        };
        let scheme = match scheme {
            "gs" => Scheme::Gs,
            "file" => Scheme::File,
            "memory" => Scheme::Memory,
            _ => return Err(bad("unsupported scheme; expected gs, file or memory")),
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(bad("query strings and fragments are not supported"));
        }
        match scheme {
            Scheme::File => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "file URIs need an absolute path and no host: file:///absolute/dir",
                    ));
                }
                Ok(Self {
                    scheme,
                    bucket: String::new(),
                    path: rest.to_owned(),
                })
            }
            Scheme::Gs | Scheme::Memory => {
                let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("the bucket (or memory store name) is missing"));
                }
                let valid_char =
                    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
                if !bucket.chars().all(valid_char) {
                    return Err(bad(
                        "bucket names may only contain lowercase letters, digits, '-', '_' and '.'",
                    ));
                }
                Ok(Self {
                    scheme,
                    bucket: bucket.to_owned(),
                    path: path.to_owned(),
                })
            }
        }
    }
}

/// The base URI a store is rooted at, normalised without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StorageUri {
    scheme: Scheme,
    bucket: String,
    /// For gs/memory: the key prefix inside the bucket, possibly empty. For file: the absolute
    /// directory, `/` for the file-system root.
    prefix: String,
    canonical: String,
}

impl StorageUri {
    /// Parses a base URI: `gs://bucket[/prefix]`, `file:///absolute/dir`, `memory://name[/prefix]`.
    /// The prefix (or directory) must satisfy the same segment rules as keys.
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let parsed = ObjectUri::parse(uri)?;
        let trimmed = parsed.path.trim_end_matches('/');
        let relative = trimmed.trim_start_matches('/');
        if !relative.is_empty() {
            ObjectKey::parse(relative).map_err(|e| StorageError::InvalidUri {
                uri: uri.to_owned(),
                reason: format!("bad path: {e}"),
            })?;
        }
        let (prefix, canonical) = match parsed.scheme {
            Scheme::File => {
                let dir = if trimmed.is_empty() { "/" } else { trimmed };
                (dir.to_owned(), format!("file://{dir}"))
            }
            Scheme::Gs | Scheme::Memory => {
                let mut canonical = format!("{}://{}", parsed.scheme, parsed.bucket);
                if !relative.is_empty() {
                    canonical.push('/');
                    canonical.push_str(relative);
                }
                (relative.to_owned(), canonical)
            }
        };
        Ok(Self {
            scheme: parsed.scheme,
            bucket: parsed.bucket,
            prefix,
            canonical,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The bucket (or memory store name); empty for `file://`.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix inside the bucket (gs/memory, possibly empty) or the absolute directory
    /// (file).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full URI of `key` under this base.
    pub fn uri_for(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.join_base(), key.as_str())
    }

    /// The base with exactly one trailing `/`. Only the file-system root (`file:///`) already
    /// ends in one; trimming it would leave `file:` and break every key below the root.
    fn join_base(&self) -> String {
        if self.canonical.ends_with('/') {
            self.canonical.clone()
        } else {
            format!("{}/", self.canonical)
        }
    }

    /// The object name inside the bucket for `key` (gs/memory); the path below the directory
    /// for file.
    pub fn object_name(&self, key: &ObjectKey) -> String {
        match self.scheme {
            Scheme::File => key.as_str().to_owned(),
            Scheme::Gs | Scheme::Memory if self.prefix.is_empty() => key.as_str().to_owned(),
            Scheme::Gs | Scheme::Memory => format!("{}/{}", self.prefix, key.as_str()),
        }
    }

    /// Resolves a full URI under this base, or a bare key, to a key. A string containing
    /// `://` is a URI (no valid key can contain `//`), anything else a key.
    pub fn resolve(&self, uri_or_key: &str) -> Result<ObjectKey, StorageError> {
        if !uri_or_key.contains("://") {
            return ObjectKey::parse(uri_or_key);
        }
        ObjectUri::parse(uri_or_key)?;
        let outside = || StorageError::OutsideBase {
            uri: uri_or_key.to_owned(),
            base: self.canonical.clone(),
        };
        let rest = uri_or_key
            .strip_prefix(&self.join_base())
            .ok_or_else(outside)?;
        ObjectKey::parse(rest)
    }
}

impl fmt::Display for StorageUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_system_root_is_a_usable_base() {
        let root = StorageUri::parse("file:///").expect("root");
        let key = root
            .resolve("file:///tmp/x/input.json")
            .expect("under the root");
        assert_eq!(key.as_str(), "tmp/x/input.json");
        assert_eq!(root.uri_for(&key), "file:///tmp/x/input.json");
        let bucket = StorageUri::parse("gs://b").expect("bucket");
        assert_eq!(bucket.resolve("gs://b/a/c").expect("key").as_str(), "a/c");
        assert!(bucket.resolve("gs://bb/a").is_err());
    }

    #[test]
    fn keys_reject_traversal_and_oddities() {
        for bad in [
            "",
            "../x",
            "a/../b",
            "a/./b",
            ".",
            "a//b",
            "/abs",
            "a/",
            "a\\b",
            "a\0b",
            "a\nb",
            ".runway-tmp",
            &format!("a/{}", "x".repeat(256)),
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in [
            "a",
            "a/b.json",
            "runs/o/r/attempts/1/output.json",
            "a..b",
            "..a",
            &format!("a/{}", "x".repeat(255)),
        ] {
            assert!(
                ObjectKey::parse(good).is_ok(),
                "{good:?} should be accepted"
            );
        }
    }

    #[test]
    fn base_uris_normalise_and_resolve() {
        let gs = StorageUri::parse("gs://bucket/pre/fix/").expect("valid");
        let key = ObjectKey::parse("a/b").expect("valid");
        assert_eq!(gs.uri_for(&key), "gs://bucket/pre/fix/a/b");
        assert_eq!(gs.object_name(&key), "pre/fix/a/b");
        assert_eq!(
            gs.resolve("gs://bucket/pre/fix/a/b").expect("under base"),
            key
        );
        assert!(matches!(
            gs.resolve("gs://bucket/pre/fixx/a"),
            Err(StorageError::OutsideBase { .. })
        ));
        assert!(matches!(
            gs.resolve("gs://other/pre/fix/a"),
            Err(StorageError::OutsideBase { .. })
        ));
        assert!(gs.resolve("gs://bucket/pre/fix/../x").is_err());

        let root = StorageUri::parse("gs://bucket").expect("valid");
        assert_eq!(root.uri_for(&key), "gs://bucket/a/b");
        assert_eq!(root.object_name(&key), "a/b");

        let file = StorageUri::parse("file:///tmp/x/").expect("valid");
        assert_eq!(file.uri_for(&key), "file:///tmp/x/a/b");
        assert_eq!(file.resolve("file:///tmp/x/a/b").expect("under base"), key);

        for bad in [
            "s3://b/x",
            "gs://",
            "gs:///x",
            "gs://Bucket",
            "file://host/dir",
            "file://relative",
            "file:///a/../b",
            "memory://m?x=1",
            "/just/a/path",
        ] {
            assert!(
                StorageUri::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
