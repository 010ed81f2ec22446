//! The suite's own prerequisites are the real things, at the versions the contract and the
//! docs name: a guard against a test run that silently talks to something else.

use std::process::Command;

#[test]
fn validibot_shared_is_the_pinned_oracle() {
    let output = Command::new(runway_tests::python())
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('validibot-shared'))",
        ])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0.28.0");
}

#[test]
fn fake_gcs_server_answers_and_keeps_objects() {
    let endpoint = runway_tests::gcs_endpoint();
    let bucket = runway_tests::create_bucket(&endpoint, "env");
    let (status, body) =
        runway_tests::http("GET", &format!("{endpoint}/storage/v1/b/{bucket}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&bucket), "{body}");
}

#[tokio::test]
async fn postgres_is_version_15() {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&runway_tests::postgres_url())
        .await
        .expect("connect to PostgreSQL");
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .expect("query");
    assert!(version.starts_with("15."), "PostgreSQL {version}");
}
