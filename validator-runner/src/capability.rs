//! Working under an attempt-scoped GCS token (`runway_storage::capability`), when the job's
//! environment carries one: storage is reached with that token instead of the runtime's own
//! credentials, every URI the envelope names is checked against the allowed prefix before any
//! request is made (outside it, the runner refuses and writes nothing), the output must go to
//! an attempt folder inside it, and the token is renewed through the callback service — once
//! right after the envelope is read (an attempt that has ended meanwhile is refused there,
//! before anything is simulated) and again before publishing if it is about to expire.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use runway_contract::InputEnvelope;
use runway_identity::IdTokenFetcher;
use runway_storage::capability::{Capability, MIN_LIFETIME};
use serde_json::{Value, json};

use crate::callback::CallbackSettings;

/// How long renewal keeps trying through network errors, 5xx and 429.
const RENEWAL_WINDOW: Duration = Duration::from_secs(60);

/// Refuses an envelope that names anything outside the capability's prefix, or whose output
/// is not in an attempt folder (`…/attempts/<attempt>/output.json`) inside it.
pub fn check_envelope(capability: &Capability, envelope: &InputEnvelope) -> Result<(), String> {
    let prefix = &capability.allowed_prefix;
    let output = envelope.context.expected_output_uri.as_str();
    capability.check(output).map_err(|e| e.to_string())?;
    if !output_in_attempt(prefix, output) {
        return Err(format!(
            "the output {output} is not an attempt's output.json under {prefix}"
        ));
    }
    let bundle = envelope.context.execution_bundle_uri.as_str();
    if format!("{}/", bundle.trim_end_matches('/')) != attempt_folder(envelope) {
        return Err(format!(
            "the execution bundle {bundle} is not the output's attempt folder"
        ));
    }
    for uri in envelope
        .input_files
        .iter()
        .map(|f| f.uri.as_str())
        .chain(envelope.resource_files.iter().map(|f| f.uri.as_str()))
    {
        capability.check(uri).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether `output` is an attempt's `output.json` under `prefix`: directly in it (Validibot's
/// launcher scopes a token to the attempt's own folder) or in one of its `attempts/<attempt>/`
/// folders (Runway's scopes it to the run's folder, which holds the inputs too).
fn output_in_attempt(prefix: &str, output: &str) -> bool {
    let Some(rest) = output.strip_prefix(prefix) else {
        return false;
    };
    rest == "output.json"
        || rest
            .strip_suffix("/output.json")
            .and_then(|folder| folder.strip_prefix("attempts/"))
            .is_some_and(|attempt| !attempt.is_empty() && !attempt.contains('/'))
}

/// The attempt's folder (`…/attempts/<attempt>/`), the only place the runner writes.
pub fn attempt_folder(envelope: &InputEnvelope) -> String {
    let output = envelope.context.expected_output_uri.as_str();
    output
        .rsplit_once('/')
        .map_or_else(|| output.to_owned(), |(folder, _)| format!("{folder}/"))
}

/// What a renewal came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// A new token is in use.
    Renewed,
    /// There is nowhere to renew (no refresh URL, or the service does not offer it): the token
    /// the job started with stays in use.
    NotOffered,
    /// The callback service refused: the attempt has ended, or this job is not its job.
    Refused(String),
}

/// Renews the token through the refresh URL, authenticated like a callback.
pub async fn renew(
    capability: &Capability,
    settings: &CallbackSettings,
    envelope: &InputEnvelope,
) -> anyhow::Result<Renewal> {
    let Some(url) = capability.refresh_url.as_deref() else {
        return Ok(Renewal::NotOffered);
    };
    let audience = match &settings.audience {
        Some(audience) => audience.clone(),
        None => url::Url::parse(url)
            .context("the refresh URL")?
            .origin()
            .ascii_serialization(),
    };
    let fetcher = IdTokenFetcher::new(&settings.metadata_host)?;
    let http = settings.client(Duration::from_secs(30))?;
    let body = json!({
        "run_id": envelope.run_id,
        "callback_id": envelope.context.callback_id,
        "callback_nonce": envelope.context.callback_nonce,
    });
    let give_up = tokio::time::Instant::now() + RENEWAL_WINDOW;
    let mut backoff = settings.first_backoff;
    loop {
        let last = match fetcher.fetch(&audience).await {
            Err(e) => format!("no ID token: {e:#}"),
            Ok(token) => match http.post(url).bearer_auth(token).json(&body).send().await {
                Ok(response) if response.status().is_success() => {
                    let answer: Value = response.json().await.context("the renewal's answer")?;
                    return install(capability, &answer).map(|()| Renewal::Renewed);
                }
                Ok(response) => {
                    let code = response.status();
                    let text: String = response
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    if code == reqwest::StatusCode::NOT_FOUND && text.contains("not_offered") {
                        return Ok(Renewal::NotOffered);
                    }
                    if !(code.is_server_error() || code == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                        return Ok(Renewal::Refused(format!(
                            "the callback service refused to renew the GCS token ({code}): {text}"
                        )));
                    }
                    format!("{code}: {text}")
                }
                Err(e) => e.to_string(),
            },
        };
        if tokio::time::Instant::now() + backoff > give_up {
            bail!("the GCS token could not be renewed at {url}; last: {last}");
        }
        eprintln!(
            "token renewal failed ({last}); retrying in {} ms",
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Renews the token if it expires within [`MIN_LIFETIME`] (before publishing).
pub async fn keep_fresh(
    capability: &Capability,
    settings: &CallbackSettings,
    envelope: &InputEnvelope,
) -> anyhow::Result<Renewal> {
    if capability.token.expires_at() - Utc::now() > MIN_LIFETIME {
        return Ok(Renewal::NotOffered);
    }
    renew(capability, settings, envelope).await
}

/// Puts a renewal's token in use, after checking it is for the same prefix.
fn install(capability: &Capability, answer: &Value) -> anyhow::Result<()> {
    let prefix = answer.get("allowed_prefix").and_then(Value::as_str);
    if prefix != Some(capability.allowed_prefix.as_str()) {
        bail!(
            "the renewal is for another prefix ({prefix:?}), not {}",
            capability.allowed_prefix
        );
    }
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .context("the renewal has no access_token")?;
    let expires_at = answer
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .context("the renewal has no RFC 3339 expires_at")?
        .with_timezone(&Utc);
    capability.token.replace(token.to_owned(), expires_at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::output_in_attempt;

    #[test]
    fn an_output_is_accepted_in_the_prefix_or_in_one_of_its_attempt_folders() {
        let run = "gs://b/runs/o/r/";
        assert!(output_in_attempt(
            run,
            "gs://b/runs/o/r/attempts/a1/output.json"
        ));
        let attempt = "gs://b/runs/o/r/attempts/a1/";
        assert!(output_in_attempt(
            attempt,
            "gs://b/runs/o/r/attempts/a1/output.json"
        ));
        for bad in [
            "gs://b/runs/o/other/attempts/a1/output.json",
            "gs://b/runs/o/r/files/output.json",
            "gs://b/runs/o/r/attempts/a1/x/output.json",
            "gs://b/runs/o/r/attempts//output.json",
            "gs://b/runs/o/r/attempts/a1/output.json.bak",
        ] {
            assert!(!output_in_attempt(run, bad), "{bad}");
        }
    }
}
