//! The client commands as a person or a script uses them: the `runway` binary against
//! `runway dev` (in-process, free ports): the `runs` and `validators` tables and their `--json`,
//! `retry` end to end, `submit --no-wait`, and the exit codes (0 passed or done, 1 a run that
//! did not pass, 2 bad input, 3 an unreachable service) with one sentence on stderr.

use std::collections::HashSet;

use serde_json::{Value, json};

mod common;

use common::*;

/// What one `runway` process did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The stdout as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts the exit code, and for a failure that stderr is one `error:` line naming
    /// `needle`.
    fn expect(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "{self:?}");
        if code != 0 {
            let lines: Vec<&str> = self.stderr.lines().collect();
            let last = lines.last().copied().unwrap_or("");
            assert!(
                last.starts_with("error: ") && last.contains(needle),
                "the last stderr line should be one sentence naming {needle:?}: {self:?}"
            );
            assert_eq!(
                self.stderr.matches("error:").count(),
                1,
                "one error line: {self:?}"
            );
        }
        self
    }
}

/// Runs `runway ARGS` against `launcher` and waits for it.
async fn runway_at(launcher: &str, args: &[&str]) -> Out {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(args)
        .env("RUNWAY_LAUNCHER_URL", launcher)
        .env_remove("RUNWAY_API_KEY")
        .output()
        .await
        .expect("runway runs");
    Out {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn runway(sys: &System, args: &[&str]) -> Out {
    runway_at(&sys.running.launcher_url, args).await
}

/// A table's header and rows, each row split at the header's column starts; asserts every
/// cell starts exactly where its header does (the columns line up).
fn parse_table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    // Column titles are separated by at least two spaces (a title may hold one).
    let mut starts = vec![0];
    let bytes = header.as_bytes();
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let cut = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let end = starts
                    .get(n + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                assert!(
                    start == 0 || line.as_bytes()[start - 1] == b' ',
                    "column {n} does not start at {start} in {line:?} (header {header:?})"
                );
                line[start..end].trim_end().to_owned()
            })
            .collect()
    };
    let titles = cut(header);
    let rows = lines.map(cut).collect();
    (titles, rows)
}

fn failing_model() -> String {
    format!("{MODEL}! RUNWAY_MOCK_OUTCOME=failed_validation\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_validators_are_tables_and_json() {
    let sys = System::start("sqlite", 0).await;
    let mut ids = Vec::new();
    for body in [
        energyplus_run(MODEL),
        energyplus_run(&failing_model()),
        fmu_run(None),
    ] {
        let (status, run) = sys.create(&body, None).await;
        assert_eq!(status, 201, "{run}");
        let id = run["id"].as_str().expect("id").to_owned();
        sys.wait_completed(&id).await;
        ids.push(id);
    }

    let out = runway(&sys, &["runs"]).await;
    out.expect(0, "");
    let (titles, rows) = parse_table(&out.stdout);
    assert_eq!(
        titles,
        [
            "ID",
            "VALIDATOR",
            "STATE",
            "RESULT",
            "CREATED (UTC)",
            "DURATION"
        ]
    );
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    // Newest first.
    assert_eq!(rows[0][0], ids[2]);
    assert_eq!(rows[0][1], "fmu");
    assert_eq!(
        (rows[1][0].as_str(), rows[1][3].as_str()),
        (ids[1].as_str(), "failed")
    );
    for row in &rows {
        assert_eq!(row[2], "completed");
        assert!(row[4].starts_with("20") && row[4].len() == 19, "{row:?}");
        assert!(
            row[5].ends_with('s'),
            "an ended run has a duration: {row:?}"
        );
    }

    // --json is the launcher's page, as it came.
    let listed = runway(&sys, &["runs", "--json"]).await;
    let (_, page) = sys.get("/v1/runs").await;
    assert_eq!(listed.expect(0, "").json(), page);

    // Filters and pages.
    let out = runway(&sys, &["runs", "--validator", "fmu"]).await;
    assert_eq!(parse_table(&out.stdout).1.len(), 1);
    let first = runway(&sys, &["runs", "--state", "completed", "--limit", "2"]).await;
    first.expect(0, "");
    assert_eq!(parse_table(&first.stdout).1.len(), 2);
    let cursor = first
        .stderr
        .split("--cursor ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("a further page is named: {first:?}"))
        .to_owned();
    let second = runway(&sys, &["runs", "--limit", "2", "--cursor", &cursor]).await;
    let (_, rows) = parse_table(&second.stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], ids[0]);
    assert!(!second.stderr.contains("--cursor"), "{second:?}");
    let all = runway(&sys, &["runs", "--all", "--limit", "1", "--json"])
        .await
        .json();
    let listed: Vec<&str> = all["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, [&ids[2], &ids[1], &ids[0]]);
    assert_eq!(all["next_cursor"], Value::Null);
    let out = runway(&sys, &["runs", "--state", "queued"]).await;
    out.expect(0, "");
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no runs"), "{out:?}");

    // Validators.
    let out = runway(&sys, &["validators"]).await;
    out.expect(0, "");
    let (titles, rows) = parse_table(&out.stdout);
    assert_eq!(titles[..4], ["ID", "TYPE", "VERSION", "BACKEND"]);
    let found: HashSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        found,
        HashSet::from([("energyplus", "ENERGYPLUS"), ("fmu", "FMU")])
    );
    let (_, validators) = sys.get("/v1/validators").await;
    assert_eq!(
        runway(&sys, &["validators", "--json"]).await.json(),
        validators
    );

    // status and watch print the run itself with --json.
    let (_, failed) = sys.get(&format!("/v1/runs/{}", ids[1])).await;
    assert_eq!(
        runway(&sys, &["status", &ids[1], "--json"])
            .await
            .expect(0, "")
            .json(),
        failed
    );
    let out = runway(&sys, &["watch", &ids[1], "--json"]).await;
    out.expect(1, "ended failed");
    assert_eq!(out.json(), failed);
    sys.shutdown().await;
}

both_databases!(retry_runs_an_ended_run_again_end_to_end);

/// One job at a time, so a run submitted behind a hanging one stays queued until it is let go.
fn one_at_a_time() -> Value {
    json!({"validators": [{
        "id": "energyplus", "type": "ENERGYPLUS", "version": "25.2", "backend": "mock",
        "timeout_seconds": 600, "max_concurrency": 1, "max_attempts": 1
    }]})
}

async fn retry_runs_an_ended_run_again_end_to_end(db: &str) {
    let sys = System::start_with(db, 0, Some(one_at_a_time())).await;
    let hanging = format!("{MODEL}! RUNWAY_MOCK_OUTCOME=hang\n");
    let (status, blocker) = sys.create(&energyplus_run(&hanging), None).await;
    assert_eq!(status, 201, "{blocker}");
    let blocker = blocker["id"].as_str().expect("id").to_owned();
    sys.wait_running(&blocker).await;

    // --no-wait: the id alone on stdout, exit 0, while the run is still queued.
    let model = sys.dir.path().join("box.idf");
    std::fs::write(&model, MODEL).expect("model");
    let model = model.to_str().expect("path");
    let out = runway(&sys, &["submit", "--no-wait", model]).await;
    out.expect(0, "");
    let queued = out.stdout.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&queued).is_ok(), "{out:?}");
    assert_eq!(out.stdout, format!("{queued}\n"));
    let (_, run) = sys.get(&format!("/v1/runs/{queued}")).await;
    assert_eq!(run["state"], "queued", "{run}");

    // An active run is not retried: bad input (2), one sentence.
    runway(&sys, &["retry", &queued])
        .await
        .expect(2, "still queued");

    // Canceled, then retried: the new run runs once the blocker is let go, and passes.
    let out = runway(&sys, &["cancel", &queued]).await;
    out.expect(0, "");
    assert!(out.stdout.contains("result canceled"), "{out:?}");
    let response = sys
        .http
        .post(format!(
            "{}/v1/runs/{blocker}/cancel",
            sys.running.launcher_url
        ))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status().as_u16(), 202);
    sys.running.workers.reconciler.step().await;
    assert_eq!(sys.wait_completed(&blocker).await["result"], "canceled");

    let out = runway(&sys, &["retry", &queued, "--wait"]).await;
    out.expect(0, "");
    assert!(out.stdout.contains("result passed"), "{out:?}");
    assert!(
        out.stdout.contains(&format!("retry of run {queued}")),
        "{out:?}"
    );
    let retried = out
        .stderr
        .split(" as run ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("stderr names the new run: {out:?}"))
        .to_owned();
    assert_ne!(retried, queued);
    let status = runway(&sys, &["status", &retried, "--json"]).await.json();
    assert_eq!(status["retry_of"], queued.as_str());
    assert_eq!(status["result"], "passed");
    assert_eq!(status["files"][0]["sha256"], run["files"][0]["sha256"]);
    assert_ne!(status["files"][0]["uri"], run["files"][0]["uri"]);

    // Without --wait: the new run's id on stdout, at once.
    let out = runway(&sys, &["retry", &queued]).await;
    out.expect(0, "");
    let again = out.stdout.trim();
    assert!(uuid::Uuid::parse_str(again).is_ok(), "{out:?}");
    assert_eq!(sys.wait_completed(again).await["retry_of"], queued.as_str());
    sys.shutdown().await;
}

/// On GCS (fake-gcs-server) and PostgreSQL: a retry's files are copied within the bucket into
/// the new run's own folder, and the new run passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copies_its_files_within_gcs() {
    let gcs = runway_tests::gcs_endpoint();
    let bucket = runway_tests::create_bucket(&gcs, "runway-retry");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::fresh("postgres").await;
    let mut config = config(dir.path(), &db, 0, None);
    config.common.storage_uri = Some(format!("gs://{bucket}/runway"));
    config.common.gcs_endpoint = Some(gcs);
    config.common.gcs_anonymous = true;
    let sys = System {
        running: runway_cli::dev::start(config).await.expect("runway starts"),
        http: reqwest::Client::new(),
        dir,
    };
    let (status, run) = sys.create(&energyplus_run(MODEL), None).await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    assert_eq!(sys.wait_completed(&id).await["result"], "passed");

    let out = runway(&sys, &["retry", &id, "--wait", "--json"]).await;
    out.expect(0, "");
    let retried = out.json();
    assert_eq!(retried["retry_of"], id.as_str());
    assert_eq!(retried["result"], "passed");
    let new_id = retried["id"].as_str().expect("id");
    let uri = retried["files"][0]["uri"].as_str().expect("uri");
    assert!(
        uri.starts_with(&format!("gs://{bucket}/runway/runs/acme/{new_id}/files/")),
        "{uri}"
    );
    assert_eq!(retried["files"][0]["sha256"], run["files"][0]["sha256"]);
    let copied = sys
        .running
        .deps
        .storage
        .read_bytes(uri, 1 << 20)
        .await
        .expect("the copy");
    assert_eq!(&copied[..], MODEL.as_bytes());
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_a_failed_run_bad_input_and_an_unreachable_launcher_apart() {
    let sys = System::start("sqlite", 0).await;
    // Outlives the system, for the submit below to an unreachable launcher.
    let files = tempfile::tempdir().expect("tempdir");
    let bad = files.path().join("bad.idf");
    std::fs::write(&bad, failing_model()).expect("model");
    let bad = bad.to_str().expect("path");

    // A run that ends without passing: 1, whether submitted, watched or retried.
    let out = runway(&sys, &["submit", bad]).await;
    out.expect(1, "ended failed, not passed");
    assert!(out.stdout.contains("result failed"), "{out:?}");
    let (_, listed) = sys.get("/v1/runs").await;
    let failed = listed["runs"][0]["id"].as_str().expect("id").to_owned();
    runway(&sys, &["watch", &failed])
        .await
        .expect(1, "ended failed");
    runway(&sys, &["retry", &failed, "--wait"])
        .await
        .expect(1, "ended failed");
    // Reading a failed run succeeds.
    runway(&sys, &["status", &failed]).await.expect(0, "");

    // Bad input, found here or by the launcher: 2.
    runway(&sys, &["submit", "/nonexistent/model.idf"])
        .await
        .expect(2, "/nonexistent/model.idf");
    runway(&sys, &["submit", bad, "--inputs", "[1]"])
        .await
        .expect(2, "--inputs must be a JSON object");
    runway(&sys, &["status", "not-a-run"])
        .await
        .expect(2, "not a run id");
    let missing = uuid::Uuid::now_v7().to_string();
    runway(&sys, &["retry", &missing])
        .await
        .expect(2, "there is no run");
    runway(&sys, &["runs", "--limit", "0"])
        .await
        .expect(2, "limit");
    assert_eq!(runway(&sys, &["runs", "--state", "lost"]).await.code, 2);
    assert_eq!(runway(&sys, &["no-such-command"]).await.code, 2);
    sys.shutdown().await;

    // Nobody listening: 3, for every client command.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    for args in [
        vec!["status", missing.as_str()],
        vec!["runs"],
        vec!["validators", "--json"],
        vec!["retry", missing.as_str()],
        vec!["submit", bad],
        vec!["watch", missing.as_str()],
    ] {
        runway_at(&closed, &args)
            .await
            .expect(3, "cannot reach the launcher");
    }
}

/// The admin commands' lists as JSON, without secrets; their exit codes.
#[test]
fn admin_lists_are_json_without_secrets() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_runway"))
            .args(args)
            .env("RUNWAY_DATA_DIR", dir.path())
            .env_remove("RUNWAY_DATABASE_URL")
            .output()
            .expect("runway runs");
        (
            output.status.code().expect("exited"),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, key_secret, _) = admin(&["api-key", "create", "--org", "acme", "--name", "ci"]);
    assert_eq!(code, 0);
    let (code, hook_secret, _) = admin(&[
        "webhook",
        "create",
        "--org",
        "acme",
        "--url",
        "https://hooks.acme.test/runway",
    ]);
    assert_eq!(code, 0);

    let (code, keys, _) = admin(&["api-key", "list", "--json"]);
    assert_eq!(code, 0);
    assert!(!keys.contains(key_secret.trim()), "{keys}");
    let keys: Value = serde_json::from_str(&keys).expect("JSON");
    assert_eq!(keys[0]["org_id"], "acme");
    assert_eq!(keys[0]["name"], "ci");
    assert_eq!(keys[0]["revoked_at"], Value::Null);
    assert!(key_secret.starts_with(keys[0]["prefix"].as_str().expect("prefix")));

    let (code, hooks, _) = admin(&["webhook", "list", "--json"]);
    assert_eq!(code, 0);
    assert!(!hooks.contains(hook_secret.trim()), "{hooks}");
    let hooks: Value = serde_json::from_str(&hooks).expect("JSON");
    assert_eq!(hooks[0]["url"], "https://hooks.acme.test/runway");
    assert_eq!(hooks[0]["events"], json!(["run.completed"]));
    assert_eq!(hooks[0]["signing_secrets"], 1);
    let (code, dead, _) = admin(&["webhook", "dead", "--json"]);
    assert_eq!(
        (code, serde_json::from_str::<Value>(&dead).ok()),
        (0, Some(json!([])))
    );

    // Bad input is 2; a run store that cannot be reached is 3.
    let (code, _, err) = admin(&["api-key", "revoke", "not-an-id"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = admin(&["webhook", "create", "--org", "acme", "--url", "ftp://x"]);
    assert_eq!(code, 2, "{err}");
    // (A file that cannot be opened fails at once; a closed PostgreSQL port only after the
    // pool's connect timeout.)
    let output = Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(["api-key", "list"])
        .env(
            "RUNWAY_DATABASE_URL",
            format!("sqlite://{}/missing/runway.db", dir.path().display()),
        )
        .output()
        .expect("runway runs");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{err}");
    assert!(err.starts_with("error: cannot open the run store"), "{err}");
}
