//! Announcing the output: `POST` the callback payload to the envelope's `callback_url` with
//! `Authorization: Bearer <ID token>`, the token fetched afresh from the metadata server for
//! every try (audience: the callback URL's origin, or `TASK_OIDC_AUDIENCE`).
//!
//! Network errors, 5xx, 409 and 429 (and a metadata server that cannot give a token yet) are
//! retried with exponential backoff, 1 s doubling up to 30 s, until the retry window
//! (minutes) is spent; any other 4xx is final. Nothing is ever sent without a token.

use std::fmt;
use std::time::Duration;

use anyhow::bail;
use runway_contract::{CallbackPayload, InputEnvelope, ValidationStatus};
use runway_identity::IdTokenFetcher;

/// How the callback is made.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// The metadata server (`host[:port]`, `GCE_METADATA_HOST`).
    pub metadata_host: String,
    /// `TASK_OIDC_AUDIENCE`: the token's audience instead of the callback URL's origin.
    pub audience: Option<String>,
    /// How long to keep retrying.
    pub retry_window: Duration,
    /// The first pause between tries (it doubles, up to 30 s).
    pub first_backoff: Duration,
    /// `TRACEPARENT`: the trace context the launch gave the job, sent back as the
    /// `traceparent` header of every request to the callback service.
    pub traceparent: Option<String>,
}

impl CallbackSettings {
    /// A client for the callback service: `timeout` per request, the job's `traceparent` on
    /// each (a malformed one is left out rather than failing the job).
    pub fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = self
            .traceparent
            .as_deref()
            .and_then(|t| reqwest::header::HeaderValue::from_str(t).ok())
        {
            headers.insert("traceparent", value);
        }
        reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()
    }
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            metadata_host: runway_identity::DEFAULT_METADATA_HOST.to_owned(),
            audience: None,
            retry_window: Duration::from_secs(300),
            first_backoff: Duration::from_secs(1),
            traceparent: None,
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted, after this many tries.
    Delivered {
        /// Tries, the accepted one included.
        tries: u32,
    },
    /// The envelope asks for no callback.
    NotAsked,
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delivered { tries: 1 } => f.write_str("callback delivered"),
            Self::Delivered { tries } => write!(f, "callback delivered after {tries} tries"),
            Self::NotAsked => f.write_str("no callback asked for"),
        }
    }
}

/// Sends the callback announcing `envelope`'s output with `status`.
pub async fn deliver(
    settings: &CallbackSettings,
    envelope: &InputEnvelope,
    status: ValidationStatus,
) -> anyhow::Result<Delivery> {
    let Some(url) = envelope.context.callback_url.as_ref() else {
        return Ok(Delivery::NotAsked);
    };
    if envelope.context.skip_callback {
        return Ok(Delivery::NotAsked);
    }
    let payload = CallbackPayload::announcing(envelope, status)?;
    let audience = settings.audience.clone().unwrap_or_else(|| url.origin());
    let fetcher = IdTokenFetcher::new(&settings.metadata_host)?;
    let http = settings.client(Duration::from_secs(30))?;
    let give_up = tokio::time::Instant::now() + settings.retry_window;
    let mut backoff = settings.first_backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        let last = match fetcher.fetch(&audience).await {
            Err(e) => format!("no ID token: {e:#}"),
            Ok(token) => match http
                .post(url.as_str())
                .bearer_auth(token)
                .json(&payload)
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => {
                    return Ok(Delivery::Delivered { tries });
                }
                Ok(response) => {
                    let code = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let body: String = body.chars().take(300).collect();
                    let retryable = code.is_server_error()
                        || code == reqwest::StatusCode::CONFLICT
                        || code == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        bail!("the callback was refused with {code}: {body}");
                    }
                    format!("{code}: {body}")
                }
                // With its causes: reqwest's own text does not tell a timeout from a refusal.
                Err(e) => format!("{:#}", anyhow::Error::new(e)),
            },
        };
        let now = tokio::time::Instant::now();
        if now + backoff > give_up {
            bail!(
                "the callback to {url} did not get through in {tries} tries over {} s; last: {last}",
                settings.retry_window.as_secs()
            );
        }
        eprintln!(
            "callback try {tries} failed ({last}); retrying in {} ms",
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
