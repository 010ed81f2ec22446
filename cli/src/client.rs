//! `runway submit`, `status`, `watch` and `cancel`: a small client of the launcher's HTTP API,
//! so a person can take a run from a file to its result without writing a request by hand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// Files up to this size go inline (base64 in JSON); larger ones as multipart.
const INLINE_LIMIT: u64 = 4 * 1024 * 1024;

/// Where the launcher is.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientConfig {
    /// The launcher's base URL.
    #[arg(
        long,
        env = "RUNWAY_LAUNCHER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub launcher_url: String,
}

/// What to submit.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The model file: an EnergyPlus model (`.idf`, `.epJSON`) or an FMU (`.fmu`).
    pub file: PathBuf,
    /// The validator id (see `GET /v1/validators`); default from the file's extension:
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
    /// Print the run id and return at once instead of following it to its result.
    #[arg(long)]
    pub no_wait: bool,
    /// The weather file of an EnergyPlus run: an `.epw` file, or a location whose weather
    /// EnergyPlus ships (`chicago`, `san francisco`, `golden`, `tampa`, `dulles`).
    #[arg(long)]
    pub weather: Option<String>,
    /// The `energyplus` executable whose shipped weather files `--weather` looks locations up
    /// in (default: `energyplus` on PATH).
    #[arg(long, env = "RUNWAY_ENERGYPLUS")]
    pub energyplus: Option<PathBuf>,
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
    let http = reqwest::Client::new();
    let url = format!("{}/v1/runs", client.launcher_url.trim_end_matches('/'));
    let mut builder = if total <= INLINE_LIMIT {
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
        http.post(&url).json(&request)
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
        http.post(&url).multipart(form)
    };
    if let Some(key) = &args.idempotency_key {
        builder = builder.header("Idempotency-Key", key);
    }
    let response = builder
        .send()
        .await
        .with_context(|| format!("cannot reach the launcher at {}", client.launcher_url))?;
    let run = json_or_error(response).await?;
    let id = run["id"]
        .as_str()
        .context("the launcher returned no run id")?
        .to_owned();
    if args.no_wait {
        println!("{id}");
    } else {
        eprintln!("submitted run {id}");
        watch(client, &id).await?;
    }
    Ok(id)
}

/// Prints a run's state (and result, when it has one).
pub async fn status(client: &ClientConfig, id: &str) -> anyhow::Result<()> {
    let run = get_run(&reqwest::Client::new(), client, id).await?;
    print_summary(&run);
    Ok(())
}

/// Follows a run over its event stream (`GET /v1/runs/{id}/events`) until it completes,
/// printing each event; reconnects with `Last-Event-ID` when the connection drops, so no event
/// is missed or shown twice. Ends with the run's summary; an error unless it passed.
pub async fn watch(client: &ClientConfig, id: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let run = get_run(&http, client, id).await?;
    if run["state"] != "completed" {
        eprintln!(
            "{} (watching its events)",
            run["state"].as_str().unwrap_or("?")
        );
        follow(&http, client, id).await?;
    }
    let run = get_run(&http, client, id).await?;
    print_summary(&run);
    match run["result"].as_str() {
        Some("passed") => Ok(()),
        other => bail!("run {id} ended {}", other.unwrap_or("without a result")),
    }
}

/// How many times in a row `watch` reconnects before it gives up.
const MAX_RECONNECTS: u32 = 20;

/// Reads the run's event stream until `run.completed` (or the stream's end), reconnecting.
async fn follow(http: &reqwest::Client, client: &ClientConfig, id: &str) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/runs/{id}/events",
        client.launcher_url.trim_end_matches('/')
    );
    let started = Instant::now();
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut request = http.get(&url).header("accept", "text/event-stream");
        if let Some(last) = &last_id {
            request = request.header("last-event-id", last);
        }
        let outcome = async {
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the launcher at {}", client.launcher_url))?;
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
            Err(e) if failures < MAX_RECONNECTS => {
                failures += 1;
                eprintln!("event stream lost ({e:#}); reconnecting");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures))).await;
            }
            Err(e) => return Err(e.context("following the run's events")),
        }
    }
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

/// Asks the launcher to cancel a run.
pub async fn cancel(client: &ClientConfig, id: &str) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/runs/{id}/cancel",
        client.launcher_url.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(url)
        .send()
        .await
        .with_context(|| format!("cannot reach the launcher at {}", client.launcher_url))?;
    let run = json_or_error(response).await?;
    print_summary(&run);
    Ok(())
}

async fn get_run(http: &reqwest::Client, client: &ClientConfig, id: &str) -> anyhow::Result<Value> {
    let url = format!("{}/v1/runs/{id}", client.launcher_url.trim_end_matches('/'));
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach the launcher at {}", client.launcher_url))?;
    json_or_error(response).await
}

/// The JSON body of a 2xx answer; otherwise the launcher's error message as the error.
async fn json_or_error(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    bail!("the launcher answered {status}: {message}")
}

fn print_summary(run: &Value) {
    let id = run["id"].as_str().unwrap_or("?");
    let state = run["state"].as_str().unwrap_or("?");
    let validator = run["validator"]["id"].as_str().unwrap_or("?");
    match run["result"].as_str() {
        Some(result) => println!("run {id} ({validator}): {state}, result {result}"),
        None => println!("run {id} ({validator}): {state}"),
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
