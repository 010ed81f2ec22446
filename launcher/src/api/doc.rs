//! The launcher's OpenAPI 3.1 document, generated from the code: each handler's
//! `#[utoipa::path]` (its summary and description are the handler's doc comment), the schemas
//! derived from the types the handlers read and write (`utoipa::ToSchema`, here and in
//! `runway-contract`, `runway-runs` and `runway-service` behind their `utoipa` features), and the
//! security each route really has, set by the same rules the router applies
//! (`takes_api_credentials` in the API module, `PUBLIC_PATHS` in the dashboard's).
//!
//! Served as `GET /openapi.json` and rendered as an HTML reference at `GET /docs` (server-side
//! with maud, like the dashboard: no script, nothing loaded from elsewhere). Both are built once,
//! on first use. A test checks the document against [`super::ROUTES`] both ways.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use utoipa::OpenApi as _;
use utoipa::openapi::path::{Operation, Parameter};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, OpenApi, RefOr, Required};

use super::error::{ConflictBody, ErrorBody};

/// What `info.description` says: the rules every route shares.
const DESCRIPTION: &str = "The launcher's HTTP API: create, read, list, retry and cancel \
    validation runs, follow their events, and replay dead webhooks. Every error is \
    `{\"error\": {\"code\", \"message\"}}` with a message naming the problem and the field. Every \
    response carries an `x-request-id` header (the client's, if it is 1–128 characters of \
    `[A-Za-z0-9._:-]`, else a generated one). With `RUNWAY_API_AUTH=required` every `/v1` request \
    (and `/metrics`) carries `Authorization: Bearer` with an API key (`rwk_…`, scoped to one org: \
    another org's runs are not found, creating one for another org is 403 `wrong_org`) or a \
    Google ID token of an allow-listed service account; without usable credentials the answer is \
    401 (`unauthenticated`, `unknown_api_key`, `revoked_api_key`, `bad_token`). With `open` \
    (local modes) nothing is asked. The dashboard's pages (`/dashboard`) also accept the session \
    cookie its sign-in form sets.";

/// The API's own operations; the health routes' and the dashboard's are merged in by
/// [`build`].
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Runway launcher", description = DESCRIPTION),
    paths(
        openapi_json,
        docs,
        super::metrics::metrics,
        super::runs::list_validators,
        super::create::create_run,
        super::runs::list_runs,
        super::runs::get_run,
        super::runs::cancel_run,
        super::retry::retry_run,
        super::events::run_events,
        super::events::org_events,
        super::webhooks::list_dead,
        super::webhooks::replay,
    ),
    components(schemas(ErrorBody, ConflictBody)),
    tags(
        (name = "health", description = "Liveness and readiness, for probes; always open."),
        (name = "meta", description = "This document, its rendered reference, and the Prometheus metrics."),
        (name = "validators", description = "What this launcher runs."),
        (name = "runs", description = "Validation runs: create, read, list, cancel, retry, and their event streams."),
        (name = "webhooks", description = "Webhook deliveries that were given up, and replaying them."),
        (name = "dashboard", description = "The operators' dashboard: server-rendered HTML pages and their actions."),
    ),
)]
struct ApiDoc;

/// The security scheme of an API key.
const API_KEY: &str = "apiKey";
/// The security scheme of a Google ID token.
const GOOGLE_ID_TOKEN: &str = "googleIdToken";
/// The security scheme of the dashboard's session cookie.
const DASHBOARD_SESSION: &str = "dashboardSession";
/// The dashboard's session cookie.
const SESSION_COOKIE: &str = "runway_dashboard";

/// The generated document, built on first use.
static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(build);
/// [`DOCUMENT`] as JSON, serialized once.
static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    serde_json::to_string_pretty(&*DOCUMENT).expect("an OpenAPI document always serializes")
});
/// [`DOCUMENT`] rendered as HTML, once.
static DOCS_HTML: LazyLock<String> = LazyLock::new(|| render(document()).into_string());

/// The launcher's OpenAPI document.
pub fn document() -> &'static OpenApi {
    &DOCUMENT
}

/// The launcher's OpenAPI document, as served by `GET /openapi.json`.
pub fn document_json() -> &'static str {
    &DOCUMENT_JSON
}

fn build() -> OpenApi {
    let api = ApiDoc::openapi();
    // The API's info (utoipa fills in the launcher's version and license) and its tags, in the
    // order the reference page shows them; merging keeps the first document's.
    let (info, tags) = (api.info.clone(), api.tags.clone());
    let mut doc = runway_service::health::HealthApi::openapi();
    doc.merge(api);
    doc.merge(crate::dashboard::DashboardApi::openapi());
    doc.info = info;
    doc.tags = tags;
    add_security(&mut doc);
    // A summary is the first paragraph of a handler's doc comment, which may wrap: one line.
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            if let Some(summary) = &mut operation.summary {
                *summary = summary.replace('\n', " ");
            }
        }
    }
    doc
}

/// Declares the three ways to authenticate and, on each operation, which of them its route
/// takes — decided by the rules the router applies, so the document cannot claim otherwise.
/// An empty requirement (`{}`) among them says that in open mode nothing is asked.
fn add_security(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        API_KEY,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key (`rwk_…`) from `runway api-key create`, scoped to one org.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        GOOGLE_ID_TOKEN,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A Google-signed ID token of an allow-listed service account (audience \
                     RUNWAY_API_AUDIENCE); acts for any org.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        DASHBOARD_SESSION,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            SESSION_COOKIE,
            "The dashboard's session cookie, set by `POST /dashboard/login`: it holds an API key \
             or ID token, checked on every request as a bearer header is.",
        ))),
    );
    let none: [&str; 0] = [];
    for (path, item) in doc.paths.paths.iter_mut() {
        let schemes: &[&str] = if super::takes_api_credentials(path) {
            &[API_KEY, GOOGLE_ID_TOKEN]
        } else if path.starts_with("/dashboard")
            && !crate::dashboard::PUBLIC_PATHS.contains(&path.as_str())
        {
            &[API_KEY, GOOGLE_ID_TOKEN, DASHBOARD_SESSION]
        } else {
            continue;
        };
        let mut requirements: Vec<SecurityRequirement> = schemes
            .iter()
            .map(|scheme| SecurityRequirement::new(*scheme, none))
            .collect();
        requirements.push(SecurityRequirement::default());
        for operation in operations_mut(item) {
            operation.security = Some(requirements.clone());
        }
    }
}

fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut Operation> + '_ {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Each operation of `item`, with its method in upper case, in the order OpenAPI lists them.
fn operations(item: &utoipa::openapi::PathItem) -> Vec<(&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("PUT", &item.put),
        ("POST", &item.post),
        ("DELETE", &item.delete),
        ("OPTIONS", &item.options),
        ("HEAD", &item.head),
        ("PATCH", &item.patch),
        ("TRACE", &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
    .collect()
}

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document, generated from the launcher's code.", body = Object)),
)]
pub(super) async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}

/// This document, rendered as an HTML reference.
///
/// Paths grouped by tag, each operation with its parameters, request body, responses and the
/// credentials it takes, then every schema. Server-rendered: no script, nothing loaded from
/// elsewhere.
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "meta",
    responses((status = 200, description = "The reference page.", body = String, content_type = "text/html")),
)]
pub(super) async fn docs() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // The page carries its style inline and runs nothing.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                     form-action 'none'; frame-ancestors 'none'",
                ),
            ),
        ],
        DOCS_HTML.as_str(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// The reference page.

const STYLE: &str = "
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#1d2433}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d5dae3;padding-bottom:.2rem;margin-top:2.5rem}
nav ul{columns:2;padding-left:1.2rem}
section.op{border:1px solid #d5dae3;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
h3{font-size:1rem;margin:.2rem 0}h4{font-size:.9rem;margin:.8rem 0 .3rem;color:#4a5468}
.m{display:inline-block;min-width:4.2rem;text-align:center;border-radius:4px;color:#fff;font-weight:600;margin-right:.5rem;font-size:.85rem}
.GET{background:#2f6fb3}.POST{background:#2e8b57}.PUT,.PATCH{background:#b8860b}.DELETE{background:#b03a2e}
code,.path{font-family:ui-monospace,monospace;font-size:.9em}code{background:#f0f2f6;padding:0 .2rem;border-radius:3px}
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{border-top:1px solid #e3e7ee;padding:.25rem .5rem;text-align:left;vertical-align:top}
.auth{font-size:.85rem;color:#4a5468}.req{color:#b03a2e;font-size:.8rem}
";

/// The reference page of `doc`.
fn render(doc: &OpenApi) -> Markup {
    let tags: Vec<(String, Option<String>)> = doc
        .tags
        .iter()
        .flatten()
        .map(|t| (t.name.clone(), t.description.clone()))
        .collect();
    let operations: Vec<(&str, &str, &Operation)> = doc
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            operations(item)
                .into_iter()
                .map(move |(method, op)| (method, path.as_str(), op))
        })
        .collect();
    let tagged = |tag: &str| -> Vec<(&str, &str, &Operation)> {
        operations
            .iter()
            .filter(|(_, _, op)| op.tags.iter().flatten().any(|t| t == tag))
            .copied()
            .collect()
    };
    let untagged: Vec<_> = operations
        .iter()
        .filter(|(_, _, op)| {
            !op.tags
                .iter()
                .flatten()
                .any(|t| tags.iter().any(|(name, _)| name == t))
        })
        .collect();
    let components = doc.components.clone().unwrap_or_default();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (doc.info.title) " API reference" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                h1 { (doc.info.title) " API reference" }
                p { "Version " (doc.info.version) " · OpenAPI " (openapi_version(doc))
                    " · the document: " a href="/openapi.json" { code { "/openapi.json" } } }
                @if let Some(description) = &doc.info.description { p { (prose(description)) } }
                nav {
                    h2 { "Contents" }
                    ul {
                        @for (name, _) in &tags { li { a href={ "#tag-" (name) } { (name) } } }
                        li { a href="#authentication" { "Authentication" } }
                        li { a href="#schemas" { "Schemas" } }
                    }
                }
                @for (name, description) in &tags {
                    h2 id={ "tag-" (name) } { (name) }
                    @if let Some(description) = description { p { (prose(description)) } }
                    @for (method, path, op) in tagged(name) { (operation(method, path, op)) }
                }
                @if !untagged.is_empty() {
                    h2 { "Other" }
                    @for (method, path, op) in &untagged { (operation(method, path, op)) }
                }
                h2 id="authentication" { "Authentication" }
                @if components.security_schemes.is_empty() {
                    p { "None." }
                } @else {
                    table {
                        tr { th { "Scheme" } th { "Kind" } th { "Description" } }
                        @for (name, scheme) in &components.security_schemes {
                            @let value = to_value(scheme);
                            tr id={ "auth-" (name) } {
                                td { code { (name) } }
                                td { (scheme_kind(&value)) }
                                td { (prose(value["description"].as_str().unwrap_or(""))) }
                            }
                        }
                    }
                }
                h2 id="schemas" { "Schemas" }
                @for (name, schema) in &components.schemas {
                    section.op id={ "schema-" (name) } {
                        h3 { code { (name) } }
                        (schema_detail(schema))
                    }
                }
            }
        }
    }
}

fn openapi_version(doc: &OpenApi) -> String {
    to_value(&doc.openapi)
        .as_str()
        .unwrap_or("3.1.0")
        .to_owned()
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("OpenAPI values always serialize")
}

/// One operation: its method, path and words, parameters, body, responses and credentials.
fn operation(method: &str, path: &str, op: &Operation) -> Markup {
    let id = op.operation_id.clone().unwrap_or_default();
    html! {
        section.op id={ "op-" (id) } {
            h3 { span class={ "m " (method) } { (method) } span.path { (path) } }
            @if let Some(summary) = &op.summary { p { strong { (prose(summary)) } } }
            @if let Some(description) = &op.description {
                @for paragraph in description.split("\n\n").filter(|p| !p.trim().is_empty()) {
                    p { (prose(paragraph)) }
                }
            }
            p.auth { "Credentials: " (security(op)) }
            @if let Some(parameters) = op.parameters.as_ref().filter(|p| !p.is_empty()) {
                h4 { "Parameters" }
                table {
                    tr { th { "Name" } th { "In" } th { "Schema" } th { "Description" } }
                    @for parameter in parameters { (parameter_row(parameter)) }
                }
            }
            @if let Some(body) = &op.request_body {
                h4 { "Request body"
                    @if matches!(body.required, Some(Required::True)) { " " span.req { "required" } } }
                @if let Some(description) = &body.description { p { (prose(description)) } }
                (contents(body.content.iter()))
            }
            h4 { "Responses" }
            table {
                tr { th { "Status" } th { "Description" } th { "Body" } }
                @for (status, response) in &op.responses.responses {
                    @let response = to_value(response);
                    tr {
                        td { code { (status) } }
                        td { (prose(response["description"].as_str().unwrap_or(""))) }
                        td {
                            @if let Some(content) = response["content"].as_object() {
                                @for (media, content) in content {
                                    div { code { (media) } " " (schema_summary(&content["schema"])) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn parameter_row(parameter: &Parameter) -> Markup {
    let location = to_value(&parameter.parameter_in);
    let schema = parameter
        .schema
        .as_ref()
        .map(to_value)
        .unwrap_or(Value::Null);
    html! {
        tr {
            td { code { (parameter.name) }
                @if matches!(parameter.required, Required::True) { " " span.req { "required" } } }
            td { (location.as_str().unwrap_or("")) }
            td { (schema_summary(&schema)) }
            td { (prose(parameter.description.as_deref().unwrap_or(""))) }
        }
    }
}

fn contents<'a>(content: impl Iterator<Item = (&'a String, &'a Content)>) -> Markup {
    html! {
        @for (media, content) in content {
            div {
                code { (media) } " "
                (schema_summary(&content.schema.as_ref().map(to_value).unwrap_or(Value::Null)))
                @for (field, encoding) in &content.encoding {
                    @let encoding = to_value(encoding);
                    @if let Some(content_type) = encoding["contentType"].as_str() {
                        " (part " code { (field) } " as " code { (content_type) } ")"
                    }
                }
            }
        }
    }
}

/// The credentials an operation takes: its security requirements, or "none".
fn security(op: &Operation) -> Markup {
    let Some(requirements) = op.security.as_ref().filter(|r| !r.is_empty()) else {
        return html! { "none" };
    };
    let mut names = Vec::new();
    let mut optional = false;
    for requirement in requirements {
        match to_value(requirement).as_object() {
            Some(schemes) if !schemes.is_empty() => names.extend(schemes.keys().cloned()),
            _ => optional = true,
        }
    }
    html! {
        @for (i, name) in names.iter().enumerate() {
            @if i > 0 { " or " }
            a href={ "#auth-" (name) } { code { (name) } }
        }
        @if optional { " (none asked in open mode)" }
    }
}

fn scheme_kind(scheme: &Value) -> String {
    match scheme["type"].as_str() {
        Some("http") => match scheme["bearerFormat"].as_str() {
            Some(format) => format!(
                "HTTP {} ({format})",
                scheme["scheme"].as_str().unwrap_or("")
            ),
            None => format!("HTTP {}", scheme["scheme"].as_str().unwrap_or("")),
        },
        Some("apiKey") => format!(
            "{} {}",
            scheme["in"].as_str().unwrap_or(""),
            scheme["name"].as_str().unwrap_or("")
        ),
        Some(other) => other.to_owned(),
        None => String::new(),
    }
}

/// A schema in a few words: a link to a named schema, or its type.
fn schema_summary(schema: &Value) -> Markup {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return html! { a href={ "#schema-" (name) } { code { (name) } } };
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(options) = schema[key].as_array() {
            let word = if key == "allOf" { " and " } else { " or " };
            return html! {
                @for (i, option) in options.iter().enumerate() {
                    @if i > 0 { (word) }
                    (schema_summary(option))
                }
            };
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    html! {
        @if types.contains(&"array") {
            "array of " (schema_summary(&schema["items"]))
            @if types.contains(&"null") { " or null" }
        } @else if types.is_empty() && schema.get("enum").is_none() {
            "any"
        } @else {
            code { (types.join(" | ")) }
        }
        @if let Some(format) = schema["format"].as_str() { " (" (format) ")" }
        @if let Some(media) = schema["contentMediaType"].as_str() { " (" code { (media) } ")" }
        @if let Some(values) = schema["enum"].as_array() {
            " one of "
            @for (i, value) in values.iter().filter(|v| !v.is_null()).enumerate() {
                @if i > 0 { ", " }
                code { (value.as_str().map_or_else(|| value.to_string(), str::to_owned)) }
            }
        }
        @if let Some(pattern) = schema["pattern"].as_str() { " matching " code { (pattern) } }
        (bounds(schema))
    }
}

fn bounds(schema: &Value) -> Markup {
    let bound = |key: &str| schema[key].as_number().map(ToString::to_string);
    let range = match (bound("minimum"), bound("maximum")) {
        (Some(min), Some(max)) => Some(format!(", {min}–{max}")),
        (Some(min), None) => Some(format!(", at least {min}")),
        (None, Some(max)) => Some(format!(", at most {max}")),
        (None, None) => None,
    };
    html! {
        @if let Some(range) = range { (range) }
        @if let Some(max) = bound("maxLength") { ", at most " (max) " characters" }
        @if let Some(max) = bound("maxItems") { ", at most " (max) " items" }
    }
}

/// A named schema: its description, and its properties (in the order the type declares them) or
/// values.
fn schema_detail(schema: &RefOr<Schema>) -> Markup {
    let value = to_value(schema);
    let properties: Vec<(&String, Value)> = match schema {
        RefOr::T(Schema::Object(object)) => object
            .properties
            .iter()
            .map(|(name, property)| (name, to_value(property)))
            .collect(),
        _ => Vec::new(),
    };
    let required: Vec<&str> = value["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        @if let Some(description) = value["description"].as_str() {
            @for paragraph in description.split("\n\n") { p { (prose(paragraph)) } }
        }
        @if properties.is_empty() {
            p { (schema_summary(&value)) }
        } @else {
            table {
                tr { th { "Field" } th { "Schema" } th { "Description" } }
                @for (name, property) in &properties {
                    tr {
                        td { code { (name) }
                            @if required.contains(&name.as_str()) { " " span.req { "required" } } }
                        td { (schema_summary(property)) }
                        td { (prose(description_of(property))) }
                    }
                }
            }
            @if value["additionalProperties"] == Value::Bool(false) {
                p.auth { "Other fields are refused." }
            } @else if value["additionalProperties"].is_object() {
                p.auth { "Any other field: " (schema_summary(&value["additionalProperties"])) }
            }
        }
    }
}

/// A property's description: its own, or, for a nullable reference (`oneOf: [null, $ref]`),
/// the one utoipa puts beside the reference.
fn description_of(property: &Value) -> &str {
    property["description"]
        .as_str()
        .or_else(|| {
            ["oneOf", "anyOf", "allOf"].iter().find_map(|key| {
                property[key]
                    .as_array()?
                    .iter()
                    .find_map(|option| option["description"].as_str())
            })
        })
        .unwrap_or("")
}

/// Text with its `code` spans (the descriptions' Markdown backticks) set as code; the rest
/// escaped as maud escapes every value.
fn prose(text: &str) -> Markup {
    html! {
        @for (i, piece) in text.split('`').enumerate() {
            @if i % 2 == 1 { code { (piece) } } @else { (piece) }
        }
    }
}
