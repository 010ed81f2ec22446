//! Attempt-scoped GCS authority: a short-lived access token downscoped with a Credential Access
//! Boundary, and the limits that travel with it.
//!
//! On Cloud Run a validator job does not use its runtime service account for the bucket. For
//! each attempt the launcher exchanges its own access token at Google's Security Token Service
//! for one that can only
//!
//! - **read** the run's input files (`runs/<org>/<run>/files/…`) and the attempt's own folder
//!   (`…/attempts/<attempt>/…`: `input.json`, and an `output.json` a re-run finds), and
//! - **create** objects in the attempt's folder (no delete, no overwrite: objects stay
//!   create-only even for a job that tries),
//!
//! and passes it in the job's environment under the names Validibot's images read ([`mod@env`]).
//! The runner checks every URI against [`Capability::allowed_prefix`] (the run's folder) before
//! any request leaves the process, and refuses to write outside the attempt's folder, so an
//! out-of-scope access fails with a sentence instead of an opaque 403.
//!
//! Input files live at the run level and are bound by sha256 in every envelope (see
//! [`crate::layout`]), so the boundary names the run's `files/` folder instead of copying the
//! inputs into each attempt as Validibot does; the allowed prefix is the run's folder, which
//! covers both, and Validibot's images (which check inputs and output against that one prefix)
//! accept it. Another attempt's folder of the same run is not readable.
//!
//! The token's lifetime is the source token's (at most an hour). A runner renews it through the
//! callback service's capability endpoint ([`env::REFRESH_URL`]), which re-checks the attempt
//! and its nonce and refuses an attempt that is already over.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::layout::AttemptPaths;
use crate::{ObjectKey, Scheme, StorageUri};

/// The environment variables a job receives (the names Validibot's images read).
pub mod env {
    /// `1`: the job must use the capability and fail closed without one.
    pub const REQUIRED: &str = "VALIDIBOT_GCS_CAPABILITY_REQUIRED";
    /// The downscoped bearer token. Never logged or stored.
    pub const ACCESS_TOKEN: &str = "VALIDIBOT_GCS_ACCESS_TOKEN";
    /// The token's expiry, RFC 3339 in UTC (`…Z`).
    pub const ACCESS_TOKEN_EXPIRY: &str = "VALIDIBOT_GCS_ACCESS_TOKEN_EXPIRY";
    /// The only `gs://` prefix the job may address, ending in `/`.
    pub const ALLOWED_PREFIX: &str = "VALIDIBOT_GCS_ALLOWED_PREFIX";
    /// The project the job's storage client is built for.
    pub const PROJECT_ID: &str = "VALIDIBOT_GCS_PROJECT_ID";
    /// Where the job renews its token (the callback service; authenticated like a callback).
    pub const REFRESH_URL: &str = "VALIDIBOT_GCS_CAPABILITY_REFRESH_URL";

    /// Every name, for code that must strip or check them together.
    pub const ALL: [&str; 6] = [
        REQUIRED,
        ACCESS_TOKEN,
        ACCESS_TOKEN_EXPIRY,
        ALLOWED_PREFIX,
        PROJECT_ID,
        REFRESH_URL,
    ];
}

/// The callback service's route that renews a job's token (beside `/v1/callbacks`).
pub const RENEWAL_PATH: &str = "/v1/gcs-token";
/// The Security Token Service endpoint tokens are exchanged at.
pub const GOOGLE_STS_ENDPOINT: &str = "https://sts.googleapis.com/v1/token";
/// A minted token must have at least this long left, or the mint fails (retryable): the job may
/// queue before it reads its input.
pub const MIN_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Why a capability could not be minted, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// Some of the variables are set and others are not, or the job requires a capability and
    /// has none.
    #[error("the attempt-scoped GCS capability is incomplete: {0}")]
    Incomplete(String),
    /// A variable is set to something unusable.
    #[error("{name} is not usable: {reason}")]
    Malformed {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A URI outside what the capability allows.
    #[error("{uri} is outside this attempt's allowed prefix {prefix}")]
    Outside {
        /// The URI asked for.
        uri: String,
        /// The prefix it must start with.
        prefix: String,
    },
    /// The scope cannot be expressed (storage that is not `gs://`).
    #[error("attempt-scoped GCS tokens need gs:// storage, not {0}")]
    NotGcs(String),
    /// The token exchange failed.
    #[error("the token exchange failed: {0}")]
    Exchange(String),
}

/// What one attempt may touch, as object-name prefixes in one bucket (each ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptScope {
    bucket: String,
    run_prefix: String,
    files_prefix: String,
    attempt_prefix: String,
}

impl AttemptScope {
    /// The scope of the attempt whose folder is `attempt` in the store based at `base`.
    pub fn new(base: &StorageUri, attempt: &AttemptPaths) -> Result<Self, CapabilityError> {
        if base.scheme() != Scheme::Gs {
            return Err(CapabilityError::NotGcs(base.to_string()));
        }
        let folder = |key: &ObjectKey| format!("{}/", base.object_name(key));
        Ok(Self {
            bucket: base.bucket().to_owned(),
            run_prefix: folder(&attempt.run_root()),
            files_prefix: folder(&attempt.run_files()),
            attempt_prefix: folder(attempt.root()),
        })
    }

    /// `gs://<bucket>/<…>runs/<org>/<run>/`: what the job may address at all.
    pub fn allowed_prefix(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.run_prefix)
    }

    /// `gs://<bucket>/<…>/attempts/<attempt>/`: the only place the job may create objects.
    pub fn attempt_prefix(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.attempt_prefix)
    }

    /// The Credential Access Boundary, as the Security Token Service reads it in `options`:
    /// view the run's files and the attempt's folder, create in the attempt's folder.
    pub fn access_boundary(&self) -> Value {
        let resource = format!(
            "//storage.googleapis.com/projects/_/buckets/{}",
            self.bucket
        );
        let object = |prefix: &str| {
            format!(
                "resource.name.startsWith({})",
                cel_string(&format!(
                    "projects/_/buckets/{}/objects/{prefix}",
                    self.bucket
                ))
            )
        };
        json!({
            "accessBoundary": {
                "accessBoundaryRules": [
                    {
                        "availableResource": resource,
                        "availablePermissions": ["inRole:roles/storage.objectViewer"],
                        "availabilityCondition": {
                            "title": "runway-attempt-read",
                            "expression": format!(
                                "{} || {}",
                                object(&self.files_prefix),
                                object(&self.attempt_prefix)
                            ),
                        },
                    },
                    {
                        "availableResource": resource,
                        "availablePermissions": ["inRole:roles/storage.objectCreator"],
                        "availabilityCondition": {
                            "title": "runway-attempt-create",
                            "expression": object(&self.attempt_prefix),
                        },
                    },
                ],
            },
        })
    }
}

/// A CEL string literal: single-quoted, with `\` and `'` escaped.
fn cel_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A bearer token that can be replaced while clients hold it (a renewal).
#[derive(Clone)]
pub struct AttemptToken {
    inner: Arc<RwLock<(String, DateTime<Utc>)>>,
}

impl AttemptToken {
    /// A token and its expiry.
    pub fn new(token: String, expires_at: DateTime<Utc>) -> Self {
        Self {
            inner: Arc::new(RwLock::new((token, expires_at))),
        }
    }

    /// The token now.
    pub fn secret(&self) -> String {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// When the token now expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Replaces the token (every client holding this handle sends the new one).
    pub fn replace(&self, token: String, expires_at: DateTime<Utc>) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = (token, expires_at);
    }
}

impl fmt::Debug for AttemptToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

/// One attempt's GCS authority: the token and the non-secret limits beside it.
#[derive(Debug, Clone)]
pub struct Capability {
    /// The downscoped token.
    pub token: AttemptToken,
    /// The only prefix the holder may address (`gs://…/`).
    pub allowed_prefix: String,
    /// The project a storage client is built for.
    pub project_id: String,
    /// Where the token is renewed, if it can be.
    pub refresh_url: Option<String>,
}

impl Capability {
    /// The job's environment for this capability (including the secret token).
    pub fn to_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            (env::REQUIRED.to_owned(), "1".to_owned()),
            (env::ACCESS_TOKEN.to_owned(), self.token.secret()),
            (
                env::ACCESS_TOKEN_EXPIRY.to_owned(),
                self.token
                    .expires_at()
                    .to_rfc3339_opts(SecondsFormat::Secs, true),
            ),
            (env::ALLOWED_PREFIX.to_owned(), self.allowed_prefix.clone()),
            (env::PROJECT_ID.to_owned(), self.project_id.clone()),
        ]);
        if let Some(url) = &self.refresh_url {
            env.insert(env::REFRESH_URL.to_owned(), url.clone());
        }
        env
    }

    /// Reads a capability from the environment `lookup` gives (empty values count as unset):
    /// `None` when none is set and none is required; an error when one is incomplete or
    /// malformed, or required and missing.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, CapabilityError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let required = get(env::REQUIRED).is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let token = get(env::ACCESS_TOKEN);
        let expiry = get(env::ACCESS_TOKEN_EXPIRY);
        let prefix = get(env::ALLOWED_PREFIX);
        let project = get(env::PROJECT_ID);
        let refresh_url = get(env::REFRESH_URL);
        let (token, expiry, prefix, project) = match (token, expiry, prefix, project) {
            (None, None, None, None) if refresh_url.is_none() && !required => return Ok(None),
            (Some(t), Some(e), Some(p), Some(j)) => (t, e, p, j),
            (t, e, p, j) => {
                let missing: Vec<&str> = [
                    (env::ACCESS_TOKEN, t.is_none()),
                    (env::ACCESS_TOKEN_EXPIRY, e.is_none()),
                    (env::ALLOWED_PREFIX, p.is_none()),
                    (env::PROJECT_ID, j.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect();
                return Err(CapabilityError::Incomplete(format!(
                    "{} not set",
                    missing.join(", ")
                )));
            }
        };
        let expires_at = DateTime::parse_from_rfc3339(&expiry)
            .map_err(|e| CapabilityError::Malformed {
                name: env::ACCESS_TOKEN_EXPIRY,
                reason: format!("not an RFC 3339 time ({e})"),
            })?
            .with_timezone(&Utc);
        let bucket_and_path = prefix.strip_prefix("gs://").unwrap_or_default();
        if !prefix.ends_with('/') || bucket_and_path.split('/').next().unwrap_or("").is_empty() {
            return Err(CapabilityError::Malformed {
                name: env::ALLOWED_PREFIX,
                reason: "it must be a gs://bucket/… URI ending in '/'".to_owned(),
            });
        }
        if let Some(url) = &refresh_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(CapabilityError::Malformed {
                name: env::REFRESH_URL,
                reason: "it must be an http(s) URL".to_owned(),
            });
        }
        Ok(Some(Self {
            token: AttemptToken::new(token, expires_at),
            allowed_prefix: prefix,
            project_id: project,
            refresh_url,
        }))
    }

    /// Refuses `uri` unless it lies under the allowed prefix.
    pub fn check(&self, uri: &str) -> Result<(), CapabilityError> {
        check_under(uri, &self.allowed_prefix)
    }
}

/// Refuses `uri` unless it starts with `prefix` (which ends in `/`) and has no `..` or empty
/// segment after it that could walk out of it.
pub fn check_under(uri: &str, prefix: &str) -> Result<(), CapabilityError> {
    let outside = || CapabilityError::Outside {
        uri: uri.to_owned(),
        prefix: prefix.to_owned(),
    };
    let rest = uri.strip_prefix(prefix).ok_or_else(outside)?;
    if rest
        .split('/')
        .any(|s| s == ".." || s == "." || s.is_empty())
    {
        return Err(outside());
    }
    Ok(())
}

#[cfg(feature = "gcs")]
pub use mint::{Minter, MinterSettings};

#[cfg(feature = "gcs")]
mod mint {
    use std::time::Duration;

    use chrono::{TimeDelta, Utc};
    use google_cloud_auth::credentials::AccessTokenCredentials;
    use serde_json::Value;

    use super::{AttemptScope, AttemptToken, CapabilityError, MIN_LIFETIME};

    const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// What a token is taken to last when the exchange does not say (Google's does).
    const ASSUMED_LIFETIME: TimeDelta = TimeDelta::minutes(10);

    /// How the launcher reaches the token services.
    #[derive(Debug, Clone)]
    pub struct MinterSettings {
        /// The Security Token Service's token endpoint.
        pub sts_endpoint: String,
        /// A metadata server to take the launcher's own access token from (`http://host:port`);
        /// `None` for Application Default Credentials.
        pub metadata_endpoint: Option<String>,
        /// How long one exchange may take.
        pub timeout: Duration,
    }

    impl Default for MinterSettings {
        fn default() -> Self {
            Self {
                sts_endpoint: super::GOOGLE_STS_ENDPOINT.to_owned(),
                metadata_endpoint: None,
                timeout: Duration::from_secs(30),
            }
        }
    }

    /// Mints attempt-scoped tokens from this service's own credentials (the launcher's at
    /// dispatch, the callback service's on renewal).
    #[derive(Debug)]
    pub struct Minter {
        source: AccessTokenCredentials,
        http: reqwest::Client,
        sts_endpoint: String,
    }

    impl Minter {
        /// Builds the source credentials and the HTTP client; makes no request.
        pub fn new(settings: &MinterSettings) -> Result<Self, CapabilityError> {
            let build = |e: &dyn std::fmt::Display| {
                CapabilityError::Exchange(format!("cannot build the launcher's credentials: {e}"))
            };
            let source = match &settings.metadata_endpoint {
                Some(endpoint) => google_cloud_auth::credentials::mds::Builder::default()
                    .with_endpoint(endpoint.clone())
                    .build_access_token_credentials()
                    .map_err(|e| build(&e))?,
                None => google_cloud_auth::credentials::Builder::default()
                    .build_access_token_credentials()
                    .map_err(|e| build(&e))?,
            };
            let http = reqwest::Client::builder()
                .timeout(settings.timeout)
                .build()
                .map_err(|e| build(&e))?;
            Ok(Self {
                source,
                http,
                sts_endpoint: settings.sts_endpoint.clone(),
            })
        }

        /// Exchanges this service's own access token for one limited to `scope`.
        pub async fn mint(&self, scope: &AttemptScope) -> Result<AttemptToken, CapabilityError> {
            let exchange = |what: String| CapabilityError::Exchange(what);
            let source = self
                .source
                .access_token()
                .await
                .map_err(|e| exchange(format!("no access token of the launcher's own: {e}")))?;
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", GRANT_TYPE)
                .append_pair("subject_token_type", ACCESS_TOKEN_TYPE)
                .append_pair("requested_token_type", ACCESS_TOKEN_TYPE)
                .append_pair("subject_token", &source.token)
                .append_pair("options", &scope.access_boundary().to_string())
                .finish();
            let response = self
                .http
                .post(&self.sts_endpoint)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send()
                .await
                .map_err(|e| exchange(format!("{}: {e}", self.sts_endpoint)))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| exchange(format!("{}: {e}", self.sts_endpoint)))?;
            if !status.is_success() {
                // The error body is OAuth's {error, error_description}; it carries no token.
                return Err(exchange(format!(
                    "{} answered {status}: {}",
                    self.sts_endpoint,
                    text.chars().take(500).collect::<String>()
                )));
            }
            let answer: Value = serde_json::from_str(&text)
                .map_err(|e| exchange(format!("the answer is not JSON: {e}")))?;
            let token = answer
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| exchange("the answer has no access_token".to_owned()))?;
            let lifetime = answer
                .get("expires_in")
                .and_then(Value::as_i64)
                .map_or(ASSUMED_LIFETIME, TimeDelta::seconds);
            if lifetime < MIN_LIFETIME {
                return Err(exchange(format!(
                    "the token lasts {}s, less than the {}s a job needs to start",
                    lifetime.num_seconds(),
                    MIN_LIFETIME.num_seconds()
                )));
            }
            Ok(AttemptToken::new(token.to_owned(), Utc::now() + lifetime))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn scope() -> (AttemptScope, String, String) {
        let run = Uuid::now_v7();
        let attempt = Uuid::now_v7();
        let paths = crate::layout::RunPaths::new("org-1", run)
            .expect("run")
            .attempt(attempt);
        let base = StorageUri::parse("gs://bucket-1/base").expect("base");
        (
            AttemptScope::new(&base, &paths).expect("scope"),
            run.to_string(),
            attempt.to_string(),
        )
    }

    #[test]
    fn the_boundary_reads_files_and_the_attempt_and_creates_only_in_the_attempt() {
        let (scope, run, attempt) = scope();
        assert_eq!(
            scope.allowed_prefix(),
            format!("gs://bucket-1/base/runs/org-1/{run}/")
        );
        let rules = &scope.access_boundary()["accessBoundary"]["accessBoundaryRules"];
        let objects = "projects/_/buckets/bucket-1/objects/base/runs/org-1";
        assert_eq!(
            rules[0]["availabilityCondition"]["expression"],
            format!(
                "resource.name.startsWith('{objects}/{run}/files/') || \
                 resource.name.startsWith('{objects}/{run}/attempts/{attempt}/')"
            )
        );
        assert_eq!(
            rules[1]["availabilityCondition"]["expression"],
            format!("resource.name.startsWith('{objects}/{run}/attempts/{attempt}/')")
        );
        assert_eq!(
            rules[1]["availablePermissions"],
            json!(["inRole:roles/storage.objectCreator"])
        );
        assert_eq!(
            rules[0]["availableResource"],
            "//storage.googleapis.com/projects/_/buckets/bucket-1"
        );
    }

    #[test]
    fn file_storage_has_no_scope() {
        let paths = crate::layout::RunPaths::new("o", Uuid::now_v7())
            .expect("run")
            .attempt(Uuid::now_v7());
        let base = StorageUri::parse("file:///tmp/x").expect("base");
        assert!(matches!(
            AttemptScope::new(&base, &paths),
            Err(CapabilityError::NotGcs(_))
        ));
    }

    #[test]
    fn the_environment_round_trips_and_debug_hides_the_token() {
        let (scope, _, _) = scope();
        let capability = Capability {
            token: AttemptToken::new("ya29.secret".to_owned(), Utc::now()),
            allowed_prefix: scope.allowed_prefix(),
            project_id: "proj".to_owned(),
            refresh_url: Some("https://callback.example/v1/capability".to_owned()),
        };
        let env = capability.to_env();
        assert_eq!(env[env::REQUIRED], "1");
        assert!(env[env::ACCESS_TOKEN_EXPIRY].ends_with('Z'));
        let back = Capability::from_env(|k| env.get(k).cloned())
            .expect("valid")
            .expect("present");
        assert_eq!(back.token.secret(), "ya29.secret");
        assert_eq!(back.allowed_prefix, capability.allowed_prefix);
        assert_eq!(back.refresh_url, capability.refresh_url);
        assert!(!format!("{back:?}").contains("ya29.secret"));
    }

    #[test]
    fn an_incomplete_or_required_but_missing_capability_is_refused() {
        assert!(Capability::from_env(|_| None).expect("none").is_none());
        let only_token = |k: &str| (k == env::ACCESS_TOKEN).then(|| "t".to_owned());
        let err = Capability::from_env(only_token).expect_err("incomplete");
        assert!(err.to_string().contains(env::ALLOWED_PREFIX), "{err}");
        let required = |k: &str| (k == env::REQUIRED).then(|| "1".to_owned());
        assert!(matches!(
            Capability::from_env(required),
            Err(CapabilityError::Incomplete(_))
        ));
        let bad_prefix = |k: &str| match k {
            env::ACCESS_TOKEN | env::PROJECT_ID => Some("x".to_owned()),
            env::ACCESS_TOKEN_EXPIRY => Some("2030-01-01T00:00:00Z".to_owned()),
            env::ALLOWED_PREFIX => Some("gs://bucket/no-slash".to_owned()),
            _ => None,
        };
        assert!(matches!(
            Capability::from_env(bad_prefix),
            Err(CapabilityError::Malformed {
                name: env::ALLOWED_PREFIX,
                ..
            })
        ));
    }

    #[test]
    fn uris_are_checked_against_the_prefix_without_walking_out() {
        let prefix = "gs://b/runs/o/r/";
        assert!(check_under("gs://b/runs/o/r/files/u/0-model.idf", prefix).is_ok());
        assert!(check_under("gs://b/runs/o/other/x", prefix).is_err());
        assert!(check_under("gs://b/runs/o/r/../other/x", prefix).is_err());
        assert!(check_under("gs://b/runs/o/r//x", prefix).is_err());
        assert!(check_under("gs://b/runs/o/rx/y", prefix).is_err());
    }
}
