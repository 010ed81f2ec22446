//! The operators' dashboard: server-rendered HTML under `/dashboard`, with no JavaScript build
//! step (one small script, served as a file, refreshes the live numbers).
//!
//! - `/dashboard/runs`: runs filtered as `GET /v1/runs` filters them, with counts by state
//!   refreshed every few seconds;
//! - `/dashboard/runs/{id}`: one run — its attempts' timeline (states, times, backend job, exit
//!   code, log tail or Cloud Run log link, each attempt's `input.json` and `output.json`), its
//!   messages, metrics and outputs, and the cancel and retry actions; it follows the run's event stream;
//! - `/dashboard/validators`: each validator's cap, attempts in flight and queued, and over a
//!   recent window its error rate and p50/p95 attempt duration;
//! - `/dashboard/reconciler`: the reconciler's recent actions.
//!
//! Pages read through the API's own handlers (`api::runs`, `api::events`) and views, so what a
//! page shows, and to whom, is what the API would answer; the cancel and retry buttons call the
//! API's cancel handler and retry function. Every value reaches the HTML through maud, which escapes it.
//!
//! **Who may look** (`guard`): in open mode nobody is asked. With `RUNWAY_API_AUTH=required`
//! the caller is found from the `Authorization` header, as on `/v1`, or from the session cookie
//! the login form sets (it holds the API key or ID token; HttpOnly, SameSite=Strict, Secure),
//! checked on every request by the same code as a bearer header; an org's API key sees its
//! org only. Every POST must come from a page of the dashboard's own origin (its `Origin`, else
//! its `Referer`, names the `Host` it was sent to): with the SameSite=Strict cookie, no other
//! site can make a browser act here.

mod layout;
mod ops;
mod runs;
mod session;

use axum::Router;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};

use crate::AppState;
use crate::api::{ApiError, InternalCause};

/// The dashboard's stylesheet, served as `/dashboard/assets/style.css`.
const STYLE_CSS: &str = include_str!("style.css");
/// The dashboard's one script, served as `/dashboard/assets/live.js`.
const LIVE_JS: &str = include_str!("live.js");

/// The `401` of every dashboard page that needs credentials: the login form.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "Authentication is required and none (or a refused one) was given: the login form.",
    content_type = "text/html"
)]
pub(crate) struct LoginForm(
    #[expect(
        dead_code,
        reason = "only described in the OpenAPI document, never built"
    )]
    String,
);

/// The `500` of every dashboard page: an opaque error page.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 500,
    description = "`internal`: an opaque error page.",
    content_type = "text/html"
)]
pub(crate) struct ErrorPage(
    #[expect(
        dead_code,
        reason = "only described in the OpenAPI document, never built"
    )]
    String,
);

/// Only this origin's files run or load here; nothing frames the pages.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The dashboard's routes that ask for no caller: signing in and out, and the assets. The
/// others take the API's credentials or the session cookie ([`guard`]; the document's
/// `security`, [`crate::api::doc`]).
pub(crate) const PUBLIC_PATHS: &[&str] = &[
    "/dashboard/login",
    "/dashboard/logout",
    "/dashboard/assets/{file}",
];

/// The dashboard's part of the launcher's OpenAPI document: every page's handler.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(
    home,
    runs::list,
    runs::counts,
    runs::detail,
    runs::events,
    runs::cancel,
    runs::retry,
    runs::envelope,
    ops::validators,
    ops::reconciler,
    session::login_page,
    session::login,
    session::logout,
    asset,
))]
pub(crate) struct DashboardApi;

/// The handler of one dashboard entry of [`crate::api::ROUTES`].
pub(crate) fn handler(method: &str, path: &str) -> MethodRouter<AppState> {
    match (method, path) {
        ("GET", "/dashboard") => get(home),
        ("GET", "/dashboard/runs") => get(runs::list),
        ("GET", "/dashboard/runs/counts") => get(runs::counts),
        ("GET", "/dashboard/runs/{id}") => get(runs::detail),
        ("GET", "/dashboard/runs/{id}/events") => get(runs::events),
        ("POST", "/dashboard/runs/{id}/cancel") => post(runs::cancel),
        ("POST", "/dashboard/runs/{id}/retry") => post(runs::retry),
        ("GET", "/dashboard/runs/{id}/attempts/{attempt}/{file}") => get(runs::envelope),
        ("GET", "/dashboard/validators") => get(ops::validators),
        ("GET", "/dashboard/reconciler") => get(ops::reconciler),
        ("GET", "/dashboard/login") => get(session::login_page),
        ("POST", "/dashboard/login") => post(session::login),
        ("POST", "/dashboard/logout") => post(session::logout),
        ("GET", "/dashboard/assets/{file}") => get(asset),
        _ => unreachable!("ROUTES lists {method} {path} but the dashboard serves no such page"),
    }
}

/// Puts the dashboard's checks in front of its routes: the CSRF check of every POST, the
/// caller (except for signing in and out, and the assets), and the security headers of every answer.
pub(crate) fn guard(routes: Router<AppState>, state: AppState) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(state, check))
}

async fn check(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let public = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| PUBLIC_PATHS.contains(&p.as_str()));
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        && let Err(why) = same_origin(request.headers())
    {
        return secured(
            PageError(ApiError::Forbidden {
                code: "cross_site_request",
                message: why,
            })
            .into_response(),
        );
    }
    if !public {
        match session::caller(&state, request.headers()).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
            }
            Err(e) => {
                let had_cookie = session::cookie(request.headers()).is_some();
                let mut response = PageError(e).into_response();
                if had_cookie && response.status() == StatusCode::UNAUTHORIZED {
                    // A refused session (a revoked key, an expired token) is forgotten.
                    response
                        .headers_mut()
                        .insert(header::SET_COOKIE, session::clear_cookie());
                }
                return secured(response);
            }
        }
    }
    secured(next.run(request).await)
}

/// Refuses, with a sentence, a state-changing request that no page of this origin sent: its
/// `Origin` (or, without one, its `Referer`) must name the host it was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = text(header::HOST).ok_or("the request names no Host")?;
    let from = text(header::ORIGIN)
        .filter(|o| *o != "null")
        .or_else(|| text(header::REFERER))
        .ok_or(
            "a dashboard action must come from a dashboard page (no Origin or Referer was sent)",
        )?;
    let from =
        url::Url::parse(from).map_err(|_| format!("the request's origin {from:?} is not a URL"))?;
    let here = url::Url::parse(&format!("{}://{host}", from.scheme()))
        .map_err(|_| format!("the request's Host {host:?} is not a host"))?;
    let same = from.host_str().is_some()
        && from.host_str() == here.host_str()
        && from.port_or_known_default() == here.port_or_known_default();
    if same {
        Ok(())
    } else {
        Err(format!(
            "a dashboard action must come from a dashboard page; this one came from {}",
            from.origin().ascii_serialization()
        ))
    }
}

/// Adds the headers every dashboard answer carries.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The dashboard: redirects to the runs page.
#[utoipa::path(
    get,
    path = "/dashboard",
    operation_id = "dashboardHome",
    tag = "dashboard",
    responses(
        (status = 303, description = "To `/dashboard/runs`."),
        LoginForm,
    ),
)]
async fn home() -> Redirect {
    Redirect::to("/dashboard/runs")
}

/// The dashboard's stylesheet and script.
#[utoipa::path(
    get,
    path = "/dashboard/assets/{file}",
    operation_id = "dashboardAsset",
    tag = "dashboard",
    params(("file" = String, Path, pattern = "^(style\\.css|live\\.js)$", description = "`style.css` or `live.js`.")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/css; charset=utf-8"),
            (String = "text/javascript; charset=utf-8"),
        )),
        (status = 404, description = "`asset_not_found`: no such file.", body = String, content_type = "text/html"),
    ),
)]
async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "live.js" => ("text/javascript; charset=utf-8", LIVE_JS),
        _ => {
            return PageError(ApiError::not_found(
                "asset_not_found",
                "the dashboard has no such file",
            ))
            .into_response();
        }
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A refused or failed page: the API's error, shown as a page with the same status (the login
/// form for a 401). An internal failure is opaque, its cause logged once by the request
/// middleware, as for the API.
#[derive(Debug)]
pub(crate) struct PageError(pub(crate) ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        Self(ApiError::Internal(e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        match self.0 {
            ApiError::Internal(cause) => {
                let mut response = (
                    status,
                    layout::error_page(
                        status,
                        "an internal error occurred; it has been logged (quote the \
                         x-request-id response header when reporting it)",
                    ),
                )
                    .into_response();
                response
                    .extensions_mut()
                    .insert(InternalCause(std::sync::Arc::new(cause)));
                response
            }
            ApiError::Unauthorized { message, .. } => {
                (status, session::login_form(Some(&message))).into_response()
            }
            other => (status, layout::error_page(status, &other.to_string())).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn a_post_must_come_from_this_origin() {
        let host = (header::HOST, "127.0.0.1:8080");
        assert!(
            same_origin(&headers(&[
                host.clone(),
                (header::ORIGIN, "http://127.0.0.1:8080")
            ]))
            .is_ok()
        );
        assert!(
            same_origin(&headers(&[
                host.clone(),
                (header::REFERER, "http://127.0.0.1:8080/dashboard/runs/x")
            ]))
            .is_ok()
        );
        let https = (header::HOST, "runway.example.com");
        assert!(
            same_origin(&headers(&[
                https.clone(),
                (header::ORIGIN, "https://runway.example.com")
            ]))
            .is_ok()
        );
        for refused in [
            vec![host.clone()],
            vec![host.clone(), (header::ORIGIN, "http://evil.example")],
            vec![host.clone(), (header::ORIGIN, "http://127.0.0.1:9999")],
            vec![host.clone(), (header::ORIGIN, "null")],
            vec![
                host.clone(),
                (header::REFERER, "http://127.0.0.1.evil.example:8080/"),
            ],
            vec![(header::ORIGIN, "http://127.0.0.1:8080")],
        ] {
            assert!(same_origin(&headers(&refused)).is_err(), "{refused:?}");
        }
    }
}
