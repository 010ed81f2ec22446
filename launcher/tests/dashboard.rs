//! The dashboard's HTML routes over HTTP, against the real router, run store (SQLite) and
//! object storage: pages and their escaping, the cancel action and its CSRF check, the
//! envelopes, and the session (401 without credentials, the login cookie, org scoping).
//! `cli/tests/dashboard.rs` drives the same pages in Chromium against `runway dev`.

use std::sync::Arc;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use runway_identity::nonce::NonceKey;
use runway_launcher::auth::{ApiAuth, AuthMode};
use runway_launcher::{AppState, Registry, router};
use runway_runs::{RunId, RunStore};
use runway_service::health::Dependencies;
use runway_storage::ObjectStore;
use serde_json::{Value, json};

/// A launcher on a free port with no workers (runs stay queued unless a test moves them).
struct App {
    base: String,
    client: reqwest::Client,
    store: Arc<dyn RunStore>,
    storage: Arc<dyn ObjectStore>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn spawn(auth: ApiAuth) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("runway.db").display());
        let store = runway_runs::connect(&url).await.expect("store");
        let storage = runway_storage::open(
            &format!("file://{}", dir.path().join("objects").display()),
            &Default::default(),
        )
        .await
        .expect("storage");
        let state = AppState::new(
            Dependencies {
                store: store.clone(),
                storage: storage.clone(),
            },
            Registry::local_defaults(),
            NonceKey::generate(),
            runway_contract::HttpUrl::parse("http://127.0.0.1:8081/v1/callbacks".to_owned())
                .expect("url"),
        )
        .with_auth(auth);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(runway_service::server::serve(
            listener,
            router(state),
            std::future::pending(),
        ));
        Self {
            base,
            // Redirects are asserted, not followed.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            store,
            storage,
            _dir: dir,
        }
    }

    async fn open() -> Self {
        Self::spawn(ApiAuth::default()).await
    }

    async fn required() -> Self {
        Self::spawn(ApiAuth {
            mode: AuthMode::Required,
            verifier: None,
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path` with `headers`; the status, the headers and the body as text.
    async fn get(&self, path: &str, headers: &[(&str, String)]) -> (StatusCode, HeaderMap, String) {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("GET");
        (
            response.status(),
            response.headers().clone(),
            response.text().await.expect("body"),
        )
    }

    /// POSTs the form `body` to `path` with `headers`.
    async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, String)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = self
            .client
            .post(self.url(path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("POST");
        (
            response.status(),
            response.headers().clone(),
            response.text().await.expect("body"),
        )
    }

    /// The `Origin` a page of this launcher sends.
    fn origin(&self) -> (&'static str, String) {
        ("origin", self.base.clone())
    }

    /// Creates a run over the API; its id.
    async fn create(&self, body: &Value, bearer: Option<&str>) -> String {
        let mut request = self.client.post(self.url("/v1/runs")).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST /v1/runs");
        let status = response.status();
        let run: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run["id"].as_str().expect("id").to_owned()
    }

    async fn run(&self, id: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/v1/runs/{id}")))
            .send()
            .await
            .expect("GET");
        response.json().await.expect("json")
    }
}

const HOSTILE: &str = "<script>alert(\"owned\")</script>";

fn request(org: &str, tag: &str) -> Value {
    json!({
        "validator": "energyplus",
        "org": {"id": org, "name": "<img src=x onerror=alert(1)>"},
        "workflow": {"id": "wf-1", "step_id": "step-1", "step_name": "\"><svg onload=alert(2)>"},
        "inputs": {},
        "files": [{"name": "model.idf", "mime_type": "application/vnd.energyplus.idf",
                   "port_key": "primary_model",
                   "content_base64": base64::engine::general_purpose::STANDARD
                       .encode(b"Version,25.2;\nBuilding,Small Office;\n")}],
        "tags": [tag],
    })
}

fn assert_page(status: StatusCode, headers: &HeaderMap, body: &str, want: StatusCode) {
    assert_eq!(status, want, "{body}");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/html"),
        "{headers:?}"
    );
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
}

/// What a hostile run field must never become: markup.
fn assert_escaped(body: &str) {
    for raw in ["<script>alert", "<img src=x", "<svg onload"] {
        assert!(!body.contains(raw), "{raw} reached the page unescaped");
    }
}

#[tokio::test]
async fn pages_render_every_run_field_escaped() {
    let app = App::open().await;
    let id = app.create(&request("acme", HOSTILE), None).await;
    app.create(&request("globex", "nightly"), None).await;

    let (status, headers, _) = app.get("/dashboard", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/dashboard/runs");

    // The runs page: both runs, the counts, and the hostile fields as text.
    let (status, headers, body) = app.get("/dashboard/runs", &[]).await;
    assert_page(status, &headers, &body, StatusCode::OK);
    assert!(body.contains(&format!("data-run-id=\"{id}\"")), "{body}");
    assert_eq!(body.matches("data-run-id=").count(), 2);
    assert!(body.contains(r#"id="count-queued">2<"#), "{body}");
    assert_escaped(&body);

    // Filtered by org: one run, and counts of that org.
    let (status, _, body) = app
        .get("/dashboard/runs?org=globex&state=&validator=", &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.matches("data-run-id=").count(), 1);
    assert!(!body.contains(&id));
    assert!(
        body.contains("data-counts-url=\"/dashboard/runs/counts?org=globex\""),
        "{body}"
    );
    let (status, headers, counts) = app.get("/dashboard/runs/counts?org=acme", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("application/json")
    );
    let counts: Value = serde_json::from_str(&counts).expect("json");
    assert_eq!(
        (counts["queued"].as_u64(), counts["completed"].as_u64()),
        (Some(1), Some(0))
    );

    // A bad filter is the API's 400, as a page.
    let (status, headers, body) = app.get("/dashboard/runs?state=bogus", &[]).await;
    assert_page(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown state"), "{body}");

    // The run's page: the hostile tag, org name and step name as text, the cancel button, the
    // attempt with its envelope links.
    let (status, headers, body) = app.get(&format!("/dashboard/runs/{id}"), &[]).await;
    assert_page(status, &headers, &body, StatusCode::OK);
    assert_escaped(&body);
    assert!(
        body.contains("&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;"),
        "{body}"
    );
    assert!(body.contains(r#"id="cancel""#), "{body}");
    assert_eq!(body.matches("data-attempt-id=").count(), 1);
    let run = app.run(&id).await;
    let attempt = run["attempts"][0]["id"].as_str().expect("attempt");
    assert!(body.contains(&format!(
        "/dashboard/runs/{id}/attempts/{attempt}/input.json"
    )));
    assert!(
        body.contains(&format!("/dashboard/runs/{id}/events")),
        "it follows its events"
    );

    // Unknown and malformed runs.
    let (status, _, body) = app
        .get(&format!("/dashboard/runs/{}", RunId::new()), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("there is no run"), "{body}");
    let (status, _, _) = app.get("/dashboard/runs/not-a-uuid", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Validators: the registry with caps and counts; the reconciler: none in this process.
    let (status, headers, body) = app.get("/dashboard/validators", &[]).await;
    assert_page(status, &headers, &body, StatusCode::OK);
    for validator in ["energyplus", "fmu"] {
        assert!(
            body.contains(&format!("data-validator-id=\"{validator}\"")),
            "{body}"
        );
    }
    let (status, _, body) = app.get("/dashboard/validators?window=2y", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = app.get("/dashboard/reconciler", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("No reconciler runs in this process"),
        "{body}"
    );

    // The assets, and nothing else.
    let (status, headers, css) = app.get("/dashboard/assets/style.css", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/css")
    );
    assert!(css.contains(".badge"));
    let (status, headers, _) = app.get("/dashboard/assets/live.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/javascript")
    );
    let (status, _, _) = app.get("/dashboard/assets/..%2Fmod.rs", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // In open mode there is nothing to sign in to.
    let (status, _, body) = app.get("/dashboard/login", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("No sign-in needed"), "{body}");
}

#[tokio::test]
async fn cancel_works_only_from_a_page_of_this_origin() {
    let app = App::open().await;
    let id = app.create(&request("acme", "nightly"), None).await;
    let cancel = format!("/dashboard/runs/{id}/cancel");

    // No Origin or Referer, or another site's: refused, and nothing changes.
    for headers in [
        vec![],
        vec![("origin", "http://evil.example".to_owned())],
        vec![("referer", "http://evil.example/page".to_owned())],
        vec![("origin", "null".to_owned())],
    ] {
        let (status, response, body) = app.post(&cancel, "", &headers).await;
        assert_page(status, &response, &body, StatusCode::FORBIDDEN);
        assert!(body.contains("must come from a dashboard page"), "{body}");
    }
    assert_eq!(app.run(&id).await["state"], "queued");

    // From the run's page: the API's cancel, then back to the run.
    let (status, headers, _) = app
        .post(
            &cancel,
            "",
            &[("referer", app.url(&format!("/dashboard/runs/{id}")))],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[header::LOCATION],
        format!("/dashboard/runs/{id}?notice=canceled").as_str()
    );
    let run = app.run(&id).await;
    assert_eq!(
        (run["state"].as_str(), run["result"].as_str()),
        (Some("completed"), Some("canceled"))
    );
    let (_, _, body) = app
        .get(&format!("/dashboard/runs/{id}?notice=canceled"), &[])
        .await;
    assert!(
        body.contains(r#"id="notice""#) && !body.contains(r#"id="cancel""#),
        "{body}"
    );

    // Again: the API's 409, as a page.
    let (status, _, body) = app.post(&cancel, "", &[app.origin()]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("already completed with result canceled"),
        "{body}"
    );
    let (status, _, _) = app
        .post(
            &format!("/dashboard/runs/{}/cancel", RunId::new()),
            "",
            &[app.origin()],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn envelopes_are_served_from_storage_for_the_runs_attempts_only() {
    let app = App::open().await;
    let id = app.create(&request("acme", "nightly"), None).await;
    let run = app
        .store
        .get_run(id.parse().expect("id"))
        .await
        .expect("get")
        .expect("run");
    let attempt = &run.attempts[0];
    let base = format!("/dashboard/runs/{id}/attempts/{}", attempt.id);

    // Not dispatched yet: no input.json.
    let (status, _, body) = app.get(&format!("{base}/input.json"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("has no input.json"), "{body}");

    let envelope = br#"{"run_id": "written by the test"}"#;
    app.storage
        .put_new(
            &attempt.paths().expect("paths").input(),
            envelope.to_vec().into(),
        )
        .await
        .expect("put");
    let (status, headers, body) = app.get(&format!("{base}/input.json"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(body.as_bytes(), envelope);

    for (path, want) in [
        (format!("{base}/output.json"), StatusCode::NOT_FOUND),
        (format!("{base}/secrets.txt"), StatusCode::NOT_FOUND),
        (
            format!("/dashboard/runs/{id}/attempts/{}/input.json", RunId::new()),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/dashboard/runs/{id}/attempts/nope/input.json"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!(
                "/dashboard/runs/{}/attempts/{}/input.json",
                RunId::new(),
                attempt.id
            ),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, _, body) = app.get(&path, &[]).await;
        assert_eq!(status, want, "{path}: {body}");
    }
}

#[tokio::test]
async fn with_auth_required_the_dashboard_asks_and_scopes_to_the_callers_org() {
    let app = App::required().await;
    let (acme_key, acme) =
        runway_launcher::auth::create_api_key(app.store.as_ref(), "acme", "dashboard")
            .await
            .expect("key");
    let (_, globex) = runway_launcher::auth::create_api_key(app.store.as_ref(), "globex", "ci")
        .await
        .expect("key");
    let acme_run = app.create(&request("acme", "nightly"), Some(&acme)).await;
    let globex_run = app
        .create(&request("globex", "nightly"), Some(&globex))
        .await;

    // Nobody: every page is the login form, with 401; the form and the assets are open.
    for path in [
        "/dashboard/runs".to_owned(),
        format!("/dashboard/runs/{acme_run}"),
        "/dashboard/runs/counts".to_owned(),
        "/dashboard/validators".to_owned(),
        "/dashboard/reconciler".to_owned(),
    ] {
        let (status, headers, body) = app.get(&path, &[]).await;
        assert_page(status, &headers, &body, StatusCode::UNAUTHORIZED);
        assert!(body.contains(r#"id="login""#), "{path}: {body}");
    }
    let (status, _, _) = app
        .post(
            &format!("/dashboard/runs/{acme_run}/cancel"),
            "",
            &[app.origin()],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/dashboard/login", &[]).await.0, StatusCode::OK);
    assert_eq!(
        app.get("/dashboard/assets/style.css", &[]).await.0,
        StatusCode::OK
    );

    // The API's bearer header works as on /v1: acme sees acme's run only.
    let bearer = [("authorization", format!("Bearer {acme}"))];
    let (status, _, body) = app.get("/dashboard/runs", &bearer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(&acme_run) && !body.contains(&globex_run),
        "{body}"
    );
    assert!(
        !body.contains(r#"name="org""#),
        "an org's key has no org filter"
    );

    // Signing in: refused credentials say why; a good key sets the session cookie.
    let (status, _, body) = app
        .post(
            "/dashboard/login",
            "credential=rwk_not-a-key",
            &[app.origin()],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("the API key is not known"), "{body}");
    let (status, _, body) = app
        .post("/dashboard/login", "credential=a%22b", &[app.origin()])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = app
        .post("/dashboard/login", &format!("credential={acme}"), &[])
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a login needs this origin too"
    );
    let (status, headers, _) = app
        .post(
            "/dashboard/login",
            &format!("credential={acme}"),
            &[app.origin()],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/dashboard/runs");
    let set_cookie = headers[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/dashboard"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    assert_eq!(cookie, format!("runway_dashboard={acme}"));
    let session = [("cookie", cookie.clone())];

    // The session sees its org: another org's run is not found, counts are its org's, the
    // reconciler is for operators.
    let (status, _, body) = app
        .get(&format!("/dashboard/runs/{acme_run}"), &session)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("org acme (API key)"), "{body}");
    let (status, _, body) = app
        .get(&format!("/dashboard/runs/{globex_run}"), &session)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let run = app
        .store
        .get_run(globex_run.parse().expect("id"))
        .await
        .expect("get")
        .expect("run");
    let (status, _, _) = app
        .get(
            &format!(
                "/dashboard/runs/{globex_run}/attempts/{}/input.json",
                run.attempts[0].id
            ),
            &session,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, counts) = app.get("/dashboard/runs/counts", &session).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&counts).expect("json")["queued"],
        1
    );
    let (status, _, body) = app.get("/dashboard/runs?org=globex", &session).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = app.get("/dashboard/reconciler", &session).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.get("/dashboard/validators", &session).await.0,
        StatusCode::OK
    );

    // Another org's run cannot be canceled; a cross-site POST with the cookie is refused.
    let mut with_origin = session.to_vec();
    with_origin.push(app.origin());
    let (status, _, _) = app
        .post(
            &format!("/dashboard/runs/{globex_run}/cancel"),
            "",
            &with_origin,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.run_as(&globex_run, &globex).await["state"], "queued");
    let mut cross_site = session.to_vec();
    cross_site.push(("origin", "https://evil.example".to_owned()));
    let (status, _, _) = app
        .post(
            &format!("/dashboard/runs/{acme_run}/cancel"),
            "",
            &cross_site,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, _) = app
        .post(
            &format!("/dashboard/runs/{acme_run}/cancel"),
            "",
            &with_origin,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .expect("location")
            .contains(&acme_run)
    );
    assert_eq!(app.run_as(&acme_run, &acme).await["result"], "canceled");

    // A revoked key ends the session at its next request, and the cookie is cleared.
    app.store
        .revoke_api_key(acme_key.id, chrono::Utc::now())
        .await
        .expect("revoke");
    let (status, headers, body) = app.get("/dashboard/runs", &session).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("was revoked"), "{body}");
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .expect("cookie")
            .starts_with("runway_dashboard=; "),
        "{headers:?}"
    );

    // Signing out clears the cookie.
    let (status, headers, _) = app.post("/dashboard/logout", "", &[app.origin()]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .expect("cookie")
            .contains("Max-Age=0")
    );
}

impl App {
    async fn run_as(&self, id: &str, key: &str) -> Value {
        self.client
            .get(self.url(&format!("/v1/runs/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json")
    }
}

#[tokio::test]
async fn retry_makes_one_new_run_from_an_ended_one() {
    let app = App::open().await;
    let id = app.create(&request("acme", "nightly"), None).await;
    let retry = format!("/dashboard/runs/{id}/retry");
    let form = "key=7d1c0a9e-retry-form";

    // Queued: no retry button, and the action is the API's 409; a cross-site POST is refused.
    let (_, _, body) = app.get(&format!("/dashboard/runs/{id}"), &[]).await;
    assert!(!body.contains(r#"id="retry""#), "{body}");
    let (status, _, body) = app.post(&retry, form, &[app.origin()]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, response, body) = app
        .post(
            &retry,
            form,
            &[("origin", "http://evil.example".to_owned())],
        )
        .await;
    assert_page(status, &response, &body, StatusCode::FORBIDDEN);

    // Ended (canceled): the page offers a retry; it makes a new run linked to this one.
    app.post(&format!("/dashboard/runs/{id}/cancel"), "", &[app.origin()])
        .await;
    let (_, _, body) = app.get(&format!("/dashboard/runs/{id}"), &[]).await;
    assert!(body.contains(r#"id="retry""#), "{body}");
    let (status, headers, _) = app.post(&retry, form, &[app.origin()]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers[header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let new_id = location
        .strip_prefix("/dashboard/runs/")
        .and_then(|rest| rest.strip_suffix("?notice=retried"))
        .expect("to the new run's page")
        .to_owned();
    assert_ne!(new_id, id);
    let new_run = app.run(&new_id).await;
    assert_eq!(new_run["retry_of"], id.as_str(), "{new_run}");
    assert_eq!(new_run["state"], "queued");
    let (_, _, body) = app.get(&location, &[]).await;
    assert!(
        body.contains(r#"id="retry-of""#) && body.contains(r#"id="notice""#),
        "{body}"
    );

    // The same form submitted again (a double click) finds that run rather than making another.
    let (status, headers, _) = app.post(&retry, form, &[app.origin()]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], location.as_str());
    assert_eq!(
        app.run(&id).await["result"],
        "canceled",
        "the original is unchanged"
    );
}
