//! Delivering the outbox as webhooks, by the Standard Webhooks specification.
//!
//! The store writes one outbox row per event in the transaction that causes it (a run's
//! completion). The deliverer claims due rows with a lease (one statement; on PostgreSQL
//! `FOR UPDATE SKIP LOCKED`, so several deliverers share the work), and — outside any
//! transaction — POSTs each to every active subscription of the event's org that takes its
//! type, with `webhook-id` (the outbox row's id: the same for every redelivery of one event),
//! `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`
//! for each of the subscription's secrets, signed by the `standardwebhooks` crate).
//!
//! A 2xx from every subscription delivers the row. A 410 disables that subscription (the
//! receiver asked to stop). Anything else retries the row with exponential backoff and jitter
//! (from `backoff_first`, doubling to `backoff_max`) until `max_attempts`, after which it is
//! dead: listed by `runway webhook dead` and put back by `runway webhook replay`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use chrono::{TimeDelta, Utc};
use rand::{Rng, RngCore};
use runway_runs::{OutboxEvent, RunStore, SubscriptionId, WebhookSubscription};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::WebhookPost;

/// Every Standard Webhooks secret begins so.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a new secret.
const SECRET_BYTES: usize = 32;
/// Longest excerpt of a receiver's answer kept as the delivery error.
const MAX_ERROR: usize = 200;

/// How the deliverer runs.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Rows claimed per step.
    pub batch: u32,
    /// How long a claimed row is held before another deliverer may take it.
    pub lease: Duration,
    /// Longest wait for one receiver.
    pub timeout: Duration,
    /// Deliveries of one event before it is dead.
    pub max_attempts: u32,
    /// The wait after the first failed delivery (doubling, with jitter).
    pub backoff_first: Duration,
    /// The longest wait between deliveries.
    pub backoff_max: Duration,
    /// How often to look for due rows.
    pub poll_interval: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            batch: 32,
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_attempts: 20,
            backoff_first: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A fresh signing secret, `whsec_<base64 of 32 random bytes>`.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A new subscription of `org` to `events` at `url` (an `http(s)` URL), with a fresh secret.
pub async fn subscribe(
    store: &dyn RunStore,
    org: &str,
    url: &str,
    events: &[String],
) -> anyhow::Result<WebhookSubscription> {
    anyhow::ensure!(
        crate::registry::is_valid_id(org),
        "{org:?} is not an org id (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')"
    );
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some(),
        "the webhook URL {url:?} must be an http(s) URL"
    );
    anyhow::ensure!(
        !events.is_empty(),
        "name at least one event type (run.started, attempt.progress, attempt.failed, run.completed)"
    );
    for event in events {
        anyhow::ensure!(
            KNOWN_EVENTS.contains(&event.as_str()),
            "unknown event type {event:?}; known: {}",
            KNOWN_EVENTS.join(", ")
        );
    }
    Ok(store
        .create_subscription(&WebhookSubscription {
            id: SubscriptionId::new(),
            org_id: org.to_owned(),
            url: url.to_owned(),
            secrets: vec![new_secret()],
            events: events.to_vec(),
            created_at: Utc::now(),
            disabled_at: None,
            disabled_reason: None,
        })
        .await?)
}

/// The event types deliveries are made for.
pub const KNOWN_EVENTS: &[&str] = &runway_runs::EVENT_TYPES;

/// Rotates a subscription's secret: deliveries are signed with the new and the old one until
/// `finish_rotation`, so the receiver can switch without missing a delivery. Returns it.
pub async fn rotate_secret(
    store: &dyn RunStore,
    id: SubscriptionId,
) -> anyhow::Result<WebhookSubscription> {
    replace_secrets(store, id, |current| {
        let mut secrets = vec![new_secret()];
        secrets.extend(current.first().cloned());
        secrets
    })
    .await
}

/// Ends a rotation: only the newest secret signs from now on.
pub async fn finish_rotation(
    store: &dyn RunStore,
    id: SubscriptionId,
) -> anyhow::Result<WebhookSubscription> {
    replace_secrets(store, id, |current| {
        current.iter().take(1).cloned().collect()
    })
    .await
}

/// Sets a subscription's secrets to what `change` makes of its current ones.
async fn replace_secrets(
    store: &dyn RunStore,
    id: SubscriptionId,
    change: impl FnOnce(&[String]) -> Vec<String>,
) -> anyhow::Result<WebhookSubscription> {
    let missing = || format!("there is no webhook subscription {id}");
    let current = store
        .list_subscriptions(None)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .with_context(missing)?;
    store
        .set_subscription_secrets(id, &change(&current.secrets))
        .await?
        .with_context(missing)
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Rows claimed.
    pub claimed: usize,
    /// POSTs made.
    pub posts: usize,
    /// Rows delivered.
    pub delivered: usize,
    /// Rows scheduled again.
    pub retried: usize,
    /// Rows given up.
    pub dead: usize,
    /// Subscriptions disabled by a 410.
    pub disabled: usize,
}

/// Delivers the outbox.
#[derive(Debug)]
pub struct Deliverer {
    store: Arc<dyn RunStore>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    settings: DeliverySettings,
    metrics: Arc<crate::metrics::LauncherMetrics>,
}

impl Deliverer {
    /// A deliverer over `store`.
    pub fn new(
        store: Arc<dyn RunStore>,
        clock: Arc<dyn Clock>,
        settings: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Self {
            store,
            clock,
            http,
            settings,
            metrics: Arc::default(),
        })
    }

    /// The same deliverer, counting its deliveries in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::LauncherMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Claims the due rows and delivers each.
    pub async fn step(&self) -> anyhow::Result<DeliveryReport> {
        let now = self.clock.now();
        let lease = TimeDelta::from_std(self.settings.lease).unwrap_or(TimeDelta::minutes(1));
        let events = self
            .store
            .claim_outbox(now, self.settings.batch, lease)
            .await
            .context("claiming outbox events")?;
        let mut report = DeliveryReport {
            claimed: events.len(),
            ..DeliveryReport::default()
        };
        if events.is_empty() {
            return Ok(report);
        }
        let mut subscriptions = self
            .store
            .list_subscriptions(None)
            .await
            .context("reading webhook subscriptions")?;
        let mut delivered = Vec::new();
        for event in &events {
            if self.deliver(event, &mut subscriptions, &mut report).await? {
                delivered.push(event.id);
            }
        }
        // One statement closes every delivered row of the step (a crash before it only
        // redelivers them, under the same webhook-ids).
        self.store
            .mark_outbox_delivered_many(&delivered, self.clock.now())
            .await
            .context("marking events delivered")?;
        report.delivered = delivered.len();
        self.metrics.webhook_events("delivered", report.delivered);
        self.metrics.webhook_events("retried", report.retried);
        self.metrics.webhook_events("dead", report.dead);
        Ok(report)
    }

    async fn deliver(
        &self,
        event: &OutboxEvent,
        subscriptions: &mut [WebhookSubscription],
        report: &mut DeliveryReport,
    ) -> anyhow::Result<bool> {
        let org = event.payload["org_id"].as_str().unwrap_or_default();
        let body = serde_json::to_vec(&event.payload).context("encoding the event")?;
        let id = event.id.to_string();
        let mut failures = Vec::new();
        for sub in subscriptions.iter_mut().filter(|s| {
            s.disabled_at.is_none() && s.org_id == org && s.events.contains(&event.event)
        }) {
            report.posts += 1;
            let posted = self.post(sub, &id, &body).await;
            self.metrics.webhook_posted(match &posted {
                Ok(()) => WebhookPost::Delivered,
                Err(Refusal::Gone) => WebhookPost::Gone,
                Err(Refusal::Failed(_)) => WebhookPost::Failed,
            });
            match posted {
                Ok(()) => {}
                Err(Refusal::Gone) => {
                    let now = self.clock.now();
                    self.store
                        .disable_subscription(sub.id, now, "the receiver answered 410 Gone")
                        .await
                        .context("disabling a subscription")?;
                    // Not posted to again in this step either.
                    sub.disabled_at = Some(now);
                    tracing::warn!(subscription = %sub.id, "webhook receiver answered 410: subscription disabled");
                    report.disabled += 1;
                }
                Err(Refusal::Failed(why)) => failures.push(format!("{}: {why}", sub.url)),
            }
        }
        let now = self.clock.now();
        if failures.is_empty() {
            return Ok(true);
        } else if event.attempts >= self.settings.max_attempts {
            let error = failures.join("; ");
            tracing::warn!(event = %event.id, %error, "webhook delivery given up");
            self.store.mark_outbox_dead(event.id, now, &error).await?;
            report.dead += 1;
        } else {
            let wait = self.backoff(event.attempts);
            let next = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::hours(1));
            self.store
                .mark_outbox_retry(event.id, next, &failures.join("; "))
                .await?;
            report.retried += 1;
        }
        Ok(false)
    }

    /// The wait after delivery number `attempts` failed: between half and all of
    /// `backoff_first · 2^(attempts−1)`, at most `backoff_max`.
    fn backoff(&self, attempts: u32) -> Duration {
        let step = self
            .settings
            .backoff_first
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.settings.backoff_max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    async fn post(&self, sub: &WebhookSubscription, id: &str, body: &[u8]) -> Result<(), Refusal> {
        // The signature's timestamp is the wall clock's: receivers check it against theirs.
        let timestamp = Utc::now().timestamp();
        let mut signatures = Vec::new();
        for secret in &sub.secrets {
            let signer = standardwebhooks::Webhook::new(secret).map_err(|e| {
                Refusal::Failed(format!("the subscription's secret is unusable: {e}"))
            })?;
            signatures.push(
                signer
                    .sign(id, timestamp, body)
                    .map_err(|e| Refusal::Failed(format!("cannot sign: {e}")))?,
            );
        }
        let response = self
            .http
            .post(&sub.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(
                standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
                signatures.join(" "),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Refusal::Failed(format!("{e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status == reqwest::StatusCode::GONE {
            return Err(Refusal::Gone);
        }
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(MAX_ERROR).collect();
        Err(Refusal::Failed(format!("answered {status}: {excerpt}")))
    }

    /// Delivers until `stop`, then returns (a row in flight is finished first). A step that
    /// found a full batch is followed at once; otherwise the next waits a poll interval, so that
    /// a trickle of events costs a few statements per interval rather than per event.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        let full = usize::try_from(self.settings.batch).unwrap_or(usize::MAX);
        loop {
            let busy = match self.step().await {
                Ok(report) => report.claimed >= full,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "webhook delivery step failed");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }
}

enum Refusal {
    Gone,
    Failed(String),
}
