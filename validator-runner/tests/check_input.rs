//! `runway-validator-runner check-input` as a container runs it: a separate process reading an
//! envelope and its files from real storage (a directory, and fake-gcs-server).

use std::process::Command;

use runway_contract::{InputEnvelope, Sha256Hex, StorageVersion};
use runway_storage::{Body, GcsOptions, ObjectKey, ObjectStore, OpenOptions};
use serde_json::json;

const MODEL: &[u8] = b"Version, 25.2;\nOutput:SQLite, SimpleAndTabular;\n";

/// Publishes a model file and an input envelope naming it (with `claimed_sha256` as the file's
/// digest, to let a test lie about it); returns the envelope's URI.
async fn publish(store: &dyn ObjectStore, claimed_sha256: Option<&str>) -> String {
    let prefix = "runs/org/run-1/attempts/a-1";
    let file = store
        .put_new(
            &ObjectKey::parse(format!("{prefix}/model.idf")).expect("key"),
            Body::Bytes(MODEL.to_vec().into()),
        )
        .await
        .expect("put model");
    let nonce = "n".repeat(43);
    let commitment = runway_contract::CallbackNonce::try_from(nonce.as_str())
        .expect("nonce")
        .commitment();
    let envelope = json!({
        "schema_version": "validibot.input.v1",
        "run_id": "run-1",
        "validator": {"id": "ep", "type": "ENERGYPLUS", "version": "25.2"},
        "org": {"id": "org", "name": "Org"},
        "workflow": {"id": "wf", "step_id": "st"},
        "input_files": [{
            "name": "model.idf",
            "mime_type": "application/vnd.energyplus.idf",
            "role": "primary-model",
            "port_key": "primary_model",
            "uri": file.uri,
            "size_bytes": file.size_bytes,
            "sha256": claimed_sha256.unwrap_or(&file.sha256),
            "storage_version": file.storage_version,
        }],
        "inputs": {"timestep_per_hour": 4},
        "context": {
            "execution_attempt_id": "a-1",
            "step_run_id": "st-1",
            "attempt_contract_version": "validibot.attempt.v2",
            "expected_output_uri": store.uri_for(&ObjectKey::parse(format!("{prefix}/output.json")).expect("key")),
            "callback_id": "cb-1",
            "callback_nonce": nonce,
            "callback_nonce_commitment": commitment,
            "callback_url": "http://127.0.0.1:8081/v1/callbacks",
            "execution_bundle_uri": store.uri_for(&ObjectKey::parse(prefix).expect("key")),
        },
    });
    // Through the contract type, as the launcher will write it.
    let envelope = InputEnvelope::from_json(&serde_json::to_vec(&envelope).expect("json"))
        .expect("valid envelope");
    let receipt = store
        .put_new(
            &ObjectKey::parse(format!("{prefix}/input.json")).expect("key"),
            Body::Bytes(envelope.to_json().expect("ser").into()),
        )
        .await
        .expect("put envelope");
    assert!(StorageVersion::try_from(receipt.storage_version).is_ok());
    receipt.uri
}

fn check_input(uri: &str, env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runway-validator-runner"))
        .arg("check-input")
        .env("VALIDIBOT_INPUT_URI", uri)
        .envs(env.iter().copied())
        .output()
        .expect("runner runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn verifies_an_envelope_and_its_files_on_local_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!("file://{}", dir.path().display());
    let store = runway_storage::open(&base, &OpenOptions::default())
        .await
        .expect("open");
    let uri = publish(store.as_ref(), None).await;

    let (ok, out) = check_input(&uri, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("1 file(s) verified"), "{out}");
    // The printed hash is the envelope's canonical hash.
    let bytes = std::fs::read(uri.strip_prefix("file://").expect("file uri")).expect("read");
    let expected = InputEnvelope::from_json(&bytes)
        .expect("parse")
        .canonical_sha256()
        .expect("hash");
    assert!(out.contains(expected.as_str()), "{out}");
}

#[tokio::test]
async fn refuses_a_file_whose_bytes_do_not_match_the_envelope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!("file://{}", dir.path().display());
    let store = runway_storage::open(&base, &OpenOptions::default())
        .await
        .expect("open");
    let wrong = Sha256Hex::digest(b"something else");
    let uri = publish(store.as_ref(), Some(wrong.as_str())).await;

    let (ok, out) = check_input(&uri, &[]);
    assert!(!ok, "a tampered file must fail the check: {out}");
    assert!(
        out.contains("sha256") && out.contains(wrong.as_str()),
        "{out}"
    );
}

#[test]
fn refuses_a_missing_or_malformed_envelope_with_a_sentence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = format!("file://{}/input.json", dir.path().display());
    let (ok, out) = check_input(&missing, &[]);
    assert!(!ok);
    assert!(out.contains("cannot read the input envelope"), "{out}");

    std::fs::write(
        dir.path().join("bad.json"),
        br#"{"schema_version": "validibot.input.v9"}"#,
    )
    .expect("write");
    let (ok, out) = check_input(&format!("file://{}/bad.json", dir.path().display()), &[]);
    assert!(!ok);
    assert!(out.contains("schema_version"), "{out}");
}

#[tokio::test]
async fn verifies_an_envelope_on_gcs() {
    let endpoint = runway_tests::gcs_endpoint();
    let bucket = runway_tests::create_bucket(&endpoint, "runner");
    let options = OpenOptions {
        gcs: GcsOptions {
            endpoint: Some(endpoint.clone()),
            anonymous: true,
            token: None,
        },
    };
    let store = runway_storage::open(&format!("gs://{bucket}/runway"), &options)
        .await
        .expect("open");
    let uri = publish(store.as_ref(), None).await;
    assert!(uri.starts_with("gs://"));

    let (ok, out) = check_input(
        &uri,
        &[
            ("RUNWAY_GCS_ENDPOINT", &endpoint),
            ("RUNWAY_GCS_ANONYMOUS", "true"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("1 file(s) verified"), "{out}");
}

/// The runner proper (no subcommand), with only `env`; its exit code and what it said.
fn run(uri: Option<&str>, env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runway-validator-runner"));
    command.env_clear().envs(env.iter().copied());
    if let Some(uri) = uri {
        command.arg(uri);
    }
    let output = command.output().expect("runner runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().expect("exit code"), text)
}

#[tokio::test]
async fn the_runner_refuses_an_output_uri_other_than_the_envelopes_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!("file://{}", dir.path().display());
    let store = runway_storage::open(&base, &OpenOptions::default())
        .await
        .expect("open");
    let uri = publish(store.as_ref(), None).await;
    let elsewhere = format!("file://{}/elsewhere/output.json", dir.path().display());
    let (code, out) = run(Some(&uri), &[("VALIDIBOT_OUTPUT_URI", &elsewhere)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refused: VALIDIBOT_OUTPUT_URI is"), "{out}");
    let output = uri.replace("input.json", "output.json");
    assert!(store.head(&output).await.expect("head").is_none(), "{out}");
    assert!(!dir.path().join("elsewhere").exists());
}

#[test]
fn the_runner_refuses_a_missing_or_absent_envelope_with_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = format!("file://{}/input.json", dir.path().display());
    let (code, out) = run(Some(&missing), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("refused: cannot read the input envelope"),
        "{out}"
    );
    let (code, out) = run(None, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no input envelope"), "{out}");
    std::fs::write(dir.path().join("input.json"), b"{\"schema_version\": 3}").expect("write");
    let (code, out) = run(None, &[("VALIDIBOT_INPUT_URI", &missing)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refused"), "{out}");
}
