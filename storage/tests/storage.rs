//! One behavioural suite for object storage, written once and run against every backend:
//! memory, a temporary directory (`file://`) and fake-gcs-server (`gs://`).
//!
//! The GCS variant needs `RUNWAY_TEST_GCS_ENDPOINT` (e.g. `http://127.0.0.1:4443`); without it
//! those tests fail rather than skip, because a suite that silently skips proves nothing.
//! `scripts/test.sh` starts the emulator and sets the variable.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use runway_storage::{self, Body, Expected, ObjectKey, ObjectStore, OpenOptions, StorageError};
use sha2::{Digest, Sha256};

/// Which backend a fixture runs; only the form of `storage_version` differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Memory,
    File,
    #[cfg_attr(
        not(feature = "gcs"),
        expect(dead_code, reason = "only the gcs suite uses it")
    )]
    Gcs,
}

struct Fixture {
    store: Arc<dyn ObjectStore>,
    flavor: Flavor,
    _dir: Option<tempfile::TempDir>,
}

async fn memory() -> Fixture {
    let store = runway_storage::open("memory://suite/some/prefix", &OpenOptions::default())
        .await
        .expect("memory store opens");
    Fixture {
        store,
        flavor: Flavor::Memory,
        _dir: None,
    }
}

async fn file() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    // A directory that does not exist yet: open must create it.
    let base = format!("file://{}/objects/root", dir.path().display());
    let store = runway_storage::open(&base, &OpenOptions::default())
        .await
        .expect("file store opens");
    Fixture {
        store,
        flavor: Flavor::File,
        _dir: Some(dir),
    }
}

#[cfg(feature = "gcs")]
async fn gcs() -> Fixture {
    let endpoint = std::env::var("RUNWAY_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "RUNWAY_TEST_GCS_ENDPOINT is not set: run the tests with scripts/test.sh, which \
             starts fake-gcs-server and sets it (e.g. http://127.0.0.1:4443)"
        )
    });
    let bucket = format!("runway-test-{}", uuid::Uuid::new_v4().simple());
    let response = reqwest::Client::new()
        .post(format!("{}/storage/v1/b", endpoint.trim_end_matches('/')))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": bucket }).to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("fake-gcs-server at {endpoint} is unreachable: {e}"));
    assert!(
        response.status().is_success(),
        "creating bucket {bucket} failed: {}",
        response.status()
    );
    let options = OpenOptions {
        gcs: runway_storage::GcsOptions {
            endpoint: Some(endpoint),
            anonymous: true,
            token: None,
        },
    };
    let store = runway_storage::open(&format!("gs://{bucket}/some/prefix"), &options)
        .await
        .expect("gcs store opens");
    Fixture {
        store,
        flavor: Flavor::Gcs,
        _dir: None,
    }
}

/// Deterministic, incompressible-looking bytes, so that different bodies really differ.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).expect("test keys are valid")
}

mod cases {
    use super::*;

    pub async fn round_trip_reports_size_sha256_and_version(fx: &Fixture) {
        let data = pattern(10_000, 1);
        let k = key("runs/org/run/attempts/1/input.json");

        let receipt = fx
            .store
            .put_new(&k, Body::from(data.clone()))
            .await
            .expect("first write succeeds");

        assert_eq!(receipt.uri, fx.store.uri_for(&k));
        assert_eq!(receipt.uri, format!("{}/{k}", fx.store.base()));
        assert_eq!(receipt.size_bytes, data.len() as u64);
        assert_eq!(receipt.sha256, sha256_hex(&data));
        match fx.flavor {
            Flavor::Memory | Flavor::File => {
                assert_eq!(
                    receipt.storage_version,
                    format!("sha256:{}", sha256_hex(&data))
                );
            }
            Flavor::Gcs => {
                let generation: i64 = receipt.storage_version.parse().expect("a generation");
                assert!(generation > 0);
            }
        }
        let by_key = fx
            .store
            .read_bytes(k.as_str(), 1 << 20)
            .await
            .expect("read by key");
        assert_eq!(by_key, data);
        let by_uri = fx
            .store
            .read_bytes(&receipt.uri, 1 << 20)
            .await
            .expect("read by uri");
        assert_eq!(by_uri, data);

        let meta = fx
            .store
            .head(&receipt.uri)
            .await
            .expect("head")
            .expect("exists");
        assert_eq!(meta.size_bytes, data.len() as u64);
        assert_eq!(meta.storage_version, receipt.storage_version);
    }

    pub async fn empty_and_reader_bodies(fx: &Fixture) {
        let empty = fx
            .store
            .put_new(&key("empty"), Body::from(Vec::new()))
            .await
            .expect("empty object");
        assert_eq!(empty.size_bytes, 0);
        assert_eq!(empty.sha256, sha256_hex(b""));
        assert!(
            fx.store
                .read_bytes("empty", 0)
                .await
                .expect("read")
                .is_empty()
        );

        let data = pattern(200_000, 2);
        let reader = std::io::Cursor::new(data.clone());
        let receipt = fx
            .store
            .put_new(&key("from/reader"), Body::from_reader(reader))
            .await
            .expect("reader body");
        assert_eq!(receipt.sha256, sha256_hex(&data));
        assert_eq!(
            fx.store
                .read_bytes("from/reader", 200_000)
                .await
                .expect("read"),
            data
        );
    }

    pub async fn second_write_fails_and_first_survives(fx: &Fixture) {
        let k = key("out/output.json");
        let first = fx
            .store
            .put_new(&k, Body::from(b"first".to_vec()))
            .await
            .expect("first write");

        let err = fx
            .store
            .put_new(&k, Body::from(b"second, longer".to_vec()))
            .await
            .expect_err("second write must fail");

        match err {
            StorageError::AlreadyExists { uri } => assert_eq!(uri, first.uri),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(
            fx.store.read_bytes(k.as_str(), 100).await.expect("read"),
            &b"first"[..]
        );
        let meta = fx
            .store
            .head(k.as_str())
            .await
            .expect("head")
            .expect("exists");
        assert_eq!(meta.storage_version, first.storage_version);
        assert_eq!(meta.size_bytes, 5);
    }

    pub async fn concurrent_writers_exactly_one_wins(fx: &Fixture) {
        let k = key("race/output.json");
        let writers = (0..8_u64).map(|i| {
            let store = fx.store.clone();
            let k = k.clone();
            tokio::spawn(async move {
                let body = pattern(50_000, 100 + i);
                (store.put_new(&k, Body::from(body.clone())).await, body)
            })
        });
        let results = futures::future::join_all(writers).await;

        let mut winners = Vec::new();
        for result in results {
            match result.expect("writer task") {
                (Ok(receipt), body) => winners.push((receipt, body)),
                (Err(StorageError::AlreadyExists { .. }), _) => {}
                (Err(other), _) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one writer must win");
        let (receipt, body) = &winners[0];
        let stored = fx
            .store
            .read_bytes(k.as_str(), 1 << 20)
            .await
            .expect("read");
        assert_eq!(stored, body.as_slice());
        assert_eq!(receipt.sha256, sha256_hex(&stored));
    }

    pub async fn streams_a_multi_megabyte_body(fx: &Fixture) {
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: u64 = 96; // 6 MiB
        let mut expected = Sha256::new();
        for i in 0..CHUNKS {
            expected.update(pattern(CHUNK, i));
        }
        let expected = hex::encode(expected.finalize());
        // Chunks are produced lazily, as a network body would be.
        let body = futures::stream::iter(0..CHUNKS)
            .map(|i| Ok::<_, std::io::Error>(Bytes::from(pattern(CHUNK, i))));
        let k = key("big/output.bin");

        let receipt = fx
            .store
            .put_new(&k, Body::from_stream(body))
            .await
            .expect("streamed write");

        assert_eq!(receipt.size_bytes, CHUNK as u64 * CHUNKS);
        assert_eq!(receipt.sha256, expected);
        let mut stream = fx.store.get(k.as_str(), 8 << 20).await.expect("get");
        let mut read = Sha256::new();
        let mut size = 0_u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("chunk");
            size += chunk.len() as u64;
            read.update(&chunk);
        }
        assert_eq!(size, receipt.size_bytes);
        assert_eq!(hex::encode(read.finalize()), expected);
    }

    pub async fn read_limit_is_enforced(fx: &Fixture) {
        let data = pattern(1000, 3);
        let uri = fx
            .store
            .put_new(&key("capped"), Body::from(data.clone()))
            .await
            .expect("write")
            .uri;

        let exact = fx
            .store
            .read_bytes("capped", 1000)
            .await
            .expect("limit == size is fine");
        assert_eq!(exact, data);
        let err = fx
            .store
            .read_bytes("capped", 999)
            .await
            .expect_err("one byte over the limit");
        match err {
            StorageError::TooLarge { uri: got, limit } => {
                assert_eq!(got, uri);
                assert_eq!(limit, 999);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    /// A copy streams the source to a new key create-only, and is refused (storing nothing)
    /// when the source is missing, differs from what is expected, or the target exists.
    pub async fn copies_create_only_with_the_sources_digest(fx: &Fixture) {
        // Over a megabyte, so it is streamed in several chunks on every backend.
        let data = pattern(1_500_000, 9);
        let sha = sha256_hex(&data);
        let source = key("runs/acme/r1/files/u1/0-model.idf");
        let stored = fx
            .store
            .put_new(&source, Body::from(data.clone()))
            .await
            .expect("source");
        let target = key("runs/acme/r2/files/u2/0-model.idf");
        // By full URI, as a run's spec names its files.
        let copied =
            runway_storage::copy_new(fx.store.as_ref(), &stored.uri, &target, &sha, 1_500_000)
                .await
                .expect("copy");
        assert_eq!(copied.uri, fx.store.uri_for(&target));
        assert_eq!(
            (copied.size_bytes, copied.sha256.as_str()),
            (1_500_000, sha.as_str())
        );
        let read = fx
            .store
            .read_bytes(target.as_str(), 2_000_000)
            .await
            .expect("read the copy");
        assert!(read == data, "the copy holds the source's bytes");

        // The target exists: refused, and the copy stays intact.
        let err =
            runway_storage::copy_new(fx.store.as_ref(), source.as_str(), &target, &sha, 1_500_000)
                .await
                .expect_err("create-only");
        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err:?}");

        // A source that is not what the caller expects stores nothing.
        let other = key("runs/acme/r3/files/u3/0-model.idf");
        let err = runway_storage::copy_new(
            fx.store.as_ref(),
            source.as_str(),
            &other,
            &sha256_hex(b"another model"),
            1_500_000,
        )
        .await
        .expect_err("digest mismatch");
        assert!(
            matches!(err, StorageError::Mismatch { what: "sha256", .. }),
            "{err:?}"
        );
        let err =
            runway_storage::copy_new(fx.store.as_ref(), source.as_str(), &other, &sha, 1_499_999)
                .await
                .expect_err("a larger source");
        assert!(
            !matches!(
                err,
                StorageError::AlreadyExists { .. } | StorageError::NotFound { .. }
            ),
            "{err:?}"
        );
        let err = runway_storage::copy_new(
            fx.store.as_ref(),
            "runs/acme/r9/files/u9/0-missing.idf",
            &other,
            &sha,
            1_500_000,
        )
        .await
        .expect_err("no source");
        assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
        assert_eq!(fx.store.head(other.as_str()).await.expect("head"), None);
    }

    pub async fn missing_objects(fx: &Fixture) {
        let k = key("no/such/object");
        match fx.store.read_bytes(k.as_str(), 10).await {
            Err(StorageError::NotFound { uri }) => assert_eq!(uri, fx.store.uri_for(&k)),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            fx.store.get(&fx.store.uri_for(&k), 10).await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(fx.store.head(k.as_str()).await.expect("head"), None);
    }

    pub async fn unsafe_keys_are_rejected(fx: &Fixture) {
        for bad in [
            "../x",
            "a/../../x",
            "a//b",
            "/abs",
            "a\\b",
            "a\0b",
            "a/",
            ".",
            "",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} must be rejected");
            assert!(
                matches!(
                    fx.store.get(bad, 10).await,
                    Err(StorageError::InvalidKey { .. })
                ),
                "get({bad:?}) must be rejected"
            );
            assert!(
                matches!(
                    fx.store.head(bad).await,
                    Err(StorageError::InvalidKey { .. })
                ),
                "head({bad:?}) must be rejected"
            );
        }
        // A traversal hidden in a full URI under the base is rejected too.
        let sneaky = format!("{}/../../etc/passwd", fx.store.base());
        assert!(matches!(
            fx.store.get(&sneaky, 10).await,
            Err(StorageError::InvalidKey { .. })
        ));
    }

    pub async fn uris_outside_the_base_are_refused(fx: &Fixture) {
        fx.store
            .put_new(&key("inside"), Body::from(b"x".to_vec()))
            .await
            .expect("write");
        let base = fx.store.base().to_string();
        for outside in [
            format!("{base}-sibling/inside"),
            "gs://another-bucket/some/prefix/inside".to_owned(),
            "file:///etc/passwd".to_owned(),
            "memory://elsewhere/inside".to_owned(),
        ] {
            match fx.store.read_bytes(&outside, 10).await {
                Err(StorageError::OutsideBase { uri, base: got }) => {
                    assert_eq!(uri, outside);
                    assert_eq!(got, base);
                }
                other => panic!("{outside}: expected OutsideBase, got {other:?}"),
            }
            assert!(matches!(
                fx.store.head(&outside).await,
                Err(StorageError::OutsideBase { .. })
            ));
        }
        assert!(matches!(
            fx.store.read_bytes("s3://bucket/inside", 10).await,
            Err(StorageError::InvalidUri { .. })
        ));
    }

    pub async fn mismatched_content_stores_nothing(fx: &Fixture) {
        let data = pattern(5000, 4);
        let k = key("checked/input.bin");
        let wrong_sha = Expected {
            sha256: Some(sha256_hex(b"something else")),
            size_bytes: None,
        };
        let err = fx
            .store
            .put_new_expecting(&k, Body::from(data.clone()), wrong_sha)
            .await
            .expect_err("sha256 mismatch");
        assert!(
            matches!(err, StorageError::Mismatch { what: "sha256", .. }),
            "{err:?}"
        );
        let wrong_size = Expected {
            sha256: None,
            size_bytes: Some(4999),
        };
        let err = fx
            .store
            .put_new_expecting(&k, Body::from(data.clone()), wrong_size)
            .await
            .expect_err("size mismatch");
        assert!(
            matches!(
                err,
                StorageError::Mismatch {
                    what: "size_bytes",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(fx.store.head(k.as_str()).await.expect("head"), None);

        let right = Expected {
            sha256: Some(sha256_hex(&data).to_uppercase()),
            size_bytes: Some(5000),
        };
        let receipt = fx
            .store
            .put_new_expecting(&k, Body::from(data.clone()), right)
            .await
            .expect("matching content is stored");
        assert_eq!(receipt.sha256, sha256_hex(&data));
    }

    pub async fn failed_body_stores_nothing(fx: &Fixture) {
        let k = key("broken/upload.bin");
        let body = futures::stream::iter([
            Ok(Bytes::from(pattern(100_000, 5))),
            Err(std::io::Error::other("client disconnected")),
        ]);
        let err = fx
            .store
            .put_new(&k, Body::from_stream(body))
            .await
            .expect_err("body failed");
        assert!(matches!(err, StorageError::Body { .. }), "{err:?}");
        assert_eq!(fx.store.head(k.as_str()).await.expect("head"), None);
        assert!(fx.store.list("broken/").await.expect("list").is_empty());
        // The key is still free.
        fx.store
            .put_new(&k, Body::from(b"retry".to_vec()))
            .await
            .expect("a later write succeeds");
    }

    pub async fn lists_by_prefix(fx: &Fixture) {
        for k in ["runs/a/1", "runs/a/2/output.json", "runs/ab/1", "other"] {
            fx.store
                .put_new(&key(k), Body::from(k.as_bytes().to_vec()))
                .await
                .expect("write");
        }
        let listed = |keys: Vec<ObjectKey>| {
            keys.iter()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            listed(fx.store.list("runs/a/").await.expect("list")),
            ["runs/a/1", "runs/a/2/output.json"]
        );
        assert_eq!(
            listed(fx.store.list("runs/a").await.expect("list")),
            ["runs/a/1", "runs/a/2/output.json", "runs/ab/1"]
        );
        assert_eq!(listed(fx.store.list("").await.expect("list")).len(), 4);
        assert!(fx.store.list("nothing/").await.expect("list").is_empty());
    }

    pub async fn deletes_staged_objects(fx: &Fixture) {
        for k in ["staged/u1/0-a.idf", "staged/u1/1-b.epw", "staged/keep"] {
            fx.store
                .put_new(&key(k), Body::from(k.as_bytes().to_vec()))
                .await
                .expect("write");
        }
        fx.store
            .delete(&key("staged/u1/0-a.idf"))
            .await
            .expect("delete");
        fx.store
            .delete(&key("staged/u1/1-b.epw"))
            .await
            .expect("delete");
        fx.store
            .delete(&key("staged/u1/never-written"))
            .await
            .expect("deleting nothing is not an error");
        assert_eq!(
            fx.store.list("staged/").await.expect("list"),
            vec![key("staged/keep")]
        );
        assert!(
            fx.store
                .head("staged/u1/0-a.idf")
                .await
                .expect("head")
                .is_none()
        );
        // The key is free again: a new object may be written there.
        fx.store
            .put_new(&key("staged/u1/0-a.idf"), Body::from(b"again".to_vec()))
            .await
            .expect("write again");
    }
}

macro_rules! suite {
    ($backend:ident, $fixture:path) => {
        mod $backend {
            suite!(@cases $fixture;
                round_trip_reports_size_sha256_and_version,
                empty_and_reader_bodies,
                second_write_fails_and_first_survives,
                concurrent_writers_exactly_one_wins,
                streams_a_multi_megabyte_body,
                read_limit_is_enforced,
                missing_objects,
                unsafe_keys_are_rejected,
                uris_outside_the_base_are_refused,
                mismatched_content_stores_nothing,
                failed_body_stores_nothing,
                lists_by_prefix,
                deletes_staged_objects,
                copies_create_only_with_the_sources_digest,
            );
        }
    };
    (@cases $fixture:path; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                super::cases::$case(&fixture).await;
            }
        )*
    };
}

suite!(memory_backend, super::memory);
suite!(file_backend, super::file);
#[cfg(feature = "gcs")]
suite!(gcs_backend, super::gcs);

/// `file://` only: a write that never completes leaves no partial object and no temporary
/// file, even when the writing task is dropped half-way (the unit tests in `file.rs` cover the
/// temporary-name fallback too).
#[tokio::test]
async fn file_write_dropped_midway_leaves_nothing() {
    let fx = file().await;
    let root = fx.store.base().prefix().to_owned();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    // One chunk, then a body that never ends: the writer is stuck mid-object.
    let body = futures::stream::iter([Ok(Bytes::from(pattern(100_000, 6)))]).chain(
        futures::stream::once(async move {
            let _ = started_tx.send(());
            futures::future::pending::<std::io::Result<Bytes>>().await
        }),
    );
    let store = fx.store.clone();
    let writer = tokio::spawn(async move {
        store
            .put_new(&key("half/written.bin"), Body::from_stream(body))
            .await
    });
    started_rx
        .await
        .expect("the writer asks for a second chunk");
    let half_dir = std::path::Path::new(&root).join("half");
    let in_flight: Vec<_> = std::fs::read_dir(&half_dir)
        .expect("directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    // The object is written as an unnamed file (`O_TMPFILE`, which this machine's file systems
    // have): the folder holds no name until it is published.
    assert!(
        in_flight.is_empty(),
        "no name in the folder while writing: {in_flight:?}"
    );
    assert!(
        !half_dir.join("written.bin").exists(),
        "nothing is published before the end"
    );
    assert!(
        fx.store.list("").await.expect("list").is_empty(),
        "temp files are not listed"
    );

    writer.abort();
    assert!(writer.await.expect_err("aborted").is_cancelled());

    let left: Vec<_> = std::fs::read_dir(&half_dir)
        .expect("directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(fx.store.head("half/written.bin").await.expect("head"), None);
}

/// `file://` only: jobs share this file system, so what they leave at a key may be a trap.
/// A symbolic link (at the key or on its path) and a named pipe are refused as not being
/// objects, at once, without a byte of what they lead to being read or quoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_special_files_are_refused_without_following_or_blocking() {
    let fx = file().await;
    let root = std::path::PathBuf::from(fx.store.base().prefix());
    let secret_dir = fx._dir.as_ref().expect("tempdir").path().join("host");
    std::fs::create_dir_all(&secret_dir).expect("dir");
    let secret = secret_dir.join("secret.txt");
    std::fs::write(&secret, "{\"token\": \"HOST-SECRET-VALUE\"}").expect("secret");

    let job = root.join("job");
    std::fs::create_dir_all(&job).expect("dir");
    std::os::unix::fs::symlink(&secret, job.join("link.json")).expect("symlink");
    std::os::unix::fs::symlink(&secret_dir, job.join("linked-dir")).expect("dir symlink");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        job.join("pipe.json"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");

    for (name, what) in [
        ("job/link.json", "a symbolic link"),
        (
            "job/linked-dir/secret.txt",
            "reached through a symbolic link",
        ),
        ("job/pipe.json", "a named pipe"),
    ] {
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            fx.store.read_bytes(name, 1 << 20),
        )
        .await
        .unwrap_or_else(|_| panic!("reading {name} blocked"));
        match read {
            Err(StorageError::NotAnObject { what: got, ref uri }) => {
                assert_eq!(got, what, "{name}");
                assert!(uri.ends_with(name), "{uri}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        let err = fx
            .store
            .read_bytes(name, 1 << 20)
            .await
            .expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("not a regular file"), "{message}");
        assert!(
            !message.contains("HOST-SECRET"),
            "the target is never echoed: {message}"
        );
        assert!(
            matches!(
                fx.store.head(name).await,
                Err(StorageError::NotAnObject { .. })
            ),
            "head refuses {name} too"
        );
    }
    // Hundreds of callbacks pointing at a pipe at once hold no thread: every read is refused
    // promptly, and a real object is read alongside them.
    std::fs::write(job.join("real.json"), b"{}").expect("real");
    let store = fx.store.clone();
    let reads = (0..600).map(|_| {
        let store = store.clone();
        async move { store.read_bytes("job/pipe.json", 1024).await }
    });
    let all = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        futures::future::join_all(reads),
    )
    .await
    .expect("600 reads of a pipe finish");
    assert!(
        all.iter()
            .all(|r| matches!(r, Err(StorageError::NotAnObject { .. })))
    );
    assert_eq!(
        fx.store
            .read_bytes("job/real.json", 1024)
            .await
            .expect("real"),
        Bytes::from_static(b"{}")
    );
}
