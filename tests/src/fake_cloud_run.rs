//! A fake of the Cloud Run Admin API v2 (the Jobs and Executions methods Runway uses), built to
//! the discovery document's shapes in `../shared/reference/` and to what the official Rust
//! client sends: `jobs.run`, `jobs.get`, `executions.get`, `executions.list`,
//! `executions.cancel` and `operations.get`, JSON with integer enums when the request asks for
//! them (`$alt=json;enum-encoding=int`, as the client always does) and strings otherwise,
//! zero counts left out as proto3 JSON does, and errors as `{"error": {code, message,
//! status}}`.
//!
//! It really runs the job: `jobs.run` starts the job's command as a child process (its own
//! process group) with the job's environment merged with the request's env overrides, kills it
//! at the overridden task timeout or on `executions.cancel`, and reports `runningCount`,
//! `succeededCount`, `failedCount`, `cancelledCount` and a `Completed` condition as it goes.
//! Tests can make the next `jobs.run` calls fail (`refuse_next_runs`: an error, nothing
//! started; `start_then_fail_next_runs`: the job starts, and the caller still gets an error —
//! the ambiguous case) and read what it was asked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The `@type` of an Execution inside an Operation.
pub const EXECUTION_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Execution";
/// The variable the launcher names the attempt with.
const ATTEMPT_ENV: &str = "RUNWAY_ATTEMPT_ID";

/// One Cloud Run Job: what an execution of it runs.
#[derive(Debug, Clone)]
pub struct FakeJob {
    /// The program (the job's container entrypoint).
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The job template's environment; the request's overrides are merged over it.
    pub env: BTreeMap<String, String>,
    /// The image the job names (`jobs.get`).
    pub image: String,
    /// The job's runtime service account.
    pub service_account: String,
    /// The job's task timeout, when no override gives one.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug)]
struct Execution {
    name: String,
    uid: String,
    job: String,
    operation: String,
    env: Vec<(String, String)>,
    timeout: Duration,
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    completed: Option<DateTime<Utc>>,
    outcome: Outcome,
    exit_code: Option<i32>,
    log: PathBuf,
    cancel: Arc<Notify>,
    /// The image it ran, when the job was redeployed with another.
    image: Option<String>,
}

/// What the next `jobs.run` does instead of succeeding.
#[derive(Debug, Clone, Copy)]
enum Injection {
    Refuse(u16),
    StartThenFail(u16),
}

#[derive(Debug, Default)]
struct Inner {
    executions: Vec<Execution>,
    /// Jobs redeployed with another image (`set_image`).
    images: HashMap<String, String>,
    injections: VecDeque<Injection>,
    run_requests: usize,
    cancel_requests: Vec<String>,
    requests: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    jobs: HashMap<String, FakeJob>,
    inner: Mutex<Inner>,
    logs: PathBuf,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake Cloud Run Admin API on 127.0.0.1; it stops (killing its jobs) when dropped.
#[derive(Debug)]
pub struct FakeCloudRun {
    endpoint: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    _logs: tempfile::TempDir,
}

impl Drop for FakeCloudRun {
    fn drop(&mut self) {
        self.server.abort();
        for execution in &self.shared.lock().executions {
            execution.cancel.notify_one();
        }
    }
}

impl FakeCloudRun {
    /// Serves `jobs` (keyed by full name, `projects/{p}/locations/{l}/jobs/{j}`).
    pub async fn start(jobs: impl IntoIterator<Item = (String, FakeJob)>) -> Self {
        let logs = tempfile::tempdir().expect("tempdir for job logs");
        let shared = Arc::new(Shared {
            jobs: jobs.into_iter().collect(),
            inner: Mutex::default(),
            logs: logs.path().to_owned(),
        });
        let app = Router::new()
            .route("/v2/{*name}", get(get_resource).post(post_resource))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Cloud Run");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            shared,
            server,
            _logs: logs,
        }
    }

    /// The endpoint to give the client (`with_endpoint`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Redeploys `job` with `image` (what `jobs.get` and later executions report).
    pub fn set_image(&self, job: &str, image: &str) {
        self.shared
            .lock()
            .images
            .insert(job.to_owned(), image.to_owned());
    }

    /// The next `n` `jobs.run` calls answer `status` and start nothing.
    pub fn refuse_next_runs(&self, n: usize, status: u16) {
        let mut inner = self.shared.lock();
        inner
            .injections
            .extend((0..n).map(|_| Injection::Refuse(status)));
    }

    /// The next `n` `jobs.run` calls start their job and still answer `status`.
    pub fn start_then_fail_next_runs(&self, n: usize, status: u16) {
        let mut inner = self.shared.lock();
        inner
            .injections
            .extend((0..n).map(|_| Injection::StartThenFail(status)));
    }

    /// `jobs.run` requests received, refused ones included.
    pub fn run_requests(&self) -> usize {
        self.shared.lock().run_requests
    }

    /// The attempt id of every execution started, in order.
    pub fn started_attempts(&self) -> Vec<String> {
        self.shared
            .lock()
            .executions
            .iter()
            .map(|e| {
                e.env
                    .iter()
                    .find(|(k, _)| k == ATTEMPT_ENV)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The environment an execution was started with (job env merged with the overrides).
    pub fn env_of(&self, execution: &str) -> Option<BTreeMap<String, String>> {
        self.shared
            .lock()
            .executions
            .iter()
            .find(|e| e.name == execution)
            .map(|e| e.env.iter().cloned().collect())
    }

    /// The executions `executions.cancel` was asked for, in order.
    pub fn cancel_requests(&self) -> Vec<String> {
        self.shared.lock().cancel_requests.clone()
    }

    /// Every request, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// The log (stdout and stderr) of an execution so far.
    pub fn log_of(&self, execution: &str) -> String {
        let path = self
            .shared
            .lock()
            .executions
            .iter()
            .find(|e| e.name == execution)
            .map(|e| e.log.clone());
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits (up to `limit`) until no execution is running.
    pub async fn wait_idle(&self, limit: Duration) {
        let start = std::time::Instant::now();
        while self
            .shared
            .lock()
            .executions
            .iter()
            .any(|e| e.outcome == Outcome::Running)
        {
            assert!(
                start.elapsed() < limit,
                "fake Cloud Run executions still running after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn error(status: u16, message: &str) -> Response {
    error_with(status, None, message)
}

/// An error with an explicit canonical status name (`FAILED_PRECONDITION` is also a 400).
fn error_with(status: u16, name: Option<&str>, message: &str) -> Response {
    let name = name.unwrap_or(match status {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        axum::Json(json!({"error": {"code": status, "message": message, "status": name}})),
    )
        .into_response()
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn ints(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        let decoded = url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        decoded.contains("enum-encoding=int")
    })
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// An enum as the caller asked for it.
fn enum_value(ints: bool, number: i64, name: &str) -> Value {
    if ints { json!(number) } else { json!(name) }
}

impl Execution {
    fn to_json(&self, jobs: &HashMap<String, FakeJob>, ints: bool) -> Value {
        let image = jobs
            .get(&self.job)
            .map(|j| j.image.clone())
            .unwrap_or_default();
        let mut out = json!({
            "name": self.name,
            "uid": self.uid,
            "job": self.job.rsplit('/').next().unwrap_or_default(),
            "createTime": time(self.created),
            "updateTime": time(self.completed.or(self.started).unwrap_or(self.created)),
            "taskCount": 1,
            "parallelism": 1,
            "generation": "1",
            "observedGeneration": "1",
            "logUri": format!("file://{}", self.log.display()),
            "etag": format!("\"{}\"", self.uid),
            "template": {
                "containers": [{
                    "image": self.image.clone().unwrap_or(image),
                    "env": self.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
                }],
                "timeout": format!("{}s", self.timeout.as_secs()),
                "serviceAccount": jobs.get(&self.job).map(|j| j.service_account.clone()).unwrap_or_default(),
            },
        });
        let obj = out.as_object_mut().expect("an object");
        if let Some(t) = self.started {
            obj.insert("startTime".into(), json!(time(t)));
        }
        if let Some(t) = self.completed {
            obj.insert("completionTime".into(), json!(time(t)));
        }
        let count = match self.outcome {
            Outcome::Running if self.started.is_some() => Some("runningCount"),
            Outcome::Running => None,
            Outcome::Succeeded => Some("succeededCount"),
            Outcome::Failed => Some("failedCount"),
            Outcome::Cancelled => Some("cancelledCount"),
        };
        if let Some(count) = count {
            obj.insert(count.into(), json!(1));
        }
        if self.outcome == Outcome::Running {
            obj.insert("reconciling".into(), json!(true));
        }
        let (state, reason, message) = match self.outcome {
            Outcome::Running => (
                (2, "CONDITION_RECONCILING"),
                None,
                "Execution is running.".to_owned(),
            ),
            Outcome::Succeeded => (
                (4, "CONDITION_SUCCEEDED"),
                None,
                "Execution completed successfully.".to_owned(),
            ),
            Outcome::Failed => (
                (3, "CONDITION_FAILED"),
                Some((2, "NON_ZERO_EXIT_CODE")),
                format!(
                    "Task {}-0 failed with exit code {}.",
                    self.name.rsplit('/').next().unwrap_or_default(),
                    self.exit_code
                        .map_or("unknown".to_owned(), |c| c.to_string())
                ),
            ),
            Outcome::Cancelled => (
                (3, "CONDITION_FAILED"),
                Some((3, "CANCELLED")),
                "The execution was cancelled.".to_owned(),
            ),
        };
        let mut condition = json!({
            "type": "Completed",
            "state": enum_value(ints, state.0, state.1),
            "message": message,
            "lastTransitionTime": time(self.completed.or(self.started).unwrap_or(self.created)),
        });
        if let Some((n, name)) = reason {
            condition
                .as_object_mut()
                .expect("an object")
                .insert("executionReason".into(), enum_value(ints, n, name));
        }
        obj.insert("conditions".into(), json!([condition]));
        out
    }
}

fn operation(execution: &Value, name: &str, done: bool) -> Value {
    let mut metadata = execution.clone();
    metadata
        .as_object_mut()
        .expect("an object")
        .insert("@type".into(), json!(EXECUTION_TYPE));
    let mut op = json!({"name": name, "metadata": metadata, "done": done});
    if done {
        op.as_object_mut()
            .expect("an object")
            .insert("response".into(), metadata);
    }
    op
}

async fn get_resource(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query.as_deref();
    shared.lock().requests.push(format!(
        "GET /v2/{name}?{}",
        query.clone().unwrap_or_default()
    ));
    let ints = ints(q);
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["projects", _, "locations", _, "jobs", _] => match shared.jobs.get(&name) {
            Some(job) => {
                let image = shared
                    .lock()
                    .images
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| job.image.clone());
                axum::Json(json!({
                "name": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "generation": "1",
                "template": {"taskCount": 1, "template": {
                    "containers": [{"image": image,
                        "env": job.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>()}],
                    "timeout": format!("{}s", job.timeout.as_secs()),
                    "serviceAccount": job.service_account,
                    "maxRetries": 0,
                }},
            }))
            .into_response()
            }
            None => error(404, &format!("Resource '{name}' was not found")),
        },
        ["projects", _, "locations", _, "jobs", _, "executions"] => {
            let parent = parts[..6].join("/");
            if !shared.jobs.contains_key(&parent) {
                return error(404, &format!("Resource '{parent}' was not found"));
            }
            let size = query_param(q, "pageSize")
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(100)
                .min(1000);
            let from = query_param(q, "pageToken")
                .filter(|t| !t.is_empty())
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(0);
            let inner = shared.lock();
            // Newest first, as Cloud Run lists them.
            let all: Vec<&Execution> = inner
                .executions
                .iter()
                .rev()
                .filter(|e| e.job == parent)
                .collect();
            let page: Vec<Value> = all
                .iter()
                .skip(from)
                .take(size)
                .map(|e| e.to_json(&shared.jobs, ints))
                .collect();
            let mut body = json!({"executions": page});
            if from + size < all.len() {
                body.as_object_mut()
                    .expect("an object")
                    .insert("nextPageToken".into(), json!((from + size).to_string()));
            }
            if page.is_empty() {
                body = json!({});
            }
            axum::Json(body).into_response()
        }
        ["projects", _, "locations", _, "jobs", _, "executions", _] => {
            let inner = shared.lock();
            match inner.executions.iter().find(|e| e.name == name) {
                Some(e) => axum::Json(e.to_json(&shared.jobs, ints)).into_response(),
                None => error(404, &format!("Resource '{name}' was not found")),
            }
        }
        ["projects", _, "locations", _, "operations", _] => {
            let inner = shared.lock();
            match inner.executions.iter().find(|e| e.operation == name) {
                Some(e) => axum::Json(operation(
                    &e.to_json(&shared.jobs, ints),
                    &name,
                    e.outcome != Outcome::Running,
                ))
                .into_response(),
                None => error(404, &format!("Resource '{name}' was not found")),
            }
        }
        _ => error(404, &format!("no such method for {name}")),
    }
}

async fn post_resource(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    shared.lock().requests.push(format!(
        "POST /v2/{name}?{}",
        query.clone().unwrap_or_default()
    ));
    let ints = ints(query.as_deref());
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(400, &format!("Invalid JSON payload received. {e}")),
        }
    };
    if let Some(job) = name.strip_suffix(":run") {
        run_job(&shared, job, &body, ints)
    } else if let Some(execution) = name.strip_suffix(":cancel") {
        cancel_execution(&shared, execution, ints)
    } else {
        error(404, &format!("no such method for {name}"))
    }
}

fn run_job(shared: &Arc<Shared>, job_name: &str, body: &Value, ints: bool) -> Response {
    let injection = {
        let mut inner = shared.lock();
        inner.run_requests += 1;
        inner.injections.pop_front()
    };
    if let Some(Injection::Refuse(status)) = injection {
        return error(status, "Quota exceeded for jobs.run requests per minute.");
    }
    let Some(job) = shared.jobs.get(job_name) else {
        return error(404, &format!("Resource '{job_name}' was not found"));
    };
    let overrides = &body["overrides"];
    let mut env = job.env.clone();
    for container in overrides["containerOverrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for var in container["env"].as_array().into_iter().flatten() {
            let (Some(k), Some(v)) = (var["name"].as_str(), var["value"].as_str()) else {
                return error(400, "env overrides need a name and a value");
            };
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let timeout = match overrides["timeout"].as_str() {
        None => job.timeout,
        Some(text) => match text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()) {
            Some(secs) if secs > 0.0 => Duration::from_secs_f64(secs),
            _ => {
                return error(
                    400,
                    &format!("Invalid value at 'overrides.timeout' ({text})"),
                );
            }
        },
    };
    let short = job_name.rsplit('/').next().unwrap_or("job");
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
    let project_location = job_name
        .split("/jobs/")
        .next()
        .unwrap_or_default()
        .to_owned();
    let execution_name = format!("{job_name}/executions/{short}-{suffix}");
    let operation_name = format!("{project_location}/operations/{}", uuid::Uuid::new_v4());
    let log = shared.logs.join(format!("{short}-{suffix}.log"));
    let cancel = Arc::new(Notify::new());
    let execution = Execution {
        name: execution_name.clone(),
        uid: uuid::Uuid::new_v4().to_string(),
        job: job_name.to_owned(),
        operation: operation_name.clone(),
        env: env.clone().into_iter().collect(),
        timeout,
        created: Utc::now(),
        started: None,
        completed: None,
        outcome: Outcome::Running,
        exit_code: None,
        log: log.clone(),
        cancel: cancel.clone(),
        image: shared.lock().images.get(job_name).cloned(),
    };
    let rendered = execution.to_json(&shared.jobs, ints);
    shared.lock().executions.push(execution);
    tokio::spawn(run_execution(
        shared.clone(),
        job.clone(),
        execution_name,
        env,
        timeout,
        log,
        cancel,
    ));
    if let Some(Injection::StartThenFail(status)) = injection {
        return error(status, "Internal error encountered.");
    }
    axum::Json(operation(&rendered, &operation_name, false)).into_response()
}

async fn run_execution(
    shared: Arc<Shared>,
    job: FakeJob,
    name: String,
    env: BTreeMap<String, String>,
    timeout: Duration,
    log: PathBuf,
    cancel: Arc<Notify>,
) {
    let finish = |outcome: Outcome, code: Option<i32>| {
        let mut inner = shared.lock();
        if let Some(e) = inner.executions.iter_mut().find(|e| e.name == name)
            && e.outcome == Outcome::Running
        {
            e.outcome = outcome;
            e.exit_code = code;
            e.completed = Some(Utc::now());
        }
    };
    let file = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(_) => return finish(Outcome::Failed, None),
    };
    let Ok(err) = file.try_clone() else {
        return finish(Outcome::Failed, None);
    };
    let mut command = tokio::process::Command::new(&job.command);
    command
        .args(&job.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::write(&log, format!("cannot start {}: {e}", job.command.display()));
            return finish(Outcome::Failed, Some(127));
        }
    };
    if let Some(e) = shared.lock().executions.iter_mut().find(|e| e.name == name) {
        e.started = Some(Utc::now());
    }
    let kill_group = |child: &tokio::process::Child| {
        if let Some(pid) = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };
    tokio::select! {
        status = child.wait() => {
            let code = status.ok().and_then(|s| s.code());
            finish(if code == Some(0) { Outcome::Succeeded } else { Outcome::Failed }, code);
        }
        () = tokio::time::sleep(timeout) => {
            kill_group(&child);
            let _ = child.wait().await;
            finish(Outcome::Failed, None);
        }
        () = cancel.notified() => {
            kill_group(&child);
            let _ = child.wait().await;
            finish(Outcome::Cancelled, None);
        }
    }
}

fn cancel_execution(shared: &Arc<Shared>, name: &str, ints: bool) -> Response {
    let mut inner = shared.lock();
    inner.cancel_requests.push(name.to_owned());
    let Some(execution) = inner.executions.iter().find(|e| e.name == name) else {
        return error(404, &format!("Resource '{name}' was not found"));
    };
    if execution.outcome != Outcome::Running {
        return error_with(
            400,
            Some("FAILED_PRECONDITION"),
            "Execution has already completed.",
        );
    }
    execution.cancel.notify_one();
    let rendered = execution.to_json(&shared.jobs, ints);
    let operation_name = execution.operation.clone();
    axum::Json(operation(&rendered, &operation_name, false)).into_response()
}
