//! Who is calling the launcher's API, and what they may see.
//!
//! With `RUNWAY_API_AUTH=required` (production) every `/v1` request carries
//! `Authorization: Bearer …` with either
//! - an **API key** (`rwk_…`): scoped to one org — its caller creates runs only for that org and
//!   sees only that org's runs (another org's run is "not found"). Keys are created and revoked
//!   with `runway api-key`; only their SHA-256 is stored, and a revoked key is refused; or
//! - a **Google ID token** of an allow-listed service account (the web app on Cloud Run),
//!   verified like callbacks are (issuer, JWKS, audience, email): a trusted service, which acts
//!   for any org.
//!
//! `open` (the default, for local modes) asks for nothing; the launcher then refuses to listen
//! on anything but a loopback address, and says at start-up that it runs open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use rand::RngCore;
use runway_identity::TokenVerifier;
use runway_runs::{ApiKey, ApiKeyId, NewApiKey, RunStore};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::api::ApiError;

/// How every API key begins.
pub const API_KEY_PREFIX: &str = "rwk_";
/// Characters of a key kept (with the prefix) to tell keys apart in listings.
const SHOWN_CHARS: usize = 8;

/// Whether the API asks callers who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// No credentials asked for (local modes; loopback only).
    #[default]
    Open,
    /// An API key or an allow-listed Google ID token on every `/v1` request.
    Required,
}

/// How the API authenticates its callers.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    /// Open or required.
    pub mode: AuthMode,
    /// Verifies the ID tokens of trusted services; `None` accepts API keys only.
    pub verifier: Option<Arc<TokenVerifier>>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody asked (open mode).
    Open,
    /// An API key of this org.
    Org {
        /// The key's org.
        org: String,
    },
    /// A trusted service, by its verified service-account email.
    Service {
        /// Its email.
        email: String,
    },
}

impl Caller {
    /// Whether this caller may see (and cancel) the runs of `org`.
    pub fn may_see(&self, org: &str) -> bool {
        match self {
            Self::Org { org: own } => own == org,
            Self::Open | Self::Service { .. } => true,
        }
    }

    /// Refuses, with a sentence, a caller that may not create runs for `org`.
    pub fn check_org(&self, org: &str) -> Result<(), ApiError> {
        match self {
            Self::Org { org: own } if own != org => Err(ApiError::Forbidden {
                code: "wrong_org",
                message: format!(
                    "this API key belongs to org {own:?}; it cannot act for org {org:?}"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The only org this caller sees, if it is limited to one.
    pub fn org(&self) -> Option<&str> {
        match self {
            Self::Org { org } => Some(org),
            Self::Open | Self::Service { .. } => None,
        }
    }
}

/// SHA-256 (hex) of an API key's secret: what the store keeps.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates an API key for `org`; returns it and its secret, which is shown only now.
pub async fn create_api_key(
    store: &dyn RunStore,
    org: &str,
    name: &str,
) -> anyhow::Result<(ApiKey, String)> {
    anyhow::ensure!(
        crate::registry::is_valid_id(org),
        "{org:?} is not an org id (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')"
    );
    anyhow::ensure!(
        !name.trim().is_empty() && name.len() <= 200,
        "an API key needs a name of 1 to 200 characters (what it is for)"
    );
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let key = store
        .create_api_key(&NewApiKey {
            id: ApiKeyId::new(),
            org_id: org.to_owned(),
            name: name.trim().to_owned(),
            prefix: secret[..API_KEY_PREFIX.len() + SHOWN_CHARS].to_owned(),
            secret_sha256: secret_sha256(&secret),
            created_at: Utc::now(),
        })
        .await?;
    Ok((key, secret))
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Unauthorized {
        code,
        message: message.into(),
    }
}

/// Finds out who is calling and puts a [`Caller`] in the request's extensions; refuses (401)
/// a request without usable credentials when authentication is required.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // The header is copied out: a request (its body) may not be held across an await.
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match identify(&state, &authorization).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// Who sends the `Authorization` header `header` (`Open` when nothing is asked).
pub(crate) async fn identify(state: &AppState, header: &str) -> Result<Caller, ApiError> {
    if state.auth.mode == AuthMode::Open {
        return Ok(Caller::Open);
    }
    let token = header
        .trim()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            unauthorized(
                "unauthenticated",
                "this launcher requires credentials: Authorization: Bearer <API key or Google ID token>",
            )
        })?;
    identify_token(state, token).await
}

/// Who holds the bearer credential `token` (an API key or an ID token) when authentication
/// is required; the dashboard's session cookie is checked here too, as its header would be.
pub(crate) async fn identify_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let auth = &state.auth;
    if token.starts_with(API_KEY_PREFIX) {
        let key = state
            .deps
            .store
            .api_key_by_secret(&secret_sha256(token))
            .await
            .map_err(|e| {
                ApiError::Internal(anyhow::Error::new(e).context("looking up an API key"))
            })?
            .ok_or_else(|| unauthorized("unknown_api_key", "the API key is not known"))?;
        if key.revoked_at.is_some() {
            return Err(unauthorized(
                "revoked_api_key",
                format!("the API key {} ({}) was revoked", key.prefix, key.name),
            ));
        }
        return Ok(Caller::Org { org: key.org_id });
    }
    let Some(verifier) = &auth.verifier else {
        return Err(unauthorized(
            "unknown_api_key",
            "the bearer token is not an API key (rwk_…), and this launcher accepts no ID tokens",
        ));
    };
    match verifier.verify_token(token).await {
        Ok(verified) => Ok(Caller::Service {
            email: verified.email,
        }),
        Err(e) if e.is_unavailable() => Err(ApiError::Internal(anyhow::anyhow!(
            "cannot verify an ID token now: {e}"
        ))),
        Err(e) => Err(unauthorized("bad_token", e.to_string())),
    }
}
