//! `runway bench`: drives N runs through the HTTP API of an in-process Runway in mock mode (zero
//! mock delay) and prints throughput and latency percentiles. Everything runs in this one
//! process on this machine, load generator included, so the figures are a floor for the service
//! itself.
//!
//! Latencies, from the client's clock (create) and the store's timestamps (the rest):
//! - create: `POST /v1/runs` round trip;
//! - dispatch: run accepted → attempt claimed by the dispatcher;
//! - finalize: attempt claimed → run finalized by the callback (envelope upload, mock job,
//!   token, callback verification, output read, finalizing transaction);
//! - end to end: run accepted → run finalized.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use runway_runs::{RunFilter, RunState};
use runway_service::config::redact;
use serde_json::json;
use tokio::task::JoinSet;

use crate::dev::{self, DevConfig};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Runs to create.
    #[arg(long, default_value_t = 2000)]
    pub runs: usize,
    /// Concurrent clients creating runs.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Most dispatches in flight at once.
    #[arg(long, default_value_t = 128)]
    pub max_in_flight: usize,
    /// Run store (`sqlite://…` or `postgres://…`); default: a SQLite file in a temp dir.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot make a temp dir")?;
    let database = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let mut config = DevConfig::on_free_ports(dir.path());
    config.local.mock_delay_ms = 0;
    config.workers.max_in_flight = args.max_in_flight;
    config.common.database_url = Some(database.clone());
    let running = dev::start(config).await?;
    let model =
        STANDARD.encode(b"Version, 25.2;\nBuilding, Bench;\nOutput:SQLite, SimpleAndTabular;\n");
    let body = json!({
        "validator": "energyplus",
        "org": {"id": "bench", "name": "Bench"},
        "workflow": {"id": "wf", "step_id": "s"},
        "inputs": {},
        "files": [{"name": "m.idf", "mime_type": "application/vnd.energyplus.idf",
                   "port_key": "primary_model", "content_base64": model}],
    })
    .to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{}/v1/runs", running.launcher_url);

    let started = Instant::now();
    let mut clients = JoinSet::new();
    let per_client = args.runs.div_ceil(args.concurrency);
    for c in 0..args.concurrency {
        let n = per_client.min(args.runs.saturating_sub(c * per_client));
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        clients.spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().as_u16() == 201,
                    "create answered {}",
                    response.status()
                );
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut create = Vec::with_capacity(args.runs);
    while let Some(result) = clients.join_next().await {
        create.extend(result??);
    }
    let created_in = started.elapsed();

    // Wait until nothing is queued or running.
    let store = running.deps.store.clone();
    loop {
        let mut busy = false;
        for state in [RunState::Queued, RunState::Running] {
            let filter = RunFilter {
                state: Some(state),
                ..RunFilter::default()
            };
            busy |= !store.list_runs(&filter, None, 1).await?.runs.is_empty();
        }
        if !busy {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "runs did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();

    // Per-run timings from the store.
    let mut dispatch = Vec::new();
    let mut finalize = Vec::new();
    let mut end_to_end = Vec::new();
    let mut passed = 0;
    let mut cursor = None;
    loop {
        let page = store
            .list_runs(&RunFilter::default(), cursor.as_ref(), 200)
            .await?;
        for summary in &page.runs {
            let Some(run) = store.get_run(summary.id).await? else {
                continue;
            };
            let Some(attempt) = run.attempts.last() else {
                continue;
            };
            if run.run.result.map(|r| r.as_str()) == Some("passed") {
                passed += 1;
            }
            let ms = |d: chrono::TimeDelta| {
                Duration::from_micros(d.num_microseconds().unwrap_or(0).max(0) as u64)
            };
            if let (Some(claimed), Some(finished)) = (attempt.dispatched_at, run.run.finished_at) {
                dispatch.push(ms(claimed - run.run.created_at));
                finalize.push(ms(finished - claimed));
                end_to_end.push(ms(finished - run.run.created_at));
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    running.shutdown().await?;

    println!(
        "runway bench: {} runs, {} clients, mock backend (0 ms), store {}",
        args.runs,
        args.concurrency,
        redact(&database)
    );
    println!(
        "  created in      {:>8.2} s  ({:.0} creates/s)",
        created_in.as_secs_f64(),
        args.runs as f64 / created_in.as_secs_f64()
    );
    println!(
        "  all finished in {:>8.2} s  ({:.0} runs/s end to end)",
        total.as_secs_f64(),
        args.runs as f64 / total.as_secs_f64()
    );
    println!("  passed          {passed}/{}", args.runs);
    println!("  latency (ms)         p50      p99      max");
    for (name, values) in [
        ("create", &mut create),
        ("dispatch", &mut dispatch),
        ("finalize", &mut finalize),
        ("end to end", &mut end_to_end),
    ] {
        let (p50, p99, max) = percentiles(values);
        println!("  {name:<16} {p50:>8.1} {p99:>8.1} {max:>8.1}");
    }
    anyhow::ensure!(
        passed == args.runs,
        "{} runs did not pass",
        args.runs - passed
    );
    Ok(())
}

/// p50, p99 and max in milliseconds.
fn percentiles(values: &mut [Duration]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    values.sort_unstable();
    let at =
        |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(at(0.50)), ms(at(0.99)), ms(values[values.len() - 1]))
}
