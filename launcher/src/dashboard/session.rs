//! Who is looking at the dashboard: the API's callers, from their `Authorization` header or
//! from the session cookie the login form sets. The cookie holds the credential itself (an API
//! key or an ID token), so every request is checked exactly as a bearer header would be — a
//! revoked key or an expired token stops working at once — and the launcher keeps no session
//! state.

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::PageError;
use super::layout::{Nav, page};
use crate::AppState;
use crate::api::ApiError;
use crate::auth::{self, AuthMode, Caller};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "runway_dashboard";
/// The longest credential the login form takes (ID tokens are about 1 KiB).
const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// The caller of a dashboard request: open mode asks nothing; otherwise the `Authorization`
/// header, else the session cookie, checked as the API checks a bearer header.
pub(super) async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if state.auth.mode == AuthMode::Open {
        return Ok(Caller::Open);
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return auth::identify(state, value.to_str().unwrap_or("")).await;
    }
    match cookie(headers) {
        Some(credential) => auth::identify_token(state, &credential).await,
        None => Err(ApiError::Unauthorized {
            code: "unauthenticated",
            message: "sign in with an API key or an ID token to see the dashboard".to_owned(),
        }),
    }
}

/// The session cookie's value, if the request carries one.
pub(super) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` of a session holding `credential`: script cannot read it, no other site's
/// request carries it, and it travels over HTTPS only. It ends with the browser session.
fn session_cookie(credential: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={credential}; Path=/dashboard; HttpOnly; SameSite=Strict; Secure"
    ))
    .ok()
}

/// The `Set-Cookie` that ends a session.
pub(super) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "runway_dashboard=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict; Secure",
    )
}

/// Whether `credential` can be a cookie's value as it is (RFC 6265 `cookie-octet`s): API keys
/// and JWTs are.
fn is_cookie_safe(credential: &str) -> bool {
    credential
        .bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// The login page, with why the last attempt was refused.
pub(super) fn login_form(refusal: Option<&str>) -> Markup {
    page(
        "Sign in",
        Nav::None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(why) = refusal {
                p.error #error { (why) }
            }
            p { "The dashboard takes the credentials the API takes: an API key of your org (" code { "rwk_…" } ") or an allow-listed Google ID token." }
            form #login method="post" action="/dashboard/login" {
                label for="credential" { "API key or ID token" }
                input #credential type="password" name="credential" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The sign-in form (in open mode: a note that none is needed).
#[utoipa::path(
    get,
    path = "/dashboard/login",
    operation_id = "dashboardLoginPage",
    tag = "dashboard",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
)]
pub(super) async fn login_page(State(state): State<AppState>) -> Markup {
    if state.auth.mode == AuthMode::Open {
        return page(
            "Sign in",
            Nav::None,
            Some(&Caller::Open),
            html! {
                h1 { "No sign-in needed" }
                p { "This launcher's API runs open (" code { "RUNWAY_API_AUTH=open" } ", loopback only): the dashboard asks for nothing." }
                p { a href="/dashboard/runs" { "Go to the runs" } }
            },
        );
    }
    login_form(None)
}

/// The sign-in form.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct LoginForm {
    /// An API key (`rwk_…`) or an allow-listed ID token.
    credential: String,
}

/// Signs in: the API key or ID token is checked as a bearer header would be and kept in an
/// HttpOnly, SameSite=Strict, Secure session cookie (`runway_dashboard`, path `/dashboard`).
///
/// In open mode nothing is checked: it goes straight to the runs.
#[utoipa::path(
    post,
    path = "/dashboard/login",
    operation_id = "dashboardLogin",
    tag = "dashboard",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To `/dashboard/runs`, with the session cookie.", headers(("Set-Cookie" = String, description = "The session cookie."))),
        (status = 400, description = "No credential, or one that cannot be an API key or token: the form again, saying why.", body = String, content_type = "text/html"),
        (status = 401, description = "The credential was refused (unknown or revoked key, bad token): the form again, saying why.", body = String, content_type = "text/html"),
        (status = 403, description = "`cross_site_request`: no Origin or Referer of this host.", body = String, content_type = "text/html"),
        (status = 500, description = "`internal`.", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn login(
    State(state): State<AppState>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if state.auth.mode == AuthMode::Open {
        return see_other("/dashboard/runs", None);
    }
    let refuse = |status: StatusCode, why: &str| (status, login_form(Some(why))).into_response();
    let Ok(Form(form)) = form else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the sign-in form was not sent as a form with a credential field",
        );
    };
    let credential = form.credential.trim();
    if credential.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "enter an API key or an ID token");
    }
    if credential.len() > MAX_CREDENTIAL_BYTES || !is_cookie_safe(credential) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "that is not an API key or an ID token (they are short and use no spaces or quotes)",
        );
    }
    match auth::identify_token(&state, credential).await {
        Ok(_) => see_other("/dashboard/runs", session_cookie(credential)),
        Err(ApiError::Unauthorized { message, .. }) => refuse(StatusCode::UNAUTHORIZED, &message),
        Err(e) => PageError(e).into_response(),
    }
}

/// Signs out: clears the session cookie.
#[utoipa::path(
    post,
    path = "/dashboard/logout",
    operation_id = "dashboardLogout",
    tag = "dashboard",
    responses(
        (status = 303, description = "To `/dashboard/login`.", headers(("Set-Cookie" = String, description = "Clears the session cookie."))),
        (status = 403, description = "`cross_site_request`: no Origin or Referer of this host.", body = String, content_type = "text/html"),
    ),
)]
pub(super) async fn logout() -> Response {
    see_other("/dashboard/login", Some(clear_cookie()))
}

fn see_other(location: &'static str, cookie: Option<HeaderValue>) -> Response {
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static(location))],
    )
        .into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_credentials_are_cookie_safe() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; runway_dashboard=rwk_abc-_1; other=1"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("rwk_abc-_1"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("runway_dashboard="),
        );
        assert_eq!(cookie(&headers), None);
        assert!(is_cookie_safe("rwk_AbC-_09"));
        assert!(is_cookie_safe("eyJhbGciOi.eyJzdWIiOi.c2ln-_"));
        for bad in ["a b", "a;b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(!is_cookie_safe(bad), "{bad}");
        }
        let set = session_cookie("rwk_x").expect("cookie");
        let set = set.to_str().expect("text");
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/dashboard"] {
            assert!(set.contains(attribute), "{set}");
        }
    }
}
