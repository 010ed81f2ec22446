//! Fakes of Google's token services and of GCS's authorization, for attempt-scoped tokens:
//!
//! - [`FakeGoogle`]: the metadata server's access-token route
//!   (`GET /computeMetadata/v1/instance/service-accounts/{account}/token`, `Metadata-Flavor:
//!   Google` required, `{access_token, expires_in, token_type}` as Google answers) and the
//!   Security Token Service's token exchange (`POST /v1/token`, form-encoded RFC 8693 with a
//!   Credential Access Boundary in `options`, answered `{access_token, issued_token_type,
//!   token_type, expires_in}` or OAuth's `{error, error_description}`). A downscoped token
//!   lives as long as the token it was exchanged for, as on Google's.
//! - [`GcsGate`]: a proxy in front of fake-gcs-server (which checks no credentials) that
//!   authorizes each request as GCS would: a bearer token must be one [`FakeGoogle`] issued and
//!   unexpired, and a downscoped token may only do what its boundary's rules allow —
//!   `roles/storage.objectViewer` (get, list) and `roles/storage.objectCreator` (create), each
//!   under its condition. Every decision is recorded for the tests to read.
//!
//! The fake STS understands the boundary conditions Runway writes — `resource.name.startsWith
//! ('…')` joined with `||` — and refuses any other CEL with `invalid_request`, where Google's
//! would evaluate it: a boundary the fake cannot read is a failed test, never a silently wider
//! token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const BUCKET_RESOURCE: &str = "//storage.googleapis.com/projects/_/buckets/";

/// What a GCS request needs permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `storage.objects.get` (metadata or media).
    Get,
    /// `storage.objects.list`.
    List,
    /// `storage.objects.create`.
    Create,
    /// `storage.objects.delete`.
    Delete,
    /// Anything else (buckets, IAM, compose…).
    Other,
}

#[derive(Debug, Clone)]
struct Rule {
    bucket: String,
    permissions: HashSet<Permission>,
    /// Object resource names (`projects/_/buckets/B/objects/…`) the rule covers by prefix.
    prefixes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    principal: String,
    expires_at: DateTime<Utc>,
    /// `None`: the principal's full access.
    boundary: Option<Vec<Rule>>,
}

#[derive(Debug, Default)]
struct Tokens {
    grants: HashMap<String, Grant>,
    exchanges: usize,
    /// Resumable upload sessions a downscoped token may continue.
    sessions: HashSet<(String, String)>,
    decisions: Vec<Decision>,
}

/// One authorization the gate made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The request's method.
    pub method: String,
    /// What it needed.
    pub permission: Permission,
    /// The object name (empty for a bucket-level request).
    pub object: String,
    /// Whether the token was a downscoped one.
    pub downscoped: bool,
    /// Whether it was let through.
    pub allowed: bool,
}

type Shared = Arc<Mutex<Tokens>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Tokens> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The metadata server's access tokens and the Security Token Service.
#[derive(Debug)]
pub struct FakeGoogle {
    endpoint: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGoogle {
    /// Serves access tokens for `principal` (the service the metadata server runs as) and the
    /// token exchange, on 127.0.0.1.
    pub async fn start(principal: &str) -> Self {
        let shared: Shared = Arc::default();
        let app = Router::new()
            .route(
                "/computeMetadata/v1/instance/service-accounts/{account}/token",
                get(access_token),
            )
            .route("/v1/token", post(exchange))
            .with_state((shared.clone(), principal.to_owned()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Google token services");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`: the metadata endpoint for the access-token source.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The STS token endpoint.
    pub fn sts_endpoint(&self) -> String {
        format!("{}/v1/token", self.endpoint)
    }

    /// How many tokens were exchanged.
    pub fn exchanges(&self) -> usize {
        lock(&self.shared).exchanges
    }

    /// Ends every token now (as if an hour had passed).
    pub fn expire_all(&self) {
        let past = Utc::now() - TimeDelta::seconds(1);
        for grant in lock(&self.shared).grants.values_mut() {
            grant.expires_at = past;
        }
    }

    /// A gate in front of `upstream` (fake-gcs-server) that accepts these tokens.
    pub async fn gate(&self, upstream: &str) -> GcsGate {
        GcsGate::start(upstream, self.shared.clone()).await
    }
}

async fn access_token(
    State((shared, principal)): State<(Shared, String)>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.\n",
        )
            .into_response();
    }
    if account != "default" && account != principal {
        return (StatusCode::NOT_FOUND, "No such service account.\n").into_response();
    }
    let token = format!("ya29.source-{}", uuid::Uuid::new_v4().simple());
    lock(&shared).grants.insert(
        token.clone(),
        Grant {
            principal,
            expires_at: Utc::now() + TimeDelta::seconds(3599),
            boundary: None,
        },
    );
    let mut response = axum::Json(json!({
        "access_token": token, "expires_in": 3599, "token_type": "Bearer",
    }))
    .into_response();
    response
        .headers_mut()
        .insert("metadata-flavor", HeaderValue::from_static("Google"));
    response
}

fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response()
}

async fn exchange(
    State((shared, _)): State<(Shared, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != TOKEN_EXCHANGE {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type",
        );
    }
    if field("subject_token_type") != ACCESS_TOKEN_TYPE
        || field("requested_token_type") != ACCESS_TOKEN_TYPE
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "subject_token_type and requested_token_type must be access tokens",
        );
    }
    let rules = match serde_json::from_str::<Value>(field("options"))
        .map_err(|e| e.to_string())
        .and_then(|options| parse_boundary(&options))
    {
        Ok(rules) => rules,
        Err(why) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let mut tokens = lock(&shared);
    let Some(source) = tokens.grants.get(field("subject_token")).cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown subject_token",
        );
    };
    let left = source.expires_at - Utc::now();
    if left <= TimeDelta::zero() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "subject_token expired",
        );
    }
    if source.boundary.is_some() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "a downscoped token cannot be exchanged again",
        );
    }
    let token = format!("ya29.downscoped-{}", uuid::Uuid::new_v4().simple());
    tokens.grants.insert(
        token.clone(),
        Grant {
            principal: source.principal,
            expires_at: source.expires_at,
            boundary: Some(rules),
        },
    );
    tokens.exchanges += 1;
    axum::Json(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": left.num_seconds(),
    }))
    .into_response()
}

fn parse_boundary(options: &Value) -> Result<Vec<Rule>, String> {
    let rules = options["accessBoundary"]["accessBoundaryRules"]
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or("options.accessBoundary.accessBoundaryRules must be a non-empty list")?;
    rules
        .iter()
        .map(|rule| {
            let bucket = rule["availableResource"]
                .as_str()
                .and_then(|r| r.strip_prefix(BUCKET_RESOURCE))
                .filter(|b| !b.is_empty() && !b.contains('/'))
                .ok_or("availableResource must be //storage.googleapis.com/projects/_/buckets/B")?;
            let mut permissions = HashSet::new();
            for p in rule["availablePermissions"]
                .as_array()
                .ok_or("availablePermissions must be a list")?
            {
                match p.as_str() {
                    Some("inRole:roles/storage.objectViewer") => {
                        permissions.extend([Permission::Get, Permission::List]);
                    }
                    Some("inRole:roles/storage.objectCreator") => {
                        permissions.insert(Permission::Create);
                    }
                    other => return Err(format!("this fake knows no permission {other:?}")),
                }
            }
            let expression = rule["availabilityCondition"]["expression"]
                .as_str()
                .ok_or("every rule here needs an availabilityCondition.expression")?;
            let prefixes = expression
                .split(" || ")
                .map(starts_with_literal)
                .collect::<Result<Vec<_>, _>>()?;
            let objects = format!("projects/_/buckets/{bucket}/objects/");
            if let Some(p) = prefixes.iter().find(|p| !p.starts_with(&objects)) {
                return Err(format!("condition prefix {p:?} is not in bucket {bucket}"));
            }
            Ok(Rule {
                bucket: bucket.to_owned(),
                permissions,
                prefixes,
            })
        })
        .collect()
}

/// `resource.name.startsWith('…')` → the literal, unescaped.
fn starts_with_literal(term: &str) -> Result<String, String> {
    let inner = term
        .trim()
        .strip_prefix("resource.name.startsWith('")
        .and_then(|t| t.strip_suffix("')"))
        .ok_or_else(|| {
            format!("this fake reads only resource.name.startsWith('…'), not {term:?}")
        })?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("a dangling escape")?),
            '\'' => return Err(format!("an unescaped quote in {term:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A proxy in front of fake-gcs-server that authorizes every request by its bearer token.
#[derive(Debug)]
pub struct GcsGate {
    endpoint: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for GcsGate {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct GateState {
    shared: Shared,
    upstream: String,
    own: String,
    http: reqwest::Client,
}

impl GcsGate {
    async fn start(upstream: &str, shared: Shared) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the GCS gate");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let state = GateState {
            shared: shared.clone(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            own: endpoint.clone(),
            http: reqwest::Client::new(),
        };
        let app = Router::new().fallback(gate).with_state(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            shared,
            server,
        }
    }

    /// The endpoint to give a GCS client.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every decision so far.
    pub fn decisions(&self) -> Vec<Decision> {
        lock(&self.shared).decisions.clone()
    }
}

/// What a request asks for: the permission, the bucket and the object (empty for a bucket),
/// and a resumable session id it continues.
fn classify(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> (Permission, String, String, Option<String>) {
    let decode = |s: &str| percent_decode(s);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["storage", "v1", "b", bucket, "o"]) => {
            (Permission::List, decode(bucket), String::new(), None)
        }
        ("GET", ["storage" | "download", "v1", "b", bucket, "o", object])
        | ("GET", ["download", "storage", "v1", "b", bucket, "o", object]) => {
            (Permission::Get, decode(bucket), decode(object), None)
        }
        ("DELETE", ["storage", "v1", "b", bucket, "o", object]) => {
            (Permission::Delete, decode(bucket), decode(object), None)
        }
        ("POST" | "PUT", ["upload", "storage", "v1", "b", bucket, "o"]) => {
            let session = query.get("upload_id").cloned();
            let name = query
                .get("name")
                .cloned()
                .or_else(|| upload_name(body))
                .unwrap_or_default();
            (Permission::Create, decode(bucket), name, session)
        }
        _ => (Permission::Other, String::new(), String::new(), None),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The object name in an upload's JSON metadata (a resumable start's body, or a multipart
/// body's first part).
fn upload_name(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find('{')?;
    let mut depth = 0usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let meta: Value = serde_json::from_str(&text[start..=start + i]).ok()?;
                    return meta["name"].as_str().map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    None
}

fn gcs_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"code": status.as_u16(), "message": message,
                          "errors": [{"message": message, "reason": "forbidden"}]}}),
        ),
    )
        .into_response()
}

async fn gate(State(state): State<GateState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 256 * 1024 * 1024).await else {
        return gcs_error(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let (permission, bucket, object, session) =
        classify(&parts.method, parts.uri.path(), &query, &body);
    let verdict = {
        let mut tokens = lock(&state.shared);
        let grant = token.as_ref().and_then(|t| tokens.grants.get(t)).cloned();
        let verdict = match &grant {
            None => Err((StatusCode::UNAUTHORIZED, "Invalid Credentials")),
            Some(g) if g.expires_at <= Utc::now() => {
                Err((StatusCode::UNAUTHORIZED, "Invalid Credentials (expired)"))
            }
            Some(Grant { boundary: None, .. }) => Ok(()),
            Some(Grant {
                boundary: Some(rules),
                ..
            }) => {
                let resource = format!("projects/_/buckets/{bucket}/objects/{object}");
                let continuing = session.as_ref().is_some_and(|s| {
                    tokens
                        .sessions
                        .contains(&(token.clone().unwrap_or_default(), s.clone()))
                });
                let allowed = continuing
                    || rules.iter().any(|r| {
                        r.bucket == bucket
                            && r.permissions.contains(&permission)
                            && !object.is_empty()
                            && r.prefixes.iter().any(|p| resource.starts_with(p.as_str()))
                    });
                if allowed {
                    Ok(())
                } else {
                    Err((
                        StatusCode::FORBIDDEN,
                        "the credential's access boundary does not allow this",
                    ))
                }
            }
        };
        tokens.decisions.push(Decision {
            method: parts.method.to_string(),
            permission,
            object: object.clone(),
            downscoped: grant.as_ref().is_some_and(|g| g.boundary.is_some()),
            allowed: verdict.is_ok(),
        });
        verdict
    };
    if let Err((status, message)) = verdict {
        return gcs_error(status, message);
    }
    // As on GCS, replacing an object needs `storage.objects.delete`, which no boundary here
    // grants: a downscoped token can create, never overwrite.
    let downscoped = token
        .as_ref()
        .and_then(|t| {
            lock(&state.shared)
                .grants
                .get(t)
                .map(|g| g.boundary.is_some())
        })
        .unwrap_or(false);
    if downscoped && permission == Permission::Create && session.is_none() {
        let escaped: String = url::form_urlencoded::byte_serialize(object.as_bytes()).collect();
        let exists = state
            .http
            .get(format!(
                "{}/storage/v1/b/{bucket}/o/{escaped}",
                state.upstream
            ))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if exists {
            if let Some(last) = lock(&state.shared).decisions.last_mut() {
                last.allowed = false;
            }
            return gcs_error(
                StatusCode::FORBIDDEN,
                "replacing an object needs storage.objects.delete, which this credential lacks",
            );
        }
    }
    let url = format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = state
        .http
        .request(parts.method.clone(), &url)
        .body(body.to_vec());
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::AUTHORIZATION {
            forward = forward.header(name, value);
        }
    }
    let upstream = match forward.send().await {
        Ok(r) => r,
        Err(e) => return gcs_error(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    // A resumable session continues through the gate, under the token that started it.
    if let Some(location) = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        if let (Some(token), Ok(url)) = (&token, url::Url::parse(&location))
            && let Some((_, id)) = url.query_pairs().find(|(k, _)| k == "upload_id")
        {
            lock(&state.shared)
                .sessions
                .insert((token.clone(), id.into_owned()));
        }
        let rewritten = location.replacen(&state.upstream, &state.own, 1);
        if let Ok(value) = HeaderValue::from_str(&rewritten) {
            headers.insert(header::LOCATION, value);
        }
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
