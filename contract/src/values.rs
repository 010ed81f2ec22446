//! Validated scalar values of the contract: each is a newtype that can only hold a value the
//! Validibot models would accept, so a parsed envelope needs no second check.
//!
//! Every type here deserializes through `TryFrom<String>`, so a bad value is reported by
//! [`crate::ContractError`] together with the path of the field that held it.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separator of the public callback-nonce commitment (Validibot's
/// `CALLBACK_NONCE_DOMAIN_SEPARATOR`).
pub const CALLBACK_NONCE_DOMAIN_SEPARATOR: &[u8] = b"validibot-callback-nonce\0";
/// Shortest accepted callback nonce (32 random bytes in unpadded base64url are 43 characters).
pub const CALLBACK_NONCE_MIN_LEN: usize = 43;
/// Longest accepted callback nonce.
pub const CALLBACK_NONCE_MAX_LEN: usize = 512;
/// Longest accepted `storage_version`.
pub const STORAGE_VERSION_MAX_LEN: usize = 512;
/// Longest accepted `port_key`.
pub const PORT_KEY_MAX_LEN: usize = 255;
/// Longest accepted callback URL (pydantic's `HttpUrl` limit).
pub const CALLBACK_URL_MAX_LEN: usize = 2083;

/// Implements the string plumbing shared by every validated string newtype.
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::parse(value.to_owned())
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s.to_owned())
            }
        }
    };
}

/// One safe logical file name: a leaf, never a path, so a runtime can place it inside its own
/// workspace. Rejects empty names, `.`, `..`, and any `/`, `\` or NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SafeName(String);

impl SafeName {
    /// Accepts `value` when it is a safe leaf name.
    pub fn parse(value: String) -> Result<Self, String> {
        if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\\', '\0']) {
            return Err(format!(
                "must be a safe file name (no '/', '\\', NUL, '.' or '..'): {value:?}"
            ));
        }
        Ok(Self(value))
    }
}
string_newtype!(SafeName);

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lowercase hexadecimal SHA-256 digest (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Accepts exactly 64 lowercase hexadecimal characters.
    pub fn parse(value: String) -> Result<Self, String> {
        if value.len() == 64
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(Self(value))
        } else {
            Err(format!(
                "must be 64 lowercase hexadecimal characters (a SHA-256 digest), got {value:?}"
            ))
        }
    }

    /// The digest of `bytes`.
    pub fn digest(bytes: &[u8]) -> Self {
        Self::from_bytes(Sha256::digest(bytes).into())
    }

    /// Wraps a raw 32-byte digest.
    pub fn from_bytes(digest: [u8; 32]) -> Self {
        Self(hex::encode(digest))
    }

    /// Compares two digests in constant time, for secrets' hashes.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0
            .bytes()
            .zip(other.0.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}
string_newtype!(Sha256Hex);

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The provider's immutable identity of an object version: a GCS generation, or
/// `sha256:<digest>` for a local file. 1 to 512 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorageVersion(String);

impl StorageVersion {
    /// Accepts 1 to 512 characters.
    pub fn parse(value: String) -> Result<Self, String> {
        let len = value.chars().count();
        if (1..=STORAGE_VERSION_MAX_LEN).contains(&len) {
            Ok(Self(value))
        } else {
            Err(format!(
                "must be 1 to {STORAGE_VERSION_MAX_LEN} characters, got {len}"
            ))
        }
    }

    /// The version of a local (content-addressed) object: `sha256:<digest>`.
    pub fn for_local_digest(digest: &Sha256Hex) -> Self {
        Self(format!("sha256:{digest}"))
    }
}
string_newtype!(StorageVersion);

/// A declared file-port key (1 to 255 characters), the only thing that selects a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortKey(String);

impl PortKey {
    /// Accepts 1 to 255 characters.
    pub fn parse(value: String) -> Result<Self, String> {
        let len = value.chars().count();
        if (1..=PORT_KEY_MAX_LEN).contains(&len) {
            Ok(Self(value))
        } else {
            Err(format!(
                "must be 1 to {PORT_KEY_MAX_LEN} characters, got {len}"
            ))
        }
    }
}
string_newtype!(PortKey);

/// A string that must not be empty (attempt ids, step-run ids, callback ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NonEmpty(String);

impl NonEmpty {
    /// Accepts any non-empty string.
    pub fn parse(value: String) -> Result<Self, String> {
        if value.is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(Self(value))
        }
    }
}
string_newtype!(NonEmpty);

impl fmt::Display for NonEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object-storage URI: `gs://bucket/object` or `file:///absolute/path`.
///
/// The contract types these fields as plain strings; Runway only ever reads and writes these two
/// schemes, so anything else is refused where it enters rather than failing at I/O time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorageUri(String);

impl StorageUri {
    /// Accepts `gs://<bucket>/<object>` (bucket and object non-empty) and `file:///<path>`.
    /// Neither may contain `..` segments, NUL or backslashes.
    pub fn parse(value: String) -> Result<Self, String> {
        let rest = if let Some(rest) = value.strip_prefix("gs://") {
            let (bucket, object) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || object.is_empty() {
                return Err(format!(
                    "a gs:// URI needs a bucket and an object name: {value:?}"
                ));
            }
            object
        } else if let Some(path) = value.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "a file:// URI needs an absolute path (file:///…): {value:?}"
                ));
            }
            path
        } else {
            return Err(format!(
                "must be a gs:// or file:// storage URI, got {value:?}"
            ));
        };
        if rest.contains(['\0', '\\']) || rest.split('/').any(|s| s == "..") {
            return Err(format!(
                "storage URI must not contain '..' segments, '\\' or NUL: {value:?}"
            ));
        }
        Ok(Self(value))
    }

    /// Whether this is a `gs://` URI.
    pub fn is_gcs(&self) -> bool {
        self.0.starts_with("gs://")
    }
}
string_newtype!(StorageUri);

impl fmt::Display for StorageUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The per-attempt callback secret: 43 to 512 characters of `[A-Za-z0-9_-]`.
///
/// Its `Debug` never shows the value, so a nonce cannot leak through a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallbackNonce(String);

impl CallbackNonce {
    /// Accepts 43 to 512 characters of `[A-Za-z0-9_-]`. The error never echoes the value.
    pub fn parse(value: String) -> Result<Self, String> {
        let len = value.len();
        if !(CALLBACK_NONCE_MIN_LEN..=CALLBACK_NONCE_MAX_LEN).contains(&len) {
            return Err(format!(
                "must be {CALLBACK_NONCE_MIN_LEN} to {CALLBACK_NONCE_MAX_LEN} characters, got {len}"
            ));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("must contain only the characters A-Z a-z 0-9 _ -".to_owned());
        }
        Ok(Self(value))
    }

    /// The public, domain-separated commitment to this nonce:
    /// lowercase hex `SHA-256("validibot-callback-nonce\0" + nonce)`.
    pub fn commitment(&self) -> Sha256Hex {
        commitment_of(&self.0)
    }
}
string_newtype!(CallbackNonce);

impl fmt::Debug for CallbackNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallbackNonce(<redacted>)")
    }
}

/// The commitment of any nonce string (used on raw JSON during canonicalization).
pub(crate) fn commitment_of(nonce: &str) -> Sha256Hex {
    let mut hasher = Sha256::new();
    hasher.update(CALLBACK_NONCE_DOMAIN_SEPARATOR);
    hasher.update(nonce.as_bytes());
    Sha256Hex::from_bytes(hasher.finalize().into())
}

/// An `http(s)` URL with a host, normalized the way pydantic's `HttpUrl` normalizes it (both
/// use the WHATWG URL algorithm: `http://h:8080` becomes `http://h:8080/`), so that the
/// canonical hash of an envelope is the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Accepts an absolute `http`/`https` URL with a host, up to 2083 characters.
    pub fn parse(value: String) -> Result<Self, String> {
        if value.len() > CALLBACK_URL_MAX_LEN {
            return Err(format!(
                "URL must be at most {CALLBACK_URL_MAX_LEN} characters"
            ));
        }
        let url = url::Url::parse(&value).map_err(|e| format!("invalid URL {value:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("URL scheme must be http or https: {value:?}"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("URL must have a host: {value:?}"));
        }
        Ok(Self(url.into()))
    }

    /// The URL's origin, `scheme://host[:port]` with no path: the ID-token audience that
    /// Validibot's images ask for by default.
    pub fn origin(&self) -> String {
        url::Url::parse(&self.0)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }
}
string_newtype!(HttpUrl);

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A non-negative float (`ge=0` in the Validibot models).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct NonNegative(f64);

impl NonNegative {
    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for NonNegative {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        if value >= 0.0 {
            Ok(Self(value))
        } else {
            Err(format!("must be zero or more, got {value}"))
        }
    }
}

impl From<NonNegative> for f64 {
    fn from(value: NonNegative) -> f64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        for ok in ["model.idf", "a b.fmu", "..x", "x..", "ünïcode.epw"] {
            assert!(SafeName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "/etc"] {
            assert!(SafeName::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn storage_uris() {
        for ok in ["gs://b/o", "gs://b/runs/x/input.json", "file:///tmp/x"] {
            assert!(StorageUri::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "gs://b",
            "gs:///o",
            "gs://b/",
            "file://tmp/x",
            "s3://b/o",
            "gs://b/../o",
            "file:///a/../b",
            "/tmp/x",
        ] {
            assert!(StorageUri::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nonce_commitment_known_value() {
        let nonce = CallbackNonce::try_from("a".repeat(43).as_str()).expect("valid nonce");
        // python3 -c 'import hashlib;print(hashlib.sha256(b"validibot-callback-nonce\0"+b"a"*43).hexdigest())'
        assert_eq!(
            nonce.commitment().as_str(),
            "8d537c1ff2e931661293f0490cf45851138ad84ea73b611c3fd75fe701c74b9d"
        );
        assert!(!format!("{nonce:?}").contains("aaaa"));
    }

    #[test]
    fn nonce_rules() {
        assert!(CallbackNonce::try_from("a".repeat(42).as_str()).is_err());
        assert!(CallbackNonce::try_from("a".repeat(513).as_str()).is_err());
        assert!(CallbackNonce::try_from(format!("{}+", "a".repeat(43)).as_str()).is_err());
        let err =
            CallbackNonce::try_from(format!("{}=", "s".repeat(50)).as_str()).expect_err("bad char");
        assert!(
            !err.contains("sss"),
            "error must not echo the secret: {err}"
        );
    }

    #[test]
    fn http_url_normalizes_like_pydantic() {
        let url = HttpUrl::try_from("http://127.0.0.1:8080").expect("valid");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(url.origin(), "http://127.0.0.1:8080");
        assert!(HttpUrl::try_from("ftp://x/").is_err());
        assert!(HttpUrl::try_from("http://").is_err());
    }
}
