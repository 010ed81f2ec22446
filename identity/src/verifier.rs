//! Verifying a caller's ID token: signature against the issuer's JWKS (cached by `kid`), then
//! issuer, audience, times and the caller's email, strictly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{ALGORITHM, install_crypto_provider};

/// The `iss` of Google-signed ID tokens.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The other `iss` Google's documentation says its ID tokens may carry; trusting
/// [`GOOGLE_ISSUER`] trusts it too, with the same keys.
pub const GOOGLE_ISSUER_ALIAS: &str = "accounts.google.com";
/// Longest key-cache lifetime taken from a JWKS response's `Cache-Control: max-age`.
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Where Google publishes the keys that sign its ID tokens.
pub const GOOGLE_JWKS_URI: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY: Duration = Duration::from_secs(30);
/// The longest `exp − iat` accepted by default: Google's ID tokens live one hour.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long fetched keys are trusted before they are fetched again.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Least time between two fetches of one issuer's keys prompted by unknown `kid`s, so that a
/// flood of tokens with made-up `kid`s cannot make us hammer the issuer.
const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// Least time between two fetches after a failed one: short, so that a JWKS endpoint that was
/// briefly down (a local issuer starting after the callback service) is soon used again.
const FAILED_FETCH_COOLDOWN: Duration = Duration::from_secs(2);
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger tokens are refused unparsed; Google's are about 1 KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest excerpt of caller-controlled text quoted in an error.
const MAX_QUOTED: usize = 100;

/// An issuer whose tokens are accepted, and where its signing keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Its JWK Set URL.
    pub jwks_uri: String,
}

impl std::str::FromStr for TrustedIssuer {
    type Err = String;

    /// `ISSUER=JWKS_URI`, as the services' `…_TRUSTED_ISSUERS` settings spell one.
    fn from_str(pair: &str) -> Result<Self, Self::Err> {
        let (issuer, jwks_uri) = pair
            .split_once('=')
            .filter(|(issuer, jwks)| !issuer.trim().is_empty() && !jwks.trim().is_empty())
            .ok_or_else(|| format!("trusted issuer {pair:?} must be ISSUER=JWKS_URI"))?;
        Ok(Self {
            issuer: issuer.trim().to_owned(),
            jwks_uri: jwks_uri.trim().to_owned(),
        })
    }
}

impl TrustedIssuer {
    /// Google, the issuer of ID tokens on Cloud Run.
    pub fn google() -> Self {
        Self {
            issuer: GOOGLE_ISSUER.to_owned(),
            jwks_uri: GOOGLE_JWKS_URI.to_owned(),
        }
    }
}

/// What a [`TokenVerifier`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Issuers whose tokens are accepted (Google in production, the local issuer in local modes).
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// The exact `aud` required: the callback URL's origin, as containers ask for.
    pub audience: String,
    /// The callers' service-account emails; a token must carry one of them, verified.
    pub allowed_emails: Vec<String>,
}

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The issuer that signed it.
    pub issuer: String,
    /// The caller's service-account email (verified, and on the allow-list).
    pub email: String,
    /// The caller's stable id at the issuer.
    pub sub: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused. All mean 401 to the caller except [`TokenError::JwksUnavailable`],
/// which is ours (503): see [`TokenError::is_unavailable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer <token>` header.
    #[error("missing bearer token: expected an `Authorization: Bearer <ID token>` header")]
    MissingBearer,
    /// Not a well-formed JWT, or a claim is missing or has the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with something other than RS256 (including `none` and HMAC).
    #[error("unsupported token algorithm {0:?}: only RS256 is accepted")]
    UnsupportedAlgorithm(String),
    /// The `iss` is not a trusted issuer.
    #[error("untrusted token issuer {0:?}")]
    UnknownIssuer(String),
    /// The issuer publishes no key with the token's `kid`.
    #[error("unknown signing key {kid:?} for issuer {issuer:?}")]
    UnknownKid {
        /// The token's issuer.
        issuer: String,
        /// The token's key id.
        kid: String,
    },
    /// The signature does not match the issuer's key.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `iat` (or `nbf`) is in the future.
    #[error("token not valid yet (issued in the future)")]
    NotYetValid,
    /// `exp − iat` is longer than tokens of this service may live.
    #[error("token lifetime is over the {max_seconds} s allowed")]
    LifetimeTooLong {
        /// The longest lifetime accepted, in seconds.
        max_seconds: u64,
    },
    /// `aud` is not exactly the expected audience.
    #[error("wrong token audience: expected {expected:?}")]
    WrongAudience {
        /// The audience this service requires.
        expected: String,
    },
    /// No `email` claim.
    #[error("token has no email claim")]
    MissingEmail,
    /// `email` is not on the allow-list.
    #[error("caller {0:?} is not allowed")]
    EmailNotAllowed(String),
    /// `email_verified` is not `true`.
    #[error("caller email {0:?} is not verified")]
    EmailNotVerified(String),
    /// The issuer's keys could not be fetched: our problem (or the issuer's), not the caller's.
    #[error("signing keys of issuer {issuer:?} are unavailable: {reason}")]
    JwksUnavailable {
        /// The issuer whose keys are needed.
        issuer: String,
        /// What went wrong fetching them.
        reason: String,
    },
}

impl TokenError {
    /// Whether the caller may succeed by retrying the same token later (the keys could not be
    /// fetched: 503 rather than 401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::JwksUnavailable { .. })
    }

    /// A short, fixed name for why the token was refused (a metric label; never the token's
    /// content).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingBearer => "missing_bearer",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::LifetimeTooLong { .. } => "lifetime_too_long",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::MissingEmail => "missing_email",
            Self::EmailNotAllowed(_) => "email_not_allowed",
            Self::EmailNotVerified(_) => "email_not_verified",
            Self::JwksUnavailable { .. } => "jwks_unavailable",
        }
    }

    /// Every [`reason`](Self::reason) of a refused token (the caller's fault, so not
    /// `jwks_unavailable`).
    pub const REFUSAL_REASONS: [&'static str; 13] = [
        "missing_bearer",
        "malformed",
        "unsupported_algorithm",
        "unknown_issuer",
        "unknown_kid",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "lifetime_too_long",
        "wrong_audience",
        "missing_email",
        "email_not_allowed",
        "email_not_verified",
    ];
}

/// Verifies ID tokens from trusted issuers. Cheap to clone (clones share the key cache) and safe
/// to use from many tasks at once.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    audience: String,
    allowed_emails: HashSet<String>,
    issuers: HashMap<String, Arc<IssuerKeys>>,
    client: reqwest::Client,
    cache_ttl: Duration,
    refresh_cooldown: Duration,
    max_lifetime: Duration,
}

/// One issuer's cached keys. Lookups take the read lock only; fetches are serialized by
/// `fetching`, so concurrent misses cause one fetch, not one each.
#[derive(Debug)]
struct IssuerKeys {
    jwks_uri: String,
    cache: RwLock<KeyCache>,
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
    /// How long the last fetched keys may be used, from the response's `Cache-Control:
    /// max-age`; `None` for the verifier's default.
    ttl: Option<Duration>,
    last_attempt: Option<Instant>,
    last_attempt_failed: bool,
}

/// What the cache has for a `kid`.
enum Lookup {
    Fresh(Arc<DecodingKey>),
    Stale(Arc<DecodingKey>),
    Missing,
}

impl KeyCache {
    fn lookup(&self, kid: &str, default_ttl: Duration) -> Lookup {
        let ttl = self.ttl.unwrap_or(default_ttl);
        match self.keys.get(kid) {
            Some(key) if self.fetched_at.is_some_and(|t| t.elapsed() < ttl) => {
                Lookup::Fresh(key.clone())
            }
            Some(key) => Lookup::Stale(key.clone()),
            None => Lookup::Missing,
        }
    }

    fn may_fetch(&self, cooldown: Duration) -> bool {
        let cooldown = if self.last_attempt_failed {
            cooldown.min(FAILED_FETCH_COOLDOWN)
        } else {
            cooldown
        };
        self.last_attempt.is_none_or(|t| t.elapsed() >= cooldown)
    }
}

/// The claims this verifier reads; `jsonwebtoken` checks `exp`, `nbf`, `iss` and `aud` too.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    aud: Value,
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Value>,
}

impl TokenVerifier {
    /// A verifier for `config`. Fails on an empty audience, allow-list or issuer list, or an
    /// issuer listed twice.
    pub fn new(config: VerifierConfig) -> anyhow::Result<Self> {
        install_crypto_provider();
        anyhow::ensure!(
            !config.audience.trim().is_empty(),
            "the token audience must not be empty"
        );
        let allowed_emails: HashSet<String> = config
            .allowed_emails
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        anyhow::ensure!(
            !allowed_emails.is_empty(),
            "the list of allowed caller emails must not be empty"
        );
        anyhow::ensure!(
            !config.trusted_issuers.is_empty(),
            "at least one trusted token issuer is required"
        );
        let mut issuers = HashMap::new();
        for trusted in config.trusted_issuers {
            url::Url::parse(&trusted.jwks_uri).map_err(|e| {
                anyhow::anyhow!(
                    "the JWKS URL {:?} of issuer {:?} is not a URL: {e}",
                    trusted.jwks_uri,
                    trusted.issuer
                )
            })?;
            let keys = Arc::new(IssuerKeys {
                jwks_uri: trusted.jwks_uri,
                cache: RwLock::default(),
                fetching: tokio::sync::Mutex::default(),
            });
            let mut names = vec![trusted.issuer.clone()];
            if trusted.issuer == GOOGLE_ISSUER {
                names.push(GOOGLE_ISSUER_ALIAS.to_owned());
            }
            for name in names {
                if issuers.insert(name.clone(), keys.clone()).is_some() {
                    anyhow::bail!("token issuer {name:?} is listed twice");
                }
            }
        }
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                audience: config.audience,
                allowed_emails,
                issuers,
                client,
                cache_ttl: DEFAULT_CACHE_TTL,
                refresh_cooldown: DEFAULT_REFRESH_COOLDOWN,
                max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            }),
        })
    }

    /// Sets how long fetched keys are used before being fetched again when the JWKS response
    /// carries no `Cache-Control: max-age` (default 1 h). Call before cloning.
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.cache_ttl = ttl;
        }
        self
    }

    /// Sets the least time between two fetches of an issuer's keys prompted by an unknown `kid`
    /// (default 30 s). Call before cloning.
    pub fn with_refresh_cooldown(mut self, cooldown: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.refresh_cooldown = cooldown;
        }
        self
    }

    /// Sets the longest `exp − iat` accepted (default one hour, as Google's ID tokens live).
    /// Call before cloning.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_lifetime = max;
        }
        self
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// Verifies the token in an `Authorization` header's value (`Bearer <token>`; the scheme is
    /// case-insensitive). An empty value stands for a missing header.
    pub async fn verify(&self, authorization: &str) -> Result<VerifiedToken, TokenError> {
        let token = authorization
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(TokenError::MissingBearer)?;
        self.verify_token(token).await
    }

    /// Verifies a bare token (a JWT).
    pub async fn verify_token(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let Unverified { kid, iss } = read_unverified(token)?;
        let unverified = UnverifiedIssuer { iss };
        let (issuer, keys) = self
            .inner
            .issuers
            .get_key_value(&unverified.iss)
            .ok_or_else(|| TokenError::UnknownIssuer(excerpt(&unverified.iss)))?;
        let key = self.key(issuer, keys, &kid).await?;
        self.validate(token, issuer, &key)
    }

    fn validate(
        &self,
        token: &str,
        issuer: &str,
        key: &DecodingKey,
    ) -> Result<VerifiedToken, TokenError> {
        let mut validation = Validation::new(ALGORITHM);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[&self.inner.audience]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| self.map_jwt_error(e.into_kind()))?
            .claims;
        // `jsonwebtoken` accepts an `aud` list containing the audience; Google's is one string.
        if claims.aud.as_str() != Some(self.inner.audience.as_str()) {
            return Err(self.wrong_audience());
        }
        debug_assert_eq!(claims.iss, issuer);
        if claims.iat > now_secs() + LEEWAY.as_secs() {
            return Err(TokenError::NotYetValid);
        }
        // A correctly signed token that lives for years is a leaked key's best friend.
        if claims.exp.saturating_sub(claims.iat) > self.inner.max_lifetime.as_secs() {
            return Err(TokenError::LifetimeTooLong {
                max_seconds: self.inner.max_lifetime.as_secs(),
            });
        }
        let email = claims.email.ok_or(TokenError::MissingEmail)?;
        if !self.inner.allowed_emails.contains(&email) {
            return Err(TokenError::EmailNotAllowed(excerpt(&email)));
        }
        if claims.email_verified != Some(Value::Bool(true)) {
            return Err(TokenError::EmailNotVerified(email));
        }
        Ok(VerifiedToken {
            issuer: claims.iss,
            email,
            sub: claims.sub,
            exp: claims.exp,
        })
    }

    fn wrong_audience(&self) -> TokenError {
        TokenError::WrongAudience {
            expected: self.inner.audience.clone(),
        }
    }

    fn map_jwt_error(&self, kind: ErrorKind) -> TokenError {
        match kind {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => self.wrong_audience(),
            ErrorKind::InvalidIssuer => TokenError::UnknownIssuer(String::new()),
            ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                TokenError::UnsupportedAlgorithm(String::new())
            }
            ErrorKind::MissingRequiredClaim(claim) => {
                TokenError::Malformed(format!("no {claim} claim"))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                TokenError::Malformed(format!("bad {claim} claim"))
            }
            ErrorKind::Json(e) => TokenError::Malformed(format!("claims: {e}")),
            other => TokenError::Malformed(format!("{other:?}")),
        }
    }

    /// The key `kid` of `issuer`, from the cache or (re)fetched, within the refresh cool-down.
    async fn key(
        &self,
        issuer: &str,
        keys: &IssuerKeys,
        kid: &str,
    ) -> Result<Arc<DecodingKey>, TokenError> {
        let ttl = self.inner.cache_ttl;
        if let Lookup::Fresh(key) = read(&keys.cache).lookup(kid, ttl) {
            return Ok(key);
        }
        let _fetching = keys.fetching.lock().await;
        // Another task may have fetched while this one waited.
        let (cached, may_fetch, has_keys, failed) = {
            let cache = read(&keys.cache);
            (
                cache.lookup(kid, ttl),
                cache.may_fetch(self.inner.refresh_cooldown),
                !cache.keys.is_empty(),
                cache.last_attempt_failed,
            )
        };
        let unknown_kid = || TokenError::UnknownKid {
            issuer: issuer.to_owned(),
            kid: excerpt(kid),
        };
        match cached {
            Lookup::Fresh(key) => return Ok(key),
            Lookup::Stale(key) if !may_fetch => return Ok(key),
            Lookup::Missing if !may_fetch => {
                return Err(if has_keys && !failed {
                    unknown_kid()
                } else {
                    TokenError::JwksUnavailable {
                        issuer: issuer.to_owned(),
                        reason: "the last fetch failed; retrying shortly".to_owned(),
                    }
                });
            }
            _ => {}
        }
        let fetched = self.fetch_jwks(&keys.jwks_uri).await;
        let mut cache = keys.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.last_attempt = Some(Instant::now());
        match fetched {
            Ok((fresh, ttl)) => {
                tracing::debug!(
                    issuer,
                    keys = fresh.len(),
                    ?ttl,
                    "fetched token signing keys"
                );
                cache.keys = fresh;
                cache.ttl = ttl;
                cache.fetched_at = cache.last_attempt;
                cache.last_attempt_failed = false;
                cache.keys.get(kid).cloned().ok_or_else(unknown_kid)
            }
            Err(reason) => {
                cache.last_attempt_failed = true;
                match cached {
                    // Keys rotate with days of overlap: a stale key beats refusing every caller
                    // while the issuer is unreachable.
                    Lookup::Stale(key) => {
                        tracing::warn!(issuer, %reason, "cannot refresh token signing keys; using the cached ones");
                        Ok(key)
                    }
                    _ => {
                        tracing::warn!(issuer, %reason, "cannot fetch token signing keys");
                        Err(TokenError::JwksUnavailable {
                            issuer: issuer.to_owned(),
                            reason,
                        })
                    }
                }
            }
        }
    }

    /// The keys at `uri`, and how long they may be cached if the response says.
    async fn fetch_jwks(&self, uri: &str) -> Result<(JwksKeys, Option<Duration>), String> {
        let response = self
            .inner
            .client
            .get(uri)
            .send()
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        let status = response.status();
        let ttl = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(cache_max_age);
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {uri}: reading the body: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "GET {uri} answered {status}: {}",
                excerpt(&String::from_utf8_lossy(&body))
            ));
        }
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("GET {uri}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        parse_jwks(&body)
            .map(|keys| (keys, ttl))
            .map_err(|e| format!("GET {uri}: {e}"))
    }
}

#[derive(Deserialize)]
struct UnverifiedIssuer {
    iss: String,
}

/// What a token says of itself before its signature is checked: which key signed it and who
/// claims to have issued it. Never trust it; it only chooses the keys to check with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// The header's `kid`.
    pub kid: String,
    /// The claims' `iss`.
    pub iss: String,
}

/// Reads a token's header (RS256 with a `kid`, no critical extensions) and its `iss` without
/// checking anything else: the first step of [`TokenVerifier::verify_token`], public so that it
/// can be fuzzed on its own.
pub fn read_unverified(token: &str) -> Result<Unverified, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let kid = check_header(token)?;
    // The unverified `iss` is checked again, exactly, once the signature holds.
    let claims: UnverifiedIssuer = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| TokenError::Malformed(format!("unreadable claims: {e}")))?;
    Ok(Unverified {
        kid,
        iss: claims.iss,
    })
}

/// The RS256 signing keys of a JWK Set body, by `kid` (what a trusted issuer publishes); public
/// so that it can be fuzzed. Keys of other kinds are skipped.
pub fn read_jwks(body: &[u8]) -> Result<usize, String> {
    parse_jwks(body).map(|keys| keys.len())
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RsaJwk {
    kty: String,
    kid: String,
    n: String,
    e: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
}

/// The RS256 signing keys of a JWK Set, by `kid`. Other keys are skipped, not errors: an issuer
/// may publish keys of kinds we do not use.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<RsaJwk>(value) else {
            continue;
        };
        if jwk.kty != "RSA"
            || jwk.alg.as_deref().is_some_and(|alg| alg != "RS256")
            || jwk.use_.as_deref().is_some_and(|u| u != "sig")
        {
            continue;
        }
        match DecodingKey::from_rsa_components(&jwk.n, &jwk.e) {
            Ok(key) => {
                keys.insert(jwk.kid, Arc::new(key));
            }
            Err(e) => tracing::warn!(kid = %jwk.kid, error = %e, "skipping an unusable JWK"),
        }
    }
    Ok(keys)
}

/// Checks the unverified header: RS256 only, no extensions we would have to understand, and a
/// `kid`, which it returns.
fn check_header(token: &str) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not three dot-separated parts".to_owned(),
        ));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("header is not base64url".to_owned()))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|_| TokenError::Malformed("header is not a JSON object".to_owned()))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(Value::String(alg)) => return Err(TokenError::UnsupportedAlgorithm(excerpt(alg))),
        _ => return Err(TokenError::Malformed("header has no alg".to_owned())),
    }
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "header has critical extensions".to_owned(),
        ));
    }
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid.clone()),
        _ => Err(TokenError::Malformed("header has no kid".to_owned())),
    }
}

/// Keys by `kid`.
type JwksKeys = HashMap<String, Arc<DecodingKey>>;

/// The `max-age` of a `Cache-Control` value (capped at a day), unless it also says `no-store`
/// or `no-cache` (then zero: fetch again when next needed, within the cool-down).
fn cache_max_age(value: &str) -> Option<Duration> {
    let directives: Vec<String> = value
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if directives
        .iter()
        .any(|d| d == "no-store" || d == "no-cache")
    {
        return Some(Duration::ZERO);
    }
    directives.iter().find_map(|d| {
        let seconds: u64 = d.strip_prefix("max-age=")?.trim_matches('"').parse().ok()?;
        Some(Duration::from_secs(seconds).min(MAX_CACHE_TTL))
    })
}

fn read(cache: &RwLock<KeyCache>) -> std::sync::RwLockReadGuard<'_, KeyCache> {
    cache.read().unwrap_or_else(PoisonError::into_inner)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Caller-controlled text, shortened for an error message.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn token_with_header(header: Value) -> String {
        format!(
            "{}.{}.sig",
            b64(&header),
            b64(&serde_json::json!({"iss": "x"}))
        )
    }

    #[test]
    fn header_must_be_rs256_with_a_kid() {
        use serde_json::json;
        assert_eq!(
            check_header(&token_with_header(json!({"alg": "RS256", "kid": "k1"}))),
            Ok("k1".to_owned())
        );
        for alg in ["none", "HS256", "RS384", "ES256", "PS256"] {
            assert_eq!(
                check_header(&token_with_header(json!({"alg": alg, "kid": "k1"}))),
                Err(TokenError::UnsupportedAlgorithm(alg.to_owned()))
            );
        }
        for header in [
            json!({"kid": "k1"}),
            json!({"alg": "RS256"}),
            json!({"alg": "RS256", "kid": ""}),
            json!({"alg": "RS256", "kid": 7}),
            json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
            json!(["RS256"]),
        ] {
            assert!(
                matches!(
                    check_header(&token_with_header(header.clone())),
                    Err(TokenError::Malformed(_))
                ),
                "{header} was accepted"
            );
        }
        for garbage in ["", "a.b", "a.b.c.d", "!!!.b.c", "e30.b.c"] {
            assert!(matches!(
                check_header(garbage),
                Err(TokenError::Malformed(_))
            ));
        }
    }

    #[test]
    fn jwks_keeps_only_rs256_signing_keys() {
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": n, "e": "AQAB", "alg": "RS256", "use": "sig"},
            {"kty": "RSA", "kid": "b", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "c", "n": n, "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "d", "n": n, "e": "AQAB", "alg": "RS512"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": n, "e": "AQAB"},
        ]});
        let keys = parse_jwks(&serde_json::to_vec(&body).unwrap()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["a", "b"]);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn config_is_checked() {
        let good = VerifierConfig {
            trusted_issuers: vec![TrustedIssuer::google()],
            audience: "https://callback.example".to_owned(),
            allowed_emails: vec!["runner@p.iam.gserviceaccount.com".to_owned()],
        };
        assert!(TokenVerifier::new(good.clone()).is_ok());
        for bad in [
            VerifierConfig {
                audience: " ".to_owned(),
                ..good.clone()
            },
            VerifierConfig {
                allowed_emails: vec![String::new()],
                ..good.clone()
            },
            VerifierConfig {
                trusted_issuers: vec![],
                ..good.clone()
            },
            VerifierConfig {
                trusted_issuers: vec![TrustedIssuer::google(), TrustedIssuer::google()],
                ..good.clone()
            },
        ] {
            assert!(TokenVerifier::new(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_jwks_unavailable_is_a_server_side_error() {
        assert!(
            TokenError::JwksUnavailable {
                issuer: "i".to_owned(),
                reason: "r".to_owned()
            }
            .is_unavailable()
        );
        assert!(!TokenError::BadSignature.is_unavailable());
        assert!(!TokenError::MissingBearer.is_unavailable());
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("abc"), "abc");
        assert_eq!(excerpt(&"é".repeat(500)).chars().count(), MAX_QUOTED + 1);
    }
}
