//! Who is calling back, and with which secret: OIDC ID tokens (issued by Google in production and
//! by Runway itself in local modes, through the same code path) and per-attempt callback nonces.
//!
//! A job container asks a metadata server for an ID token whose audience is the callback URL's
//! origin, and sends it as `Authorization: Bearer <token>`; the callback service checks it against
//! the issuer's published keys. On Cloud Run both ends are Google's: the metadata server and the
//! `https://accounts.google.com` issuer. In local modes the launcher plays both parts:
//!
//! - [`LocalIssuer`] holds an RSA key and signs Google-shaped ID tokens (`RS256`, with a `kid`);
//! - [`metadata_router`] serves them the way the GCE metadata server does, so that standard
//!   clients (Python `google-auth`, Rust `google-cloud-auth`, our [`IdTokenFetcher`]) pointed at it
//!   with `GCE_METADATA_HOST` take their production path unchanged, and publishes the JWKS;
//! - [`TokenVerifier`] verifies a token against a list of trusted issuers, caching their keys by
//!   `kid` with a refresh cool-down, and checks audience and the caller's email allow-list.
//!
//! [`nonce`] derives each attempt's callback nonce from the launcher's key, so that only its
//! public commitment is ever stored.
//!
//! Without the default `issuer` feature the crate is [`IdTokenFetcher`] and [`nonce`] only: what
//! a job container (the validator-runner) needs.

mod fetcher;
#[cfg(feature = "issuer")]
mod issuer;
#[cfg(feature = "issuer")]
mod metadata;
pub mod nonce;
#[cfg(feature = "issuer")]
mod verifier;

pub use fetcher::{DEFAULT_METADATA_HOST, IdTokenFetcher, METADATA_HOST_ENV};
#[cfg(feature = "issuer")]
pub use issuer::{LocalIssuer, LocalIssuerConfig};
#[cfg(feature = "issuer")]
pub use metadata::metadata_router;
#[cfg(feature = "issuer")]
pub use verifier::{
    DEFAULT_MAX_TOKEN_LIFETIME, GOOGLE_ISSUER, GOOGLE_ISSUER_ALIAS, GOOGLE_JWKS_URI, TokenError,
    TokenVerifier, TrustedIssuer, Unverified, VerifiedToken, VerifierConfig, read_jwks,
    read_unverified,
};

/// The only signature algorithm issued or accepted.
#[cfg(feature = "issuer")]
const ALGORITHM: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::RS256;

/// Makes `jsonwebtoken` use AWS-LC (the same library rustls and `google-cloud-auth` use here).
/// `jsonwebtoken` picks a backend on its own only when exactly one backend feature is enabled in
/// the build, and a crate in the tree may enable the pure-Rust one too; installing explicitly
/// keeps signing and verifying from panicking in such a build. With the pure-Rust backend, RSA
/// was 2.5 % of all CPU samples in a profile of `runway bench`; with AWS-LC it is 0.3 %.
#[cfg(feature = "issuer")]
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is already installed, which is just as good.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}
