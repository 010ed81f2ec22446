//! The operators' pages: validators (caps, work in flight, recent error rate and durations)
//! and the reconciler's recent actions.

use anyhow::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use chrono::TimeDelta;
use maud::{Markup, html};
use runway_runs::ValidatorActivity;
use serde::Deserialize;

use super::layout::{Nav, duration, page, plain};
use super::{ErrorPage, LoginForm, PageError};
use crate::AppState;
use crate::api::ApiError;
use crate::auth::Caller;

/// The windows the validators page can look back over, and the default (an hour).
const WINDOWS: &[(&str, i64)] = &[("15m", 15), ("1h", 60), ("6h", 360), ("24h", 1440)];
const DEFAULT_WINDOW: &str = "1h";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WindowQuery {
    /// `15m`, `1h` (default), `6h` or `24h`.
    window: Option<String>,
}

/// Validators page: each validator's cap, attempts in flight and queued, and over a recent
/// window its ended attempts, error rate and p50/p95 duration.
///
/// Every validator of the registry, and any other that has recent attempts. An org's API key
/// sees its org's attempts only.
#[utoipa::path(
    get,
    path = "/dashboard/validators",
    operation_id = "dashboardValidators",
    tag = "dashboard",
    params(WindowQuery),
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html"),
        (status = 400, description = "`invalid_parameter`: an unknown window.", body = String, content_type = "text/html"),
        LoginForm,
        ErrorPage,
    ),
)]
pub(super) async fn validators(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<WindowQuery>, QueryRejection>,
) -> Result<Markup, PageError> {
    let window = query
        .ok()
        .and_then(|Query(q)| q.window)
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| DEFAULT_WINDOW.to_owned());
    let minutes = WINDOWS
        .iter()
        .find(|(name, _)| *name == window)
        .map(|(_, minutes)| *minutes)
        .ok_or_else(|| {
            let known: Vec<&str> = WINDOWS.iter().map(|(name, _)| *name).collect();
            PageError(ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "parameter window: {window:?} is not one of {}",
                    known.join(", ")
                ),
            ))
        })?;
    let since = state.clock.now() - TimeDelta::minutes(minutes);
    let mut activity = state
        .deps
        .store
        .validator_activity(since, caller.org())
        .await
        .context("reading the validators' activity")?;
    let mut rows: Vec<(Option<&crate::registry::ValidatorConfig>, ValidatorActivity)> = state
        .registry
        .iter()
        .map(|v| {
            let found = activity
                .iter()
                .position(|a| a.validator_id == v.id)
                .map(|i| activity.swap_remove(i))
                .unwrap_or_else(|| ValidatorActivity::new(v.id.clone()));
            (Some(v), found)
        })
        .collect();
    // Attempts of validators this launcher no longer configures still count.
    rows.extend(activity.into_iter().map(|a| (None, a)));
    let body = html! {
        h1 { "Validators" }
        form.filters method="get" action="/dashboard/validators" {
            label { "Window "
                select name="window" {
                    @for (name, _) in WINDOWS {
                        option value=(name) selected[*name == window] { (name) }
                    }
                }
            }
            button type="submit" { "Show" }
            @if caller.org().is_some() { span.dim { " Counts are of your org's runs." } }
        }
        table #validators {
            thead { tr {
                th { "Validator" } th { "Type" } th { "Backend" } th { "In flight / cap" } th { "Queued" }
                th { "Ended (" (window) ")" } th { "Error rate" } th { "p50" } th { "p95" } th { "Timeout" } th { "Max attempts" }
            } }
            tbody {
                @for (config, a) in &rows {
                    tr data-validator-id=(a.validator_id) {
                        td { (a.validator_id) @if config.is_none() { span.dim { " (not configured)" } } }
                        td { @if let Some(v) = config { (plain(&serde_json::to_value(v.kind).unwrap_or_default())) " " (v.version) } }
                        td { @if let Some(v) = config { (v.backend.as_str()) } }
                        td.in-flight { (a.in_flight) " / " (config.and_then(|v| v.max_concurrency).map_or_else(|| "no cap".to_owned(), |c| c.to_string())) }
                        td { (a.pending) }
                        td { (a.ended()) @if a.canceled > 0 { span.dim { " (+" (a.canceled) " canceled)" } } }
                        td.error-rate { (a.error_rate().map_or_else(|| "—".to_owned(), |r| format!("{:.1} %", r * 100.0))) }
                        td { (duration(a.duration_p50_ms)) }
                        td { (duration(a.duration_p95_ms)) }
                        td { @if let Some(v) = config { (v.timeout_seconds) " s" } }
                        td { @if let Some(v) = config { (v.max_attempts) } }
                    }
                }
            }
        }
        p.dim { "Error rate: the share of attempts that ended in the window failed or timed out (no usable output) among those that ended other than by a cancel. Durations: dispatch to end of those attempts, nearest rank." }
    };
    Ok(page("Validators", Nav::Validators, Some(&caller), body))
}

/// Reconciler page: this process's reconciler's recent actions, newest first.
///
/// Its actions name every org's runs, so an org's API key may not see it (403).
#[utoipa::path(
    get,
    path = "/dashboard/reconciler",
    operation_id = "dashboardReconciler",
    tag = "dashboard",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html"),
        LoginForm,
        (status = 403, description = "`operators_only`: an org's API key.", body = String, content_type = "text/html"),
        ErrorPage,
    ),
)]
pub(super) async fn reconciler(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Markup, PageError> {
    if let Some(org) = caller.org() {
        return Err(PageError(ApiError::Forbidden {
            code: "operators_only",
            message: format!(
                "the reconciler acts on every org's runs; an API key of org {org:?} sees its own \
                 runs only"
            ),
        }));
    }
    let actions = state.reconciler.get().map(|r| {
        let mut actions = r.recent_actions();
        actions.reverse();
        actions
    });
    let body = html! {
        h1 { "Reconciler" }
        @match &actions {
            None => p.empty #no-reconciler { "No reconciler runs in this process." },
            Some(actions) if actions.is_empty() => p.empty #no-actions { "No actions yet: every job has called back or is still running." },
            Some(actions) => {
                p.dim { "The most recent " (actions.len()) " actions of this launcher's reconciler (kept in memory)." }
                table #actions {
                    thead { tr { th { "When" } th { "Action" } th { "Run" } th { "Attempt" } th { "Why" } } }
                    tbody {
                        @for action in actions {
                            tr data-kind=(plain(&serde_json::to_value(action.kind).unwrap_or_default())) {
                                td { (action.at.format("%Y-%m-%d %H:%M:%S UTC")) }
                                td { (plain(&serde_json::to_value(action.kind).unwrap_or_default())) }
                                td { a.mono href={ "/dashboard/runs/" (action.run_id) } { (action.run_id) } }
                                td.mono { (action.attempt_id) }
                                td { (action.detail) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Reconciler", Nav::Reconciler, Some(&caller), body))
}
