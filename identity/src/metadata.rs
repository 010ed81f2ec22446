//! The parts of the GCE metadata server that ID-token clients use, backed by a [`LocalIssuer`],
//! plus the issuer's JWKS and discovery document.
//!
//! Standard clients pointed here with `GCE_METADATA_HOST` (Python `google-auth` 2.x's
//! `fetch_id_token`, Rust `google-cloud-auth`, [`IdTokenFetcher`](super::IdTokenFetcher)) behave
//! as on Cloud Run: they ping `/`, read the default service account, then ask for an identity
//! token. As on Google's server, every metadata request must carry `Metadata-Flavor: Google` and
//! must not carry `X-Forwarded-For` (which is how a request relayed by a confused proxy looks),
//! and every response carries `Metadata-Flavor: Google`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::LocalIssuer;

const FLAVOR: HeaderName = HeaderName::from_static("metadata-flavor");
const GOOGLE: HeaderValue = HeaderValue::from_static("Google");
const SERVICE_ACCOUNTS: &str = "/computeMetadata/v1/instance/service-accounts";
/// The scope Cloud Run's default service account reports.
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The metadata-server routes and the JWKS routes for `issuer`:
///
/// - `GET /` (the ping clients send first);
/// - `GET /computeMetadata/v1/instance/service-accounts/default/?recursive=true` (JSON `email`,
///   `scopes`, `aliases`);
/// - `GET /computeMetadata/v1/instance/service-accounts/default/email` (text);
/// - `GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD&format=full`
///   (the ID token, as text; 400 without an audience);
/// - `GET /jwks.json` and `GET /.well-known/openid-configuration`, which need no header.
///
/// The service account may be named `default` or by its email, as on Google's server.
pub fn metadata_router(issuer: Arc<LocalIssuer>) -> Router {
    let account = format!("{SERVICE_ACCOUNTS}/{{account}}");
    let metadata = Router::new()
        .route("/", get(ping))
        .route("/computeMetadata/v1/", get(ping))
        .route(&format!("{account}/"), get(service_account))
        .route(&format!("{account}/email"), get(email))
        .route(&format!("{account}/identity"), get(identity))
        .route_layer(middleware::from_fn(require_flavor));
    let keys = Router::new().route("/jwks.json", get(jwks)).route(
        "/.well-known/openid-configuration",
        get(openid_configuration),
    );
    metadata
        .merge(keys)
        .with_state(issuer)
        .layer(middleware::from_fn(echo_flavor))
}

async fn require_flavor(request: Request, next: Next) -> Response {
    if request.headers().contains_key("x-forwarded-for") {
        return (
            StatusCode::FORBIDDEN,
            "Request had an X-Forwarded-For header: metadata requests are not accepted through a proxy.\n",
        )
            .into_response();
    }
    if request.headers().get(&FLAVOR) != Some(&GOOGLE) {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn echo_flavor(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(FLAVOR, GOOGLE);
    response
}

async fn ping() -> &'static str {
    "computeMetadata/\n"
}

/// A 404 unless `account` names the issuer's service account.
fn unknown_account(issuer: &LocalIssuer, account: &str) -> Option<Response> {
    (account != "default" && account != issuer.email()).then(|| {
        (
            StatusCode::NOT_FOUND,
            format!("No service account {account:?} on this instance.\n"),
        )
            .into_response()
    })
}

#[derive(Debug, Deserialize)]
struct DirectoryQuery {
    #[serde(default)]
    recursive: Option<String>,
}

async fn service_account(
    State(issuer): State<Arc<LocalIssuer>>,
    Path(account): Path<String>,
    Query(query): Query<DirectoryQuery>,
) -> Response {
    if let Some(response) = unknown_account(&issuer, &account) {
        return response;
    }
    if query.recursive.as_deref() == Some("true") {
        Json(json!({
            "aliases": ["default"],
            "email": issuer.email(),
            "scopes": [CLOUD_PLATFORM_SCOPE],
        }))
        .into_response()
    } else {
        "aliases\nemail\nidentity\nscopes\n".into_response()
    }
}

async fn email(State(issuer): State<Arc<LocalIssuer>>, Path(account): Path<String>) -> Response {
    if let Some(response) = unknown_account(&issuer, &account) {
        return response;
    }
    issuer.email().to_owned().into_response()
}

#[derive(Debug, Deserialize)]
struct IdentityQuery {
    #[serde(default)]
    audience: Option<String>,
}

async fn identity(
    State(issuer): State<Arc<LocalIssuer>>,
    Path(account): Path<String>,
    Query(query): Query<IdentityQuery>,
) -> Response {
    if let Some(response) = unknown_account(&issuer, &account) {
        return response;
    }
    let Some(audience) = query.audience.filter(|a| !a.trim().is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required\n",
        )
            .into_response();
    };
    tracing::debug!(audience = %audience, email = %issuer.email(), "issuing a local ID token");
    issuer.issue(&audience).into_response()
}

async fn jwks(State(issuer): State<Arc<LocalIssuer>>) -> Response {
    Json(issuer.jwks()).into_response()
}

async fn openid_configuration(State(issuer): State<Arc<LocalIssuer>>) -> Response {
    Json(issuer.openid_configuration()).into_response()
}
