//! The run store's vocabulary: identifiers, states, records and the inputs of each operation.
//!
//! Everything here is database-neutral; `sqlite.rs` and `postgres.rs` map these to rows, and
//! `lifecycle.rs` decides how they change.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use runway_contract::ValidationStatus;
use runway_storage::layout::AttemptPaths;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID (e.g. one read back from the database).
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The wrapped UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies a run (what the web app asked for).
    RunId
);
uuid_id!(
    /// Identifies one attempt at executing a run.
    AttemptId
);
uuid_id!(
    /// Identifies an outbox row (one event to deliver).
    OutboxId
);
uuid_id!(
    /// Identifies a callback receipt.
    ReceiptId
);
uuid_id!(
    /// Identifies a launcher API key.
    ApiKeyId
);

/// A launcher API key: a bearer secret scoped to one org. Only the secret's SHA-256 is stored;
/// the secret itself is shown once, when the key is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// Its identifier (what revoking names).
    pub id: ApiKeyId,
    /// The org whose runs it may create and see.
    pub org_id: String,
    /// What it is for, as its creator named it.
    pub name: String,
    /// The secret's first characters, to tell keys apart in listings.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key is refused.
    pub revoked_at: Option<DateTime<Utc>>,
}

uuid_id!(
    /// Identifies a webhook subscription.
    SubscriptionId
);

/// Where an org's events are delivered: a URL, the secrets their signatures are made with
/// (Standard Webhooks `whsec_…`; during a rotation, the new and the old), and the event types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSubscription {
    /// Its identifier.
    pub id: SubscriptionId,
    /// The org whose events it receives.
    pub org_id: String,
    /// Where they are POSTed.
    pub url: String,
    /// The signing secrets, newest first; every delivery is signed with each.
    pub secrets: Vec<String>,
    /// The event types it receives (`run.completed`, …).
    pub events: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stopped receiving (disabled by an operator, or the receiver answered 410).
    pub disabled_at: Option<DateTime<Utc>>,
    /// Why.
    pub disabled_reason: Option<String>,
}

impl std::fmt::Display for WebhookSubscription {
    /// Everything but the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  org {}  {}  events {}",
            self.id,
            self.org_id,
            self.url,
            self.events.join(",")
        )
    }
}

/// A key to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// Its identifier.
    pub id: ApiKeyId,
    /// Its org.
    pub org_id: String,
    /// Its name.
    pub name: String,
    /// The secret's first characters.
    pub prefix: String,
    /// SHA-256 (hex) of the secret.
    pub secret_sha256: String,
    /// When it is created.
    pub created_at: DateTime<Utc>,
}

/// Generates a lowercase `as_str`/`FromStr`/`Display` trio for a fieldless enum; the same
/// strings are what the database stores and what serde writes.
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The lowercase name stored in the database and used on the wire.
            pub const fn as_str(&self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " {:?}"),
                        other
                    ))),
                }
            }
        }
    };
}

string_enum!(
    /// Where a run is, derived from its attempts.
    RunState {
        /// Its current attempt waits to be dispatched (first try or a scheduled retry).
        Queued => "queued",
        /// Its current attempt has been claimed and may be executing.
        Running => "running",
        /// Finished; `result` says how. Never changes again.
        Completed => "completed",
    }
);

string_enum!(
    /// How a completed run ended.
    RunResult {
        /// The validation ran and passed.
        Passed => "passed",
        /// The validation ran and found problems (a result, not a retry).
        Failed => "failed",
        /// The validator or the platform failed and no retry remained.
        Error => "error",
        /// Canceled on request.
        Canceled => "canceled",
        /// The attempt overran its deadline.
        TimedOut => "timed_out",
    }
);

string_enum!(
    /// One attempt's lifecycle: `pending` → `dispatching` → `running` (or `unknown` while the
    /// launch's outcome is unresolved) → one of the terminal `completed`, `failed`, `canceled`
    /// and `timed_out`. (The published API schema shows this text; the exact edges are
    /// `can_transition_to`'s.)
    AttemptState {
        /// Waits for `not_before` and a free concurrency slot.
        Pending => "pending",
        /// Claimed by a dispatcher; the backend call may be in flight.
        Dispatching => "dispatching",
        /// The backend accepted it (or a callback proved it ran).
        Running => "running",
        /// The backend call's outcome is ambiguous; the reconciler resolves it.
        Unknown => "unknown",
        /// Finished with an output (whatever the validation verdict).
        Completed => "completed",
        /// Finished without a usable output (launch error, container lost, no output…).
        Failed => "failed",
        /// Canceled on request.
        Canceled => "canceled",
        /// Overran its deadline.
        TimedOut => "timed_out",
    }
);

impl AttemptState {
    /// The single table of allowed attempt transitions. Terminal states have no outgoing edge,
    /// so they never reopen.
    pub fn can_transition_to(self, to: AttemptState) -> bool {
        use AttemptState::*;
        matches!(
            (self, to),
            (Pending, Dispatching | Canceled)
                // A fast job may call back before the dispatcher records `running`.
                | (Dispatching, Running | Unknown | Completed | Failed | Canceled)
                | (Running, Completed | Failed | Canceled | TimedOut)
                | (Unknown, Running | Completed | Failed | Canceled | TimedOut)
        )
    }

    /// True for states that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Canceled | Self::TimedOut
        )
    }

    /// True for states that occupy a validator's concurrency slot.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Dispatching | Self::Running | Self::Unknown)
    }

    /// The states counted against a validator's concurrency cap.
    pub const ACTIVE: &'static [Self] = &[Self::Dispatching, Self::Running, Self::Unknown];
}

string_enum!(
    /// What became of one received callback.
    ReceiptOutcome {
        /// It finalized its attempt and run.
        Finalized => "finalized",
        /// A repeat of a callback that already finalized the attempt.
        Duplicate => "duplicate",
        /// It arrived after the attempt had ended another way (failed, canceled, timed out).
        Late => "late",
        /// Refused before touching the attempt (bad token, nonce, output…).
        Rejected => "rejected",
        /// Not a callback: the reconciler found the attempt's job ended without calling back,
        /// read its `output.json`, verified it and finalized the attempt exactly as a callback
        /// would have.
        Salvaged => "salvaged",
    }
);

string_enum!(
    /// Where an attempt's job runs.
    BackendKind {
        /// In-process jobs that behave like a validator container (development, tests).
        Mock => "mock",
        /// `validator-runner` as a local child process.
        Process => "process",
        /// A local Docker container.
        Docker => "docker",
        /// A Google Cloud Run Job execution.
        CloudRun => "cloud_run",
    }
);

/// Which job a backend started for an attempt: the backend, and its own id for the job
/// (execution name, container id, process group…).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BackendRef {
    /// The backend that started it.
    pub kind: BackendKind,
    /// The backend's id of the job.
    pub id: String,
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// A stored run, with the outcome of the attempt that finalized it once completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Time-ordered identifier.
    pub id: RunId,
    /// When the run was accepted.
    pub created_at: DateTime<Utc>,
    /// The validator it runs (key of concurrency caps and backend config).
    pub validator_id: String,
    /// The validator's kind (e.g. `energyplus`, `fmu`).
    pub validator_type: String,
    /// The organisation that asked.
    pub org_id: String,
    /// The workflow it belongs to.
    pub workflow_id: String,
    /// The request as the API accepted it, as JSON text; opaque to the store.
    pub spec: String,
    /// How many attempts it gets and how long a retry waits, fixed when it was created.
    pub retry: RetryPolicy,
    /// Derived from its attempts.
    pub state: RunState,
    /// Set exactly when `state` is `completed`.
    pub result: Option<RunResult>,
    /// When it completed.
    pub finished_at: Option<DateTime<Utc>>,
    /// Final messages from the finalizing attempt's output.
    pub messages: Option<Value>,
    /// Final metrics from the finalizing attempt's output.
    pub metrics: Option<Value>,
    /// The validator-specific results of the finalizing attempt's output (`outputs`).
    pub outputs: Option<Value>,
    /// Where the finalizing attempt's output envelope lives.
    pub output_uri: Option<String>,
    /// Lowercase hex SHA-256 of that output envelope.
    pub output_sha256: Option<String>,
    /// The client's idempotency key, if it sent one (unique per org).
    pub idempotency_key: Option<String>,
    /// The caller-computed SHA-256 of the request that came with the key.
    pub request_sha256: Option<String>,
}

/// How many attempts a run gets and how long each retry waits: exponential backoff from
/// `initial_backoff_ms`, doubling per failed attempt up to `max_backoff_ms`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry, before jitter.
    pub initial_backoff_ms: u64,
    /// The longest wait, before jitter.
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    /// Three attempts, retries after about 5 s and 10 s, never more than 5 minutes apart.
    pub const DEFAULT: Self = Self {
        max_attempts: 3,
        initial_backoff_ms: 5_000,
        max_backoff_ms: 300_000,
    };

    /// The wait before the attempt after attempt `failed` (1-based) starts: the exponential
    /// backoff `b` for that attempt, jittered to `b/2 + jitter·b/2` ("equal jitter": never
    /// less than half, so retries of many runs spread out without any coming at once).
    /// `jitter` is in `[0, 1]`.
    pub fn backoff(&self, failed: u32, jitter: f64) -> TimeDelta {
        let doublings = failed.saturating_sub(1).min(63);
        let full = self
            .initial_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms)
            .max(self.initial_backoff_ms.min(self.max_backoff_ms));
        let half = full / 2;
        let jittered = half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64;
        TimeDelta::milliseconds(i64::try_from(jittered).unwrap_or(i64::MAX))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A stored attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Time-ordered identifier.
    pub id: AttemptId,
    /// The run it belongs to.
    pub run_id: RunId,
    /// 1 for the first try, n + 1 for each retry.
    pub number: u32,
    /// Where it is in its lifecycle.
    pub state: AttemptState,
    /// Copied from the run so that concurrency caps need no join.
    pub validator_id: String,
    /// Not dispatched before this time (backoff for retries).
    pub not_before: DateTime<Utc>,
    /// Its folder in object storage (see [`Attempt::paths`]).
    pub storage_prefix: String,
    /// The identifier its callback must carry (unique across attempts).
    pub callback_id: String,
    /// Hash (commitment) of the callback nonce; the nonce itself is never stored. A retry made
    /// by the store has none until the launcher, which holds the nonce key, dispatches it.
    pub callback_nonce_sha256: Option<String>,
    /// When it must have finished, set once it is dispatched.
    pub deadline_at: Option<DateTime<Utc>>,
    /// The job a backend started for it, once one did.
    pub backend: Option<BackendRef>,
    /// Cancellation was asked for while it was active; the reconciler carries it to the backend.
    pub cancel_requested: bool,
    /// Why it failed or went unknown.
    pub error: Option<String>,
    /// The job's exit code, when it ended without a result and the backend said how.
    pub exit_code: Option<i32>,
    /// The end of the job's log, when it ended without a result and the backend kept one.
    pub log_tail: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a dispatcher claimed it.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When the backend accepted it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The identity (service-account email) its job runs as, which alone may call back for it;
    /// `None` where any allowed caller may (validators that name no `service_account`).
    pub caller_identity: Option<String>,
    /// The image its job ran, as the backend reported it at launch: on Cloud Run the
    /// execution's container image (pinned by digest under `image_policy: digest`), on Docker
    /// the local image id; `None` where the backend cannot tell (mock, process).
    pub image: Option<String>,
    /// When its job last said it is alive (a heartbeat through the callback service).
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// What its job last said it is doing: `{"fraction": 0..1, "message": "…"}`.
    pub progress: Option<Value>,
}

impl Attempt {
    /// Its objects in storage: `input.json`, `output.json`, `outputs/…`.
    pub fn paths(&self) -> Result<AttemptPaths, StoreError> {
        AttemptPaths::from_root(&self.storage_prefix).map_err(|e| {
            StoreError::Corrupt(format!("attempt {} has a bad storage prefix: {e}", self.id))
        })
    }
}

/// A run together with all its attempts, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunWithAttempts {
    /// The run.
    pub run: Run,
    /// Its attempts ordered by `number`.
    pub attempts: Vec<Attempt>,
}

/// A claimed attempt with its run, so that dispatching needs no further read.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The attempt, now `dispatching`.
    pub attempt: Attempt,
    /// Its run, now `running`.
    pub run: Run,
}

/// The first attempt of a new run. Its id is chosen by the caller because the callback nonce
/// (and so its commitment) is derived from it by the launcher's key.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    /// Its identifier.
    pub id: AttemptId,
    /// The commitment of its callback nonce.
    pub callback_nonce_sha256: String,
    /// The identity its job will run as, which alone may call back for it (retries inherit it).
    pub caller_identity: Option<String>,
}

/// A client's idempotency key with the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key as the client sent it; unique per org.
    pub key: String,
    /// Caller-computed SHA-256 of the request, to tell a retry from a different request.
    pub request_sha256: String,
}

/// Everything needed to store a new run and its first attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Its identifier.
    pub id: RunId,
    /// When it was accepted (and when its first attempt is due).
    pub created_at: DateTime<Utc>,
    /// The validator to run.
    pub validator_id: String,
    /// The validator's kind.
    pub validator_type: String,
    /// The organisation that asked (one storage key segment).
    pub org_id: String,
    /// The workflow it belongs to.
    pub workflow_id: String,
    /// The accepted request as JSON text; opaque to the store.
    pub spec: String,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
    /// Present when the client sent an `Idempotency-Key`.
    pub idempotency: Option<Idempotency>,
    /// The first attempt.
    pub first_attempt: NewAttempt,
}

/// What [`RunStore::create_run`](super::RunStore::create_run) did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// A new run and its first attempt were stored.
    Created(RunWithAttempts),
    /// The idempotency key matched an earlier identical request; nothing was stored.
    Existing(RunWithAttempts),
}

impl CreateOutcome {
    /// The run, new or existing.
    pub fn run(&self) -> &RunWithAttempts {
        match self {
            Self::Created(r) | Self::Existing(r) => r,
        }
    }
}

/// The backend accepted an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkRunning {
    /// The attempt (in `dispatching` or `unknown`).
    pub attempt_id: AttemptId,
    /// The job the backend started.
    pub backend: BackendRef,
    /// When it must have finished; kept if `None` and one is already stored.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When the backend accepted it.
    pub at: DateTime<Utc>,
    /// The image the job runs, when the backend tells; kept if `None` and one is already stored.
    pub image: Option<String>,
}

/// Ends an attempt without an output: `failed`, `canceled` or `timed_out`.
#[derive(Debug, Clone, PartialEq)]
pub struct EndAttempt {
    /// The attempt.
    pub attempt_id: AttemptId,
    /// `failed`, `canceled` or `timed_out`.
    pub to: AttemptState,
    /// Why, in a sentence.
    pub reason: String,
    /// The job's exit code, if the backend reported one.
    pub exit_code: Option<i32>,
    /// The end of the job's log, if the backend kept one.
    pub log_tail: Option<String>,
    /// Whether another attempt could succeed (a launch error, a lost or crashed job, an
    /// unusable output); the store retries only then, and only while the run's policy allows.
    pub retryable: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// What [`RunStore::end_attempt`](super::RunStore::end_attempt) did to the run.
#[derive(Debug, Clone, PartialEq)]
pub enum EndOutcome {
    /// A retry attempt was created and the run is queued again.
    Retrying {
        /// The ended attempt.
        ended: Attempt,
        /// The new pending attempt.
        retry: Attempt,
    },
    /// The run completed (with `error`, `canceled` or `timed_out`).
    RunCompleted {
        /// The ended attempt.
        ended: Attempt,
        /// The completed run.
        run: Run,
        /// The attempt was retryable but the run's attempts were used up.
        attempts_exhausted: bool,
    },
}

/// Who finalizes an attempt with its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizedBy {
    /// The job's verified callback, presenting this callback id.
    Callback {
        /// The callback id it presented (must be the attempt's).
        callback_id: String,
    },
    /// The reconciler, which found a verified `output.json` of a job that never called back.
    Salvage,
}

/// A verified output envelope to record, in one transaction, as the attempt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Finalize {
    /// The attempt being finalized.
    pub attempt_id: AttemptId,
    /// A callback, or the reconciler's salvage.
    pub by: FinalizedBy,
    /// The output envelope's status: decides the attempt's end and the run's result.
    pub status: ValidationStatus,
    /// Messages from the output envelope.
    pub messages: Value,
    /// Metrics from the output envelope.
    pub metrics: Value,
    /// The output envelope's validator-specific results.
    pub outputs: Option<Value>,
    /// Where the output envelope lives.
    pub output_uri: String,
    /// Its SHA-256.
    pub output_sha256: String,
    /// When it was accepted.
    pub at: DateTime<Utc>,
}

/// What [`RunStore::finalize_attempt`](super::RunStore::finalize_attempt) did.
#[derive(Debug, Clone, PartialEq)]
pub enum FinalizeOutcome {
    /// This call finalized the attempt and completed the run.
    Finalized(RunWithAttempts),
    /// The attempt was already terminal. A callback is recorded as a `duplicate` or `late`
    /// receipt; a salvage records nothing (`recorded_as` is `None`).
    AlreadyTerminal {
        /// The attempt as it stands.
        attempt: Attempt,
        /// The receipt recorded for a callback.
        recorded_as: Option<ReceiptOutcome>,
    },
}

/// What [`RunStore::request_cancel`](super::RunStore::request_cancel) did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The pending attempt was canceled and the run completed as `canceled`.
    Canceled(Run),
    /// The current attempt is active; it is flagged `cancel_requested` for the reconciler.
    Requested(Attempt),
    /// The run had already completed; nothing changed.
    AlreadyCompleted(Run),
}

/// One received callback, whatever became of it (and the reconciler's salvages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackReceipt {
    /// Its identifier.
    pub id: ReceiptId,
    /// The attempt it named, when one was found.
    pub attempt_id: Option<AttemptId>,
    /// The callback id it presented (the attempt's own for a salvage).
    pub callback_id: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// What became of it.
    pub outcome: ReceiptOutcome,
    /// Free text (why it was rejected…).
    pub detail: Option<String>,
}

/// A receipt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReceipt {
    /// The attempt it named, when one was found.
    pub attempt_id: Option<AttemptId>,
    /// The callback id it presented.
    pub callback_id: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// What became of it.
    pub outcome: ReceiptOutcome,
    /// Free text.
    pub detail: Option<String>,
}

/// One event waiting for (or past) delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Its identifier (also the webhook id).
    pub id: OutboxId,
    /// The run it is about.
    pub run_id: RunId,
    /// Event type, e.g. `run.completed`.
    pub event: String,
    /// The webhook body.
    pub payload: Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// How many deliveries were started (incremented by each claim).
    pub attempts: u32,
    /// When it may next be claimed (the lease end while a deliverer holds it).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was given up.
    pub dead_at: Option<DateTime<Utc>>,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// The event written when a run completes.
pub const RUN_COMPLETED_EVENT: &str = "run.completed";
/// The event written the first time a job of a run is known to run.
pub const RUN_STARTED_EVENT: &str = "run.started";
/// The event written when an attempt ends `failed` or `timed_out` (retried or not).
pub const ATTEMPT_FAILED_EVENT: &str = "attempt.failed";
/// The event written when a running job reports new progress (a heartbeat with progress).
pub const ATTEMPT_PROGRESS_EVENT: &str = "attempt.progress";
/// Every event type, in the order a run can produce them.
pub const EVENT_TYPES: [&str; 4] = [
    RUN_STARTED_EVENT,
    ATTEMPT_PROGRESS_EVENT,
    ATTEMPT_FAILED_EVENT,
    RUN_COMPLETED_EVENT,
];

/// What a wake-up from the database says may have changed, in any process using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wake {
    /// Attempts were added (a new run, a retry): the dispatchers may have work.
    Due,
    /// Events were written: the event streams may have more to send.
    Events,
}

/// Whose events a stream follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventScope {
    /// One run's.
    Run(RunId),
    /// Every run of one organization.
    Org(String),
}

/// An event as a stream returns it, with the cursor that resumes after it (the SSE `id`).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
    /// `<position>.<event id>`; give it back as `after` to continue after this event.
    pub cursor: String,
    /// The event.
    pub event: OutboxEvent,
}

/// The event a cursor points at (its part after the last `.`), if it is shaped like one.
pub fn cursor_event(cursor: &str) -> Option<OutboxId> {
    let (_, id) = cursor.rsplit_once('.')?;
    uuid::Uuid::parse_str(id).ok().map(OutboxId::from_uuid)
}

/// Filters for [`RunStore::list_runs`](super::RunStore::list_runs); `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs of this validator.
    pub validator_id: Option<String>,
    /// Only runs of this organisation.
    pub org_id: Option<String>,
}

/// An opaque position in a newest-first run listing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunCursor {
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) id: RunId,
}

impl RunCursor {
    pub(crate) fn after(run: &Run) -> Self {
        Self {
            created_at: run.created_at,
            id: run.id,
        }
    }

    /// Parses a cursor previously produced by `Display`.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::BadCursor(s.to_owned());
        let bytes = hex::decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (micros, id) = text.split_once('/').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at: from_micros(micros)?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for RunCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex keeps it URL-safe and discourages clients from building cursors themselves.
        let plain = format!("{}/{}", self.created_at.timestamp_micros(), self.id);
        f.write_str(&hex::encode(plain))
    }
}

impl FromStr for RunCursor {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One page of a run listing.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    /// Newest first.
    pub runs: Vec<Run>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<RunCursor>,
}

/// How many runs are in each state, and completed runs with each result: the live counts of
/// [`RunStore::count_runs`](super::RunStore::count_runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(description = "How many runs are in each state, and completed runs with each result.")
)]
pub struct RunCounts {
    /// Runs waiting for a dispatch (first try or a scheduled retry).
    pub queued: u64,
    /// Runs whose current attempt was claimed.
    pub running: u64,
    /// Finished runs, whatever their result.
    pub completed: u64,
    /// Completed and passed.
    pub passed: u64,
    /// Completed with validation findings.
    pub failed: u64,
    /// Completed because the validator or the platform failed.
    pub error: u64,
    /// Completed on a cancel.
    pub canceled: u64,
    /// Completed past the deadline.
    pub timed_out: u64,
}

impl RunCounts {
    /// Adds `n` runs in `state` (with `result`, once completed).
    pub fn add(&mut self, state: RunState, result: Option<RunResult>, n: u64) {
        match state {
            RunState::Queued => self.queued += n,
            RunState::Running => self.running += n,
            RunState::Completed => self.completed += n,
        }
        match result {
            Some(RunResult::Passed) => self.passed += n,
            Some(RunResult::Failed) => self.failed += n,
            Some(RunResult::Error) => self.error += n,
            Some(RunResult::Canceled) => self.canceled += n,
            Some(RunResult::TimedOut) => self.timed_out += n,
            None => {}
        }
    }

    /// Every run counted.
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.completed
    }
}

/// One validator's attempts: those active now, and those that ended in a recent window, as
/// [`RunStore::validator_activity`](super::RunStore::validator_activity) counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ValidatorActivity {
    /// The validator.
    pub validator_id: String,
    /// Attempts waiting for a dispatch.
    pub pending: u64,
    /// Attempts `dispatching`, `running` or `unknown`: what a validator's cap limits.
    pub in_flight: u64,
    /// Attempts that ended `completed` (with an output) in the window.
    pub completed: u64,
    /// Attempts that ended `failed` in the window.
    pub failed: u64,
    /// Attempts that ended `timed_out` in the window.
    pub timed_out: u64,
    /// Attempts that ended `canceled` in the window.
    pub canceled: u64,
    /// Median duration, dispatch to end, of the attempts that ended `completed`, `failed` or
    /// `timed_out` in the window after a dispatch (nearest rank).
    pub duration_p50_ms: Option<u64>,
    /// The 95th percentile of the same durations (nearest rank).
    pub duration_p95_ms: Option<u64>,
}

impl ValidatorActivity {
    /// An empty record for `validator_id`.
    pub fn new(validator_id: impl Into<String>) -> Self {
        Self {
            validator_id: validator_id.into(),
            ..Self::default()
        }
    }

    /// Adds `n` attempts in `state`.
    pub fn add(&mut self, state: AttemptState, n: u64) {
        match state {
            AttemptState::Pending => self.pending += n,
            AttemptState::Dispatching | AttemptState::Running | AttemptState::Unknown => {
                self.in_flight += n;
            }
            AttemptState::Completed => self.completed += n,
            AttemptState::Failed => self.failed += n,
            AttemptState::TimedOut => self.timed_out += n,
            AttemptState::Canceled => self.canceled += n,
        }
    }

    /// Attempts that ended in the window other than by a cancel.
    pub fn ended(&self) -> u64 {
        self.completed + self.failed + self.timed_out
    }

    /// The share of [`ended`](Self::ended) attempts that ended `failed` or `timed_out` (no
    /// usable output); `None` when none ended. A cancel is neither a success nor an error.
    pub fn error_rate(&self) -> Option<f64> {
        let ended = self.ended();
        (ended > 0).then(|| (self.failed + self.timed_out) as f64 / ended as f64)
    }
}

/// The 1-based rank of the `percent`th percentile among `n` sorted values (nearest rank:
/// `ceil(percent × n / 100)`); the stores select this row.
pub fn nearest_rank(percent: u64, n: u64) -> u64 {
    (percent * n).div_ceil(100).max(1)
}

/// Puts together what a store read for [`ValidatorActivity`]: attempt counts by
/// `(validator, state)`, and duration rows `(validator, n, rank, ms)` of which each validator
/// has the ones at the ranks of its p50 and p95 among its `n` durations.
pub(crate) fn assemble_activity(
    counts: impl IntoIterator<Item = (String, AttemptState, u64)>,
    durations: impl IntoIterator<Item = (String, u64, u64, u64)>,
) -> Vec<ValidatorActivity> {
    let mut by_id: std::collections::BTreeMap<String, ValidatorActivity> = Default::default();
    for (validator, state, n) in counts {
        by_id
            .entry(validator.clone())
            .or_insert_with(|| ValidatorActivity::new(validator))
            .add(state, n);
    }
    for (validator, n, rank, ms) in durations {
        let activity = by_id
            .entry(validator.clone())
            .or_insert_with(|| ValidatorActivity::new(validator));
        if rank == nearest_rank(50, n) {
            activity.duration_p50_ms = Some(ms);
        }
        if rank == nearest_rank(95, n) {
            activity.duration_p95_ms = Some(ms);
        }
    }
    by_id.into_values().collect()
}

pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_micros(micros)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros} µs is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_within_the_upper_half() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 8_000,
        };
        let ms = |failed, jitter| policy.backoff(failed, jitter).num_milliseconds();
        assert_eq!((ms(1, 0.0), ms(1, 1.0)), (500, 1_000));
        assert_eq!((ms(2, 0.0), ms(2, 1.0)), (1_000, 2_000));
        assert_eq!((ms(3, 0.5), ms(4, 1.0)), (3_000, 8_000));
        assert_eq!(ms(40, 1.0), 8_000, "capped");
        assert_eq!(ms(u32::MAX, 1.0), 8_000, "no overflow");
        assert_eq!(ms(1, 7.0), 1_000, "jitter is clamped");
    }
}
