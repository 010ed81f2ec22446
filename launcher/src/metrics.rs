//! The launcher's Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! Each [`LauncherMetrics`] owns its own `prometheus::Registry` (one per [`AppState`], never a
//! process-global one), so the launcher of `runway dev` and every app a test starts count
//! only their own events. Two kinds of figures:
//!
//! - **Events**, counted where they happen in this process since it started: dispatch latency
//!   (due → launched, `dispatch.rs`), launch errors by kind (`dispatch.rs`), launch waits
//!   (the Cloud Run limiter and its 429/503 back-off, `backends/cloud_run.rs`), reconciler
//!   actions (`reconcile.rs`) and webhook deliveries (`webhooks.rs`).
//! - **Stored state**, read from the run store at each scrape ([`RunStore::counts`]): unfinished
//!   runs, runs completed in the last [`COMPLETED_WINDOW`], and each validator's queue. They
//!   describe the shared database, so every replica serves the same figures.
//!
//! Every label has a bounded set of values (validator ids from the registry or the store,
//! backend kinds, fixed outcome names); no run or attempt id is ever a label. Every known
//! label combination is exported from the start at zero, so a family is present before its
//! first event.
//!
//! [`AppState`]: crate::AppState

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts,
    Registry as PromRegistry, TextEncoder,
};
use runway_runs::{BackendKind, RunResult, RunState, RunStore};

use crate::reconcile::ActionKind;
use crate::registry::Registry;

/// How far back `runway_runs_completed_recent` counts completed runs: a day, so the query
/// reads a day of completions through its index however long the history is.
pub const COMPLETED_WINDOW: TimeDelta = TimeDelta::hours(24);

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of the dispatch latency (due → launched), in seconds: from an idle dispatcher's
/// milliseconds to an hour in a queue behind a concurrency cap.
const DISPATCH_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The kinds of [`LaunchError`](crate::backends::LaunchError), as labels.
pub const LAUNCH_ERROR_KINDS: &[&str] = &["retryable", "permanent", "ambiguous"];

/// Why a launch waited: the client-side rate limiter, or a back-off after the backend answered
/// 429/503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCause {
    /// The client-side limiter (`RUNWAY_CLOUD_RUN_RUNS_PER_MINUTE`) had no slot yet.
    Limiter,
    /// The backend refused for now (429/503) and the launch backed off.
    Backoff,
}

impl WaitCause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Limiter => "limiter",
            Self::Backoff => "backoff",
        }
    }
}

/// What became of one webhook POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookPost {
    /// The receiver answered 2xx.
    Delivered,
    /// Any other answer, or none: the event is retried.
    Failed,
    /// The receiver answered 410: its subscription is disabled.
    Gone,
}

impl WebhookPost {
    const ALL: [Self; 3] = [Self::Delivered, Self::Failed, Self::Gone];

    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
        }
    }
}

/// The outcomes of one webhook event's delivery step (all its subscriptions at once).
pub const WEBHOOK_EVENT_OUTCOMES: &[&str] = &["delivered", "retried", "dead"];

/// The launcher's metrics: its own registry and the handles that count into it.
pub struct LauncherMetrics {
    registry: PromRegistry,
    /// The registry's validators, exported at zero when the store has nothing for them.
    validators: Vec<String>,
    dispatch_latency: HistogramVec,
    launch_errors: IntCounterVec,
    launch_waits: IntCounterVec,
    launch_wait_seconds: CounterVec,
    reconciler_actions: IntCounterVec,
    webhook_deliveries: IntCounterVec,
    webhook_events: IntCounterVec,
}

impl Default for LauncherMetrics {
    /// Metrics that know no validator (for parts built on their own, as in tests).
    fn default() -> Self {
        Self::for_validators(Vec::new())
    }
}

impl std::fmt::Debug for LauncherMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LauncherMetrics")
            .field("validators", &self.validators)
            .finish_non_exhaustive()
    }
}

/// Registers `collector` in `registry`. Names are constants of this module, all distinct, and
/// the registry is new: registration cannot fail.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &PromRegistry,
    collector: C,
) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names of this module are distinct and valid");
    collector
}

fn int_counter(registry: &PromRegistry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options"),
    )
}

impl LauncherMetrics {
    /// Fresh metrics for a launcher running `validators`, every counter at zero.
    pub fn new(validators: &Registry) -> Self {
        Self::for_validators(validators.iter().map(|v| v.id.clone()).collect())
    }

    fn for_validators(validators: Vec<String>) -> Self {
        let registry = PromRegistry::new();
        let dispatch_latency = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "runway_dispatch_latency_seconds",
                    "Time from an attempt's due time (not_before) to its backend accepting the launch.",
                )
                .buckets(DISPATCH_BUCKETS.to_vec()),
                &["validator"],
            )
            .expect("valid metric options"),
        );
        let launch_errors = int_counter(
            &registry,
            "runway_launch_errors_total",
            "Launches a backend refused or could not confirm, by backend and kind (retryable, permanent, ambiguous).",
            &["backend", "kind"],
        );
        let launch_waits = int_counter(
            &registry,
            "runway_launch_waits_total",
            "Launches that waited before calling their backend, by backend and cause (limiter: the client-side rate limit; backoff: the backend answered 429/503).",
            &["backend", "cause"],
        );
        let launch_wait_seconds = registered(
            &registry,
            CounterVec::new(
                Opts::new(
                    "runway_launch_wait_seconds_total",
                    "Time launches spent waiting before calling their backend, by backend and cause.",
                ),
                &["backend", "cause"],
            )
            .expect("valid metric options"),
        );
        let reconciler_actions = int_counter(
            &registry,
            "runway_reconciler_actions_total",
            "What the reconciler did to attempts, by kind; swept counts orphaned jobs removed.",
            &["kind"],
        );
        let webhook_deliveries = int_counter(
            &registry,
            "runway_webhook_deliveries_total",
            "Webhook POSTs to subscriptions, by outcome (delivered: 2xx; failed: retried later; gone: 410, subscription disabled).",
            &["outcome"],
        );
        let webhook_events = int_counter(
            &registry,
            "runway_webhook_events_total",
            "Outbox events after a delivery step, by outcome (delivered to every subscription, retried, dead).",
            &["outcome"],
        );

        let metrics = Self {
            registry,
            validators,
            dispatch_latency,
            launch_errors,
            launch_waits,
            launch_wait_seconds,
            reconciler_actions,
            webhook_deliveries,
            webhook_events,
        };
        metrics.zero_known_series();
        metrics
    }

    /// Creates every known label combination at zero, so each family is present (and rates
    /// start from zero) before its first event.
    fn zero_known_series(&self) {
        for validator in &self.validators {
            self.dispatch_latency.with_label_values(&[validator]);
        }
        for backend in ALL_BACKENDS {
            for kind in LAUNCH_ERROR_KINDS {
                self.launch_errors
                    .with_label_values(&[backend.as_str(), kind]);
            }
        }
        for cause in [WaitCause::Limiter, WaitCause::Backoff] {
            let labels = [BackendKind::CloudRun.as_str(), cause.as_str()];
            self.launch_waits.with_label_values(&labels);
            self.launch_wait_seconds.with_label_values(&labels);
        }
        for kind in ActionKind::ALL {
            self.reconciler_actions.with_label_values(&[kind.as_str()]);
        }
        self.reconciler_actions.with_label_values(&[SWEPT]);
        for post in WebhookPost::ALL {
            self.webhook_deliveries.with_label_values(&[post.as_str()]);
        }
        for outcome in WEBHOOK_EVENT_OUTCOMES {
            self.webhook_events.with_label_values(&[outcome]);
        }
    }

    /// An attempt of `validator` due at `due` was accepted by its backend at `launched`.
    pub fn dispatched(&self, validator: &str, due: DateTime<Utc>, launched: DateTime<Utc>) {
        let latency = (launched - due).to_std().unwrap_or(Duration::ZERO);
        self.dispatch_latency
            .with_label_values(&[validator])
            .observe(latency.as_secs_f64());
    }

    /// A launch on `backend` failed with `kind` (one of [`LAUNCH_ERROR_KINDS`]).
    pub fn launch_error(&self, backend: BackendKind, kind: &'static str) {
        self.launch_errors
            .with_label_values(&[backend.as_str(), kind])
            .inc();
    }

    /// A launch on `backend` waited `waited` for `cause`; a zero wait is not counted.
    pub fn launch_waited(&self, backend: BackendKind, cause: WaitCause, waited: Duration) {
        if waited.is_zero() {
            return;
        }
        let labels = [backend.as_str(), cause.as_str()];
        self.launch_waits.with_label_values(&labels).inc();
        self.launch_wait_seconds
            .with_label_values(&labels)
            .inc_by(waited.as_secs_f64());
    }

    /// The reconciler did `kind` to an attempt.
    pub fn reconciled(&self, kind: ActionKind) {
        self.reconciler_actions
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// The reconciler swept `jobs` orphaned jobs.
    pub fn swept(&self, jobs: usize) {
        self.reconciler_actions
            .with_label_values(&[SWEPT])
            .inc_by(jobs as u64);
    }

    /// One webhook POST ended as `post`.
    pub fn webhook_posted(&self, post: WebhookPost) {
        self.webhook_deliveries
            .with_label_values(&[post.as_str()])
            .inc();
    }

    /// A delivery step ended `count` events as `outcome` (one of [`WEBHOOK_EVENT_OUTCOMES`]).
    pub fn webhook_events(&self, outcome: &'static str, count: usize) {
        self.webhook_events
            .with_label_values(&[outcome])
            .inc_by(count as u64);
    }

    /// Every family in the text exposition format: this process's counters and the store's
    /// figures as of `now`.
    pub async fn render(&self, store: &dyn RunStore, now: DateTime<Utc>) -> anyhow::Result<String> {
        let counts = store
            .counts(now, now - COMPLETED_WINDOW)
            .await
            .context("counting runs and queues")?;
        let stored = StoredGauges::new();
        stored.window.set(COMPLETED_WINDOW.num_seconds() as f64);
        for validator in &self.validators {
            for state in [RunState::Queued, RunState::Running] {
                stored
                    .unfinished
                    .with_label_values(&[validator, state.as_str()])
                    .set(0.0);
            }
            for result in ALL_RESULTS {
                stored
                    .completed
                    .with_label_values(&[validator, result.as_str()])
                    .set(0.0);
            }
            stored.depth.with_label_values(&[validator]).set(0.0);
            stored.oldest.with_label_values(&[validator]).set(0.0);
        }
        for runs in &counts.active_runs {
            stored
                .unfinished
                .with_label_values(&[&runs.validator_id, runs.state.as_str()])
                .set(runs.count as f64);
        }
        for runs in &counts.completed_runs {
            stored
                .completed
                .with_label_values(&[&runs.validator_id, runs.result.as_str()])
                .set(runs.count as f64);
        }
        for queue in &counts.queues {
            stored
                .depth
                .with_label_values(&[&queue.validator_id])
                .set(queue.depth as f64);
            let age = (now - queue.oldest_due).to_std().unwrap_or(Duration::ZERO);
            stored
                .oldest
                .with_label_values(&[&queue.validator_id])
                .set(age.as_secs_f64());
        }
        let mut families = self.registry.gather();
        families.extend(stored.registry.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        encode(&families)
    }
}

/// The gauges computed from the store at one scrape, in a registry of their own: concurrent
/// scrapes never see each other's half-set values.
struct StoredGauges {
    registry: PromRegistry,
    unfinished: GaugeVec,
    completed: GaugeVec,
    window: Gauge,
    depth: GaugeVec,
    oldest: GaugeVec,
}

impl StoredGauges {
    fn new() -> Self {
        let registry = PromRegistry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric options"),
            )
        };
        Self {
            unfinished: gauge(
                "runway_runs_unfinished",
                "Runs not yet completed, by validator and state (queued, running), from the run store.",
                &["validator", "state"],
            ),
            completed: gauge(
                "runway_runs_completed_recent",
                "Runs completed within the last runway_runs_completed_window_seconds, by validator and result, from the run store.",
                &["validator", "result"],
            ),
            depth: gauge(
                "runway_queue_depth",
                "Attempts due (not_before passed) and waiting to be dispatched, by validator, from the run store.",
                &["validator"],
            ),
            oldest: gauge(
                "runway_queue_oldest_due_age_seconds",
                "How long the oldest due attempt has waited since its due time, by validator (0 with an empty queue).",
                &["validator"],
            ),
            window: registered(
                &registry,
                Gauge::new(
                    "runway_runs_completed_window_seconds",
                    "The window runway_runs_completed_recent counts over.",
                )
                .expect("valid metric options"),
            ),
            registry,
        }
    }
}

/// `families` in the text exposition format.
fn encode(families: &[prometheus::proto::MetricFamily]) -> anyhow::Result<String> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(families, &mut text)
        .context("encoding the metrics")?;
    String::from_utf8(text).context("the metrics text")
}

/// The `kind` label of sweeps, beside [`ActionKind`]'s.
const SWEPT: &str = "swept";

const ALL_BACKENDS: [BackendKind; 4] = [
    BackendKind::Mock,
    BackendKind::Process,
    BackendKind::Docker,
    BackendKind::CloudRun,
];

const ALL_RESULTS: [RunResult; 5] = [
    RunResult::Passed,
    RunResult::Failed,
    RunResult::Error,
    RunResult::Canceled,
    RunResult::TimedOut,
];

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use runway_runs::{AttemptId, NewAttempt, NewRun, RetryPolicy, RunId};

    use super::*;

    /// The sample line of `name{labels}` in `text`, or a panic naming what is there.
    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// The queue's oldest age is measured from its attempt's due time to the scrape's `now`
    /// (the injected clock's in the app), and dispatch latency from due to launched.
    #[tokio::test]
    async fn ages_and_latencies_are_measured_from_due_times() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = runway_runs::connect(&format!(
            "sqlite://{}",
            dir.path().join("runway.db").display()
        ))
        .await
        .expect("store");
        let t0 = Utc
            .with_ymd_and_hms(2030, 1, 1, 12, 0, 0)
            .single()
            .expect("time");
        store
            .create_run(NewRun {
                id: RunId::new(),
                created_at: t0,
                validator_id: "energyplus".into(),
                validator_type: "ENERGYPLUS".into(),
                org_id: "acme".into(),
                workflow_id: "wf".into(),
                spec: "{}".into(),
                retry: RetryPolicy {
                    max_attempts: 1,
                    initial_backoff_ms: 0,
                    max_backoff_ms: 0,
                },
                idempotency: None,
                first_attempt: NewAttempt {
                    id: AttemptId::new(),
                    callback_nonce_sha256: "ab".repeat(32),
                    caller_identity: None,
                },
            })
            .await
            .expect("create");
        let metrics = LauncherMetrics::new(&Registry::local_defaults());
        metrics.dispatched("fmu", t0, t0 + TimeDelta::milliseconds(2500));

        let text = metrics
            .render(store.as_ref(), t0 + TimeDelta::seconds(90))
            .await
            .expect("render");
        let energyplus = "{validator=\"energyplus\"}";
        let fmu = "{validator=\"fmu\"}";
        assert_eq!(
            sample(
                &text,
                &format!("runway_queue_oldest_due_age_seconds{energyplus}")
            ),
            "90"
        );
        assert_eq!(
            sample(&text, &format!("runway_queue_depth{energyplus}")),
            "1"
        );
        assert_eq!(
            sample(&text, &format!("runway_queue_oldest_due_age_seconds{fmu}")),
            "0"
        );
        assert_eq!(
            sample(&text, &format!("runway_dispatch_latency_seconds_sum{fmu}")),
            "2.5"
        );
        assert_eq!(
            sample(
                &text,
                "runway_dispatch_latency_seconds_bucket{validator=\"fmu\",le=\"2.5\"}"
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                "runway_dispatch_latency_seconds_bucket{validator=\"fmu\",le=\"1\"}"
            ),
            "0"
        );
        // Before its due time an attempt is not in the queue.
        let early = metrics
            .render(store.as_ref(), t0 - TimeDelta::seconds(1))
            .await
            .expect("render");
        assert_eq!(
            sample(&early, &format!("runway_queue_depth{energyplus}")),
            "0"
        );
    }
}
