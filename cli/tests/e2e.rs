//! Runs end to end in mock mode, over HTTP, on SQLite and on PostgreSQL: the launcher API, the
//! dispatcher, the mock backend (which calls back with an ID token from the local identity),
//! and the callback service's checks — the production callback path on a laptop.

use std::time::{Duration, Instant};

use runway_cli::dev;
use runway_identity::{LocalIssuer, LocalIssuerConfig};
use runway_runs::{AttemptId, AttemptState, RunFilter, RunId};
use runway_storage::Body;
use serde_json::{Value, json};

mod common;

use common::*;

both_databases!(
    energyplus_and_fmu_runs_pass,
    validation_failure_and_runtime_error_are_results,
    idempotent_create_launches_once,
    cancel_of_a_queued_run,
    duplicate_and_late_callbacks_have_no_second_effect,
    every_token_rejection_changes_nothing,
    tampered_outputs_are_rejected,
    concurrency_caps_are_honoured,
    graceful_shutdown_mid_load_loses_no_run,
);

async fn energyplus_and_fmu_runs_pass(db: &str) {
    let sys = System::start(db, 0).await;
    let (status, created) = sys.create(&energyplus_run(MODEL), None).await;
    assert_eq!(status, 201, "{created}");
    let run = sys
        .wait_completed(created["id"].as_str().expect("id"))
        .await;
    assert_eq!(run["result"], "passed", "{run}");
    let metrics = run["metrics"].as_array().expect("metrics");
    assert!(
        metrics.iter().any(|m| m["name"] == "site_electricity_kwh"),
        "{run}"
    );

    let (status, created) = sys.create(&fmu_run(None), None).await;
    assert_eq!(status, 201, "{created}");
    let run = sys
        .wait_completed(created["id"].as_str().expect("id"))
        .await;
    assert_eq!(run["result"], "passed", "{run}");
    // x(2) = u + (1 - u) e^-2 with u = 0.5.
    let x = run["metrics"][0]["value"].as_f64().expect("x");
    assert!((x - (0.5 + 0.5 * (-2.0f64).exp())).abs() < 1e-9, "{run}");
    sys.shutdown().await;
}

async fn validation_failure_and_runtime_error_are_results(db: &str) {
    let sys = System::start(db, 0).await;
    let failing = format!("{MODEL}! RUNWAY_MOCK_OUTCOME=failed_validation\n");
    let (_, a) = sys.create(&energyplus_run(&failing), None).await;
    let (_, b) = sys.create(&fmu_run(Some("failed_runtime")), None).await;
    let a = sys.wait_completed(a["id"].as_str().expect("id")).await;
    let b = sys.wait_completed(b["id"].as_str().expect("id")).await;
    assert_eq!(a["result"], "failed", "{a}");
    assert!(a["messages"].to_string().contains("EP_SEVERE"), "{a}");
    assert_eq!(b["result"], "error", "{b}");
    // A validation failure is a result, not a retry: one attempt each.
    assert_eq!(a["attempts"].as_array().expect("attempts").len(), 1);
    sys.shutdown().await;
}

async fn idempotent_create_launches_once(db: &str) {
    let sys = System::start(db, 0).await;
    let body = energyplus_run(MODEL);
    let (first_status, first) = sys.create(&body, Some("key-1")).await;
    let (second_status, second) = sys.create(&body, Some("key-1")).await;
    assert_eq!(first_status, 201);
    assert_eq!(second_status, 200, "{second}");
    assert_eq!(first["id"], second["id"]);
    let run = sys.wait_completed(first["id"].as_str().expect("id")).await;
    assert_eq!(run["attempts"].as_array().expect("attempts").len(), 1);
    let (_, list) = sys.get("/v1/runs").await;
    assert_eq!(list["runs"].as_array().expect("runs").len(), 1, "{list}");
    // The same key with another body is refused, and stores nothing.
    let (status, error) = sys.create(&fmu_run(None), Some("key-1")).await;
    assert!((400..500).contains(&status), "{status} {error}");
    let (_, list) = sys.get("/v1/runs").await;
    assert_eq!(list["runs"].as_array().expect("runs").len(), 1);
    sys.shutdown().await;
}

/// One validator allowed one job at a time, with slow jobs: the second run stays queued.
fn capped_validators(cap: u32) -> Value {
    json!({"validators": [{
        "id": "energyplus", "type": "ENERGYPLUS", "version": "25.2", "backend": "mock",
        "timeout_seconds": 600, "max_concurrency": cap, "max_attempts": 1
    }]})
}

async fn cancel_of_a_queued_run(db: &str) {
    let sys = System::start_with(db, 1500, Some(capped_validators(1))).await;
    let (_, first) = sys.create(&energyplus_run(MODEL), None).await;
    let (_, second) = sys.create(&energyplus_run(MODEL), None).await;
    let second_id = second["id"].as_str().expect("id");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, queued) = sys.get(&format!("/v1/runs/{second_id}")).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    let response = sys
        .http
        .post(format!(
            "{}/v1/runs/{second_id}/cancel",
            sys.running.launcher_url
        ))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status().as_u16(), 200);
    let canceled = sys.wait_completed(second_id).await;
    assert_eq!(canceled["result"], "canceled", "{canceled}");
    // The first run is unaffected and still passes.
    let first = sys.wait_completed(first["id"].as_str().expect("id")).await;
    assert_eq!(first["result"], "passed");
    sys.shutdown().await;
}

async fn duplicate_and_late_callbacks_have_no_second_effect(db: &str) {
    let sys = System::start_with(db, 1500, Some(capped_validators(1))).await;
    let (_, first) = sys.create(&energyplus_run(MODEL), None).await;
    let (_, second) = sys.create(&energyplus_run(MODEL), None).await;
    let first_id = first["id"].as_str().expect("id");
    let second_id = second["id"].as_str().expect("id");
    // Cancel the queued second run: its attempt ends without a callback.
    sys.http
        .post(format!(
            "{}/v1/runs/{second_id}/cancel",
            sys.running.launcher_url
        ))
        .send()
        .await
        .expect("cancel");
    let done = sys.wait_completed(first_id).await;
    let token = sys.token(&sys.running.callback_url).await;

    // Duplicate: the finished attempt's callback again.
    let attempt = done["attempts"][0]["id"].as_str().expect("attempt");
    let payload = sys.callback_for(first_id, attempt, "success").await;
    let (status, answer) = sys.post_callback(Some(&token), &payload).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "duplicate");
    let (_, again) = sys.get(&format!("/v1/runs/{first_id}")).await;
    assert_eq!(again["result"], done["result"]);
    assert_eq!(again["finished_at"], done["finished_at"]);

    // Late: a callback for the canceled attempt is recorded and ignored.
    let canceled = sys.wait_completed(second_id).await;
    let attempt = canceled["attempts"][0]["id"].as_str().expect("attempt");
    let payload = sys.callback_for(second_id, attempt, "success").await;
    let (status, answer) = sys.post_callback(Some(&token), &payload).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "late");
    let (_, still) = sys.get(&format!("/v1/runs/{second_id}")).await;
    assert_eq!(still["result"], "canceled");
    let receipts = sys.receipts(attempt).await;
    assert_eq!(receipts.len(), 1);
    sys.shutdown().await;
}

async fn every_token_rejection_changes_nothing(db: &str) {
    // Slow jobs, so the attempt is still running while we knock.
    let sys = System::start(db, 3000).await;
    let (_, created) = sys.create(&energyplus_run(MODEL), None).await;
    let run_id = created["id"].as_str().expect("id");
    let attempt_id = sys.wait_running(run_id).await;
    let payload = sys.callback_for(run_id, &attempt_id, "success").await;
    let audience = sys.running.callback_url.clone();

    // A different key claiming to be the local issuer, with the same kid: a forged signature.
    let forger = LocalIssuer::generate(LocalIssuerConfig {
        issuer: sys.running.identity_url.clone(),
        ..LocalIssuerConfig::default()
    })
    .expect("forger");
    let mut forged_parts: Vec<String> = forger
        .issue(&audience)
        .split('.')
        .map(str::to_owned)
        .collect();
    let genuine = sys.token(&audience).await;
    forged_parts[0] = genuine.split('.').next().expect("header").to_owned();
    let forged = forged_parts.join(".");
    let wrong_audience = sys.token("http://127.0.0.1:1").await;
    let other_issuer = LocalIssuer::generate(LocalIssuerConfig {
        issuer: "http://127.0.0.1:9".to_owned(),
        ..LocalIssuerConfig::default()
    })
    .expect("issuer")
    .issue(&audience);
    let unknown_email = LocalIssuer::load_or_create(
        &sys.dir.path().join("identity.pem"),
        LocalIssuerConfig {
            issuer: sys.running.identity_url.clone(),
            email: "intruder@example.com".to_owned(),
            ..LocalIssuerConfig::default()
        },
    )
    .expect("issuer")
    .issue(&audience);
    let expired = expired_token(&sys, &audience);

    for (what, token) in [
        ("no token", None),
        ("garbage", Some("not-a-jwt")),
        ("forged signature", Some(forged.as_str())),
        ("wrong audience", Some(wrong_audience.as_str())),
        ("untrusted issuer", Some(other_issuer.as_str())),
        ("caller not allowed", Some(unknown_email.as_str())),
        ("expired", Some(expired.as_str())),
    ] {
        let (status, answer) = sys.post_callback(token, &payload).await;
        assert_eq!(status, 401, "{what}: {answer}");
    }
    let receipts = sys.receipts(&attempt_id).await;
    assert!(
        receipts.is_empty(),
        "a refused token must leave no trace: {receipts:?}"
    );
    let (_, run) = sys.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["state"], "running", "{run}");
    // The genuine job still finishes the run.
    let run = sys.wait_completed(run_id).await;
    assert_eq!(run["result"], "passed");
    sys.shutdown().await;
}

/// A token signed with the local identity's own key but expired an hour ago.
fn expired_token(sys: &System, audience: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    signed_token(sys, audience, now - 7200, now - 3600)
}

async fn tampered_outputs_are_rejected(db: &str) {
    let sys = System::start(db, 5000).await;
    let token = sys.token(&sys.running.callback_url).await;
    let storage = sys.running.deps.storage.clone();

    // Each case: a running attempt whose output.json the test writes first (create-only, so
    // the slow mock job cannot replace it), then a callback claiming it.
    for case in ["wrong hash", "wrong run", "wrong uri", "oversize"] {
        let (_, created) = sys.create(&energyplus_run(MODEL), None).await;
        let run_id = created["id"].as_str().expect("id").to_owned();
        let attempt_id = sys.wait_running(&run_id).await;
        let mut payload = sys.callback_for(&run_id, &attempt_id, "success").await;
        let output_uri = payload["result_uri"].as_str().expect("uri").to_owned();
        let output_key = storage.base().resolve(&output_uri).expect("key");
        let input_uri = output_uri.replace("output.json", "input.json");
        let input: runway_contract::InputEnvelope = runway_contract::InputEnvelope::from_json(
            &storage
                .read_bytes(&input_uri, 1 << 20)
                .await
                .expect("input"),
        )
        .expect("parse");
        let mut output = json!({
            "schema_version": "validibot.output.v1",
            "run_id": run_id,
            "step_run_id": input.context.step_run_id,
            "execution_attempt_id": attempt_id,
            "attempt_contract_version": "validibot.attempt.v2",
            "input_envelope_sha256": input.canonical_sha256().expect("hash"),
            "output_uri": output_uri,
            "validator": input.validator,
            "status": "success",
            "timing": {},
            "outputs": {"energyplus_returncode": 0, "execution_seconds": 1.0, "invocation_mode": "cli"},
        });
        // An output at the attempt's own URI that fails verification can never finalize it
        // (objects are create-only): the attempt ends `failed` and is retried. A callback that
        // names another URI proves nothing about the attempt's output, which stays usable.
        let unusable = match case {
            "wrong hash" => {
                output["input_envelope_sha256"] = json!("0".repeat(64));
                true
            }
            "wrong run" => {
                output["run_id"] = json!(RunId::new().to_string());
                true
            }
            "wrong uri" => {
                payload["result_uri"] =
                    json!(output_uri.replace(&attempt_id, &AttemptId::new().to_string()));
                false
            }
            _ => {
                output["messages"] = json!([{"severity": "INFO", "text": "x".repeat(9 << 20)}]);
                true
            }
        };
        storage
            .put_new(
                &output_key,
                Body::from(serde_json::to_vec(&output).expect("json")),
            )
            .await
            .expect("write output");
        let (status, answer) = sys.post_callback(Some(&token), &payload).await;
        assert_eq!(status, 422, "{case}: {answer}");
        let (_, run) = sys.get(&format!("/v1/runs/{run_id}")).await;
        assert_ne!(
            run["state"], "completed",
            "{case}: a refused output must not finish the run: {run}"
        );
        let attempts = run["attempts"].as_array().expect("attempts");
        if unusable {
            assert_eq!(attempts[0]["state"], "failed", "{case}: {run}");
            assert!(
                attempts[0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("output.json")),
                "{case}: the reason is recorded: {run}"
            );
            assert_eq!(attempts.len(), 2, "{case}: a retry is queued: {run}");
            assert_eq!(attempts[1]["state"], "pending", "{case}: {run}");
        } else {
            assert_eq!(attempts.len(), 1, "{case}: {run}");
            assert_eq!(attempts[0]["state"], "running", "{case}: {run}");
        }
        let receipts = sys.receipts(&attempt_id).await;
        assert!(
            receipts.iter().any(|r| r.outcome.as_str() == "rejected"),
            "{case}: {receipts:?}"
        );
    }
    // Shutdown waits for the slow jobs, whose callbacks meet the planted outputs.
    sys.shutdown().await;
}

async fn concurrency_caps_are_honoured(db: &str) {
    let sys = System::start_with(db, 200, Some(capped_validators(2))).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let (status, created) = sys.create(&energyplus_run(MODEL), None).await;
        assert_eq!(status, 201);
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    let mut peak = 0;
    let start = Instant::now();
    loop {
        let active = sys
            .running
            .deps
            .store
            .attempts_in_states(AttemptState::ACTIVE, None, 100)
            .await
            .expect("active")
            .len();
        peak = peak.max(active);
        assert!(active <= 2, "{active} attempts active with a cap of 2");
        let (_, list) = sys.get("/v1/runs?state=completed&limit=100").await;
        if list["runs"].as_array().expect("runs").len() == ids.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "runs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(peak, 2, "the cap should also be reached");
    sys.shutdown().await;
}

async fn graceful_shutdown_mid_load_loses_no_run(db: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Db::fresh(db).await;
    let running = dev::start(config(dir.path(), &database, 50, None))
        .await
        .expect("start");
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = if i % 2 == 0 {
            energyplus_run(MODEL)
        } else {
            fmu_run(None)
        };
        let response = http
            .post(format!("{}/v1/runs", running.launcher_url))
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(response.status().as_u16(), 201);
        let created: Value = response.json().await.expect("json");
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    // Stop mid-load, then start again on the same state.
    running.shutdown().await.expect("clean shutdown");
    let running = dev::start(config(dir.path(), &database, 0, None))
        .await
        .expect("restart");
    let start = Instant::now();
    loop {
        let page = running
            .deps
            .store
            .list_runs(&RunFilter::default(), None, 100)
            .await
            .expect("list");
        assert_eq!(page.runs.len(), ids.len(), "no run may be lost");
        let done = page
            .runs
            .iter()
            .filter(|r| r.state.as_str() == "completed")
            .count();
        if done == ids.len() {
            assert!(
                page.runs
                    .iter()
                    .all(|r| r.result.map(|x| x.as_str()) == Some("passed")),
                "every run passes: {:?}",
                page.runs.iter().map(|r| r.result).collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{done}/{} completed",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.expect("clean shutdown");
}
