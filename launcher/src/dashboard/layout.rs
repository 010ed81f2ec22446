//! The dashboard's page shell and the small formatting helpers its pages share.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::auth::Caller;

/// Which page of the navigation is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Runs,
    Validators,
    Reconciler,
    None,
}

/// A whole page: head, navigation (with who is looking and, for a session, a sign-out
/// button), then `body`.
pub(super) fn page(title: &str, nav: Nav, caller: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Runway" }
                link rel="stylesheet" href="/dashboard/assets/style.css";
                script src="/dashboard/assets/live.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/dashboard/runs" { "Runway" }
                    nav {
                        a.active[nav == Nav::Runs] href="/dashboard/runs" { "Runs" }
                        a.active[nav == Nav::Validators] href="/dashboard/validators" { "Validators" }
                        a.active[nav == Nav::Reconciler] href="/dashboard/reconciler" { "Reconciler" }
                    }
                    @if let Some(caller) = caller {
                        span.who #caller { (describe(caller)) }
                        @if !matches!(caller, Caller::Open) {
                            form.inline method="post" action="/dashboard/logout" {
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Who is looking, in a few words.
fn describe(caller: &Caller) -> String {
    match caller {
        Caller::Open => "open API (local): every org".to_owned(),
        Caller::Org { org } => format!("org {org} (API key)"),
        Caller::Service { email } => format!("{email}: every org"),
    }
}

/// A refusal or failure, as a page.
pub(super) fn error_page(status: StatusCode, message: &str) -> Markup {
    page(
        status.canonical_reason().unwrap_or("Error"),
        Nav::None,
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error #error { (message) }
            p { a href="/dashboard/runs" { "Back to the runs" } }
        },
    )
}

/// A state or result as a coloured badge.
pub(super) fn badge(word: &str) -> Markup {
    html! { span class={ "badge " (badge_class(word)) } { (word) } }
}

fn badge_class(word: &str) -> &'static str {
    match word {
        "passed" | "completed" => "good",
        "failed" | "error" | "timed_out" => "bad",
        "canceled" => "muted",
        "running" | "dispatching" | "unknown" => "busy",
        _ => "wait",
    }
}

/// An RFC 3339 time from a view, shown to the second in UTC; `—` when absent.
pub(super) fn when(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "—".to_owned(),
            |t| {
                t.with_timezone(&Utc)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string()
            },
        )
}

/// A duration in milliseconds, in the unit that reads best; `—` when unknown.
pub(super) fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "—".to_owned(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        Some(ms) => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

/// A string field of a view; empty when absent.
pub(super) fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Any JSON value as compact text (strings without their quotes).
pub(super) fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

/// A URL query string of the non-empty `pairs` (with its `?`), or nothing.
pub(super) fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.append_pair(key, value);
        }
    }
    let out = out.finish();
    if out.is_empty() {
        out
    } else {
        format!("?{out}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_formatted() {
        let page = page(
            "<b>",
            Nav::Runs,
            Some(&Caller::Org {
                org: "<script>alert(1)</script>".into(),
            }),
            html! { p { ("\"><img src=x onerror=alert(1)>") } },
        )
        .into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert_eq!(
            when(&Value::from("2026-12-04T10:58:17.123Z")),
            "2026-12-04 10:58:17 UTC"
        );
        assert_eq!(when(&Value::Null), "—");
        assert_eq!(duration(Some(350)), "350 ms");
        assert_eq!(duration(Some(1_300)), "1.3 s");
        assert_eq!(duration(Some(125_000)), "2 min 5 s");
        assert_eq!(
            query(&[("state", Some("running")), ("org", Some("")), ("x", None)]),
            "?state=running"
        );
        assert_eq!(query(&[("org", Some("a&b"))]), "?org=a%26b");
        assert_eq!(query(&[]), "");
    }
}
