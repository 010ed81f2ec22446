//! The local-mode issuer: signs Google-shaped ID tokens with an RSA key of its own.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ALGORITHM, install_crypto_provider};

/// Size of generated keys, and the smallest accepted when loading one.
const KEY_BITS: usize = 2048;
/// Shortest and longest accepted token lifetimes.
const MIN_LIFETIME: Duration = Duration::from_secs(60);
const MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What a [`LocalIssuer`] issues tokens as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIssuerConfig {
    /// The tokens' `iss`: the base URL under which the issuer's `/jwks.json` and
    /// `/.well-known/openid-configuration` are served (no trailing slash is kept).
    pub issuer: String,
    /// The service-account email the tokens are for (`email`, with `email_verified: true`): what
    /// the callback service's allow-list names.
    pub email: String,
    /// How long an issued token is valid: between 1 minute and 12 hours.
    pub lifetime: Duration,
}

impl Default for LocalIssuerConfig {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8082".to_owned(),
            email: "runway-local@runway.local".to_owned(),
            lifetime: Duration::from_secs(3600),
        }
    }
}

impl LocalIssuerConfig {
    fn validated(mut self) -> anyhow::Result<Self> {
        let trimmed = self.issuer.trim().trim_end_matches('/');
        let url = url::Url::parse(trimmed)
            .with_context(|| format!("the local issuer URL {:?} is not a URL", self.issuer))?;
        ensure!(
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.query().is_none()
                && url.fragment().is_none(),
            "the local issuer URL {:?} must be an http(s) URL without query or fragment",
            self.issuer
        );
        self.issuer = trimmed.to_owned();
        let email = self.email.trim();
        ensure!(
            email.len() > 2 && email.contains('@') && !email.contains(char::is_whitespace),
            "the local issuer's service-account email {:?} is not an email address",
            self.email
        );
        self.email = email.to_owned();
        ensure!(
            (MIN_LIFETIME..=MAX_LIFETIME).contains(&self.lifetime),
            "the local issuer's token lifetime must be between {} s and {} s, got {} s",
            MIN_LIFETIME.as_secs(),
            MAX_LIFETIME.as_secs(),
            self.lifetime.as_secs()
        );
        Ok(self)
    }
}

/// Signs ID tokens in local modes: `RS256`, a `kid` in the header, and the claims Google puts in a
/// service account's ID token. `Debug` never shows the private key.
#[derive(Clone)]
pub struct LocalIssuer {
    config: LocalIssuerConfig,
    signing_key: EncodingKey,
    kid: String,
    /// The public key's JWK members, base64url.
    n: String,
    e: String,
    /// The service account's stable numeric id, as Google gives (`sub`, `azp`).
    subject: String,
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.config.issuer)
            .field("email", &self.config.email)
            .field("lifetime", &self.config.lifetime)
            .field("kid", &self.kid)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    azp: &'a str,
    email: &'a str,
    email_verified: bool,
    iat: u64,
    exp: u64,
}

impl LocalIssuer {
    /// An issuer with a freshly generated 2048-bit key.
    pub fn generate(config: LocalIssuerConfig) -> anyhow::Result<Self> {
        let key = generate_key()?;
        Self::from_key(&key, config)
    }

    /// An issuer with the key in `pem` (unencrypted PKCS#8, `BEGIN PRIVATE KEY`).
    pub fn from_pkcs8_pem(pem: &str, config: LocalIssuerConfig) -> anyhow::Result<Self> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .context("the local issuer's key is not an unencrypted PKCS#8 RSA private key")?;
        Self::from_key(&key, config)
    }

    /// Loads the key stored at `path` (PKCS#8 PEM), or creates one there (mode 0600) if there is
    /// none: the local-mode default, so that tokens and cached keys survive a restart.
    pub fn load_or_create(path: &Path, config: LocalIssuerConfig) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pkcs8_pem(&pem, config)
                .with_context(|| format!("bad local issuer key in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = generate_key()?;
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .context("cannot encode the local issuer's key")?;
                match write_private_once(path, pem.as_bytes()) {
                    Ok(()) => Self::from_key(&key, config),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path, config)
                    }
                    Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
                }
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn from_key(key: &RsaPrivateKey, config: LocalIssuerConfig) -> anyhow::Result<Self> {
        install_crypto_provider();
        let config = config.validated()?;
        let public = RsaPublicKey::from(key);
        if public.size() * 8 < KEY_BITS {
            bail!(
                "the local issuer's RSA key has {} bits; at least {KEY_BITS} are required",
                public.size() * 8
            );
        }
        let der = key
            .to_pkcs1_der()
            .context("cannot encode the local issuer's key")?;
        let spki = public
            .to_public_key_der()
            .context("cannot encode the local issuer's public key")?;
        let digest = Sha256::digest(spki.as_bytes());
        let subject_digest = Sha256::digest(format!("runway-local-sub\0{}", config.email));
        let subject = u64::from_be_bytes(subject_digest[..8].try_into().expect("8 bytes"));
        Ok(Self {
            signing_key: EncodingKey::from_rsa_der(der.as_bytes()),
            kid: URL_SAFE_NO_PAD.encode(&digest[..16]),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            // Google's service-account ids are 21-digit numbers; ours has the same shape.
            subject: format!("1{subject:020}"),
            config,
        })
    }

    /// The tokens' `iss`.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The service-account email the tokens are for.
    pub fn email(&self) -> &str {
        &self.config.email
    }

    /// The signing key's id: base64url of the first 16 bytes of the SHA-256 of its public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Where [`metadata_router`](super::metadata_router) serves this issuer's JWKS.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks.json", self.config.issuer)
    }

    /// A signed ID token for `audience`, valid from now for the configured lifetime.
    pub fn issue(&self, audience: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = IssuedClaims {
            iss: &self.config.issuer,
            aud: audience,
            sub: &self.subject,
            azp: &self.subject,
            email: &self.config.email,
            email_verified: true,
            iat: now,
            exp: now + self.config.lifetime.as_secs(),
        };
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.kid.clone());
        // Serializing these claims cannot fail, and an RSA key that loaded signs any message.
        jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .expect("signing with a loaded RSA key does not fail")
    }

    /// The public key as a JWK Set: `{"keys": [{kty, n, e, kid, alg, use}]}`.
    pub fn jwks(&self) -> Value {
        json!({
            "keys": [{
                "kty": "RSA",
                "n": self.n,
                "e": self.e,
                "kid": self.kid,
                "alg": "RS256",
                "use": "sig",
            }]
        })
    }

    /// The OpenID Connect discovery document (the parts that apply to ID tokens).
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.config.issuer,
            "jwks_uri": self.jwks_uri(),
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
        })
    }
}

/// A new key, generated by AWS-LC (the library that verifies and signs the tokens; its prime
/// search is still most of a first local start, tens to a hundred milliseconds here).
fn generate_key() -> anyhow::Result<RsaPrivateKey> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    const _: () = assert!(KEY_BITS == 2048, "KEY_BITS names the AWS-LC key size below");
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("cannot generate the local issuer's RSA key"))?;
    let der: Pkcs8V1Der<'static> = pair
        .as_der()
        .map_err(|_| anyhow::anyhow!("cannot encode the local issuer's new RSA key"))?;
    RsaPrivateKey::from_pkcs8_der(der.as_ref())
        .context("cannot read back the local issuer's new RSA key")
}

/// Writes `bytes` to `path` readable by the owner only, all at once or not at all: a temporary
/// file is hard-linked into place, so a concurrent reader never sees half a key and a concurrent
/// writer gets `AlreadyExists`.
fn write_private_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let tmp_name = format!(
        ".{}.{}-{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        rand::random::<u64>()
    );
    let tmp = dir.map_or_else(|| tmp_name.clone().into(), |d| d.join(&tmp_name));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let ok = LocalIssuerConfig {
            issuer: "http://127.0.0.1:9/".to_owned(),
            ..LocalIssuerConfig::default()
        };
        assert_eq!(ok.validated().unwrap().issuer, "http://127.0.0.1:9");
        for bad in [
            LocalIssuerConfig {
                issuer: "ftp://x".to_owned(),
                ..LocalIssuerConfig::default()
            },
            LocalIssuerConfig {
                issuer: "http://x/?q".to_owned(),
                ..LocalIssuerConfig::default()
            },
            LocalIssuerConfig {
                email: "nobody".to_owned(),
                ..LocalIssuerConfig::default()
            },
            LocalIssuerConfig {
                lifetime: Duration::from_secs(59),
                ..LocalIssuerConfig::default()
            },
            LocalIssuerConfig {
                lifetime: Duration::from_secs(13 * 3600),
                ..LocalIssuerConfig::default()
            },
        ] {
            assert!(bad.clone().validated().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn debug_redacts_the_key_and_the_key_persists_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/issuer.pem");
        let first = LocalIssuer::load_or_create(&path, LocalIssuerConfig::default()).unwrap();
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let debug = format!("{first:?}");
        assert!(debug.contains("<redacted>") && !debug.contains("PRIVATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = LocalIssuer::load_or_create(&path, LocalIssuerConfig::default()).unwrap();
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.jwks(), again.jwks());
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn issued_claims_look_like_googles() {
        let issuer = LocalIssuer::generate(LocalIssuerConfig::default()).unwrap();
        let token = issuer.issue("http://127.0.0.1:8081");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(issuer.kid()));
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(claims["iss"], "http://127.0.0.1:8082");
        assert_eq!(claims["aud"], "http://127.0.0.1:8081");
        assert_eq!(claims["email"], "runway-local@runway.local");
        assert_eq!(claims["email_verified"], true);
        assert_eq!(claims["sub"], claims["azp"]);
        assert_eq!(claims["sub"].as_str().unwrap().len(), 21);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
        let jwk = &issuer.jwks()["keys"][0];
        assert_eq!(jwk["kid"], issuer.kid());
        assert_eq!(jwk["e"], "AQAB");
    }
}
