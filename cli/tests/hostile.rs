//! Hostile input leaves nothing behind and cannot hang or exhaust a service: one regression
//! test per defect a bad-input review found, on SQLite and PostgreSQL where the store is
//! involved. (Refused multipart uploads and the idempotency fingerprint are in the launcher's
//! API tests; receipt caps and retention in the store suite; special files in the storage
//! suite; peak memory under a hostile body in `dev.rs`.)

use std::time::Duration;

use runway_storage::Body;
use serde_json::{Value, json};

mod common;

use common::*;

/// A model whose mock job runs until it is stopped: its attempt stays running for the test.
const HANGS: &str =
    "Version, 25.2;\n! RUNWAY_MOCK_OUTCOME=hang\nOutput:SQLite, SimpleAndTabular;\n";

both_databases!(
    special_files_at_output_json_fail_the_attempt_without_hanging_or_echoing,
    an_unusable_output_fails_the_attempt_and_retries_in_a_fresh_folder,
    oversized_or_overcomplex_inputs_are_refused_at_creation,
    long_lived_and_future_tokens_are_refused,
    callbacks_must_say_they_are_json,
);

/// The attempt's folder on disk (the dev system stores under `file://`).
async fn attempt_dir(sys: &System, attempt_id: &str) -> std::path::PathBuf {
    let attempt = sys
        .running
        .deps
        .store
        .get_attempt(attempt_id.parse().expect("id"))
        .await
        .expect("get")
        .expect("attempt");
    let storage = &sys.running.deps.storage;
    let uri = storage.uri_for(attempt.paths().expect("paths").root());
    std::path::PathBuf::from(uri.strip_prefix("file://").expect("file storage"))
}

async fn run_view(sys: &System, run_id: &str) -> Value {
    sys.get(&format!("/v1/runs/{run_id}")).await.1
}

async fn special_files_at_output_json_fail_the_attempt_without_hanging_or_echoing(db: &str) {
    // Jobs that never finish: the test plants its trap where the job would write.
    let sys = System::start(db, 0).await;
    let token = sys.token(&sys.running.callback_url).await;

    // A named pipe: reading it would block a thread for ever.
    let (_, created) = sys.create(&energyplus_run(HANGS), None).await;
    let run_id = created["id"].as_str().expect("id").to_owned();
    let attempt_id = sys.wait_running(&run_id).await;
    let dir = attempt_dir(&sys, &attempt_id).await;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("output.json"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .expect("mkfifo");
    let payload = sys.callback_for(&run_id, &attempt_id, "success").await;
    // Many callbacks at once, as a hostile job would send: none may hang.
    let callbacks = (0..32).map(|_| sys.post_callback(Some(&token), &payload));
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join_all(callbacks),
    )
    .await
    .expect("callbacks at a named pipe are answered promptly");
    assert!(
        answers
            .iter()
            .all(|(status, _)| matches!(status, 200 | 422)),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|(status, body)| *status == 422
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("named pipe"))),
        "{answers:?}"
    );
    let (status, ready) = sys.get("/readyz").await;
    assert_eq!(status, 200, "the service stays ready: {ready}");
    let run = run_view(&sys, &run_id).await;
    assert_eq!(run["attempts"][0]["state"], "failed", "{run}");
    assert!(
        run["attempts"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("named pipe")),
        "{run}"
    );
    assert_eq!(run["attempts"][1]["state"], "pending", "retried: {run}");

    // A symbolic link to a file of the host: never followed, never quoted.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_dir.path().join("secret.json");
    std::fs::write(&secret, "{\"run_id\": \"HOST-SECRET-VALUE\"}").expect("secret");
    let (_, created) = sys.create(&energyplus_run(HANGS), None).await;
    let run_id = created["id"].as_str().expect("id").to_owned();
    let attempt_id = sys.wait_running(&run_id).await;
    let dir = attempt_dir(&sys, &attempt_id).await;
    std::os::unix::fs::symlink(&secret, dir.join("output.json")).expect("symlink");
    let payload = sys.callback_for(&run_id, &attempt_id, "success").await;
    let (status, answer) = sys.post_callback(Some(&token), &payload).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.to_string().contains("symbolic link"), "{answer}");
    let run = run_view(&sys, &run_id).await;
    assert!(!answer.to_string().contains("HOST-SECRET"), "{answer}");
    assert!(!run.to_string().contains("HOST-SECRET"), "{run}");
    assert_eq!(run["attempts"][0]["state"], "failed", "{run}");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "{\"run_id\": \"HOST-SECRET-VALUE\"}",
        "the target is untouched"
    );
    sys.shutdown().await;
}

async fn an_unusable_output_fails_the_attempt_and_retries_in_a_fresh_folder(db: &str) {
    let sys = System::start(db, 0).await;
    let token = sys.token(&sys.running.callback_url).await;
    let (_, created) = sys.create(&energyplus_run(HANGS), None).await;
    let run_id = created["id"].as_str().expect("id").to_owned();
    let attempt_id = sys.wait_running(&run_id).await;
    let payload = sys.callback_for(&run_id, &attempt_id, "success").await;
    let storage = sys.running.deps.storage.clone();
    let output_key = storage
        .base()
        .resolve(payload["result_uri"].as_str().expect("uri"))
        .expect("key");
    storage
        .put_new(&output_key, Body::from(b"this is not json".to_vec()))
        .await
        .expect("plant");
    let (status, answer) = sys.post_callback(Some(&token), &payload).await;
    assert_eq!(status, 422, "{answer}");

    let run = run_view(&sys, &run_id).await;
    assert_eq!(run["state"], "queued", "the run waits for its retry: {run}");
    let attempts = run["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["state"], "failed");
    assert!(
        attempts[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid output envelope")),
        "{run}"
    );
    let retry = sys
        .running
        .deps
        .store
        .get_attempt(attempts[1]["id"].as_str().expect("id").parse().expect("id"))
        .await
        .expect("get")
        .expect("retry");
    assert!(
        !output_key
            .as_str()
            .starts_with(retry.paths().expect("paths").root().as_str()),
        "the retry's folder is fresh"
    );
    assert!(
        storage
            .head(&storage.uri_for(&retry.paths().expect("paths").output()))
            .await
            .expect("head")
            .is_none()
    );
    // The same callback again: the attempt is over, so it is late and changes nothing.
    let (status, answer) = sys.post_callback(Some(&token), &payload).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("late")));
    sys.shutdown().await;
}

async fn oversized_or_overcomplex_inputs_are_refused_at_creation(db: &str) {
    let sys = System::start(db, 0).await;
    let assert_nothing_stored = |what: &'static str| {
        let sys = &sys;
        async move {
            let (_, runs) = sys.get("/v1/runs").await;
            assert_eq!(runs["runs"], json!([]), "{what}: no run is stored");
            let objects = sys.running.deps.storage.list("").await.expect("list");
            assert!(
                objects.is_empty(),
                "{what}: nothing is uploaded: {objects:?}"
            );
        }
    };

    // Inputs that would make the input envelope larger than a container accepts.
    let mut run = fmu_run(None);
    run["inputs"]["input_values"]["note"] = json!("x".repeat(1100 * 1024));
    let (status, answer) = sys.create(&run, None).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("input envelope")),
        "{answer}"
    );
    assert_nothing_stored("an oversized envelope").await;

    // A 15 MiB body of 850,000 keys: refused by counting, not by building it.
    let body = body_of_many_keys(850_000);
    assert!(body.len() > 14 << 20, "{} bytes", body.len());
    let response = sys
        .http
        .post(format!("{}/v1/runs", sys.running.launcher_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "too_complex", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("200000 values")),
        "{answer}"
    );
    // Nesting past the limit, in a small body.
    let deep = format!(
        r#"{{"validator": "fmu", "org": {{"id": "a", "name": "A"}}, "workflow": {{"id": "w", "step_id": "s"}}, "inputs": {{"input_values": {{"x": {}1{}}}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let response = sys
        .http
        .post(format!("{}/v1/runs", sys.running.launcher_url))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "too_complex", "{answer}");
    assert_nothing_stored("overcomplex bodies").await;
    sys.shutdown().await;
}

async fn long_lived_and_future_tokens_are_refused(db: &str) {
    let sys = System::start(db, 0).await;
    let (_, created) = sys.create(&energyplus_run(HANGS), None).await;
    let run_id = created["id"].as_str().expect("id").to_owned();
    let attempt_id = sys.wait_running(&run_id).await;
    let payload = sys.callback_for(&run_id, &attempt_id, "success").await;
    let audience = sys.running.callback_url.clone();
    let now = chrono::Utc::now().timestamp();
    // Year 3000, correctly signed.
    let forever = signed_token(&sys, &audience, now, 32_503_680_000);
    let (status, answer) = sys.post_callback(Some(&forever), &payload).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.to_string().contains("lifetime"), "{answer}");
    // Issued an hour from now.
    let future = signed_token(&sys, &audience, now + 3600, now + 5400);
    let (status, answer) = sys.post_callback(Some(&future), &payload).await;
    assert_eq!(status, 401, "{answer}");
    // One that lives exactly the hour allowed is fine: the limit is not off by one.
    let (status, answer) = sys
        .post_callback(
            Some(&signed_token(&sys, &audience, now, now + 3600)),
            &json!({}),
        )
        .await;
    assert_eq!(
        status, 400,
        "a valid token reaches the payload check: {answer}"
    );
    assert!(sys.receipts(&attempt_id).await.is_empty());
    assert_eq!(run_view(&sys, &run_id).await["state"], "running");
    sys.shutdown().await;
}

async fn callbacks_must_say_they_are_json(db: &str) {
    let sys = System::start(db, 0).await;
    let (_, created) = sys.create(&energyplus_run(HANGS), None).await;
    let run_id = created["id"].as_str().expect("id").to_owned();
    let attempt_id = sys.wait_running(&run_id).await;
    let payload = sys.callback_for(&run_id, &attempt_id, "success").await;
    let token = sys.token(&sys.running.callback_url).await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = sys
            .http
            .post(format!("{}/v1/callbacks", sys.running.callback_url))
            .bearer_auth(&token)
            .body(payload.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 415, "{content_type:?}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(
            answer["error"]["code"], "unsupported_media_type",
            "{answer}"
        );
    }
    assert!(sys.receipts(&attempt_id).await.is_empty());
    assert_eq!(run_view(&sys, &run_id).await["state"], "running");
    sys.shutdown().await;
}
