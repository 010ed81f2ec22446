//! Server-sent event streams: `GET /v1/runs/{id}/events` (one run's) and
//! `GET /v1/events?org=…` (every run of an org). Each SSE message is one outbox event —
//! `run.started`, `attempt.progress`, `attempt.failed`, `run.completed` — with the event type as `event`, the
//! webhook body as `data` and a cursor as `id`. A client that reconnects with `Last-Event-ID`
//! (or `?after=`) gets exactly what followed: the store returns events only once nothing can
//! still appear before them ([`RunStore::events_after`]). A run's stream ends after its
//! `run.completed`; an org's stream does not end.
//!
//! An idle stream reads the store again when woken (on PostgreSQL a trigger notifies every
//! replica that events were written) or after [`POLL_INTERVAL`] at the latest, and sends an SSE
//! comment every [`KEEP_ALIVE`] so proxies keep the connection open.
//!
//! [`RunStore::events_after`]: runway_runs::RunStore::events_after

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use anyhow::Context;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use runway_runs::{
    EventScope, OutboxId, RUN_COMPLETED_EVENT, RunStore, StoreError, StreamedEvent, cursor_event,
};
use serde::Deserialize;

use super::error::{ApiError, ErrorBody, Internal, Unauthenticated};
use super::runs::{caller_of, run_id, run_not_found};
use crate::AppState;
use crate::auth::Caller;
use crate::registry::is_valid_id;

/// How often an idle stream reads the store.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often an idle stream sends a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events read from the store at once.
const PAGE: u32 = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunStreamParams {
    /// Resume after this event id (the `id` of the last event received); `Last-Event-ID`
    /// takes precedence.
    after: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrgStreamParams {
    /// The organization; an API key's own when left out (required otherwise).
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    org: Option<String>,
    /// Resume after this event id (the `id` of the last event received); `Last-Event-ID`
    /// takes precedence.
    after: Option<String>,
}

/// Stream a run's events (server-sent events); ends after `run.completed`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    operation_id = "streamRunEvents",
    tag = "runs",
    params(
        ("id" = uuid::Uuid, Path, description = "The run id (a UUID)."),
        RunStreamParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Resume after this event id, as SSE clients send on reconnecting."),
    ),
    responses(
        (status = 200, description = "A stream of server-sent events, one per outbox event (`run.started`, `attempt.progress`, `attempt.failed`, `run.completed`): `event` is the type, `data` the event's JSON (as delivered to webhooks), `id` a cursor. Reconnect with `Last-Event-ID` (or `after`) to get exactly what followed.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_run_id`, or `invalid_parameter` (an event id this stream did not give).", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "`run_not_found` (also another org's run).", body = ErrorBody),
        Internal,
    ),
)]
pub(crate) async fn run_events(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<RunStreamParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = run_id(path)?;
    let Query(params) = query.map_err(|e| bad_query(&e, "after"))?;
    let store = state.deps.store.clone();
    store
        .get_run(id)
        .await
        .with_context(|| format!("reading run {id}"))?
        .filter(|run| caller_of(caller.as_ref()).may_see(&run.run.org_id))
        .ok_or_else(|| run_not_found(id))?;
    let after = resume_point(&headers, params.after)?;
    Tail::open(
        store,
        state.events.clone(),
        EventScope::Run(id),
        after,
        true,
    )
    .await
}

/// Stream every event of an organization's runs (server-sent events); does not end.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "streamOrgEvents",
    tag = "runs",
    params(
        OrgStreamParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Resume after this event id, as SSE clients send on reconnecting."),
    ),
    responses(
        (status = 200, description = "A stream of server-sent events, one per outbox event (`run.started`, `attempt.progress`, `attempt.failed`, `run.completed`): `event` is the type, `data` the event's JSON (as delivered to webhooks), `id` a cursor. Reconnect with `Last-Event-ID` (or `after`) to get exactly what followed.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_parameter` (a bad or missing org, an event id this stream did not give).", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "`wrong_org`: an API key of another org.", body = ErrorBody),
        Internal,
    ),
)]
pub(crate) async fn org_events(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    query: Result<Query<OrgStreamParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let caller = caller_of(caller.as_ref());
    let Query(params) = query.map_err(|e| bad_query(&e, "org and after"))?;
    let org = match (params.org, caller.org()) {
        (Some(org), _) => {
            if !is_valid_id(&org) {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("parameter org: {org:?} is not an organization id"),
                ));
            }
            caller.check_org(&org)?;
            org
        }
        (None, Some(own)) => own.to_owned(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "parameter org is required: whose events to stream",
            ));
        }
    };
    let after = resume_point(&headers, params.after)?;
    Tail::open(
        state.deps.store.clone(),
        state.events.clone(),
        EventScope::Org(org),
        after,
        false,
    )
    .await
}

fn bad_query(e: &QueryRejection, known: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_parameter",
        format!(
            "the query string is invalid ({}); the parameters are {known}",
            e.body_text()
        ),
    )
}

/// Where to resume: `Last-Event-ID` (what browsers and SSE clients send on reconnecting), else
/// `?after=`; `None` from the first event.
fn resume_point(headers: &HeaderMap, after: Option<String>) -> Result<Option<String>, ApiError> {
    let header = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        "Last-Event-ID is not text; send the id of the last event received",
                    )
                })?
                .to_owned(),
        ),
    };
    Ok(header.or(after).filter(|c| !c.is_empty()))
}

/// One stream's position and what it has read but not yet sent.
struct Tail {
    store: Arc<dyn RunStore>,
    /// Notified when events may have been written (on PostgreSQL, by any replica).
    written: Arc<Notify>,
    scope: EventScope,
    cursor: Option<String>,
    buffer: VecDeque<StreamedEvent>,
    /// End after `run.completed` (a run's stream).
    ends_with_run: bool,
    /// The last event sent (or resumed after) that was checked for being the run's completion.
    checked: Option<OutboxId>,
    done: bool,
}

impl Tail {
    /// Reads the first page now, so that a bad cursor is a 400 rather than a broken stream.
    async fn open(
        store: Arc<dyn RunStore>,
        written: Arc<Notify>,
        scope: EventScope,
        after: Option<String>,
        ends_with_run: bool,
    ) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
        let first = match store.events_after(&scope, after.as_deref(), PAGE).await {
            Ok(page) => page,
            Err(StoreError::Invalid(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!(
                        "{:?} is not an event id from this stream (Last-Event-ID or after)",
                        after.unwrap_or_default()
                    ),
                ));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("reading events").into()),
        };
        let mut tail = Tail {
            store,
            written,
            scope,
            cursor: after,
            buffer: VecDeque::new(),
            ends_with_run,
            checked: None,
            done: false,
        };
        tail.take(first);
        let stream = futures::stream::unfold(tail, |mut tail| async move {
            tail.next().await.map(|event| (Ok(event), tail))
        });
        Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
    }

    fn take(&mut self, page: Vec<StreamedEvent>) {
        if let Some(last) = page.last() {
            self.cursor = Some(last.cursor.clone());
        }
        self.buffer.extend(page);
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(streamed) = self.buffer.pop_front() {
                if self.ends_with_run && streamed.event.event == RUN_COMPLETED_EVENT {
                    self.done = true;
                }
                return Some(
                    Event::default()
                        .id(streamed.cursor)
                        .event(streamed.event.event)
                        .data(streamed.event.payload.to_string()),
                );
            }
            if self.done || self.resumed_after_completion().await {
                return None;
            }
            match self
                .store
                .events_after(&self.scope, self.cursor.as_deref(), PAGE)
                .await
            {
                Ok(page) if !page.is_empty() => self.take(page),
                Ok(_) => {
                    tokio::select! {
                        () = self.written.notified() => {}
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
                Err(e) => {
                    // The store is away (a restart): the stream waits for it.
                    tracing::warn!(error = %e, "event stream cannot read the store; retrying");
                    tokio::time::sleep(POLL_INTERVAL * 8).await;
                }
            }
        }
    }

    /// Whether a run's stream was resumed after the run's `run.completed` (nothing follows).
    async fn resumed_after_completion(&mut self) -> bool {
        let EventScope::Run(run) = &self.scope else {
            return false;
        };
        let Some(last) = self.cursor.as_deref().and_then(cursor_event) else {
            return false;
        };
        if !self.ends_with_run || self.checked == Some(last) {
            return false;
        }
        self.checked = Some(last);
        match self.store.outbox_for_run(*run).await {
            Ok(events) => events
                .iter()
                .any(|e| e.id == last && e.event == RUN_COMPLETED_EVENT),
            Err(_) => false,
        }
    }
}
