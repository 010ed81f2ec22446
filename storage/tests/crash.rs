//! A writer killed with SIGKILL loses nothing it acknowledged and leaves nothing partial.
//!
//! The test runs itself again as the writer (this test binary, with `RUNWAY_CRASH_WRITER`
//! naming the store's directory): the child writes objects of varied sizes on many concurrent
//! tasks, in memory and streamed, and prints a line for each write the store acknowledged. The
//! parent kills it at a moment drawn at random while writes are in flight, then opens the
//! store afresh and checks that every acknowledged object is there with exactly its bytes, and
//! that every object there at all (acknowledged or not) is complete: its bytes are what the
//! writer meant for that key. Temporary files may remain; they are never objects.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use runway_storage::{Body, ObjectKey, OpenOptions};
use sha2::{Digest, Sha256};

const WRITER: &str = "RUNWAY_CRASH_WRITER";
const WRITERS: usize = 16;
const PER_WRITER: usize = 400;

/// The bytes meant for object `n`: sizes from a few bytes to 256 KiB, content derived from `n`.
fn content(n: usize) -> Vec<u8> {
    let len = match n % 4 {
        0 => 17,
        1 => 4_096,
        2 => 70_000,
        _ => 256 * 1024,
    };
    let seed = Sha256::digest(n.to_le_bytes());
    (0..len).map(|i| seed[i % 32] ^ (i as u8)).collect()
}

fn key(n: usize) -> ObjectKey {
    ObjectKey::parse(format!("runs/crash/{}/obj-{n}.bin", n % 37)).expect("valid key")
}

/// The child: writes until it is killed.
async fn write_until_killed(dir: &str) {
    let store = runway_storage::open(&format!("file://{dir}"), &OpenOptions::default())
        .await
        .expect("store opens");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let n = w * PER_WRITER + i;
                let bytes = Bytes::from(content(n));
                // Every other object is streamed in 8 KiB chunks, as uploads are.
                let body = if n.is_multiple_of(2) {
                    Body::from(bytes)
                } else {
                    let chunks: Vec<std::io::Result<Bytes>> = bytes
                        .chunks(8 * 1024)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    Body::from_stream(futures::stream::iter(chunks))
                };
                store.put_new(&key(n), body).await.expect("write");
                println!("acked {n}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    println!("done");
}

#[tokio::test]
async fn acknowledged_objects_survive_a_kill_9_of_the_writer() {
    if let Ok(dir) = std::env::var(WRITER) {
        write_until_killed(&dir).await;
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "acknowledged_objects_survive_a_kill_9_of_the_writer",
            "--nocapture",
        ])
        .env(WRITER, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("writer starts");
    // Kill after a random number of acknowledgements, while the other writers are mid-write.
    let kill_after = 50 + (rand::random::<u64>() % 1_500) as usize;
    let mut acked = Vec::new();
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("acked ") {
            acked.push(n.parse::<usize>().expect("number"));
            if acked.len() == kill_after {
                child.kill().expect("SIGKILL");
                break;
            }
        }
        assert_ne!(
            line, "done",
            "the writer finished before it could be killed"
        );
    }
    let status = child.wait().expect("reaped");
    assert!(!status.success(), "the writer was killed: {status}");

    let store = runway_storage::open(
        &format!("file://{}", dir.path().display()),
        &OpenOptions::default(),
    )
    .await
    .expect("store reopens");
    for &n in &acked {
        let bytes = store
            .read_bytes(&key(n).to_string(), 2 << 20)
            .await
            .unwrap_or_else(|e| panic!("acknowledged object {n} is gone: {e}"));
        assert!(
            bytes.as_ref() == content(n).as_slice(),
            "acknowledged object {n} differs"
        );
    }
    let present = store.list("runs/crash/").await.expect("list");
    for key in &present {
        let name = key.to_string();
        let n: usize = name
            .rsplit_once("obj-")
            .and_then(|(_, rest)| rest.strip_suffix(".bin"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected object {name}"));
        let bytes = store.read_bytes(&name, 2 << 20).await.expect("readable");
        assert!(
            bytes.as_ref() == content(n).as_slice(),
            "{name} is partial or wrong ({} bytes)",
            bytes.len()
        );
    }
    assert!(
        present.len() >= acked.len(),
        "{} objects listed, {} acknowledged",
        present.len(),
        acked.len()
    );
    println!(
        "killed after {} acknowledged writes: all {} there and whole; {} objects present in all",
        acked.len(),
        acked.len(),
        present.len()
    );
    // The kill lands while writes are in flight, not after the last one.
    assert!(acked.len() < WRITERS * PER_WRITER);
}
