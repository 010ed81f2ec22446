//! `runway bench` itself: each of its modes drives real runs to their results and prints the
//! figures the README quotes (the figures' values are not checked here — benchmarks print them,
//! tests do not time anything).

use std::process::Command;

use runway_tests::PostgresDatabase;

/// Runs `runway bench` with `args`; returns what it printed, after checking it succeeded.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_runway"))
        .arg("bench")
        .args(args)
        .env_remove("RUNWAY_DATABASE_URL")
        .env_remove("RUNWAY_STORAGE_URI")
        .output()
        .expect("runway bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "runway bench {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn figure<'a>(printed: &'a str, label: &str) -> &'a str {
    printed
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{printed}"))
        .trim()
}

#[test]
fn closed_loop_on_sqlite_in_its_own_process() {
    let printed = bench(&["--runs", "40", "--concurrency", "4"]);
    assert_eq!(figure(&printed, "passed"), "40/40");
    assert!(printed.contains("service in its own process"), "{printed}");
    // The service's own figures: start-up, memory, and the mock jobs' callback round trips.
    // Both starts on the same data: the restart (the service measured) and the first start.
    let ready = figure(&printed, "start to ready");
    let (restart, first) = ready
        .split_once(" ms restart, ")
        .unwrap_or_else(|| panic!("two start-up times: {ready:?}"));
    let first = first
        .strip_suffix(" ms first start (new signing key, schema)")
        .unwrap_or_else(|| panic!("the first start's time: {ready:?}"));
    for ms in [restart, first] {
        assert!(ms.parse::<f64>().is_ok_and(|ms| ms > 0.0), "{ready:?}");
    }
    assert!(figure(&printed, "service RSS").starts_with("idle "));
    // Its memory over the run, a figure for each tenth of it that was sampled.
    let tenths: Vec<f64> = figure(&printed, "service RSS by tenth of the run (MB, largest)")
        .split_whitespace()
        .map(|mb| mb.parse().expect("megabytes"))
        .collect();
    assert!((1..=10).contains(&tenths.len()), "{printed}");
    assert!(tenths.iter().all(|&mb| mb > 1.0), "{printed}");
    assert!(figure(&printed, "callback").split_whitespace().count() == 3);
}

#[tokio::test]
async fn open_loop_on_postgres_counts_commits_per_run() {
    let db = PostgresDatabase::create("bench_cli").await;
    let printed = bench(&["--runs", "40", "--rate", "200", "--database-url", &db.url]);
    assert_eq!(figure(&printed, "passed"), "40/40");
    assert!(printed.contains("open loop at 200 runs/s"), "{printed}");
    let commits: f64 = figure(&printed, "commits per run")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number");
    // Create, claim, launch and finalize are a transaction each; the claim is shared.
    assert!((2.0..12.0).contains(&commits), "{commits} commits per run");
    // Those that wrote: at least each run's create, and the launches' and finalizations'
    // shared transactions. Counted over the whole cluster, which other tests write to at the
    // same time, so only the lower bound is certain here.
    let writes: f64 = figure(&printed, "writes per run")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number");
    assert!(writes >= 1.0, "{writes} writes per run, {commits} commits");
    // A second bench on the same database counts only its own runs.
    let again = bench(&[
        "--runs",
        "20",
        "--concurrency",
        "2",
        "--database-url",
        &db.url,
    ]);
    assert_eq!(figure(&again, "passed"), "20/20");
    db.drop_database().await;
}

#[test]
fn in_process_and_storage_choice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("file://{}", dir.path().join("objects").display());
    let printed = bench(&[
        "--runs",
        "20",
        "--concurrency",
        "2",
        "--in-process",
        "--storage",
        &storage,
        "--weather",
    ]);
    assert_eq!(figure(&printed, "passed"), "20/20");
    assert_eq!(figure(&printed, "storage"), storage);
    assert!(printed.contains("20 runs of 2 files"), "{printed}");
    let weather_files = walk(&dir.path().join("objects/runs"))
        .into_iter()
        .filter(|path| path.ends_with("1-w.epw"))
        .count();
    assert_eq!(weather_files, 20, "each run stored its weather file");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn storage_jobs_cannot_reach_is_refused_with_a_sentence() {
    let output = Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["bench", "--runs", "1", "--storage", "memory://bench"])
        .output()
        .expect("runway bench starts");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--storage must be a file:// or gs:// URI"),
        "{stderr}"
    );
}
