//! The launcher's generated OpenAPI document (`GET /openapi.json`) and its rendered reference
//! (`GET /docs`), against a real launcher on SQLite and `file://` storage.
//!
//! The document is checked by `openapi-spec-validator` (OpenAPI 3.1), and what the launcher
//! really answers is checked against the response schemas the document gives for those
//! operations, with the OpenAPI 3.1 JSON Schema validator the spec validator is built on. Both
//! run in the project venv's Python (`RUNWAY_TEST_PYTHON`, set by `scripts/test.sh`). That it
//! agrees with `ROUTES` both ways is checked in `api.rs` (`openapi_document_matches_routes`).

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use reqwest::StatusCode;
use runway_identity::nonce::NonceKey;
use runway_launcher::api::ROUTES;
use runway_launcher::{AppState, Registry, router};
use runway_service::health::Dependencies;
use serde_json::{Value, json};

/// A launcher on a free port (open mode), and a temporary directory holding its state.
struct App {
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl App {
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = runway_runs::connect(&format!(
            "sqlite://{}",
            dir.path().join("runway.db").display()
        ))
        .await
        .expect("open the run store");
        let storage = runway_storage::open(
            &format!("file://{}", dir.path().join("objects").display()),
            &Default::default(),
        )
        .await
        .expect("open object storage");
        let state = AppState::new(
            Dependencies { store, storage },
            Registry::local_defaults(),
            NonceKey::generate(),
            runway_contract::HttpUrl::parse("http://127.0.0.1:8081/v1/callbacks".to_owned())
                .expect("url"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(runway_service::server::serve(
            listener,
            router(state),
            std::future::pending(),
        ));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Sends a request and returns its status and JSON body.
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{path} answered {status} with no JSON: {text}"));
        (status, body)
    }

    async fn document(&self) -> Value {
        let response = self
            .client
            .get(format!("{}/openapi.json", self.base))
            .send()
            .await
            .expect("GET /openapi.json");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        response.json().await.expect("the document is JSON")
    }
}

fn energyplus_request() -> Value {
    json!({
        "validator": "energyplus",
        "org": {"id": "acme", "name": "Acme"},
        "workflow": {"id": "wf-1", "step_id": "step-1"},
        "inputs": {},
        "files": [{
            "name": "model.idf",
            "mime_type": "application/vnd.energyplus.idf",
            "port_key": "primary_model",
            "content_base64": base64::engine::general_purpose::STANDARD
                .encode(b"Version,25.2;\nBuilding,Small Office;\n"),
        }],
        "tags": ["nightly"],
    })
}

/// Validates `document` as OpenAPI 3.1 and each answer against the schema its operation's
/// response gives; checks that each of `broken_documents` and `wrong_answers` is refused (so a
/// validator that accepted anything would fail this). Panics with Python's words otherwise.
const VALIDATE: &str = r#"
import json, sys
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing.exceptions import Unresolvable

job = json.load(sys.stdin)
doc = job["document"]
validate(doc, cls=OpenAPIV31SpecValidator)

def check(answer):
    op = doc["paths"][answer["path"]][answer["method"]]
    response = op["responses"][str(answer["status"])]
    schema = response["content"]["application/json"]["schema"]
    OAS31Validator({"components": doc["components"], **schema}).validate(answer["body"])

for answer in job["answers"]:
    try:
        check(answer)
    except ValidationError as e:
        sys.exit(f"{answer['method']} {answer['path']} {answer['status']}: {e.message}\n{json.dumps(answer['body'])}")
for broken in job["broken_documents"]:
    try:
        validate(broken, cls=OpenAPIV31SpecValidator)
    except (OpenAPIValidationError, Unresolvable):
        continue
    sys.exit("a broken document was accepted")
for answer in job["wrong_answers"]:
    try:
        check(answer)
    except ValidationError:
        continue
    sys.exit(f"a wrong answer was accepted: {json.dumps(answer)}")
print(f"valid; {len(job['answers'])} answers match their schemas")
"#;

fn validate_with_python(job: &Value) {
    let mut child = Command::new(runway_tests::python())
        .args(["-c", VALIDATE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the venv's Python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.to_string().as_bytes())
        .expect("write the job");
    let output = child.wait_with_output().expect("Python ran");
    assert!(
        output.status.success(),
        "the OpenAPI checks failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The document is valid OpenAPI 3.1, and what the launcher answers matches it: successes and
/// refusals alike, on the operations a client uses most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_and_describes_real_answers() {
    let app = App::spawn().await;
    let doc = app.document().await;
    assert_eq!(doc["openapi"], "3.1.0");

    let mut answers = Vec::new();
    // Each answer, with the documented operation (method and path template) it came from.
    let mut answer = |method: &str, template: &str, status: StatusCode, body: &Value| {
        answers.push(json!({
            "method": method.to_lowercase(), "path": template, "status": status.as_u16(),
            "body": body,
        }));
    };
    for path in ["/healthz", "/readyz", "/v1/validators", "/v1/webhooks/dead"] {
        let (status, body) = app.send("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        answer("GET", path, status, &body);
    }
    let (status, created) = app
        .send("POST", "/v1/runs", Some(&energyplus_request()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    answer("POST", "/v1/runs", status, &created);
    let id = created["id"].as_str().expect("run id").to_owned();
    let run_path = format!("/v1/runs/{id}");

    let (status, body) = app.send("GET", &run_path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["attempts"].as_array().is_some_and(|a| !a.is_empty()));
    answer("GET", "/v1/runs/{id}", status, &body);
    let (status, body) = app.send("GET", "/v1/runs?limit=5", None).await;
    assert_eq!(status, StatusCode::OK);
    answer("GET", "/v1/runs", status, &body);
    let (status, body) = app.send("GET", "/v1/runs?state=bogus", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    answer("GET", "/v1/runs", status, &body);

    // Nothing dispatches here, so the run is queued: canceled at once, then a 409 carrying it.
    let cancel = format!("{run_path}/cancel");
    let (status, body) = app.send("POST", &cancel, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    answer("POST", "/v1/runs/{id}/cancel", status, &body);
    let (status, body) = app.send("POST", &cancel, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    answer("POST", "/v1/runs/{id}/cancel", status, &body);

    let retry = format!("{run_path}/retry");
    let (status, body) = app.send("POST", &retry, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["retry_of"], id.as_str());
    answer("POST", "/v1/runs/{id}/retry", status, &body);

    let nobody = "/v1/runs/0190d1b8-0000-7000-8000-000000000000";
    let (status, body) = app.send("GET", nobody, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    answer("GET", "/v1/runs/{id}", status, &body);
    let (status, body) = app
        .send("POST", "/v1/runs", Some(&json!({"validator": 1})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    answer("POST", "/v1/runs", status, &body);
    let replay = "/v1/webhooks/dead/0190d1b8-0000-7000-8000-000000000000/replay";
    let (status, body) = app.send("POST", replay, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    answer("POST", "/v1/webhooks/dead/{id}/replay", status, &body);
    let (status, body) = app.send("GET", "/dashboard/runs/counts", None).await;
    assert_eq!(status, StatusCode::OK);
    answer("GET", "/dashboard/runs/counts", status, &body);

    // What the validators must refuse: a document whose reference leads nowhere, and answers
    // that break their schemas.
    let mut dangling = doc.clone();
    dangling["components"]["schemas"]
        .as_object_mut()
        .expect("schemas")
        .remove("Run");
    let mut unknown_state = created.clone();
    unknown_state["state"] = json!("paused");
    let mut missing_field = created.clone();
    missing_field
        .as_object_mut()
        .expect("run")
        .remove("created_at");
    let wrong =
        |body: Value| json!({"method": "post", "path": "/v1/runs", "status": 201, "body": body});

    validate_with_python(&json!({
        "document": doc,
        "answers": answers,
        "broken_documents": [dangling, {"openapi": "3.1.0", "paths": {}}],
        "wrong_answers": [wrong(unknown_state), wrong(missing_field), wrong(json!({"error": "no"}))],
    }));
}

/// What the document says about credentials, request bodies and refusals is what the routes do.
#[tokio::test]
async fn the_document_describes_bodies_errors_and_credentials() {
    let app = App::spawn().await;
    let doc = app.document().await;
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for scheme in ["apiKey", "googleIdToken", "dashboardSession"] {
        assert!(schemes.contains_key(scheme), "no security scheme {scheme}");
    }
    assert_eq!(schemes["dashboardSession"]["in"], "cookie");
    assert_eq!(schemes["dashboardSession"]["name"], "runway_dashboard");

    let declared_tags: HashSet<&str> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t["name"].as_str().expect("tag name"))
        .collect();
    let mut operation_ids = HashSet::new();
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method.to_lowercase()];
        let what = format!("{method} {path}");
        assert!(op.is_object(), "{what} is not documented");
        assert!(
            operation_ids.insert(op["operationId"].as_str().expect("operationId")),
            "{what}: operationId used twice"
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what} has no summary"
        );
        let tags = op["tags"].as_array().expect("tags");
        assert!(
            !tags.is_empty()
                && tags
                    .iter()
                    .all(|t| declared_tags.contains(t.as_str().unwrap_or(""))),
            "{what}: tags {tags:?} are not all declared"
        );
        // Every `{name}` of the path is a documented path parameter.
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            let parameters = op["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            assert!(
                parameters
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                "{what}: path parameter {name} is not documented"
            );
        }
        // Credentials: the API's on /v1 and /metrics, also the session cookie on the dashboard's
        // own pages, none on the open routes; `{}` says open mode asks for nothing.
        let security: Vec<String> = op["security"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|req| {
                        req.as_object()
                            .expect("requirement")
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("+")
                    })
                    .collect()
            })
            .unwrap_or_default();
        let expected: &[&str] = if path.starts_with("/v1/") || *path == "/metrics" {
            &["apiKey", "googleIdToken", ""]
        } else if path.starts_with("/dashboard")
            && ![
                "/dashboard/login",
                "/dashboard/logout",
                "/dashboard/assets/{file}",
            ]
            .contains(path)
        {
            &["apiKey", "googleIdToken", "dashboardSession", ""]
        } else {
            &[]
        };
        assert_eq!(security, expected, "{what}: security");
        // Every JSON refusal of the API has the error shape.
        if path.starts_with("/v1/") {
            assert!(op["responses"]["401"].is_object(), "{what}: no 401");
            for (status, response) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        schema == "#/components/schemas/Error"
                            || schema == "#/components/schemas/RunConflict",
                        "{what} {status}: {schema}"
                    );
                }
            }
        }
    }

    // Creating a run: JSON and multipart bodies, the multipart `request` part as JSON, and each
    // refusal a client must handle.
    let create = &doc["paths"]["/v1/runs"]["post"];
    let content = &create["requestBody"]["content"];
    assert_eq!(create["requestBody"]["required"], true);
    assert_eq!(
        content["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateRunRequest"
    );
    assert_eq!(
        content["multipart/form-data"]["schema"]["$ref"],
        "#/components/schemas/CreateRunForm"
    );
    assert_eq!(
        content["multipart/form-data"]["encoding"]["request"]["contentType"],
        "application/json"
    );
    let form = &doc["components"]["schemas"]["CreateRunForm"];
    assert_eq!(form["required"], json!(["request"]));
    assert_eq!(
        form["additionalProperties"]["contentMediaType"],
        "application/octet-stream"
    );
    for status in ["400", "413", "415", "422", "500"] {
        assert_eq!(
            create["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "create {status}"
        );
    }
    assert!(
        create["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
    );
    let request = &doc["components"]["schemas"]["CreateRunRequest"];
    assert_eq!(
        request["additionalProperties"], false,
        "unknown fields are refused"
    );
    assert_eq!(request["required"], json!(["validator", "org", "workflow"]));
    // The event streams are server-sent events.
    for path in ["/v1/runs/{id}/events", "/v1/events"] {
        assert!(
            doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]
                .is_object(),
            "{path}"
        );
    }
}

/// `GET /docs`: a page that names every route, carries no script and loads nothing from
/// elsewhere.
#[tokio::test]
async fn docs_render_every_route_without_scripts() {
    let app = App::spawn().await;
    let response = app
        .client
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .expect("GET /docs");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .expect("CSP")
        .to_owned();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let page = response.text().await.expect("page");
    assert!(page.starts_with("<!DOCTYPE html>"));
    for (method, path) in ROUTES {
        let heading =
            format!(r#"<span class="m {method}">{method}</span><span class="path">{path}</span>"#);
        assert!(
            page.contains(&heading),
            "/docs does not show {method} {path}"
        );
    }
    for section in [
        r#"id="tag-runs""#,
        r#"id="tag-dashboard""#,
        r#"id="authentication""#,
        r#"id="schema-Run""#,
        r#"id="schema-Error""#,
        r#"id="schema-CreateRunRequest""#,
        r#"id="auth-dashboardSession""#,
        "multipart/form-data",
        "Idempotency-Key",
    ] {
        assert!(page.contains(section), "/docs has no {section}");
    }
    let lower = page.to_lowercase();
    assert!(!lower.contains("<script"), "/docs carries a script");
    assert!(!lower.contains("src="), "/docs loads something");
    assert!(!lower.contains("href=\"http"), "/docs links elsewhere");
}
