//! Heartbeats while the attempt works: `POST` to the callback service's `/v1/heartbeats` (beside
//! the envelope's callback URL) every few seconds, authenticated like the callback (a fresh ID
//! token each time), with the current progress — `{fraction, message}` — sent at once when it
//! changes. They are optional: a service without the route (404) or an attempt that has ended
//! (409) stops them, and a failed beat is only retried at the next one.

use std::time::Duration;

use runway_contract::InputEnvelope;
use runway_identity::IdTokenFetcher;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::callback::CallbackSettings;

/// The route's last segment, beside `…/callbacks`.
const HEARTBEATS: &str = "heartbeats";

/// A running heartbeat; dropped or [`stop`](Heartbeat::stop)ped, it ends.
#[derive(Debug)]
pub struct Heartbeat {
    progress: watch::Sender<Value>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts beating every `every` for `envelope`'s attempt, when it has a callback URL and
    /// asks for callbacks; `None` otherwise.
    pub fn start(
        settings: &CallbackSettings,
        envelope: &InputEnvelope,
        every: Duration,
    ) -> Option<Self> {
        if envelope.context.skip_callback || every.is_zero() {
            return None;
        }
        let callback = envelope.context.callback_url.as_ref()?;
        let url = url::Url::parse(callback.as_str())
            .ok()?
            .join(HEARTBEATS)
            .ok()?;
        let audience = settings
            .audience
            .clone()
            .unwrap_or_else(|| callback.origin());
        let fetcher = IdTokenFetcher::new(&settings.metadata_host).ok()?;
        let http = settings.client(Duration::from_secs(10)).ok()?;
        let identity = json!({
            "run_id": envelope.run_id,
            "callback_id": envelope.context.callback_id,
            "callback_nonce": envelope.context.callback_nonce,
        });
        let (progress, mut changed) =
            watch::channel(json!({"fraction": 0.0, "message": "starting"}));
        let task = tokio::spawn(async move {
            loop {
                let mut body = identity.clone();
                body["progress"] = changed.borrow_and_update().clone();
                if let Ok(token) = fetcher.fetch(&audience).await {
                    match http
                        .post(url.as_str())
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return,
                        Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                            eprintln!("heartbeat: the attempt has ended; no more heartbeats");
                            return;
                        }
                        _ => {}
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    changed = changed.changed() => if changed.is_err() { return },
                }
            }
        });
        Some(Self { progress, task })
    }

    /// Says what the attempt is doing now (sent at once).
    pub fn progress(&self, fraction: f64, message: &str) {
        let _ = self
            .progress
            .send(json!({"fraction": fraction, "message": message}));
    }

    /// Stops beating.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
