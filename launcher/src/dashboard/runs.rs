//! The runs pages: the list with its counts by state, one run with its attempts, the run's
//! event stream and envelopes, and the cancel and retry actions — each through the API's own handler.

use anyhow::Context;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use maud::{Markup, html};
use runway_contract::input::MAX_INPUT_ENVELOPE_BYTES;
use runway_contract::output::MAX_OUTPUT_ENVELOPE_BYTES;
use runway_runs::{AttemptId, EventScope, RunCounts, RunId, RunState};
use runway_storage::StorageError;
use serde::Deserialize;
use serde_json::Value;

use super::layout::{Nav, badge, duration, page, plain, query, text, when};
use super::{ErrorPage, LoginForm, PageError};
use crate::AppState;
use crate::api::ApiError;
use crate::api::events::{self, RunStreamParams};
use crate::api::runs::{self as api, ListParams};
use crate::auth::Caller;

/// How often the runs page refreshes its counts, in milliseconds.
const COUNTS_REFRESH_MS: u32 = 3_000;

/// The runs page's filters, as its form sends them (an empty field is no filter).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    /// `queued`, `running` or `completed`; empty for any.
    state: Option<String>,
    /// A validator id.
    validator: Option<String>,
    /// An org id (an API key sees its own org only).
    org: Option<String>,
    /// Page size, 1 to 200.
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl RunsQuery {
    /// The API's listing parameters.
    fn params(&self) -> ListParams {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        ListParams {
            state: given(&self.state),
            validator: given(&self.validator),
            org: given(&self.org),
            limit: given(&self.limit),
            cursor: given(&self.cursor),
        }
    }
}

fn bad_query(e: &QueryRejection) -> PageError {
    PageError(ApiError::bad_request(
        "invalid_parameter",
        format!("the query string is invalid ({})", e.body_text()),
    ))
}

/// Runs page: the runs newest first with filters, and counts by state refreshed live.
#[utoipa::path(
    get,
    path = "/dashboard/runs",
    operation_id = "dashboardRuns",
    tag = "dashboard",
    params(RunsQuery),
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html"),
        (status = 400, description = "A filter is invalid (as `GET /v1/runs` says).", body = String, content_type = "text/html"),
        LoginForm,
        (status = 403, description = "`wrong_org`: an API key asked for another org.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query_string: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Markup, PageError> {
    let Query(asked) = query_string.map_err(|e| bad_query(&e))?;
    let params = asked.params();
    let filter = api::run_filter(&caller, &params)?;
    let counts = state
        .deps
        .store
        .count_runs(&filter)
        .await
        .context("counting runs")?;
    let Json(listing) = api::list_runs(
        State(state.clone()),
        Some(Extension(caller.clone())),
        Ok(Query(params)),
    )
    .await?;
    let runs = listing.runs;
    let scope = [
        ("validator", filter.validator_id.as_deref()),
        (
            "org",
            asked.org.as_deref().filter(|_| caller.org().is_none()),
        ),
    ];
    let counts_url = format!("/dashboard/runs/counts{}", query(&scope));
    let next = listing.next_cursor.as_deref().map(|cursor| {
        format!(
            "/dashboard/runs{}",
            query(&[
                ("state", filter.state.map(|s| s.as_str())),
                scope[0],
                scope[1],
                ("limit", asked.limit.as_deref()),
                ("cursor", Some(cursor)),
            ])
        )
    });
    let selected = filter.state.map(|s| s.as_str()).unwrap_or("");
    let body = html! {
        h1 { "Runs" }
        section.counts #counts data-counts-url=(counts_url) data-refresh-ms=(COUNTS_REFRESH_MS) {
            @for (key, label, n) in count_cells(&counts) {
                div.count {
                    span.n id={ "count-" (key) } { (n) }
                    span.label { (label) }
                }
            }
        }
        form.filters #filters method="get" action="/dashboard/runs" {
            label { "State "
                select name="state" {
                    option value="" selected[selected.is_empty()] { "any" }
                    @for s in RunState::ALL {
                        option value=(s.as_str()) selected[selected == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Validator "
                select name="validator" {
                    option value="" { "any" }
                    @for v in state.registry.iter() {
                        option value=(v.id) selected[filter.validator_id.as_deref() == Some(v.id.as_str())] { (v.id) }
                    }
                }
            }
            @if caller.org().is_none() {
                label { "Org " input type="text" name="org" value=(asked.org.as_deref().unwrap_or("")) placeholder="any"; }
            }
            button type="submit" { "Filter" }
        }
        @if runs.is_empty() {
            p.empty #no-runs { "No runs match." }
        } @else {
            table #runs {
                thead { tr { th { "Run" } th { "State" } th { "Result" } th { "Validator" } th { "Org" } th { "Workflow" } th { "Created" } th { "Took" } } }
                tbody {
                    @for run in &runs {
                        @let id = text(run, "id");
                        tr data-run-id=(id) data-state=(text(run, "state")) {
                            td { a.mono href={ "/dashboard/runs/" (id) } { (id) } }
                            td { (badge(text(run, "state"))) }
                            td { @if let Some(result) = run["result"].as_str() { (badge(result)) } @else { "—" } }
                            td { (text(&run["validator"], "id")) }
                            td { (text(&run["org"], "id")) }
                            td { (text(&run["workflow"], "id")) }
                            td { (when(&run["created_at"])) }
                            td { (duration(run["timing"]["total_ms"].as_u64())) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a #next-page href=(next) { "Older runs →" } }
        }
    };
    Ok(page("Runs", Nav::Runs, Some(&caller), body))
}

fn count_cells(c: &RunCounts) -> [(&'static str, &'static str, u64); 8] {
    [
        ("queued", "queued", c.queued),
        ("running", "running", c.running),
        ("completed", "completed", c.completed),
        ("passed", "passed", c.passed),
        ("failed", "failed", c.failed),
        ("error", "error", c.error),
        ("canceled", "canceled", c.canceled),
        ("timed_out", "timed out", c.timed_out),
    ]
}

/// The runs page's live numbers: runs by state and result.
///
/// Takes the runs page's filters; `limit` and `cursor` are ignored.
#[utoipa::path(
    get,
    path = "/dashboard/runs/counts",
    operation_id = "dashboardRunCounts",
    tag = "dashboard",
    params(RunsQuery),
    responses(
        (status = 200, description = "Counts.", body = RunCounts),
        (status = 400, description = "A filter is invalid.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 403, description = "`wrong_org`.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn counts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query_string: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<RunCounts>, PageError> {
    let Query(asked) = query_string.map_err(|e| bad_query(&e))?;
    let filter = api::run_filter(&caller, &asked.params())?;
    let counts = state
        .deps
        .store
        .count_runs(&filter)
        .await
        .context("counting runs")?;
    Ok(Json(counts))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DetailQuery {
    /// `canceled`, `cancel-requested` or `retried`, after an action.
    notice: Option<String>,
}

/// Run page: state, result, the attempts' timeline (times, backend job, exit code, log tail or
/// Cloud Run log link, envelope links), input files, messages, metrics, outputs, and the cancel
/// and retry actions.
#[utoipa::path(
    get,
    path = "/dashboard/runs/{id}",
    operation_id = "dashboardRun",
    tag = "dashboard",
    params(("id" = uuid::Uuid, Path, description = "The run id (a UUID)."), DetailQuery),
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html"),
        (status = 400, description = "`invalid_run_id`.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 404, description = "`run_not_found` (also another org's run).", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn detail(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    notice: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Markup, PageError> {
    let Json(run) = api::get_run(
        State(state.clone()),
        Some(Extension(caller.clone())),
        Ok(Path(id)),
    )
    .await?;
    let id = text(&run, "id").to_owned();
    let run_id: RunId = id.parse().context("the run view's id is a run id")?;
    let completed = text(&run, "state") == "completed";
    // The page follows its run's events from where it was drawn, until the run completes.
    let events_url = if completed {
        None
    } else {
        let after = last_event(&state, run_id).await?;
        Some(format!(
            "/dashboard/runs/{id}/events{}",
            query(&[("after", after.as_deref())])
        ))
    };
    let notice = notice
        .ok()
        .and_then(|Query(q)| q.notice)
        .and_then(|n| match n.as_str() {
            "canceled" => Some("The run was queued: it is canceled."),
            "retried" => Some("A new run of the same validator, inputs and files: this one."),
            // Once the run completed, its state says the rest.
            "cancel-requested" if !completed => {
                Some("Cancel requested: the reconciler stops the job and ends the run canceled.")
            }
            _ => None,
        });
    let attempts = run["attempts"].as_array().cloned().unwrap_or_default();
    let body = html! {
        section #run data-run-id=(id) data-state=(text(&run, "state")) data-events-url=[events_url] {
            h1 { "Run " span.mono { (id) } }
            @if let Some(notice) = notice { p.notice #notice { (notice) } }
            dl.facts {
                dt { "State" } dd #run-state { (badge(text(&run, "state"))) @if run["cancel_requested"] == true && !completed { " (cancel requested)" } }
                dt { "Result" } dd #run-result { @if let Some(r) = run["result"].as_str() { (badge(r)) } @else { "—" } }
                dt { "Validator" } dd { (text(&run["validator"], "id")) " (" (plain(&run["validator"]["type"])) " " (text(&run["validator"], "version")) ")" }
                dt { "Org" } dd { (text(&run["org"], "id")) " — " (text(&run["org"], "name")) }
                dt { "Workflow" } dd { (text(&run["workflow"], "id")) " / step " (plain(&run["workflow"]["step_id"])) @if let Some(name) = run["workflow"]["step_name"].as_str() { " (" (name) ")" } }
                dt { "Tags" } dd #run-tags { @for tag in run["tags"].as_array().into_iter().flatten() { span.tag { (plain(tag)) } " " } }
                dt { "Created" } dd { (when(&run["created_at"])) }
                dt { "Finished" } dd { (when(&run["finished_at"])) }
                dt { "Queued / running / total" } dd { (duration(run["timing"]["queued_ms"].as_u64())) " / " (duration(run["timing"]["running_ms"].as_u64())) " / " (duration(run["timing"]["total_ms"].as_u64())) }
                dt { "Output" } dd.mono { (plain(&run["output_uri"])) }
                @if let Some(original) = run["retry_of"].as_str() {
                    dt { "Retry of" } dd #retry-of { a.mono href={ "/dashboard/runs/" (original) } { (original) } }
                }
            }
            div.actions {
                @if !completed {
                    form #cancel-form method="post" action={ "/dashboard/runs/" (id) "/cancel" } {
                        button #cancel type="submit" { "Cancel run" }
                    }
                }
                @if completed {
                    // The key makes a double submit of this page's form one retry, not two.
                    form #retry-form method="post" action={ "/dashboard/runs/" (id) "/retry" } {
                        input type="hidden" name="key" value=(uuid::Uuid::new_v4().to_string());
                        button #retry type="submit" { "Retry run" }
                    }
                }
            }
            h2 { "Attempts" }
            ol.timeline #attempts {
                @for attempt in &attempts {
                    (attempt_item(&id, attempt))
                }
            }
            h2 { "Input files" }
            table #files {
                thead { tr { th { "Name" } th { "Port" } th { "Role" } th { "Type" } th { "Size" } th { "SHA-256" } } }
                tbody {
                    @for file in run["files"].as_array().into_iter().flatten() {
                        tr { td { (text(file, "name")) } td { (text(file, "port_key")) } td { (plain(&file["role"])) } td { (plain(&file["mime_type"])) } td { (plain(&file["size_bytes"])) " B" } td.mono { (text(file, "sha256")) } }
                    }
                }
            }
            h2 { "Messages" }
            (messages(&run["messages"]))
            h2 { "Metrics" }
            (metrics(&run["metrics"]))
            @if !run["outputs"].is_null() {
                h2 { "Outputs" }
                pre #outputs { (serde_json::to_string_pretty(&run["outputs"]).unwrap_or_default()) }
            }
        }
    };
    Ok(page(&format!("Run {id}"), Nav::Runs, Some(&caller), body))
}

/// One attempt of the timeline.
fn attempt_item(run_id: &str, a: &Value) -> Markup {
    let attempt_id = text(a, "id");
    let files = format!("/dashboard/runs/{run_id}/attempts/{attempt_id}");
    let log_tail = a["log_tail"].as_str();
    let log_link = log_tail.and_then(cloud_run_log_link);
    html! {
        li.attempt data-attempt-id=(attempt_id) data-state=(text(a, "state")) {
            div.head {
                strong { "Attempt " (plain(&a["number"])) } " " (badge(text(a, "state")))
                @if a["cancel_requested"] == true { " cancel requested" }
                span.mono.dim { " " (attempt_id) }
            }
            dl.facts {
                dt { "Created / due" } dd { (when(&a["created_at"])) " / " (when(&a["not_before"])) }
                dt { "Dispatched" } dd { (when(&a["dispatched_at"])) }
                dt { "Started" } dd { (when(&a["started_at"])) }
                dt { "Finished" } dd { (when(&a["finished_at"])) }
                dt { "Deadline" } dd { (when(&a["deadline_at"])) }
                dt { "Backend job" } dd.mono.backend { @if a["backend"].is_object() { (text(&a["backend"], "kind")) ": " (text(&a["backend"], "id")) } @else { "—" } }
                @if !a["heartbeat_at"].is_null() {
                    dt { "Last heartbeat" } dd { (when(&a["heartbeat_at"])) @if let Some(m) = a["progress"]["message"].as_str() { " — " (m) } @if let Some(f) = a["progress"]["fraction"].as_f64() { " (" (format!("{:.0}", f * 100.0)) " %)" } }
                }
                @if let Some(error) = a["error"].as_str() { dt { "Error" } dd.error { (error) } }
                @if !a["exit_code"].is_null() { dt { "Exit code" } dd { (plain(&a["exit_code"])) } }
                dt { "Envelopes" } dd {
                    a.input-link href={ (files) "/input.json" } { "input.json" } " · "
                    a.output-link href={ (files) "/output.json" } { "output.json" }
                }
                @if let Some(link) = log_link { dt { "Logs" } dd { a.log-link href=(link) rel="noreferrer noopener" target="_blank" { "Cloud Run logs" } } }
            }
            @if let Some(tail) = log_tail { pre.log { (tail) } }
        }
    }
}

/// The Cloud Run console link the Cloud Run backend keeps in a log tail (`logs: https://…`);
/// only an `https` URL is ever made a link.
fn cloud_run_log_link(tail: &str) -> Option<&str> {
    tail.lines()
        .filter_map(|line| line.trim().strip_prefix("logs: "))
        .map(str::trim)
        .find(|url| {
            url.starts_with("https://")
                && url.len() > "https://".len()
                && !url.contains(|c: char| c.is_whitespace() || c.is_control())
        })
}

fn messages(value: &Value) -> Markup {
    let Some(list) = value.as_array() else {
        return html! { p.empty { "None." } };
    };
    if list.is_empty() {
        return html! { p.empty { "None." } };
    }
    html! {
        table #messages {
            thead { tr { th { "Severity" } th { "Code" } th { "Text" } th { "Where" } } }
            tbody {
                @for m in list {
                    tr { td { (badge(text(m, "severity"))) } td { (plain(&m["code"])) } td { (plain(&m["text"])) } td.mono { @if !m["location"].is_null() { (plain(&m["location"])) } } }
                }
            }
        }
    }
}

fn metrics(value: &Value) -> Markup {
    match value {
        Value::Array(list) if !list.is_empty() => html! {
            table #metrics {
                thead { tr { th { "Name" } th { "Value" } th { "Unit" } th { "Category" } } }
                tbody {
                    @for m in list {
                        tr { td { (plain(&m["name"])) } td { (plain(&m["value"])) } td { (plain(&m["unit"])) } td { (plain(&m["category"])) } }
                    }
                }
            }
        },
        Value::Object(map) if !map.is_empty() => html! {
            table #metrics {
                thead { tr { th { "Name" } th { "Value" } } }
                tbody { @for (name, v) in map { tr { td { (name) } td { (plain(v)) } } } }
            }
        },
        _ => html! { p.empty { "None." } },
    }
}

/// The cursor of the run's latest event, where its page starts following the stream.
async fn last_event(state: &AppState, run: RunId) -> Result<Option<String>, PageError> {
    const PAGE: u32 = 500;
    let scope = EventScope::Run(run);
    let mut cursor: Option<String> = None;
    loop {
        let page = state
            .deps
            .store
            .events_after(&scope, cursor.as_deref(), PAGE)
            .await
            .with_context(|| format!("reading the events of run {run}"))?;
        let full = page.len() == PAGE as usize;
        if let Some(last) = page.last() {
            cursor = Some(last.cursor.clone());
        }
        if !full {
            return Ok(cursor);
        }
    }
}

/// The run's event stream (as `GET /v1/runs/{id}/events`), for a page signed in with the
/// session cookie.
#[utoipa::path(
    get,
    path = "/dashboard/runs/{id}/events",
    operation_id = "dashboardRunEvents",
    tag = "dashboard",
    params(
        ("id" = uuid::Uuid, Path, description = "The run id (a UUID)."),
        RunStreamParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Resume after this event id, as SSE clients send on reconnecting."),
    ),
    responses(
        (status = 200, description = "Server-sent events.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_run_id` or `invalid_parameter`.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 404, description = "`run_not_found`.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query_string: Result<Query<RunStreamParams>, QueryRejection>,
) -> Response {
    match events::run_events(
        State(state),
        Some(Extension(caller)),
        path,
        headers,
        query_string,
    )
    .await
    {
        Ok(stream) => stream.into_response(),
        Err(e) => PageError(e).into_response(),
    }
}

/// The cancel button: `POST /v1/runs/{id}/cancel`, then back to the run page.
///
/// Must come from a dashboard page (Origin or Referer of this host).
#[utoipa::path(
    post,
    path = "/dashboard/runs/{id}/cancel",
    operation_id = "dashboardCancelRun",
    tag = "dashboard",
    params(("id" = uuid::Uuid, Path, description = "The run id (a UUID).")),
    responses(
        (status = 303, description = "To the run page, with `notice=canceled` (it was queued) or `notice=cancel-requested` (it was running)."),
        (status = 400, description = "`invalid_run_id`.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 403, description = "`cross_site_request`: no Origin or Referer of this host.", body = String, content_type = "text/html"),
        (status = 404, description = "`run_not_found`.", body = String, content_type = "text/html"),
        (status = 409, description = "`run_already_completed`.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, PageError> {
    let id = api::run_id(path)?;
    let answer = api::cancel_run(
        State(state),
        Some(Extension(caller)),
        Ok(Path(id.to_string())),
    )
    .await?;
    let notice = if answer.status() == StatusCode::OK {
        "canceled"
    } else {
        "cancel-requested"
    };
    let location = HeaderValue::from_str(&format!("/dashboard/runs/{id}?notice={notice}"))
        .context("a run's page is a header value")?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
}

/// The retry button's form: a key drawn when the page was drawn.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct RetryForm {
    /// An idempotency key drawn when the page was drawn: a second submit finds the first retry.
    key: Option<String>,
}

/// The retry button: `POST /v1/runs/{id}/retry` (an ended run again, as a new run) with the
/// form's `key` as its `Idempotency-Key`, then to the new run's page.
///
/// Must come from a dashboard page (Origin or Referer of this host).
#[utoipa::path(
    post,
    path = "/dashboard/runs/{id}/retry",
    operation_id = "dashboardRetryRun",
    tag = "dashboard",
    params(("id" = uuid::Uuid, Path, description = "The run id (a UUID).")),
    request_body(content = RetryForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To the new run's page, with `notice=retried`."),
        (status = 400, description = "`invalid_run_id`, `invalid_form`.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 403, description = "`cross_site_request`: no Origin or Referer of this host.", body = String, content_type = "text/html"),
        (status = 404, description = "`run_not_found`.", body = String, content_type = "text/html"),
        (status = 409, description = "`run_active`: the run has not ended.", body = String, content_type = "text/html"),
        (status = 422, description = "`unknown_validator`, `input_file_missing`, `input_file_changed`, or the key already used for another request.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<RetryForm>, FormRejection>,
) -> Result<Response, PageError> {
    let id = api::run_id(path)?;
    let key = form
        .map_err(|e| {
            PageError(ApiError::bad_request(
                "invalid_form",
                format!("the retry form could not be read: {e}"),
            ))
        })?
        .0
        .key
        .filter(|k| !k.trim().is_empty());
    let stored = crate::api::retry(&state, &caller, id, key).await?;
    let location = HeaderValue::from_str(&format!(
        "/dashboard/runs/{}?notice=retried",
        stored.run.run.id
    ))
    .context("a run's page is a header value")?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
}

/// An attempt's `input.json` or `output.json`, read from object storage with the contract's
/// size caps.
///
/// For whoever may see the run. Served as JSON that nothing executes (`nosniff`, the
/// dashboard's CSP).
#[utoipa::path(
    get,
    path = "/dashboard/runs/{id}/attempts/{attempt}/{file}",
    operation_id = "dashboardAttemptEnvelope",
    tag = "dashboard",
    params(
        ("id" = uuid::Uuid, Path, description = "The run id (a UUID)."),
        ("attempt" = uuid::Uuid, Path, description = "The attempt id (a UUID)."),
        ("file" = String, Path, pattern = "^(input|output)\\.json$", description = "`input.json` or `output.json`."),
    ),
    responses(
        (status = 200, description = "The envelope as stored.", body = Object),
        (status = 400, description = "`invalid_run_id`.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 404, description = "No such run (or another org's), attempt or file, or not written yet.", body = String, content_type = "text/html"),
        (status = 422, description = "`too_large` or `not_a_file`.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn envelope(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, attempt, file)): Path<(String, String, String)>,
) -> Result<Response, PageError> {
    let not_found = |what: String| PageError(ApiError::not_found("not_found", what));
    let max_bytes = match file.as_str() {
        "input.json" => MAX_INPUT_ENVELOPE_BYTES,
        "output.json" => MAX_OUTPUT_ENVELOPE_BYTES,
        _ => {
            return Err(not_found(
                "an attempt's envelopes are input.json and output.json".to_owned(),
            ));
        }
    } as u64;
    let run_id = api::run_id(Ok(Path(id)))?;
    let attempt_id: AttemptId = attempt
        .parse()
        .map_err(|_| not_found(format!("{attempt:?} is not an attempt id")))?;
    let run = state
        .deps
        .store
        .get_run(run_id)
        .await
        .with_context(|| format!("reading run {run_id}"))?
        .filter(|run| caller.may_see(&run.run.org_id))
        .ok_or_else(|| PageError(api::run_not_found(run_id)))?;
    let attempt = run
        .attempts
        .iter()
        .find(|a| a.id == attempt_id)
        .ok_or_else(|| not_found(format!("run {run_id} has no attempt {attempt_id}")))?;
    let paths = attempt.paths().context("an attempt's storage folder")?;
    let key = if file == "input.json" {
        paths.input()
    } else {
        paths.output()
    };
    let uri = state.deps.storage.uri_for(&key);
    match state.deps.storage.read_bytes(&uri, max_bytes).await {
        Ok(bytes) => Ok((
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            bytes,
        )
            .into_response()),
        Err(StorageError::NotFound { .. }) => Err(not_found(format!(
            "attempt {attempt_id} has no {file} (not written yet, or never)"
        ))),
        Err(StorageError::TooLarge { limit, .. }) => Err(PageError(ApiError::unprocessable(
            "too_large",
            format!("attempt {attempt_id}'s {file} is larger than {limit} bytes"),
        ))),
        Err(StorageError::NotAnObject { .. }) => Err(PageError(ApiError::unprocessable(
            "not_a_file",
            format!("attempt {attempt_id}'s {file} is not a regular file"),
        ))),
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("reading {file} of attempt {attempt_id}"))
            .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_https_log_line_becomes_a_link() {
        let tail = "the Cloud Run execution failed (1 of 1 tasks failed)\nlogs: https://console.cloud.google.com/logs/viewer?x=1";
        assert_eq!(
            cloud_run_log_link(tail),
            Some("https://console.cloud.google.com/logs/viewer?x=1")
        );
        for refused in [
            "logs: javascript:alert(1)",
            "logs: http://example.com",
            "logs: https://",
            "nothing here",
            "logs: https://a b",
        ] {
            assert_eq!(cloud_run_log_link(refused), None, "{refused}");
        }
    }
}
