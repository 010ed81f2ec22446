//! Per-attempt callback secrets.
//!
//! Each attempt's `callback_nonce` is `base64url(HMAC-SHA256(key, "runway-callback-nonce\0" +
//! attempt id))`: 43 characters of `[A-Za-z0-9_-]`, as the contract requires. Deriving it means
//! the raw nonce is never stored anywhere: the run store keeps only its public commitment
//! (`CallbackNonce::commitment`), the launcher re-derives the nonce when it writes the input
//! envelope (so a re-dispatch writes the same bytes), and the callback service compares the
//! commitment of what it receives with the stored one.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use runway_contract::{CallbackNonce, Sha256Hex};
use sha2::Sha256;

/// Shortest accepted key, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
const DOMAIN: &[u8] = b"runway-callback-nonce\0";

/// The launcher's secret for deriving callback nonces. `Debug` never shows it.
#[derive(Clone)]
pub struct NonceKey(Vec<u8>);

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

impl NonceKey {
    /// A key from raw bytes (at least [`MIN_KEY_BYTES`]).
    pub fn from_bytes(bytes: Vec<u8>) -> anyhow::Result<Self> {
        if bytes.len() < MIN_KEY_BYTES {
            bail!(
                "the callback nonce key must be at least {MIN_KEY_BYTES} bytes, got {}",
                bytes.len()
            );
        }
        Ok(Self(bytes))
    }

    /// A key from its base64url (or standard base64) text, as configured.
    pub fn from_base64(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
            .context("the callback nonce key is not base64")?;
        Self::from_bytes(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(bytes.to_vec())
    }

    /// Loads the key stored at `path`, or creates one there (mode 0600) if there is none: the
    /// local-mode default, so that nonces survive a restart of `runway dev`.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text)
                .with_context(|| format!("bad callback nonce key in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_private(path, &URL_SAFE_NO_PAD.encode(&key.0))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The nonce of `attempt_id`.
    pub fn nonce_for(&self, attempt_id: &str) -> CallbackNonce {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(DOMAIN);
        mac.update(attempt_id.as_bytes());
        let text = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        CallbackNonce::try_from(text).expect("43 base64url characters are a valid nonce")
    }

    /// The public commitment of `attempt_id`'s nonce: what the run store keeps.
    pub fn commitment_for(&self, attempt_id: &str) -> Sha256Hex {
        self.nonce_for(attempt_id).commitment()
    }
}

/// A new random callback id (what the contract's `callback_id` carries).
pub fn new_callback_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_valid_deterministic_and_key_bound() {
        let key = NonceKey::from_bytes(vec![7; 32]).expect("key");
        let a = key.nonce_for("attempt-a");
        assert_eq!(a.as_str().len(), 43);
        assert_eq!(key.nonce_for("attempt-a"), a);
        assert_ne!(key.nonce_for("attempt-b"), a);
        let other = NonceKey::from_bytes(vec![8; 32]).expect("key");
        assert_ne!(other.nonce_for("attempt-a"), a);
        assert_eq!(key.commitment_for("attempt-a"), a.commitment());
        assert!(!format!("{key:?}").contains('7'));
    }

    #[test]
    fn short_or_malformed_keys_are_refused() {
        assert!(NonceKey::from_bytes(vec![1; 31]).is_err());
        assert!(NonceKey::from_base64("not base64!").is_err());
        assert!(NonceKey::from_base64(&URL_SAFE_NO_PAD.encode([1u8; 16])).is_err());
    }

    #[test]
    fn load_or_create_persists_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nonce.key");
        let first = NonceKey::load_or_create(&path).expect("create");
        let second = NonceKey::load_or_create(&path).expect("load");
        assert_eq!(first.nonce_for("x"), second.nonce_for("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
