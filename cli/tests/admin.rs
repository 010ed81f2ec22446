//! The admin commands: `runway api-key` (keys created, listed and revoked in the run store, the
//! secret printed once) and `runway webhook` (subscriptions, rotations, dead deliveries).

use std::process::{Command, Output};

fn runway(data_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runway"))
        .args(args)
        .env("RUNWAY_DATA_DIR", data_dir)
        .env_remove("RUNWAY_DATABASE_URL")
        .output()
        .expect("runway runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_and_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = runway(
        dir.path(),
        &["api-key", "create", "--org", "acme", "--name", "web app"],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let secret = text(&created.stdout).trim().to_owned();
    assert!(secret.starts_with("rwk_") && secret.len() > 40, "{secret}");
    let note = text(&created.stderr);
    assert!(
        note.contains("shown once") && note.contains("acme"),
        "{note}"
    );
    let id = note
        .split_whitespace()
        .nth(3)
        .expect("the key's id in the note")
        .to_owned();

    let listed = runway(dir.path(), &["api-key", "list", "--org", "acme"]);
    assert!(listed.status.success());
    let listing = text(&listed.stdout);
    assert!(
        listing.contains(&id) && listing.contains("active"),
        "{listing}"
    );
    assert!(
        !listing.contains(&secret),
        "a listing never shows the secret"
    );
    assert_eq!(
        text(&runway(dir.path(), &["api-key", "list", "--org", "globex"]).stdout),
        ""
    );

    // The launcher knows the key by its hash, in the same store.
    let store = runway_runs::connect(&format!(
        "sqlite://{}",
        dir.path().join("runway.db").display()
    ))
    .await
    .expect("store");
    let key = store
        .api_key_by_secret(&runway_launcher::auth::secret_sha256(&secret))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(key.org_id, "acme");

    let revoked = runway(dir.path(), &["api-key", "revoke", &id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert!(text(&revoked.stdout).contains("revoked API key"));
    let listing = text(&runway(dir.path(), &["api-key", "list"]).stdout);
    assert!(listing.contains("revoked 20"), "{listing}");

    // Bad input: a sentence and a non-zero exit.
    for (args, needle) in [
        (
            vec!["api-key", "revoke", "not-an-id"],
            "is not an API key id",
        ),
        (
            vec!["api-key", "revoke", "0190c2a4-8a1e-7b3e-9d4c-0123456789ab"],
            "there is no API key",
        ),
        (
            vec!["api-key", "create", "--org", "no spaces", "--name", "x"],
            "is not an org id",
        ),
        (
            vec!["api-key", "create", "--org", "acme", "--name", " "],
            "needs a name",
        ),
    ] {
        let out = runway(dir.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn webhook_subscriptions_are_managed_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = runway(
        dir.path(),
        &[
            "webhook",
            "create",
            "--org",
            "acme",
            "--url",
            "https://hooks.acme.test/runway",
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let secret = text(&created.stdout).trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let note = text(&created.stderr);
    let id = note.split_whitespace().nth(3).expect("the id").to_owned();

    let listing = text(&runway(dir.path(), &["webhook", "list"]).stdout);
    assert!(
        listing.contains(&id) && listing.contains("run.completed") && listing.contains("active"),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "a listing never shows a secret");

    let rotated = runway(dir.path(), &["webhook", "rotate", &id]);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new_secret = text(&rotated.stdout).trim().to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(text(&runway(dir.path(), &["webhook", "list"]).stdout).contains("rotating"));
    assert!(
        runway(dir.path(), &["webhook", "finish-rotation", &id])
            .status
            .success()
    );
    let disabled = runway(dir.path(), &["webhook", "disable", &id]);
    assert!(disabled.status.success());
    assert!(text(&runway(dir.path(), &["webhook", "list"]).stdout).contains("disabled"));
    assert_eq!(text(&runway(dir.path(), &["webhook", "dead"]).stdout), "");

    for (args, needle) in [
        (
            vec!["webhook", "create", "--org", "acme", "--url", "ftp://x/"],
            "http(s) URL",
        ),
        (
            vec!["webhook", "rotate", "nope"],
            "is not a subscription id",
        ),
        (
            vec!["webhook", "replay", "0190c2a4-8a1e-7b3e-9d4c-0123456789ab"],
            "is not dead",
        ),
    ] {
        let out = runway(dir.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
