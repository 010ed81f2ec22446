//! The client commands — `submit`, `retry`, `status`, `watch`, `cancel`, `runs`, `validators` —
//! a small client of the launcher's HTTP API, so a person (or a script) can take a run from a
//! file to its result, and see and act on runs, without writing a request by hand.
//!
//! Every read command prints a plain table or summary, or with `--json` the launcher's JSON as
//! it came. Failures carry their kind ([`Failure`]) for the exit code: the launcher's 4xx is
//! bad input, a connection error or 5xx is an unreachable service.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::builder::PossibleValuesParser;
use reqwest::{Method, RequestBuilder};
use runway_runs::RunState;
use serde_json::{Value, json};

use crate::exit::Failure;
use crate::table;

/// Files up to this size go inline (base64 in JSON); larger ones as multipart.
const INLINE_LIMIT: u64 = 4 * 1024 * 1024;

/// Where the launcher is, and the credentials to call it with.
#[derive(Clone, clap::Args)]
pub struct ClientConfig {
    /// The launcher's base URL.
    #[arg(
        long,
        env = "RUNWAY_LAUNCHER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub launcher_url: String,
    /// An API key (`rwk_…`) for a launcher that requires credentials (`RUNWAY_API_AUTH=required`),
    /// sent as `Authorization: Bearer`.
    #[arg(long, env = "RUNWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ClientConfig {
    /// A launcher at `launcher_url`, without credentials.
    pub fn new(launcher_url: impl Into<String>) -> Self {
        Self {
            launcher_url: launcher_url.into(),
            api_key: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    /// The API key is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("launcher_url", &self.launcher_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How a command prints what it read: text, or the launcher's JSON.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Output {
    /// Print the launcher's JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What to submit.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The model file: an EnergyPlus model (`.idf`, `.epJSON`) or an FMU (`.fmu`).
    pub file: PathBuf,
    /// The validator id (see `runway validators`); default from the file's extension:
    /// `energyplus` for models, `fmu` for FMUs.
    #[arg(long)]
    pub validator: Option<String>,
    /// Validator inputs as a JSON object (e.g. `{"timestep_per_hour": 6}`).
    #[arg(long, default_value = "{}")]
    pub inputs: String,
    /// Organization id.
    #[arg(long, default_value = "local")]
    pub org: String,
    /// Workflow id.
    #[arg(long, default_value = "local")]
    pub workflow: String,
    /// An idempotency key: submitting again with it returns the same run.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the run to its result (the default): exit 0 if it passed, 1 if not.
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Print the run id (with `--json`, the created run) and exit 0 once it is created.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// The weather file of an EnergyPlus run: an `.epw` file, or a location whose weather
    /// EnergyPlus ships (`chicago`, `san francisco`, `golden`, `tampa`, `dulles`).
    #[arg(long)]
    pub weather: Option<String>,
    /// The `energyplus` executable whose shipped weather files `--weather` looks locations up
    /// in (default: `energyplus` on PATH).
    #[arg(long, env = "RUNWAY_ENERGYPLUS")]
    pub energyplus: Option<PathBuf>,
    #[command(flatten)]
    pub output: Output,
}

/// Which run to retry, and how.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// The id of an ended run (any result).
    pub id: String,
    /// Follow the new run to its result, as `submit` does (exit 0 if it passed, 1 if not);
    /// without it, print the new run's id and exit once it is created.
    #[arg(long)]
    pub wait: bool,
    /// An idempotency key: retrying again with it returns the run the first retry made.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// Which runs to list (the filters of `GET /v1/runs`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunsArgs {
    /// Only runs in this state.
    #[arg(long, value_parser = PossibleValuesParser::new(RunState::ALL.iter().map(RunState::as_str)))]
    pub state: Option<String>,
    /// Only runs of this validator.
    #[arg(long)]
    pub validator: Option<String>,
    /// Only this organization's runs (an API key sees its own org's only).
    #[arg(long)]
    pub org: Option<String>,
    /// Runs per page (the launcher's default when left out; at most its maximum).
    #[arg(long)]
    pub limit: Option<u32>,
    /// The page after a previous one: its `next_cursor` (printed below the table).
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Every page, to the last.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub output: Output,
}

/// The launcher's HTTP API, with the caller's credentials; every failure typed for its exit
/// code.
#[derive(Debug)]
struct Launcher {
    config: ClientConfig,
    http: reqwest::Client,
}

impl Launcher {
    fn new(config: &ClientConfig) -> Self {
        Self {
            config: config.clone(),
            http: reqwest::Client::new(),
        }
    }

    fn base(&self) -> &str {
        self.config.launcher_url.trim_end_matches('/')
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base()));
        match &self.config.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`; a connection failure is [`Failure::Unreachable`] with one sentence.
    async fn send(&self, request: RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request
            .send()
            .await
            .map_err(|e| self.unreachable(&e).into())
    }

    /// Sends `request` and reads the JSON of its 2xx answer.
    async fn call(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        json_or_error(self.send(request).await?).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.request(Method::GET, path)).await
    }

    async fn get_run(&self, id: &str) -> anyhow::Result<Value> {
        self.get(&format!("/v1/runs/{}", path_segment(id)?)).await
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        let url = &self.config.launcher_url;
        if e.is_builder() {
            return Failure::BadInput(format!(
                "the launcher URL {url:?} is not usable ({}); set --launcher-url or \
                 RUNWAY_LAUNCHER_URL to e.g. http://127.0.0.1:8080",
                root_cause(e)
            ));
        }
        Failure::Unreachable(format!(
            "cannot reach the launcher at {url} ({}); is it running there? (set \
             --launcher-url or RUNWAY_LAUNCHER_URL)",
            root_cause(e)
        ))
    }
}

/// The innermost cause of an error: the part that says what happened ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// A run id as one path segment: refused (bad input) if it could escape it.
fn path_segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || id.contains(['/', '?', '#', '%']) || id.chars().any(char::is_whitespace) {
        return Err(Failure::BadInput(format!(
            "{id:?} is not a run id (run ids are UUIDs; see runway runs)"
        ))
        .into());
    }
    Ok(id)
}

/// The `.epw` file `--weather` names: the path itself when it is a file, else the one weather
/// file shipped with the EnergyPlus at `energyplus` (default: `energyplus` on PATH) whose
/// name contains the location.
pub fn weather_file(asked: &str, energyplus: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = Path::new(asked);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let exe = energyplus.unwrap_or(Path::new("energyplus"));
    let energyplus = runway_validator_runner::energyplus::EnergyPlus::locate(exe).with_context(|| {
        format!("{asked:?} is not a file, and EnergyPlus's weather files cannot be found to look it up as a location (set RUNWAY_ENERGYPLUS)")
    })?;
    let dir = energyplus.weather_dir();
    let norm = |s: &str| s.to_ascii_lowercase().replace([' ', '-', '_', '.'], "");
    let wanted = norm(asked);
    let mut shipped: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("epw")))
        .collect();
    shipped.sort();
    let matches: Vec<&PathBuf> = shipped
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| norm(&n.to_string_lossy()).contains(&wanted))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        _ => {
            let names: Vec<String> = shipped
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            bail!(
                "--weather {asked:?} is not a file and names {} of the weather files EnergyPlus ships: {}",
                if matches.is_empty() {
                    "none"
                } else {
                    "more than one"
                },
                names.join(", ")
            )
        }
    }
}

/// The MIME type, file port and default validator for a model file.
fn describe(path: &Path) -> anyhow::Result<(&'static str, &'static str, &'static str)> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    Ok(match ext.as_str() {
        "idf" => (
            "application/vnd.energyplus.idf",
            "primary_model",
            "energyplus",
        ),
        "epjson" => (
            "application/vnd.energyplus.epjson",
            "primary_model",
            "energyplus",
        ),
        "fmu" => ("application/vnd.fmi.fmu", "fmu_model", "fmu"),
        other => bail!(
            "cannot tell what {} is from its extension {other:?}; expected .idf, .epJSON or .fmu",
            path.display()
        ),
    })
}

/// Submits a run and, unless `--no-wait`, follows it to its result. Returns the run's id.
pub async fn submit(client: &ClientConfig, args: &SubmitArgs) -> anyhow::Result<String> {
    let launcher = Launcher::new(client);
    // Everything checked here, before anything is sent, is the caller's input.
    let request = prepare(&launcher, args)
        .await
        .map_err(|e| Failure::BadInput(format!("{e:#}")))?;
    let mut request = request;
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let run = launcher.call(request).await?;
    let id = run_id_of(&run)?;
    if args.no_wait {
        print_run_or_id(&run, &id, args.output.json);
    } else {
        eprintln!("submitted run {id}");
        watch_with(&launcher, &id, args.output.json).await?;
    }
    Ok(id)
}

/// The create request for `args`: its files read, inline or as multipart.
async fn prepare(launcher: &Launcher, args: &SubmitArgs) -> anyhow::Result<RequestBuilder> {
    let (mime_type, port_key, default_validator) = describe(&args.file)?;
    let inputs: Value = serde_json::from_str(&args.inputs)
        .with_context(|| format!("--inputs is not JSON: {}", args.inputs))?;
    if !inputs.is_object() {
        bail!("--inputs must be a JSON object");
    }
    let mut files = vec![(args.file.clone(), mime_type, port_key)];
    if let Some(weather) = &args.weather {
        if default_validator != "energyplus" {
            bail!(
                "--weather is for EnergyPlus models; {} is not one",
                args.file.display()
            );
        }
        files.push((
            weather_file(weather, args.energyplus.as_deref())?,
            "application/vnd.energyplus.epw",
            "weather",
        ));
    }
    let mut described = Vec::new();
    let mut total = 0;
    for (path, mime_type, port_key) in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable name", path.display()))?
            .to_owned();
        total += std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        described.push((path, name, *mime_type, *port_key));
    }
    let mut request = json!({
        "validator": args.validator.as_deref().unwrap_or(default_validator),
        "org": {"id": args.org, "name": args.org},
        "workflow": {"id": args.workflow, "step_id": "submit"},
        "inputs": inputs,
    });
    let builder = launcher.request(Method::POST, "/v1/runs");
    if total <= INLINE_LIMIT {
        let mut items = Vec::new();
        for (path, name, mime_type, port_key) in &described {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            items.push(json!({
                "name": name, "mime_type": mime_type, "port_key": port_key,
                "content_base64": STANDARD.encode(bytes),
            }));
        }
        request["files"] = Value::Array(items);
        Ok(builder.json(&request))
    } else {
        let mut items = Vec::new();
        let mut parts = Vec::new();
        for (i, (path, name, mime_type, port_key)) in described.iter().enumerate() {
            let part = format!("file{i}");
            items.push(json!({
                "name": name, "mime_type": mime_type, "port_key": port_key, "part": part,
            }));
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().await?.len();
            parts.push((
                part,
                reqwest::multipart::Part::stream_with_length(reqwest::Body::from(file), size)
                    .file_name(name.clone()),
            ));
        }
        request["files"] = Value::Array(items);
        let mut form = reqwest::multipart::Form::new().text("request", request.to_string());
        for (name, part) in parts {
            form = form.part(name, part);
        }
        Ok(builder.multipart(form))
    }
}

/// Retries an ended run as a new run (`POST /v1/runs/{id}/retry`); prints the new run's id,
/// or with `--wait` follows it to its result. Returns the new run's id.
pub async fn retry(client: &ClientConfig, args: &RetryArgs) -> anyhow::Result<String> {
    let launcher = Launcher::new(client);
    let mut request = launcher.request(
        Method::POST,
        &format!("/v1/runs/{}/retry", path_segment(&args.id)?),
    );
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let run = launcher.call(request).await?;
    let id = run_id_of(&run)?;
    if args.wait {
        eprintln!("retrying run {} as run {id}", args.id);
        watch_with(&launcher, &id, args.output.json).await?;
    } else {
        eprintln!("run {id} retries run {}", args.id);
        print_run_or_id(&run, &id, args.output.json);
    }
    Ok(id)
}

/// Prints a run's state (and result, when it has one), or with `--json` the run.
pub async fn status(client: &ClientConfig, id: &str, output: &Output) -> anyhow::Result<()> {
    let run = Launcher::new(client).get_run(id).await?;
    if output.json {
        print_json(&run);
    } else {
        print_summary(&run);
    }
    Ok(())
}

/// Follows a run over its event stream (`GET /v1/runs/{id}/events`) until it completes,
/// printing each event on stderr; reconnects with `Last-Event-ID` when the connection drops,
/// so no event is missed or shown twice. Ends with the run's summary (with `--json`, the run)
/// on stdout; a [`Failure::NotPassed`] unless it passed.
pub async fn watch(client: &ClientConfig, id: &str, output: &Output) -> anyhow::Result<()> {
    watch_with(&Launcher::new(client), id, output.json).await
}

async fn watch_with(launcher: &Launcher, id: &str, json: bool) -> anyhow::Result<()> {
    let run = launcher.get_run(id).await?;
    if run["state"] != "completed" {
        eprintln!(
            "{} (watching its events)",
            run["state"].as_str().unwrap_or("?")
        );
        follow(launcher, id).await?;
    }
    let run = launcher.get_run(id).await?;
    if json {
        print_json(&run);
    } else {
        print_summary(&run);
    }
    match run["result"].as_str() {
        Some("passed") => Ok(()),
        other => Err(Failure::NotPassed {
            id: id.to_owned(),
            result: other.unwrap_or("without a result").to_owned(),
        }
        .into()),
    }
}

/// Asks the launcher to cancel a run; prints the run as it then stands.
pub async fn cancel(client: &ClientConfig, id: &str, output: &Output) -> anyhow::Result<()> {
    let launcher = Launcher::new(client);
    let run = launcher
        .call(launcher.request(
            Method::POST,
            &format!("/v1/runs/{}/cancel", path_segment(id)?),
        ))
        .await?;
    if output.json {
        print_json(&run);
    } else {
        print_summary(&run);
    }
    Ok(())
}

/// Lists runs, newest first, as a table (or with `--json`, the launcher's page — all pages
/// joined with `--all`). Without `--all`, a further page's cursor is named on stderr.
pub async fn runs(client: &ClientConfig, args: &RunsArgs) -> anyhow::Result<()> {
    let launcher = Launcher::new(client);
    let mut query: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("state", &args.state),
        ("validator", &args.validator),
        ("org", &args.org),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let mut cursor = args.cursor.clone();
    let mut runs = Vec::new();
    let next = loop {
        let mut request = launcher.request(Method::GET, "/v1/runs").query(&query);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page = launcher.call(request).await?;
        runs.extend(page["runs"].as_array().cloned().unwrap_or_default());
        let next = page["next_cursor"].as_str().map(str::to_owned);
        match next {
            Some(next) if args.all => cursor = Some(next),
            next => break next,
        }
    };
    if args.output.json {
        print_json(&json!({"runs": runs, "next_cursor": next}));
    } else if runs.is_empty() {
        eprintln!("no runs");
    } else {
        let rows: Vec<Vec<String>> = runs.iter().map(run_row).collect();
        print!(
            "{}",
            table::render(
                &[
                    "ID",
                    "VALIDATOR",
                    "STATE",
                    "RESULT",
                    "CREATED (UTC)",
                    "DURATION"
                ],
                &rows
            )
        );
    }
    if let Some(next) = next
        && !args.output.json
    {
        eprintln!("more runs: add --cursor {next} (or --all)");
    }
    Ok(())
}

/// One row of `runway runs`: a run's summary.
fn run_row(run: &Value) -> Vec<String> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    vec![
        text(&run["id"]),
        text(&run["validator"]["id"]),
        text(&run["state"]),
        text(&run["result"]),
        run["created_at"]
            .as_str()
            .map_or("-".into(), table::timestamp),
        // Only an ended run has a duration.
        run["timing"]["total_ms"]
            .as_i64()
            .map_or("-".into(), table::duration),
    ]
}

/// Lists the launcher's validators as a table (or with `--json`, as the launcher gives them).
pub async fn validators(client: &ClientConfig, output: &Output) -> anyhow::Result<()> {
    let list = Launcher::new(client).get("/v1/validators").await?;
    if output.json {
        print_json(&list);
        return Ok(());
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = list["validators"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                text(&v["id"]),
                text(&v["type"]),
                text(&v["version"]),
                text(&v["backend"]),
                v["timeout_seconds"]
                    .as_i64()
                    .map_or("-".into(), |s| table::duration(s * 1000)),
                text(&v["max_attempts"]),
                text(&v["max_concurrency"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ID",
                "TYPE",
                "VERSION",
                "BACKEND",
                "TIMEOUT",
                "MAX ATTEMPTS",
                "MAX CONCURRENCY"
            ],
            &rows
        )
    );
    Ok(())
}

/// `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

fn print_run_or_id(run: &Value, id: &str, json: bool) {
    if json {
        print_json(run);
    } else {
        println!("{id}");
    }
}

fn run_id_of(run: &Value) -> anyhow::Result<String> {
    run["id"].as_str().map(str::to_owned).ok_or_else(|| {
        Failure::Unreachable(format!("the launcher answered without a run id: {run}")).into()
    })
}

/// How many times in a row `watch` reconnects before it gives up.
const MAX_RECONNECTS: u32 = 20;

/// Reads the run's event stream until `run.completed` (or the stream's end), reconnecting;
/// a refusal (4xx) ends it at once.
async fn follow(launcher: &Launcher, id: &str) -> anyhow::Result<()> {
    let path = format!("/v1/runs/{}/events", path_segment(id)?);
    let started = Instant::now();
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut request = launcher
            .request(Method::GET, &path)
            .header("accept", "text/event-stream");
        if let Some(last) = &last_id {
            request = request.header("last-event-id", last);
        }
        let outcome = async {
            let response = launcher.send(request).await?;
            if !response.status().is_success() {
                json_or_error(response).await?;
                bail!("the event stream was refused");
            }
            read_events(response, &mut last_id, |event| {
                failures = 0;
                eprintln!(
                    "{:>6.1}s {}",
                    started.elapsed().as_secs_f64(),
                    describe_event(&event.kind, &event.data)
                );
                event.kind == "run.completed"
            })
            .await
        }
        .await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if is_refusal(&e) => return Err(e),
            Err(e) if failures < MAX_RECONNECTS => {
                failures += 1;
                eprintln!("event stream lost ({e:#}); reconnecting");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures))).await;
            }
            Err(e) => {
                return Err(Failure::Unreachable(format!(
                    "the run's event stream broke off {MAX_RECONNECTS} times in a row: {e:#}"
                ))
                .into());
            }
        }
    }
}

fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|e| matches!(e.downcast_ref::<Failure>(), Some(Failure::BadInput(_))))
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    id: Option<String>,
    kind: String,
    data: String,
}

/// Reads events from an SSE response, noting each one's id in `last_id`, until `on_event`
/// says to stop (`Ok`) or the stream ends (`Ok` too: a run's stream ends after its completion)
/// or breaks (`Err`).
async fn read_events(
    mut response: reqwest::Response,
    last_id: &mut Option<String>,
    mut on_event: impl FnMut(&SseEvent) -> bool,
) -> anyhow::Result<()> {
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some((block, rest)) = split_block(&buffer) {
            let event = parse_block(&block);
            buffer = rest;
            let Some(event) = event else { continue };
            if let Some(id) = &event.id {
                *last_id = Some(id.clone());
            }
            if on_event(&event) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The first complete block (up to a blank line) and what follows it.
fn split_block(buffer: &str) -> Option<(String, String)> {
    let normalized = buffer.replace("\r\n", "\n");
    let end = normalized.find("\n\n")?;
    Some((
        normalized[..end].to_owned(),
        normalized[end + 2..].to_owned(),
    ))
}

/// An event from one block; `None` for a comment-only block (keep-alive).
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.kind = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && event.id.is_none() {
        return None;
    }
    event.data = data.join("\n");
    Some(event)
}

/// One line about an event.
fn describe_event(kind: &str, data: &str) -> String {
    let body: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let number = &body["attempt_number"];
    match kind {
        "run.started" => format!("started (attempt {number})"),
        "attempt.failed" => {
            let error = body["error"].as_str().unwrap_or("no reason given");
            match body["retry_not_before"].as_str() {
                Some(at) => format!(
                    "attempt {number} {}: {error}; retrying at {at}",
                    body["state"].as_str().unwrap_or("failed")
                ),
                None => format!(
                    "attempt {number} {}: {error}",
                    body["state"].as_str().unwrap_or("failed")
                ),
            }
        }
        "attempt.progress" => {
            let p = &body["progress"];
            match (p["fraction"].as_f64(), p["message"].as_str()) {
                (Some(f), Some(m)) => format!("attempt {number}: {m} ({:.0} %)", f * 100.0),
                (None, Some(m)) => format!("attempt {number}: {m}"),
                (Some(f), None) => format!("attempt {number}: {:.0} %", f * 100.0),
                (None, None) => format!("attempt {number} is alive"),
            }
        }
        "run.completed" => format!(
            "completed: {}",
            body["result"].as_str().unwrap_or("no result")
        ),
        other => format!("{other}: {data}"),
    }
}

/// The JSON body of a 2xx answer; otherwise the launcher's error message, as bad input for a
/// 4xx and as a failing service for anything else.
async fn json_or_error(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        return body.ok_or_else(|| {
            Failure::Unreachable(format!(
                "the launcher answered {status} with something that is not JSON; is \
                 --launcher-url the launcher?"
            ))
            .into()
        });
    }
    let message = body
        .as_ref()
        .and_then(|b| b["error"]["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = text.trim();
            if text.is_empty() {
                "no message".to_owned()
            } else {
                text.chars().take(200).collect()
            }
        });
    let sentence = format!("the launcher answered {status}: {message}");
    Err(if status.is_client_error() {
        Failure::BadInput(sentence)
    } else {
        Failure::Unreachable(sentence)
    }
    .into())
}

fn print_summary(run: &Value) {
    let id = run["id"].as_str().unwrap_or("?");
    let state = run["state"].as_str().unwrap_or("?");
    let validator = run["validator"]["id"].as_str().unwrap_or("?");
    match run["result"].as_str() {
        Some(result) => println!("run {id} ({validator}): {state}, result {result}"),
        None => println!("run {id} ({validator}): {state}"),
    }
    if let Some(original) = run["retry_of"].as_str() {
        println!("  retry of run {original}");
    }
    // A run that ended without a result says why, through its last attempt.
    if run["state"] == "completed" && run["outputs"].is_null() && run["messages"].is_null() {
        let attempts = run["attempts"].as_array().map_or(&[][..], Vec::as_slice);
        if let Some(last) = attempts.last()
            && let Some(error) = last["error"].as_str()
        {
            let code = last["exit_code"]
                .as_i64()
                .filter(|c| !error.contains(&format!("code {c}")))
                .map(|c| format!(" (exit code {c})"))
                .unwrap_or_default();
            println!(
                "  attempt {} of {}: {error}{code}",
                last["number"],
                attempts.len()
            );
        }
    }
    for message in run["messages"].as_array().into_iter().flatten() {
        println!(
            "  {:<7} {} {}",
            message["severity"].as_str().unwrap_or(""),
            message["code"].as_str().unwrap_or(""),
            message["text"].as_str().unwrap_or("")
        );
    }
    for metric in run["metrics"].as_array().into_iter().flatten() {
        println!(
            "  {} = {} {}",
            metric["name"].as_str().unwrap_or(""),
            metric["value"],
            metric["unit"].as_str().unwrap_or("")
        );
    }
    // The validator-specific results: EnergyPlus's typed metrics, an FMU's output values.
    let outputs = &run["outputs"];
    let specific = [
        ("EnergyPlus metrics", &outputs["metrics"]),
        ("FMU output values", &outputs["output_values"]),
    ];
    for (title, values) in specific {
        let Some(values) = values
            .as_object()
            .filter(|v| v.values().any(|v| !v.is_null()))
        else {
            continue;
        };
        println!("  {title}:");
        for (name, value) in values.iter().filter(|(_, v)| !v.is_null()) {
            println!("    {name} = {value}");
        }
    }
    for (name, key) in [
        ("warnings", "warning_count"),
        ("severe", "severe_count"),
        ("fatal", "fatal_count"),
    ] {
        if let Some(n) = outputs[key].as_u64().filter(|n| *n > 0) {
            println!("  EnergyPlus {name}: {n}");
        }
    }
}

#[cfg(test)]
mod sse_tests {
    use super::*;

    #[test]
    fn blocks_are_parsed_and_comments_skipped() {
        let stream = ": keep-alive\n\nid: 7.abc\nevent: run.started\ndata: {\"a\":1}\n\nid: 8";
        let (first, rest) = split_block(stream).expect("block");
        assert_eq!(parse_block(&first), None);
        let (second, rest) = split_block(&rest).expect("block");
        assert_eq!(
            parse_block(&second),
            Some(SseEvent {
                id: Some("7.abc".to_owned()),
                kind: "run.started".to_owned(),
                data: "{\"a\":1}".to_owned(),
            })
        );
        assert_eq!(rest, "id: 8");
        assert!(
            split_block(&rest).is_none(),
            "an unfinished block waits for more"
        );
    }

    #[test]
    fn events_read_as_sentences() {
        assert_eq!(
            describe_event(
                "attempt.failed",
                r#"{"attempt_number":1,"state":"failed","error":"crashed","retry_not_before":"T"}"#
            ),
            "attempt 1 failed: crashed; retrying at T"
        );
        assert_eq!(
            describe_event("run.completed", r#"{"result":"passed"}"#),
            "completed: passed"
        );
    }
}
