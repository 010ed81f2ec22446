//! The fuzz targets of the parsers that read hostile input, as plain functions of the bytes.
//!
//! Each target feeds the bytes to the real code and checks what must hold whatever they are:
//! no panic, and
//!
//! - [`input_envelope`], [`output_envelope`]: an envelope that parses serializes, and parses back
//!   to the same envelope; hashing it does not panic;
//! - [`callback_payload`]: it parses or is refused;
//! - [`create_request_json`], [`create_request_multipart`]: `POST /v1/runs` through the launcher's
//!   real router (a SQLite store, `file://` storage) answers, and never with a 5xx;
//! - [`token`]: the verifier's first step (header and unverified issuer) and the JWKS reader
//!   answer.
//!
//! `fuzz/` wraps each in a `libfuzzer` target for coverage-guided runs (nightly); the suite
//! replays each target's seed corpus (`fuzz/corpus/<target>`) with deterministic mutations on
//! stable (`tests/replay.rs`).

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, header};
use runway_contract::{CallbackPayload, InputEnvelope, OutputEnvelope};
use tower::ServiceExt;

/// One fuzz target: the bytes in, a panic if something that must hold did not.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("input_envelope", input_envelope),
    ("output_envelope", output_envelope),
    ("callback_payload", callback_payload),
    ("create_request_json", create_request_json),
    ("create_request_multipart", create_request_multipart),
    ("token", token),
];

/// The boundary of the multipart bodies [`create_request_multipart`] is given.
pub const MULTIPART_BOUNDARY: &str = "runwayfuzzboundary";

/// Parses an input envelope; one that parses must round-trip.
pub fn input_envelope(data: &[u8]) {
    let Ok(envelope) = InputEnvelope::from_json(data) else {
        return;
    };
    let bytes = envelope
        .to_json()
        .expect("an envelope that parsed serializes");
    let again = InputEnvelope::from_json(&bytes).expect("and parses back");
    assert_eq!(again, envelope, "an input envelope survives a round trip");
    let _ = envelope.canonical_sha256();
}

/// Parses an output envelope; one that parses must round-trip.
pub fn output_envelope(data: &[u8]) {
    let Ok(envelope) = OutputEnvelope::from_json(data) else {
        return;
    };
    let bytes = envelope
        .to_json()
        .expect("an envelope that parsed serializes");
    let again = OutputEnvelope::from_json(&bytes).expect("and parses back");
    assert_eq!(again, envelope, "an output envelope survives a round trip");
}

/// Parses a callback payload.
pub fn callback_payload(data: &[u8]) {
    let _ = CallbackPayload::from_json(data);
}

/// `POST /v1/runs` with a JSON body.
pub fn create_request_json(data: &[u8]) {
    post_run("application/json", data);
}

/// `POST /v1/runs` with a multipart body (boundary [`MULTIPART_BOUNDARY`]).
pub fn create_request_multipart(data: &[u8]) {
    post_run(&multipart_content_type(), data);
}

/// The content type [`create_request_multipart`] sends.
pub fn multipart_content_type() -> String {
    format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}")
}

/// The first step of token verification, and the JWKS reader, on the same bytes.
pub fn token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = runway_identity::read_unverified(text);
    }
    let _ = runway_identity::read_jwks(data);
}

/// A launcher router over a SQLite store and `file://` storage, built once per process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let router = runtime.block_on(async {
            let store = runway_runs::connect(&url).await.expect("store");
            let objects = format!("file://{}", dir.path().join("objects").display());
            let storage = runway_storage::open(&objects, &Default::default())
                .await
                .expect("storage");
            let state = runway_launcher::AppState::new(
                runway_service::health::Dependencies { store, storage },
                runway_launcher::Registry::local_defaults(),
                runway_identity::nonce::NonceKey::generate(),
                runway_contract::HttpUrl::parse("http://127.0.0.1:8081/v1/callbacks".to_owned())
                    .expect("url"),
            );
            runway_launcher::router(state)
        });
        Harness {
            runtime,
            router,
            _dir: dir,
        }
    })
}

/// Posts `data` as a run-creation request with this content type; the status. Panics on a 5xx.
pub fn post_run(content_type: &str, data: &[u8]) -> u16 {
    let harness = harness();
    let request = Request::post("/v1/runs")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(data.to_vec()))
        .expect("a request");
    let response = harness
        .runtime
        .block_on(harness.router.clone().oneshot(request))
        .expect("the router answers");
    assert!(
        !response.status().is_server_error(),
        "POST /v1/runs answered {} to hostile input",
        response.status()
    );
    response.status().as_u16()
}
