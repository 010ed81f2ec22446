//! `runway bench`: drives runs through the launcher's HTTP API of a Runway in mock mode (zero
//! mock delay: every run still does its upload, envelope, ID token, callback verification,
//! output read and finalization) and prints throughput, latency percentiles, the service's
//! memory and start-up time, and on Postgres the commits each run cost.
//!
//! By default the service is a separate `runway dev` process (this executable), so the figures
//! are the service's own and the load generator is only a client; `--in-process` runs both in
//! one process as earlier versions did.
//! The process is started twice on the same data: the first start (a new signing key, the
//! schema) and the restart, which is the service measured.
//!
//! Two ways to load it:
//! - closed loop (default): `--concurrency` clients each create runs one after another;
//! - open loop (`--rate R`): runs are created at a fixed R per second whatever the answers, and
//!   each create's latency counts from when it was due (no coordinated omission).
//!
//! Latencies, from the client's clock (create), the mock jobs' clock (callback) and the store's
//! timestamps (the rest):
//! - create: `POST /v1/runs` round trip;
//! - callback: a mock job's `POST /v1/callbacks` round trip (token check, output read,
//!   finalizing transaction);
//! - dispatch: run accepted → attempt claimed by the dispatcher;
//! - finalize: attempt claimed → run finalized by the callback;
//! - end to end: run accepted → run finalized.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use runway_runs::{RunFilter, RunState, RunStore};
use runway_service::config::redact;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use crate::dev::{self, DevConfig};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Runs to create.
    #[arg(long, default_value_t = 2000)]
    pub runs: usize,
    /// Concurrent clients creating runs (closed loop).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Open loop: create this many runs per second, whatever the answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most dispatches in flight at once.
    #[arg(long, default_value_t = 128)]
    pub max_in_flight: usize,
    /// Run store (`sqlite://…` or `postgres://…`); default: a SQLite file in a temp dir.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Object storage (`file://…`, `memory://bench`, `gs://…`); default: files in a temp dir.
    #[arg(long)]
    pub storage: Option<String>,
    /// Run the service in this process instead of a separate `runway dev`.
    #[arg(long, default_value_t = false)]
    pub in_process: bool,
    /// Each run uploads a weather file beside its model, as EnergyPlus runs do (two files).
    #[arg(long, default_value_t = false)]
    pub weather: bool,
}

/// The service under test.
enum Service {
    InProcess(dev::Running),
    Child {
        child: tokio::process::Child,
        callback_times: PathBuf,
    },
}

/// What the service reported about itself.
#[derive(Debug, Default)]
struct ServiceFigures {
    /// The first start on a new data dir and database (a new signing key, the schema).
    first_ready_in: Option<Duration>,
    /// A restart on the same data: the service that is measured.
    ready_in: Option<Duration>,
    idle_rss_kb: Option<u64>,
    peak_rss_kb: Option<u64>,
    drained_rss_kb: Option<u64>,
    callback: Vec<Duration>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of runs per second");
    }
    let dir = tempfile::tempdir().context("cannot make a temp dir")?;
    let database = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let storage = args
        .storage
        .clone()
        .unwrap_or_else(|| format!("file://{}", dir.path().join("objects").display()));
    if !(storage.starts_with("file://") || storage.starts_with("gs://")) {
        bail!(
            "--storage must be a file:// or gs:// URI: jobs are handed their envelopes by URI, \
             and the contract knows only those two"
        );
    }
    let commits = CommitCounter::connect(&database).await?;

    let mut figures = ServiceFigures::default();
    let (service, launcher_url) =
        start_service(&args, dir.path(), &database, &storage, &mut figures).await?;
    let store = runway_runs::connect(&database)
        .await
        .with_context(|| format!("cannot open the run store ({})", redact(&database)))?;
    let commits_before = commits.read().await?;
    let pid = match &service {
        Service::Child { child, .. } => child.id(),
        Service::InProcess(_) => None,
    };
    if let Some(pid) = pid {
        figures.idle_rss_kb = rss_kb(pid);
    }

    // Runs of this bench only, whatever else the store holds.
    let org = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let model =
        STANDARD.encode(b"Version, 25.2;\nBuilding, Bench;\nOutput:SQLite, SimpleAndTabular;\n");
    let mut files = vec![json!({
        "name": "m.idf", "mime_type": "application/vnd.energyplus.idf",
        "port_key": "primary_model", "content_base64": model,
    })];
    if args.weather {
        let weather = STANDARD.encode(b"LOCATION,Bench,,,,,0,0,0,0\n".repeat(40));
        files.push(json!({
            "name": "w.epw", "mime_type": "application/vnd.energyplus.epw",
            "port_key": "weather", "content_base64": weather,
        }));
    }
    let body = json!({
        "validator": "energyplus",
        "org": {"id": org, "name": "Bench"},
        "workflow": {"id": "wf", "step_id": "s"},
        "inputs": {},
        "files": files,
    })
    .to_string();
    let client = Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency.max(64))
            .build()?,
        url: format!("{launcher_url}/v1/runs"),
        body: Arc::from(body),
    };

    let started = Instant::now();
    // The service's memory over the whole run (creates and drain), to show whether it is flat.
    let (stop_sampling, stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = pid.map(|pid| tokio::spawn(sample_rss(pid, started, stopped)));
    let mut create = match args.rate {
        None => closed_loop(&client, args.runs, args.concurrency).await?,
        Some(rate) => open_loop(&client, args.runs, rate).await?,
    };
    let created_in = started.elapsed();

    // Wait until nothing is queued or running.
    // Each of these reads is a transaction of its own on Postgres: counted, to leave them out.
    let mut reads = 0_u64;
    loop {
        let mut busy = false;
        for state in [RunState::Queued, RunState::Running] {
            let filter = RunFilter {
                state: Some(state),
                org_id: Some(org.clone()),
                ..RunFilter::default()
            };
            busy |= !store.list_runs(&filter, None, 1).await?.runs.is_empty();
            reads += 1;
        }
        if !busy {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "runs did not finish in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let _ = stop_sampling.send(());
    let mut rss_by_tenth = Vec::new();
    if let (Some(pid), Some(sampler)) = (pid, sampler) {
        let samples = sampler.await.context("the memory sampler failed")?;
        figures.peak_rss_kb = samples.iter().map(|&(_, kb)| kb).max();
        rss_by_tenth = by_tenth(&samples, total);
        figures.drained_rss_kb = rss_kb(pid);
    }
    stop_service(service, &mut figures).await?;
    let commits_after = commits.read().await?;

    let timings = timings_of(store.as_ref(), &org).await?;
    let mut create_sorted = std::mem::take(&mut create);
    let loop_kind = match args.rate {
        None => format!("closed loop, {} clients", args.concurrency),
        Some(rate) => format!("open loop at {rate} runs/s"),
    };
    println!(
        "runway bench: {} runs of {} file{}, {loop_kind}, mock backend (0 ms), service {}",
        args.runs,
        if args.weather { 2 } else { 1 },
        if args.weather { "s" } else { "" },
        if args.in_process {
            "in this process"
        } else {
            "in its own process"
        }
    );
    println!("  store   {}", redact(&database));
    println!("  storage {storage}");
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
    println!("  passed          {}/{}", timings.passed, args.runs);
    if let (Some(before), Some(after)) = (commits_before, commits_after) {
        // Leaving out the bench's own reads (and the counter's first read).
        let per_run = after
            .commits
            .saturating_sub(before.commits)
            .saturating_sub(reads + 2) as f64
            / args.runs as f64;
        println!("  commits per run {per_run:>8.2}  (pg_stat_database.xact_commit)");
        // Most commits only read (the callback's lookup, the listener's wake-ups) and flush no
        // WAL; those that wrote were each given a transaction id. Cluster-wide: other
        // databases' writes during the bench count too.
        let writing = after.next_xid.saturating_sub(before.next_xid) as f64 / args.runs as f64;
        println!("  writes per run  {writing:>8.2}  (commits that wrote: transaction ids used)");
    }
    if let Some(ready) = figures.ready_in {
        match figures.first_ready_in {
            Some(first) => println!(
                "  start to ready  {:>8.1} ms restart, {:.1} ms first start (new signing key, \
                 schema)",
                ready.as_secs_f64() * 1000.0,
                first.as_secs_f64() * 1000.0
            ),
            None => println!("  start to ready  {:>8.1} ms", ready.as_secs_f64() * 1000.0),
        }
    }
    if let (Some(idle), Some(peak), Some(drained)) = (
        figures.idle_rss_kb,
        figures.peak_rss_kb,
        figures.drained_rss_kb,
    ) {
        println!(
            "  service RSS     idle {:.1} MB, peak {:.1} MB, drained {:.1} MB",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            drained as f64 / 1024.0
        );
    }
    if !rss_by_tenth.is_empty() {
        let tenths: Vec<String> = rss_by_tenth
            .iter()
            .map(|kb| format!("{:.0}", *kb as f64 / 1024.0))
            .collect();
        println!(
            "  service RSS by tenth of the run (MB, largest)  {}",
            tenths.join(" ")
        );
    }
    println!("  latency (ms)         p50      p99      max");
    let mut rows = vec![("create", &mut create_sorted)];
    let mut callback = std::mem::take(&mut figures.callback);
    if !callback.is_empty() {
        rows.push(("callback", &mut callback));
    }
    let Timings {
        mut dispatch,
        mut finalize,
        mut end_to_end,
        ..
    } = timings;
    rows.push(("dispatch", &mut dispatch));
    rows.push(("finalize", &mut finalize));
    rows.push(("end to end", &mut end_to_end));
    for (name, values) in rows {
        let (p50, p99, max) = percentiles(values);
        println!("  {name:<16} {p50:>8.1} {p99:>8.1} {max:>8.1}");
    }
    anyhow::ensure!(
        timings.passed == args.runs,
        "{} runs did not pass",
        args.runs - timings.passed
    );
    Ok(())
}

/// Starts the service; returns it with the launcher's base URL.
async fn start_service(
    args: &BenchArgs,
    dir: &Path,
    database: &str,
    storage: &str,
    figures: &mut ServiceFigures,
) -> anyhow::Result<(Service, String)> {
    if args.in_process {
        let mut config = DevConfig::on_free_ports(dir);
        config.local.mock_delay_ms = 0;
        config.workers.max_in_flight = args.max_in_flight;
        config.common.database_url = Some(database.to_owned());
        config.common.storage_uri = Some(storage.to_owned());
        let running = dev::start(config).await?;
        let url = running.launcher_url.clone();
        return Ok((Service::InProcess(running), url));
    }
    // Started twice on the same data: the first start makes the signing key and the schema,
    // as a new installation's does; the service measured is the restart, as every later start
    // of a service is.
    let callback_times = dir.join("callback-times.json");
    let (first, _, first_ready) = spawn_dev(args, dir, database, storage, &callback_times).await?;
    stop_child(first).await?;
    let (child, launcher, ready) = spawn_dev(args, dir, database, storage, &callback_times).await?;
    figures.first_ready_in = Some(first_ready);
    figures.ready_in = Some(ready);
    Ok((
        Service::Child {
            child,
            callback_times,
        },
        launcher,
    ))
}

/// Starts `runway dev` on `dir` and waits until its launcher is ready: the child, the launcher's
/// URL, and how long it took from the spawn.
async fn spawn_dev(
    args: &BenchArgs,
    dir: &Path,
    database: &str,
    storage: &str,
    callback_times: &Path,
) -> anyhow::Result<(tokio::process::Child, String, Duration)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("dev")
        .args(["--launcher-listen", "127.0.0.1:0"])
        .args(["--callback-listen", "127.0.0.1:0"])
        .args(["--identity-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--callback-times-file")
        .arg(callback_times)
        .env("RUNWAY_MOCK_DELAY_MS", "0")
        .env(
            "RUNWAY_DISPATCH_MAX_IN_FLIGHT",
            args.max_in_flight.to_string(),
        )
        .env("RUNWAY_DATABASE_URL", database)
        .env("RUNWAY_STORAGE_URI", storage)
        .env_remove("RUNWAY_VALIDATORS_FILE")
        .env_remove("RUNWAY_LOCAL_BACKEND")
        .stdout(Stdio::piped())
        // Its logs go to a file, as a service's would, not to this terminal.
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(
                    std::env::var_os("RUNWAY_BENCH_LOG")
                        .map_or_else(|| dir.join("service.log"), PathBuf::from),
                )
                .context("cannot create the service log")?,
        )
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `runway dev`")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut launcher = None;
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.trim().strip_prefix("launcher:") {
            launcher = Some(url.trim().to_owned());
            break;
        }
    }
    let launcher = launcher.context("`runway dev` stopped before it printed its URLs")?;
    // Keep reading so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("{launcher}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "`runway dev` was not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((child, launcher, started.elapsed()))
}

/// Stops a `runway dev` child with SIGTERM and waits for it to end cleanly.
async fn stop_child(mut child: tokio::process::Child) -> anyhow::Result<()> {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot stop `runway dev`")?;
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("`runway dev` did not stop in 60 s")??;
    anyhow::ensure!(status.success(), "`runway dev` ended with {status}");
    Ok(())
}

/// Stops the service (closing its database sessions, which publishes their statistics) and
/// collects its callback round trips.
async fn stop_service(service: Service, figures: &mut ServiceFigures) -> anyhow::Result<()> {
    match service {
        Service::InProcess(running) => {
            if let Some(mock) = &running.workers.mock {
                figures.callback = to_durations(&mock.callback_times().micros());
            }
            running.shutdown().await
        }
        Service::Child {
            child,
            callback_times,
        } => {
            stop_child(child).await?;
            let text = std::fs::read(&callback_times)
                .with_context(|| format!("cannot read {}", callback_times.display()))?;
            let micros: Vec<u32> = serde_json::from_slice(&text)?;
            figures.callback = to_durations(&micros);
            Ok(())
        }
    }
}

fn to_durations(micros: &[u32]) -> Vec<Duration> {
    micros
        .iter()
        .map(|&m| Duration::from_micros(u64::from(m)))
        .collect()
}

/// The resident memory of a process, in kB (Linux).
/// Samples the resident memory of process `pid` every 100 ms until told to stop: (time since
/// `started`, kB).
async fn sample_rss(
    pid: u32,
    started: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<(Duration, u64)> {
    let mut samples = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Some(kb) = rss_kb(pid) {
                    samples.push((started.elapsed(), kb));
                }
            }
            _ = &mut stop => return samples,
        }
    }
}

/// The largest sample in each tenth of `total` (tenths without a sample are left out).
fn by_tenth(samples: &[(Duration, u64)], total: Duration) -> Vec<u64> {
    let mut tenths = [None::<u64>; 10];
    for &(at, kb) in samples {
        let tenth = ((at.as_secs_f64() / total.as_secs_f64().max(f64::MIN_POSITIVE)) * 10.0)
            .floor()
            .clamp(0.0, 9.0) as usize;
        tenths[tenth] = Some(tenths[tenth].map_or(kb, |max| max.max(kb)));
    }
    tenths.into_iter().flatten().collect()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How runs are created.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
    body: Arc<str>,
}

impl Client {
    async fn create(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(self.body.to_string())
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 201,
            "create answered {}",
            response.status()
        );
        Ok(())
    }
}

/// `clients` clients each creating their share of `runs`, one after another.
async fn closed_loop(
    client: &Client,
    runs: usize,
    clients: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = JoinSet::new();
    let per_client = runs.div_ceil(clients);
    for c in 0..clients {
        let n = per_client.min(runs.saturating_sub(c * per_client));
        let client = client.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                client.create().await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut create = Vec::with_capacity(runs);
    while let Some(result) = tasks.join_next().await {
        create.extend(result??);
    }
    Ok(create)
}

/// `runs` creates at `rate` per second, each started when due; latency counts from then.
async fn open_loop(client: &Client, runs: usize, rate: f64) -> anyhow::Result<Vec<Duration>> {
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let mut create = Vec::with_capacity(runs);
    for i in 0..runs {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let client = client.clone();
        tasks.spawn(async move {
            client.create().await?;
            anyhow::Ok(due.elapsed())
        });
        // Collected as they end, so the set stays small; every latency counts.
        while let Some(done) = tasks.try_join_next() {
            create.push(done??);
        }
    }
    while let Some(result) = tasks.join_next().await {
        create.push(result??);
    }
    Ok(create)
}

/// Per-run timings read back from the store.
struct Timings {
    passed: usize,
    dispatch: Vec<Duration>,
    finalize: Vec<Duration>,
    end_to_end: Vec<Duration>,
}

async fn timings_of(store: &dyn RunStore, org: &str) -> anyhow::Result<Timings> {
    let filter = RunFilter {
        org_id: Some(org.to_owned()),
        ..RunFilter::default()
    };
    let mut timings = Timings {
        passed: 0,
        dispatch: Vec::new(),
        finalize: Vec::new(),
        end_to_end: Vec::new(),
    };
    let mut cursor = None;
    loop {
        let page = store.list_runs(&filter, cursor.as_ref(), 500).await?;
        for summary in &page.runs {
            let Some(run) = store.get_run(summary.id).await? else {
                continue;
            };
            let Some(attempt) = run.attempts.last() else {
                continue;
            };
            if run.run.result.map(|r| r.as_str()) == Some("passed") {
                timings.passed += 1;
            }
            let ms = |d: chrono::TimeDelta| {
                Duration::from_micros(d.num_microseconds().unwrap_or(0).max(0) as u64)
            };
            if let (Some(claimed), Some(finished)) = (attempt.dispatched_at, run.run.finished_at) {
                timings.dispatch.push(ms(claimed - run.run.created_at));
                timings.finalize.push(ms(finished - claimed));
                timings.end_to_end.push(ms(finished - run.run.created_at));
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(timings)
}

/// Reads Postgres's count of committed transactions in the bench's database.
struct CommitCounter(Option<sqlx::PgPool>);

impl CommitCounter {
    async fn connect(database: &str) -> anyhow::Result<Self> {
        if !(database.starts_with("postgres://") || database.starts_with("postgresql://")) {
            return Ok(Self(None));
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(database)
            .await
            .with_context(|| format!("cannot connect to {}", redact(database)))?;
        Ok(Self(Some(pool)))
    }

    /// The database's committed transactions, and the cluster's transaction ids assigned so
    /// far (one per transaction that wrote: the commits that flush WAL).
    async fn read(&self) -> anyhow::Result<Option<Counts>> {
        let Some(pool) = &self.0 else {
            return Ok(None);
        };
        // Statistics of other sessions are published when they end or every second; what
        // this session reads is also a snapshot per transaction, so clear it first.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(pool)
            .await?;
        let (commits, next_xid): (i64, i64) = sqlx::query_as(
            "SELECT xact_commit, pg_snapshot_xmax(pg_current_snapshot())::text::bigint \
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await?;
        Ok(Some(Counts {
            commits: u64::try_from(commits).unwrap_or(0),
            next_xid: u64::try_from(next_xid).unwrap_or(0),
        }))
    }
}

/// What [`CommitCounter::read`] reads.
#[derive(Debug, Clone, Copy)]
struct Counts {
    commits: u64,
    next_xid: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The open loop reports one create latency per run, including the creates that ended
    /// while later ones were still being sent (it once kept only those still in flight at the
    /// end, a few dozen of thousands).
    #[tokio::test]
    async fn the_open_loop_times_every_create() {
        let app = axum::Router::new().route(
            "/v1/runs",
            axum::routing::post(|| async { axum::http::StatusCode::CREATED }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client {
            http: reqwest::Client::new(),
            url: format!("http://{addr}/v1/runs"),
            body: Arc::from("{}"),
        };
        let latencies = open_loop(&client, 200, 2000.0).await.expect("open loop");
        assert_eq!(latencies.len(), 200);
        server.abort();
    }

    #[test]
    fn memory_samples_are_summarized_by_their_largest_in_each_tenth() {
        let s = Duration::from_secs;
        let samples = [
            (s(0), 10),
            (s(5), 30),
            (s(9), 20),
            (s(55), 40),
            (s(100), 50),
        ];
        // Tenths 0, 5 and 9 (the last sample, at the very end, counts in the last tenth).
        assert_eq!(by_tenth(&samples, s(100)), vec![30, 40, 50]);
        assert_eq!(by_tenth(&[], s(100)), Vec::<u64>::new());
        assert_eq!(by_tenth(&[(s(0), 7)], Duration::ZERO), vec![7]);
    }
}
