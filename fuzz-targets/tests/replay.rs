//! The suite's short run of every fuzz target, on stable: each seed of `fuzz/corpus/<target>`
//! (which must be a valid document, so that mutations start from something meaningful), then
//! deterministic mutations of it: bytes flipped, inserted, deleted, repeated, truncated. The
//! coverage-guided runs are `scripts/fuzz.sh` (nightly).

use std::path::{Path, PathBuf};

use runway_contract::{CallbackPayload, InputEnvelope, OutputEnvelope};
use runway_fuzz_targets as targets;

/// Mutations per seed.
const MUTATIONS: usize = 400;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("seed");
            (path, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// A small deterministic generator (xorshift64*), so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes of JSON, multipart and JWTs.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"-1",
    b"1e999",
    b"\\u0000",
    b"\r\n",
    b"--",
    b".",
    b"=",
    b"0",
    b"18446744073709551616",
    b"\xff",
];

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(64)).min(data.len());
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            4 => data.truncate(at),
            _ => {
                let byte = rng.next() as u8;
                data.insert(at.min(data.len()), byte);
            }
        }
    }
    data
}

fn replay(target: &str, run: fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for (path, seed) in corpus(target) {
        run(&seed);
        for _ in 0..MUTATIONS {
            let input = mutate(&seed, &mut rng);
            run(&input);
        }
        let _ = path;
    }
}

#[test]
fn the_seeds_are_valid_documents() {
    for (path, seed) in corpus("input_envelope") {
        InputEnvelope::from_json(&seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (path, seed) in corpus("output_envelope") {
        OutputEnvelope::from_json(&seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (path, seed) in corpus("callback_payload") {
        CallbackPayload::from_json(&seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (path, seed) in corpus("create_request_json") {
        assert_eq!(
            targets::post_run("application/json", &seed),
            201,
            "{}",
            path.display()
        );
    }
    for (path, seed) in corpus("create_request_multipart") {
        assert_eq!(
            targets::post_run(&targets::multipart_content_type(), &seed),
            201,
            "{}",
            path.display()
        );
    }
    let jwt = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/token/jwt.txt"),
    )
    .expect("jwt seed");
    assert_eq!(
        runway_identity::read_unverified(&jwt).expect("reads").kid,
        "k1"
    );
    let jwks =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/token/jwks.json"))
            .expect("jwks seed");
    assert_eq!(runway_identity::read_jwks(&jwks), Ok(1));
}

#[test]
fn every_target_survives_its_mutated_corpus() {
    for (name, run) in targets::TARGETS {
        replay(name, *run);
    }
}
