//! The one error of this crate: what was wrong with a document, and where.

use serde::de::DeserializeOwned;

use crate::canonical::CanonicalError;
use crate::shape::{ShapeError, ShapeLimits, check_shape};

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The document is larger than its limit; it was not parsed.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Which document.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The document nests too deeply or holds too many values; it was not parsed.
    #[error("{what} {reason}")]
    TooComplex {
        /// Which document.
        what: &'static str,
        /// Which limit it broke.
        reason: ShapeError,
    },
    /// A field held a bad value, a required field was missing, or an unknown one was present.
    #[error("{what}: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Invalid {
        /// Which document.
        what: &'static str,
        /// The path of the offending field (`context.callback_nonce`, `input_files[0].name`);
        /// empty for the document as a whole.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The document could not be canonicalized for hashing.
    #[error("{what}: {source}")]
    Canonical {
        /// Which document.
        what: &'static str,
        /// The cause.
        source: CanonicalError,
    },
}

impl ContractError {
    /// The path of the offending field, when one is known.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Invalid { path, .. } if !path.is_empty() => Some(path),
            _ => None,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            what,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Parses one JSON document of at most `limit` bytes, naming the path of any bad field.
pub(crate) fn parse_json<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit: usize,
) -> Result<T, ContractError> {
    if bytes.len() > limit {
        return Err(ContractError::TooLarge {
            what,
            size: bytes.len(),
            limit,
        });
    }
    match check_shape(bytes, ShapeLimits::DEFAULT) {
        Ok(()) => {}
        // Syntax errors are reported by the parse below, with the field's path.
        Err(ShapeError::Syntax(_)) => {}
        Err(reason) => return Err(ContractError::TooComplex { what, reason }),
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ContractError::invalid(what, path, strip_position(e.into_inner().to_string()))
    })?;
    de.end()
        .map_err(|e| ContractError::invalid(what, "", e.to_string()))?;
    Ok(value)
}

/// Parses a `serde_json::Value` into `T`, prefixing error paths with `prefix`.
pub(crate) fn from_value_at<T: DeserializeOwned>(
    what: &'static str,
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, ContractError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{inner}")
        };
        ContractError::invalid(what, path, e.into_inner().to_string())
    })
}

/// Parses JSON text into `T`, prefixing error paths with `prefix` (the text's place in a larger
/// document), without building an untyped tree first.
pub(crate) fn from_str_at<T: DeserializeOwned>(
    what: &'static str,
    prefix: &str,
    text: &str,
) -> Result<T, ContractError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{inner}")
        };
        ContractError::invalid(what, path, strip_position(e.into_inner().to_string()))
    })?;
    de.end()
        .map_err(|e| ContractError::invalid(what, prefix, e.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_position(message: String) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message,
    }
}
