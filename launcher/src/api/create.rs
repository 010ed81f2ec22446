//! `POST /v1/runs`: accept a run, store its files, then the run and its first attempt.
//!
//! Two encodings of one request:
//! - `application/json`, files inline as `content_base64` (the whole body at most
//!   [`MAX_JSON_BODY_BYTES`]);
//! - `multipart/form-data` for large files: a first part `request` (the same JSON, each file
//!   naming the form `part` that carries its bytes), then the file parts, each streamed to
//!   object storage as it arrives.
//!
//! Order of work: everything that can be checked without I/O is checked first — the body's
//! shape (nesting depth and value count, counted without building anything), validator, ids,
//! typed inputs, names, MIME types, required ports, and the size the first attempt's input
//! envelope would have (built with every not-yet-known value at its longest) — so a bad request
//! stores nothing. Then the files go create-only into a folder of this request's own
//! (`files/<upload>/<index>-<name>`, the storage layout), and only then is the run stored with
//! its first attempt, in one transaction (no storage I/O under a database lock). If anything
//! after the first upload refuses the request (a bad form part, a storage failure, a twin that
//! committed first), the request's uploads are removed before it is answered — or, if the client
//! goes away mid-request, by a task started when the request is dropped. Only a crash between
//! upload and commit, or a store error that leaves unknown whether the run was stored (its
//! uploads are then kept), can leave an upload folder no run refers to.
//!
//! Idempotency: with an `Idempotency-Key`, the run id is derived from the organization and the
//! key, so a retry finds the earlier run by id before uploading anything. The fingerprint is the
//! SHA-256 of the canonical (RFC 8785) form of what the request asks for, each file as its
//! metadata and digest: whitespace, key order and the encoding (JSON or multipart) do not
//! change it, so it tells a retry (200, same run) from a different request (422). The store's
//! unique `(org, idempotency_key)` index settles races; the loser's uploads are removed.
//!
//! [`store_run`] is the one place a run is stored with its first attempt; a retry of an ended
//! run (`retry.rs`) stages copies of its files with [`Staged::copy`] and stores through it too.

use std::collections::{HashMap, HashSet};
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use runway_contract::input::MAX_INPUT_ENVELOPE_BYTES;
use runway_contract::shape::{ShapeError, ShapeLimits, check_shape};
use runway_contract::{
    ContractError, MimeType, OrganizationInfo, PortKey, SafeName, Sha256Hex, StorageUri,
    StorageVersion, ValidatorInfo, ValidatorInputs, WorkflowInfo,
};
use runway_runs::{
    AttemptId, CreateOutcome, Idempotency, NewAttempt, NewRun, RunId, RunWithAttempts, StoreError,
};
use runway_storage::layout::{RunPaths, UploadPaths};
use runway_storage::{Body, ObjectKey, ObjectStore, PutReceipt, StorageError};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::error::{ApiError, ErrorBody, Unauthenticated};
use super::view::RunView;
use crate::AppState;
use crate::auth::Caller;
use crate::envelope::{self, EnvelopeAttempt};
use crate::registry::{Registry, ValidatorConfig, is_valid_id};
use crate::spec::{ResourceMeta, RunSpec, RunTrace, StoredFile, default_role, required_port};

/// Largest JSON request body (inline files included), in bytes: 16 MiB.
pub const MAX_JSON_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest total of the file parts of one multipart request, in bytes: 4 GiB.
pub const MAX_MULTIPART_BODY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Largest `request` part of a multipart request, in bytes.
const MAX_REQUEST_PART_BYTES: usize = 1024 * 1024;
/// Most files per run.
const MAX_FILES: usize = 100;

/// Most of one request's files stored at once: the usual few all go together, while a request
/// of a hundred files does not hold a hundred connections or blocking threads.
const STORES_AT_ONCE: usize = 8;
/// Most tags per run, and the longest tag.
const MAX_TAGS: usize = 50;
const MAX_TAG_CHARS: usize = 128;
/// Longest file name, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// Longest free text (names, roles), in characters.
const MAX_TEXT_CHARS: usize = 1024;
/// The form part carrying the JSON request.
const REQUEST_PART: &str = "request";

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Wire shapes (the edge only). Their `///` comments are the API's documentation (the schemas of
// `GET /openapi.json`); the checks themselves are in `check`.

/// A run to start: the JSON body, or the multipart body's `request` part. The JSON body is at
/// most 16 MiB. Unknown fields are refused.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRunRequest {
    /// A validator id from `GET /v1/validators`.
    validator: String,
    org: OrgRequest,
    workflow: WorkflowRequest,
    /// The typed inputs of the validator's type (required for ENERGYPLUS and FMU; e.g.
    /// `timestep_per_hour` 1–60 for ENERGYPLUS). Stored with defaults filled in.
    // Kept as text until the validator's type is known, then parsed straight into its typed
    // inputs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    inputs: Option<Box<RawValue>>,
    /// The input files: inline as `content_base64` in a JSON body, or each naming the form
    /// `part` that carries its bytes in a multipart body.
    #[serde(default)]
    #[schema(max_items = 100)]
    files: Vec<FileRequest>,
    /// Free tags, each 1–128 characters.
    #[serde(default)]
    #[schema(max_items = 50)]
    tags: Vec<String>,
}

/// The organization the run is for (an API key's own; another is 403 `wrong_org`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OrgRequest {
    /// 1–128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    id: String,
    /// Human-readable, for logs.
    #[schema(max_length = 1024)]
    name: String,
}

/// The workflow step the run executes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WorkflowRequest {
    /// 1–128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    id: String,
    /// 1–128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    step_id: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    step_name: Option<String>,
}

/// One input file: exactly one of `content_base64` (JSON bodies) and `part` (multipart bodies).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = FileUpload)]
#[serde(deny_unknown_fields)]
struct FileRequest {
    /// A safe leaf name: no `/`, `\`, NUL or control characters, not `.` or `..`; unique
    /// within the run. It is stored as `<index>-<name>` (its 0-based position in `files`), which
    /// must fit a file name's 255 bytes: the first file's name may have 253 bytes.
    #[schema(max_length = 255)]
    name: String,
    /// One of the contract's MIME types.
    #[schema(value_type = MimeType)]
    mime_type: String,
    /// The file port it fills; unique within the run.
    #[schema(min_length = 1, max_length = 255)]
    port_key: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    role: Option<String>,
    /// Makes the file a resource file of this type (e.g. `energyplus_weather`).
    #[serde(default)]
    resource_type: Option<String>,
    /// The resource's id (default: the file name); only with `resource_type`.
    #[serde(default)]
    resource_id: Option<String>,
    /// The file's bytes, base64 (JSON bodies only).
    #[serde(default)]
    #[schema(content_encoding = "base64")]
    content_base64: Option<String>,
    /// The form part carrying this file's bytes (multipart bodies only; not `request`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    part: Option<String>,
}

/// The multipart body's schema: a `request` part (a [`CreateRunRequest`], as JSON), then one part
/// per file under the name its `part` gives — names OpenAPI can only describe as "any other
/// property", so this schema is written out rather than derived (the handler reads the parts as
/// a stream, in order, and never into a struct).
#[derive(Debug)]
struct CreateRunForm;

impl utoipa::PartialSchema for CreateRunForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .description(Some(
                "The first part must be `request`; then one part per file, named by that file's \
                 `part`, streamed to storage. The file parts may total at most 4 GiB; the \
                 `request` part at most 1 MiB.",
            ))
            .property(
                REQUEST_PART,
                utoipa::openapi::schema::RefBuilder::new()
                    .ref_location_from_schema_name(<CreateRunRequest as utoipa::ToSchema>::name())
                    .description(Some(
                        "The request, as JSON; each file names the part carrying its bytes.",
                    )),
            )
            .required(REQUEST_PART)
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/octet-stream")
                    .description(Some("A file's bytes, in the part its `part` names.")),
            ))
            .into()
    }
}

impl utoipa::ToSchema for CreateRunForm {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema as _;
        schemas.push((
            <CreateRunRequest as utoipa::ToSchema>::name().into_owned(),
            CreateRunRequest::schema(),
        ));
        <CreateRunRequest as utoipa::ToSchema>::schemas(schemas);
    }
}

// ---------------------------------------------------------------------------------------------
// A checked request.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Multipart,
}

/// A request that passed every check that needs no I/O.
#[derive(Debug)]
struct Checked {
    validator: ValidatorConfig,
    org: OrganizationInfo,
    workflow: WorkflowInfo,
    inputs: ValidatorInputs,
    files: Vec<FileMeta>,
    tags: Vec<String>,
    /// The trace the run belongs to (`spec::trace_for` the request).
    trace: Option<RunTrace>,
}

/// One declared file, with where its bytes come from.
#[derive(Debug)]
struct FileMeta {
    name: SafeName,
    mime_type: MimeType,
    port_key: PortKey,
    role: Option<String>,
    resource: Option<ResourceMeta>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Inline(Bytes),
    Part(String),
}

/// What was learned about one file's bytes.
#[derive(Debug)]
struct Received {
    digest: FileDigest,
    /// `None` when the bytes were only hashed (a replay needs no upload).
    receipt: Option<PutReceipt>,
}

// ---------------------------------------------------------------------------------------------
// The handler.

/// Start a run.
///
/// Checks everything that needs no I/O first (validator, ids, typed inputs, file names, MIME
/// types, required file ports, the size of the first input envelope), so a bad request stores
/// nothing. Then stores the files create-only under
/// `runs/<org>/<run>/files/<upload>/<index>-<name>`, then the run and its first attempt in one
/// transaction, and wakes the dispatcher. A request refused after its first upload has its
/// uploads removed before it is answered.
#[utoipa::path(
    post,
    path = "/v1/runs",
    operation_id = "createRun",
    tag = "runs",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, description = "1–255 printable ASCII characters, unique per organization. A retry with the same key and the same request (what it asks for: the JSON body's fields, or the `request` part and each file's SHA-256) returns the same run with 200 and uploads and launches nothing; the same key with a different request is a 422 `idempotency_key_reused`."),
    ),
    request_body(
        description = "The run to start, as JSON (files inline, base64) or as multipart/form-data (large files streamed).",
        content(
            (CreateRunRequest = "application/json"),
            (CreateRunForm = "multipart/form-data", encoding(("request" = (content_type = "application/json")))),
        ),
    ),
    responses(
        (status = 201, description = "Created; `Location` is `/v1/runs/<id>`.", body = RunView, headers(("Location" = String, description = "`/v1/runs/<id>`."))),
        (status = 200, description = "A retry of an earlier request with the same Idempotency-Key: the existing run.", body = RunView, headers(("Location" = String, description = "`/v1/runs/<id>`."))),
        (status = 400, description = "Malformed: `invalid_json`, `invalid_request`, `unknown_validator`, `invalid_id`, `invalid_file` (name, MIME type, port, base64, part), `invalid_multipart`, `invalid_idempotency_key`, `invalid_body`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "`wrong_org`: an API key's request for another org.", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the JSON body is over 16 MiB (send large files as multipart), the `request` part over 1 MiB, or the file parts over 4 GiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: neither application/json nor multipart/form-data.", body = ErrorBody),
        (status = 422, description = "`invalid_inputs` (names the field), `missing_file` (a required file port is empty: `primary_model` for ENERGYPLUS, `fmu_model` for FMU), `idempotency_key_reused`.", body = ErrorBody),
        (status = 500, description = "`internal`: logged with the request id.", body = ErrorBody),
    ),
)]
pub(crate) async fn create_run(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = idempotency_key(request.headers())?;
    let trace = crate::spec::trace_for(request.headers());
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Open);
    match encoding(request.headers())? {
        Encoding::Json => from_json(&state, &caller, key, trace, request).await,
        Encoding::Multipart => from_multipart(&state, &caller, key, trace, request).await,
    }
}

async fn from_json(
    state: &AppState,
    caller: &Caller,
    key: Option<String>,
    trace: RunTrace,
    request: Request,
) -> Result<Response, ApiError> {
    let body = read_json_body(request).await?;
    let parsed = parse_request(&body, "the request body")?;
    let mut checked = check(&state.registry, parsed, Encoding::Json)?;
    checked.trace = Some(trace);
    caller.check_org(&checked.org.id)?;
    drop(body);
    let run_id = run_id_for(&checked.org.id, key.as_deref());
    let digests: Vec<FileDigest> = checked
        .files
        .iter()
        .map(|file| match &file.source {
            Source::Inline(bytes) => FileDigest::of(bytes),
            Source::Part(_) => unreachable!("checked JSON requests carry inline files only"),
        })
        .collect();
    let fingerprint = fingerprint(&checked, &digests)?;
    if let Some(key) = &key
        && let Some(existing) = find_existing(state, run_id).await?
    {
        return replay(existing, key, &fingerprint);
    }
    let mut staged = Staged::new(state, &checked.org.id, run_id)?;
    check_envelope_size(state, &checked, run_id, &staged.upload)?;
    let outcome = async {
        let bodies = checked.files.iter().map(|file| match &file.source {
            Source::Inline(bytes) => (&file.name, Body::Bytes(bytes.clone())),
            Source::Part(_) => unreachable!("checked JSON requests carry inline files only"),
        });
        let receipts = staged.put_all(bodies).await?;
        let received = receipts
            .into_iter()
            .zip(&digests)
            .map(|(receipt, digest)| Received {
                digest: digest.clone(),
                receipt: Some(receipt),
            })
            .collect();
        commit(
            state,
            checked,
            run_id,
            received,
            &mut staged,
            key,
            fingerprint,
        )
        .await
    }
    .await;
    staged.settle().await;
    outcome
}

async fn from_multipart(
    state: &AppState,
    caller: &Caller,
    key: Option<String>,
    trace: RunTrace,
    request: Request,
) -> Result<Response, ApiError> {
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::bad_request(
            "invalid_multipart",
            format!("the multipart body cannot be read: {}", e.body_text()),
        )
    })?;

    // The `request` part comes first, so that everything is checked before any upload.
    let first = multipart.next_field().await.map_err(multipart_error)?;
    let Some(mut first) = first else {
        return Err(ApiError::bad_request(
            "invalid_multipart",
            "the multipart body is empty; its first part must be `request`, the JSON request",
        ));
    };
    if first.name() != Some(REQUEST_PART) {
        return Err(ApiError::bad_request(
            "invalid_multipart",
            format!(
                "the first form part is {:?}; it must be `request`, the JSON request, \
                 followed by the file parts",
                first.name().unwrap_or("")
            ),
        ));
    }
    let mut request_bytes = BytesMut::new();
    while let Some(chunk) = first.chunk().await.map_err(multipart_error)? {
        if request_bytes.len() + chunk.len() > MAX_REQUEST_PART_BYTES {
            return Err(ApiError::PayloadTooLarge {
                message: format!(
                    "the `request` form part is larger than {} MiB",
                    MAX_REQUEST_PART_BYTES / MIB
                ),
            });
        }
        request_bytes.extend_from_slice(&chunk);
    }
    drop(first);
    let parsed = parse_request(&request_bytes, "the `request` form part")?;
    let mut checked = check(&state.registry, parsed, Encoding::Multipart)?;
    checked.trace = Some(trace);
    // Before any file is uploaded: a refused request leaves nothing behind.
    caller.check_org(&checked.org.id)?;
    let run_id = run_id_for(&checked.org.id, key.as_deref());
    let existing = match &key {
        Some(_) => find_existing(state, run_id).await?,
        None => None,
    };
    let mut staged = Staged::new(state, &checked.org.id, run_id)?;
    if existing.is_none() {
        check_envelope_size(state, &checked, run_id, &staged.upload)?;
    }

    let outcome = async {
        let parts: HashMap<&str, usize> = checked
            .files
            .iter()
            .enumerate()
            .map(|(index, file)| match &file.source {
                Source::Part(part) => (part.as_str(), index),
                Source::Inline(_) => unreachable!("checked multipart requests name parts only"),
            })
            .collect();
        let mut received: Vec<Option<Received>> = checked.files.iter().map(|_| None).collect();
        let mut total = 0u64;
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            let part = field.name().unwrap_or("").to_owned();
            let Some(&index) = parts.get(part.as_str()) else {
                return Err(ApiError::bad_request(
                    "invalid_multipart",
                    format!(
                        "form part {part:?} is not the `part` of any file listed in the \
                         `request` part"
                    ),
                ));
            };
            if received[index].is_some() {
                return Err(ApiError::bad_request(
                    "invalid_multipart",
                    format!("form part {part:?} appears twice"),
                ));
            }
            let got = if existing.is_some() {
                // A replay: hash the bytes to compare fingerprints, store nothing.
                let digest = pump(&mut field, &mut total, None).await?;
                Received {
                    digest,
                    receipt: None,
                }
            } else {
                staged
                    .put_part(index, &checked.files[index].name, &mut field, &mut total)
                    .await?
            };
            received[index] = Some(got);
        }
        let received = received
            .into_iter()
            .zip(&checked.files)
            .map(|(got, file)| {
                got.ok_or_else(|| {
                    let Source::Part(part) = &file.source else {
                        unreachable!("checked multipart requests name parts only")
                    };
                    ApiError::bad_request(
                        "invalid_multipart",
                        format!(
                            "form part {part:?} (the bytes of file {:?}) is missing",
                            file.name.as_str()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let digests: Vec<FileDigest> = received.iter().map(|r| r.digest.clone()).collect();
        let fingerprint = fingerprint(&checked, &digests)?;
        if let (Some(key), Some(existing)) = (&key, existing) {
            return replay(existing, key, &fingerprint);
        }
        commit(
            state,
            checked,
            run_id,
            received,
            &mut staged,
            key,
            fingerprint,
        )
        .await
    }
    .await;
    staged.settle().await;
    outcome
}

/// Stores the run and its first attempt, then wakes the dispatcher. Only a run that was
/// created keeps the staged uploads.
async fn commit(
    state: &AppState,
    checked: Checked,
    run_id: RunId,
    received: Vec<Received>,
    staged: &mut Staged,
    key: Option<String>,
    fingerprint: String,
) -> Result<Response, ApiError> {
    let files = checked
        .files
        .iter()
        .zip(received)
        .map(|(file, got)| stored_file(file, got))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = spec_of(&checked, files);
    let idempotency = key.map(|key| Idempotency {
        key,
        request_sha256: fingerprint,
    });
    let stored = store_run(state, &checked.validator, spec, run_id, staged, idempotency).await?;
    respond(stored.status(), &stored.run)
}

/// A run that was stored by a create or a retry, or found already stored under the same
/// idempotency key.
#[derive(Debug)]
pub struct StoredRun {
    /// The run, with its attempts.
    pub run: RunWithAttempts,
    /// Whether this request created it (else it is an earlier request's, found by its key).
    pub created: bool,
}

impl StoredRun {
    /// 201 for a run this request created, 200 for one it found.
    pub fn status(&self) -> StatusCode {
        if self.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    }
}

/// Stores a new run of `validator` asking for `spec` (whose files `staged` holds) with its
/// first attempt, in one transaction, then wakes the dispatcher. The one place runs are
/// created, for `POST /v1/runs` and for retries. The staged files are kept only if the run was
/// created (or may have been: a store error leaves that unknown); with `idempotency`, a twin
/// that committed first answers instead, and a different request under the key is a 422.
pub(super) async fn store_run(
    state: &AppState,
    validator: &ValidatorConfig,
    spec: RunSpec,
    run_id: RunId,
    staged: &mut Staged,
    idempotency: Option<Idempotency>,
) -> Result<StoredRun, ApiError> {
    let now = state.clock.now();
    let attempt_id = AttemptId::new();
    let new = NewRun {
        id: run_id,
        created_at: now,
        validator_id: validator.id.clone(),
        validator_type: validator.kind.as_str().to_owned(),
        org_id: spec.org.id.clone(),
        workflow_id: spec.workflow.id.clone(),
        spec: spec.to_json(),
        retry: validator.retry_policy(),
        idempotency: idempotency.clone(),
        first_attempt: NewAttempt {
            id: attempt_id,
            callback_nonce_sha256: state
                .nonce_key
                .commitment_for(&attempt_id.to_string())
                .to_string(),
            caller_identity: validator.service_account.clone(),
        },
    };
    let store = &state.deps.store;
    // Until the store answers, whether the run will refer to the uploads is unknown: a request
    // dropped here (the client went away) may still be committed, with the writes it was
    // grouped with. So they stay unless the store says the run was not created.
    staged.keep();
    match store.create_run(new).await {
        Ok(CreateOutcome::Created(run)) => {
            tracing::info!(run.id = %run_id, attempt.id = %attempt_id, validator = %validator.id, "run created");
            state.wake.notify_one();
            Ok(StoredRun { run, created: true })
        }
        // A keyed twin committed first; this request's uploads are not needed.
        Ok(CreateOutcome::Existing(run)) => {
            staged.release();
            Ok(StoredRun {
                run,
                created: false,
            })
        }
        Err(StoreError::IdempotencyMismatch { key, .. }) => {
            staged.release();
            Err(key_reused(&key))
        }
        Err(e) => {
            // Whether the run was stored is unknown (the database may have committed and lost
            // the answer): it may refer to these uploads, so they stay. An orphaned upload is
            // the price; a run without its files would be worse.
            // Two identical keyed requests derive the same run id; the loser of that race may
            // hit the primary key rather than the idempotency index. The winner's run answers.
            if let Some(idem) = &idempotency
                && let Ok(Some(existing)) = store.get_run(run_id).await
            {
                return replayed(existing, &idem.key, &idem.request_sha256).map(|run| StoredRun {
                    run,
                    created: false,
                });
            }
            Err(anyhow::Error::new(e)
                .context(format!("storing run {run_id}"))
                .into())
        }
    }
}

/// The run spec of a checked request whose files are stored as `files`.
fn spec_of(checked: &Checked, files: Vec<StoredFile>) -> RunSpec {
    let validator = &checked.validator;
    RunSpec {
        validator: ValidatorInfo {
            id: validator.id.clone(),
            kind: validator.kind,
            version: validator.version.clone(),
        },
        org: checked.org.clone(),
        workflow: checked.workflow.clone(),
        inputs: checked.inputs.clone(),
        files,
        timeout_seconds: validator.timeout_seconds,
        tags: checked.tags.clone(),
        retry_of: None,
        trace_id: checked.trace.as_ref().map(|t| t.trace_id.clone()),
        span_id: checked.trace.as_ref().and_then(|t| t.span_id.clone()),
    }
}

/// Refuses, before anything is uploaded, a run whose input envelope would be over the limit a
/// container accepts: the envelope of its first attempt is built with every value that is not
/// known yet (sizes, digests, versions) at its longest, so the real one is never larger.
fn check_envelope_size(
    state: &AppState,
    checked: &Checked,
    run_id: RunId,
    upload: &UploadPaths,
) -> Result<(), ApiError> {
    let storage = state.deps.storage.as_ref();
    let longest_digest = Sha256Hex::parse("f".repeat(64)).expect("64 hex digits");
    let longest_version = StorageVersion::for_local_digest(&longest_digest);
    let files = checked
        .files
        .iter()
        .enumerate()
        .map(|(index, file)| {
            let key = upload
                .input_file(index, file.name.as_str())
                .context("building a file's object key from checked parts")?;
            Ok(StoredFile {
                name: file.name.clone(),
                mime_type: file.mime_type,
                role: file.role.clone(),
                port_key: file.port_key.clone(),
                uri: StorageUri::parse(storage.uri_for(&key))
                    .map_err(|e| anyhow!("object storage URI {e}"))?,
                size_bytes: u64::MAX,
                sha256: longest_digest.clone(),
                storage_version: longest_version.clone(),
                resource: file.resource.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = spec_of(checked, files);
    let attempt_id = AttemptId::new();
    let paths = RunPaths::new(&checked.org.id, run_id.as_uuid())
        .context("the run's storage layout")?
        .attempt(attempt_id.as_uuid());
    let attempt = EnvelopeAttempt {
        id: attempt_id,
        // The store's callback ids are UUIDs: this one is as long.
        callback_id: "00000000-0000-0000-0000-000000000000",
        paths,
    };
    let envelope = envelope::input_envelope(
        run_id,
        &spec,
        &attempt,
        storage,
        &state.nonce_key,
        &state.callback_url,
    )?;
    let size = serde_json::to_vec(&envelope)
        .context("serializing an input envelope")?
        .len();
    if size > MAX_INPUT_ENVELOPE_BYTES {
        return Err(ApiError::PayloadTooLarge {
            message: format!(
                "this run's input envelope would be about {} KiB, over the {} KiB a validator \
                 container accepts; send less in `inputs` (or fewer, shorter-named files)",
                size / 1024,
                MAX_INPUT_ENVELOPE_BYTES / 1024
            ),
        });
    }
    Ok(())
}

/// The idempotency fingerprint of a request: SHA-256 of the RFC 8785 canonical JSON of what it
/// asks for, with each file as its metadata and digest. Whitespace, key order and the encoding
/// (JSON or multipart) do not change it; any difference in what is asked for does.
fn fingerprint(checked: &Checked, digests: &[FileDigest]) -> Result<String, ApiError> {
    let files: Vec<Value> = checked
        .files
        .iter()
        .zip(digests)
        .map(|(file, digest)| {
            json!({
                "name": file.name,
                "mime_type": file.mime_type,
                "port_key": file.port_key,
                "role": file.role,
                "resource": file.resource,
                "sha256": digest.sha256,
                "size_bytes": digest.size_bytes,
            })
        })
        .collect();
    let request = json!({
        "validator": checked.validator.id,
        "org": checked.org,
        "workflow": checked.workflow,
        "inputs": serde_json::to_value(&checked.inputs).context("serializing checked inputs")?,
        "files": files,
        "tags": checked.tags,
    });
    let mut hasher = Sha256::new();
    hasher.update(b"runway create-run request v2\n");
    hasher.update(runway_contract::canonical::canonicalize(&request));
    Ok(hex::encode(hasher.finalize()))
}

pub(super) fn respond(status: StatusCode, run: &RunWithAttempts) -> Result<Response, ApiError> {
    let view = RunView::full(run)?.to_value();
    let location = HeaderValue::from_str(&format!("/v1/runs/{}", run.run.id))
        .context("a run id is a valid header value")?;
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

pub(super) async fn find_existing(
    state: &AppState,
    run_id: RunId,
) -> Result<Option<RunWithAttempts>, ApiError> {
    Ok(state
        .deps
        .store
        .get_run(run_id)
        .await
        .with_context(|| format!("looking up run {run_id} for an idempotency key"))?)
}

/// The answer to a keyed request whose run already exists: the run (200) if the request is the
/// same, else a refusal naming the key.
fn replay(existing: RunWithAttempts, key: &str, fingerprint: &str) -> Result<Response, ApiError> {
    respond(StatusCode::OK, &replayed(existing, key, fingerprint)?)
}

/// The run a keyed request finds already stored: it, if it was made by the same request (same
/// key and fingerprint), else a refusal naming the key.
pub(super) fn replayed(
    existing: RunWithAttempts,
    key: &str,
    fingerprint: &str,
) -> Result<RunWithAttempts, ApiError> {
    let same = existing.run.idempotency_key.as_deref() == Some(key)
        && existing.run.request_sha256.as_deref() == Some(fingerprint);
    if same {
        Ok(existing)
    } else {
        Err(key_reused(key))
    }
}

fn key_reused(key: &str) -> ApiError {
    ApiError::unprocessable(
        "idempotency_key_reused",
        format!(
            "Idempotency-Key {key:?} was already used for a different request; \
             use a new key for a new run"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Headers and bodies.

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
        )
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "the Idempotency-Key header appears more than once",
        ));
    }
    let text = value.to_str().map_err(|_| bad())?;
    let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if !(1..=255).contains(&text.len()) || !printable {
        return Err(bad());
    }
    Ok(Some(text.to_owned()))
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = raw.as_deref().map(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match essence.as_deref() {
        Some("application/json") => Ok(Encoding::Json),
        Some("multipart/form-data") => Ok(Encoding::Multipart),
        _ => Err(ApiError::UnsupportedMediaType {
            message: format!(
                "Content-Type {} is not accepted; send application/json (files inline as \
                 content_base64, at most {} MiB in all) or multipart/form-data (a `request` \
                 part, then one part per file)",
                raw.map_or_else(|| "(none)".to_owned(), |t| format!("{t:?}")),
                MAX_JSON_BODY_BYTES / MIB
            ),
        }),
    }
}

fn too_large_json() -> ApiError {
    ApiError::PayloadTooLarge {
        message: format!(
            "the JSON request body is larger than {} MiB; send large files as \
             multipart/form-data instead of inline content_base64",
            MAX_JSON_BODY_BYTES / MIB
        ),
    }
}

async fn read_json_body(request: Request) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JSON_BODY_BYTES as u64) {
        return Err(too_large_json());
    }
    let mut stream = request.into_body().into_data_stream();
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > MAX_JSON_BODY_BYTES {
            return Err(too_large_json());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn parse_request(bytes: &[u8], what: &str) -> Result<CreateRunRequest, ApiError> {
    // A cheap count first: a body of a few MiB with hundreds of thousands of keys is refused
    // before anything is built from it.
    match check_shape(bytes, ShapeLimits::DEFAULT) {
        Ok(()) | Err(ShapeError::Syntax(_)) => {}
        Err(limit) => {
            return Err(ApiError::bad_request(
                "too_complex",
                format!("{what} {limit}; inputs this large are not accepted"),
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: CreateRunRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request("invalid_json", format!("{what} is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request("invalid_request", format!("{what}: {inner}"))
        } else {
            ApiError::bad_request("invalid_request", format!("field {path}: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request("invalid_json", format!("{what} is not valid JSON: {e}"))
    })?;
    Ok(parsed)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            message: format!("the multipart body is too large: {}", e.body_text()),
        }
    } else {
        ApiError::bad_request(
            "invalid_multipart",
            format!("the multipart body is malformed: {}", e.body_text()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Checks that need no I/O.

fn check(
    registry: &Registry,
    request: CreateRunRequest,
    encoding: Encoding,
) -> Result<Checked, ApiError> {
    let validator = registry
        .get(&request.validator)
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_validator",
                format!(
                    "field validator: {:?} is not a validator of this launcher; \
                     GET /v1/validators lists them",
                    request.validator
                ),
            )
        })?
        .clone();
    check_id("org.id", &request.org.id)?;
    check_text("org.name", &request.org.name)?;
    check_id("workflow.id", &request.workflow.id)?;
    check_id("workflow.step_id", &request.workflow.step_id)?;
    if let Some(name) = &request.workflow.step_name {
        check_text("workflow.step_name", name)?;
    }

    let inputs = ValidatorInputs::parse_text(
        "inputs",
        validator.kind,
        request.inputs.as_deref().map(RawValue::get),
    )
    .map_err(|e| {
        let detail = match &e {
            ContractError::Invalid { path, message, .. } if !path.is_empty() => {
                format!("field {path}: {message}")
            }
            other => other.to_string(),
        };
        ApiError::unprocessable(
            "invalid_inputs",
            format!(
                "{detail} (validator {:?} takes {} inputs)",
                validator.id, validator.kind
            ),
        )
    })?;

    if request.files.len() > MAX_FILES {
        return Err(ApiError::bad_request(
            "invalid_file",
            format!(
                "field files: at most {MAX_FILES} files per run, got {}",
                request.files.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    let mut parts = HashSet::new();
    let mut files = Vec::with_capacity(request.files.len());
    for (index, file) in request.files.into_iter().enumerate() {
        let at = |field: &str| format!("files[{index}].{field}");
        let bad = |field: &str, why: String| {
            ApiError::bad_request("invalid_file", format!("field {}: {why}", at(field)))
        };
        let name = SafeName::parse(file.name.clone()).map_err(|e| bad("name", e))?;
        if file.name.len() > MAX_NAME_BYTES || file.name.chars().any(char::is_control) {
            return Err(bad(
                "name",
                format!(
                    "must be at most {MAX_NAME_BYTES} bytes without control characters: {:?}",
                    file.name
                ),
            ));
        }
        // Whether the storage layout can make a key of it (the ids do not matter).
        let stored_as = RunPaths::new(&request.org.id, uuid::Uuid::nil()).and_then(|run| {
            run.upload(uuid::Uuid::nil())
                .input_file(index, name.as_str())
        });
        if let Err(e) = stored_as {
            let why = match e {
                StorageError::InvalidKey { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(bad(
                "name",
                format!(
                    "{:?} cannot be stored as a file name (it is stored as `{index}-<name>`; {why})",
                    file.name
                ),
            ));
        }
        if !names.insert(file.name.clone()) {
            return Err(bad(
                "name",
                format!("{:?} is used by two files; names must be unique", file.name),
            ));
        }
        let mime_type = MimeType::from_str(&file.mime_type).map_err(|e| bad("mime_type", e))?;
        let port_key = PortKey::parse(file.port_key.clone()).map_err(|e| bad("port_key", e))?;
        if !ports.insert(file.port_key.clone()) {
            return Err(bad(
                "port_key",
                format!(
                    "{:?} is filled by two files; each port takes one file",
                    file.port_key
                ),
            ));
        }
        if let Some(role) = &file.role
            && role.chars().count() > MAX_TEXT_CHARS
        {
            return Err(bad(
                "role",
                format!("must be at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        let resource = match (file.resource_type, file.resource_id) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(bad(
                    "resource_id",
                    "is only for a resource file: add \"resource_type\" (e.g. \"energyplus_weather\")"
                        .to_owned(),
                ));
            }
            (Some(kind), id) => {
                let word = |s: &str| {
                    !s.is_empty()
                        && s.chars().count() <= MAX_TEXT_CHARS
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                };
                if !word(&kind) {
                    return Err(bad(
                        "resource_type",
                        format!("must be 1 to {MAX_TEXT_CHARS} letters, digits, '_', '-' or '.'"),
                    ));
                }
                let id = id.unwrap_or_else(|| file.name.clone());
                if !word(&id) {
                    return Err(bad(
                        "resource_id",
                        format!("must be 1 to {MAX_TEXT_CHARS} letters, digits, '_', '-' or '.'"),
                    ));
                }
                Some(ResourceMeta { id, kind })
            }
        };
        let source = match (encoding, file.content_base64, file.part) {
            (Encoding::Json, Some(content), None) => {
                Source::Inline(decode_base64(&content).map_err(|why| bad("content_base64", why))?)
            }
            (Encoding::Json, _, Some(_)) => {
                return Err(bad(
                    "part",
                    "names a form part, but this is a JSON request: send the bytes as \
                     content_base64, or send the request as multipart/form-data"
                        .to_owned(),
                ));
            }
            (Encoding::Json, None, None) => {
                return Err(bad(
                    "content_base64",
                    "is required: the file's bytes, base64-encoded".to_owned(),
                ));
            }
            (Encoding::Multipart, Some(_), _) => {
                return Err(bad(
                    "content_base64",
                    "is not accepted in a multipart request: name the form part that \
                     carries the bytes in `part`"
                        .to_owned(),
                ));
            }
            (Encoding::Multipart, None, None) => {
                return Err(bad(
                    "part",
                    "is required: the name of the form part carrying the file's bytes".to_owned(),
                ));
            }
            (Encoding::Multipart, None, Some(part)) => {
                if part.is_empty() || part.len() > 255 || part == REQUEST_PART {
                    return Err(bad(
                        "part",
                        format!("{part:?} cannot name a form part (1 to 255 bytes, not `request`)"),
                    ));
                }
                if !parts.insert(part.clone()) {
                    return Err(bad(
                        "part",
                        format!("form part {part:?} is named by two files"),
                    ));
                }
                Source::Part(part)
            }
        };
        let role = file.role.or_else(|| {
            default_role(validator.kind, port_key.as_str(), mime_type).map(str::to_owned)
        });
        files.push(FileMeta {
            name,
            mime_type,
            port_key,
            role,
            resource,
            source,
        });
    }
    if let Some(port) = required_port(validator.kind)
        && !files.iter().any(|f| f.port_key.as_str() == port)
    {
        return Err(ApiError::unprocessable(
            "missing_file",
            format!(
                "field files: validator {:?} ({}) needs a file on port {port:?}; \
                 add one with \"port_key\": {port:?}",
                validator.id, validator.kind
            ),
        ));
    }

    if request.tags.len() > MAX_TAGS {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "field tags: at most {MAX_TAGS} tags, got {}",
                request.tags.len()
            ),
        ));
    }
    for (index, tag) in request.tags.iter().enumerate() {
        let len = tag.chars().count();
        if len == 0 || len > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "field tags[{index}]: must be 1 to {MAX_TAG_CHARS} characters without \
                     control characters"
                ),
            ));
        }
    }

    Ok(Checked {
        validator,
        org: OrganizationInfo {
            id: request.org.id,
            name: request.org.name,
        },
        workflow: WorkflowInfo {
            id: request.workflow.id,
            step_id: request.workflow.step_id,
            step_name: request.workflow.step_name,
        },
        inputs,
        files,
        tags: request.tags,
        trace: None,
    })
}

fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!(
                "field {field}: {value:?} is not usable as an id; use 1 to 128 characters of \
                 A-Z, a-z, 0-9, '.', '_' or '-' (not '.' or '..')"
            ),
        ))
    }
}

fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() <= MAX_TEXT_CHARS {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_request",
            format!("field {field}: must be at most {MAX_TEXT_CHARS} characters"),
        ))
    }
}

fn decode_base64(text: &str) -> Result<Bytes, String> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE
        .decode(text)
        .map(Bytes::from)
        .map_err(|e| format!("is not valid standard base64 ({e})"))
}

// ---------------------------------------------------------------------------------------------
// Storage.

/// The run id: fresh, or derived from the organization and the idempotency key so that a retry
/// finds its run before uploading anything.
pub(super) fn run_id_for(org_id: &str, key: Option<&str>) -> RunId {
    let Some(key) = key else {
        return RunId::new();
    };
    let digest = Sha256::new()
        .chain_update(b"runway idempotent run id\0")
        .chain_update(org_id.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    RunId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// Size and SHA-256 of one file's bytes.
#[derive(Debug, Clone)]
struct FileDigest {
    sha256: String,
    size_bytes: u64,
}

impl FileDigest {
    fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: hex::encode(Sha256::digest(bytes)),
            size_bytes: bytes.len() as u64,
        }
    }
}

/// One request's uploads, in a folder of their own. Unless the run that refers to them is
/// created ([`Staged::keep`]), they are removed when the request is answered
/// ([`Staged::settle`]) — or, should the request be dropped half-way (the client went away),
/// by a task spawned when this is dropped.
pub(super) struct Staged {
    storage: Arc<dyn ObjectStore>,
    upload: UploadPaths,
    stored: Vec<ObjectKey>,
    kept: bool,
}

impl Staged {
    pub(super) fn new(state: &AppState, org_id: &str, run_id: RunId) -> Result<Self, ApiError> {
        let upload = RunPaths::new(org_id, run_id.as_uuid())
            .context("the run's storage layout")?
            .upload(uuid::Uuid::new_v4());
        Ok(Self {
            storage: state.deps.storage.clone(),
            upload,
            stored: Vec::new(),
            kept: false,
        })
    }

    fn key(&self, index: usize, name: &SafeName) -> Result<ObjectKey, ApiError> {
        Ok(self
            .upload
            .input_file(index, name.as_str())
            .context("building a file's object key from checked parts")?)
    }

    /// Stores the files create-only, file `index` from the `index`th body, at once (up to
    /// [`STORES_AT_ONCE`]): each waits on its own (a round trip to GCS, `fsync`s on a file
    /// system), so together they take as long as the slowest rather than the sum. Returns
    /// their receipts in file order.
    async fn put_all<'n>(
        &mut self,
        bodies: impl IntoIterator<Item = (&'n SafeName, Body)>,
    ) -> Result<Vec<PutReceipt>, ApiError> {
        let mut puts = Vec::new();
        for (index, (name, body)) in bodies.into_iter().enumerate() {
            let key = self.key(index, name)?;
            let storage = self.storage.clone();
            puts.push(async move {
                let put = storage.put_new(&key, body).await;
                let put = put.map_err(|e| storage_failure(e, &key));
                (key, put)
            });
        }
        self.store_each(puts).await
    }

    /// Copies `files`, stored for another run, to this upload create-only and at once (up to
    /// [`STORES_AT_ONCE`]; file `index` of `files` to file `index` here), checking on the way that their bytes
    /// are still the ones the other run recorded. Returns the files as stored here.
    pub(super) async fn copy_all(
        &mut self,
        files: &[StoredFile],
    ) -> Result<Vec<StoredFile>, ApiError> {
        let mut copies = Vec::new();
        for (index, file) in files.iter().enumerate() {
            let key = self.key(index, &file.name)?;
            let storage = self.storage.clone();
            copies.push(async move {
                let copied = copy_one(storage, &key, file).await;
                (key, copied)
            });
        }
        self.store_each(copies).await
    }

    /// Waits for every store in `stores` (each the key it writes and what came of it),
    /// recording each key as its object lands, so that a request refused or dropped
    /// afterwards removes it even when another store failed. Returns what they gave in
    /// order, or the first failure in that order.
    async fn store_each<T>(
        &mut self,
        stores: Vec<impl Future<Output = (ObjectKey, Result<T, ApiError>)>>,
    ) -> Result<Vec<T>, ApiError> {
        let mut stored: Vec<Option<T>> =
            std::iter::repeat_with(|| None).take(stores.len()).collect();
        let mut pending = futures::stream::iter(
            stores
                .into_iter()
                .enumerate()
                .map(|(index, store)| async move { (index, store.await) }),
        )
        .buffer_unordered(STORES_AT_ONCE);
        let mut failure: Option<(usize, ApiError)> = None;
        while let Some((index, (key, result))) = pending.next().await {
            match result {
                Ok(value) => {
                    self.stored.push(key);
                    stored[index] = Some(value);
                }
                Err(e) => {
                    if failure.as_ref().is_none_or(|(first, _)| index < *first) {
                        failure = Some((index, e));
                    }
                }
            }
        }
        if let Some((_, e)) = failure {
            return Err(e);
        }
        Ok(stored.into_iter().flatten().collect())
    }

    /// Streams form part `field` to file `index` while hashing it.
    async fn put_part(
        &mut self,
        index: usize,
        name: &SafeName,
        field: &mut axum::extract::multipart::Field<'_>,
        total: &mut u64,
    ) -> Result<Received, ApiError> {
        let key = self.key(index, name)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let (put, pumped) = tokio::join!(
            self.storage.put_new(&key, body),
            pump(field, total, Some(tx))
        );
        let digest = pumped?;
        let receipt = put.map_err(|e| storage_failure(e, &key))?;
        self.stored.push(key);
        Ok(Received {
            digest,
            receipt: Some(receipt),
        })
    }

    /// The run that refers to the uploads was created, or may have been: they stay.
    fn keep(&mut self) {
        self.kept = true;
    }

    /// The run was not created after all: the uploads go when the request is answered.
    fn release(&mut self) {
        self.kept = false;
    }

    /// Removes the uploads unless they were kept.
    pub(super) async fn settle(&mut self) {
        if self.kept {
            return;
        }
        for key in std::mem::take(&mut self.stored) {
            discard(self.storage.as_ref(), &key).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.kept || self.stored.is_empty() {
            return;
        }
        let (storage, stored) = (self.storage.clone(), std::mem::take(&mut self.stored));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for key in stored {
                    discard(storage.as_ref(), &key).await;
                }
            });
        }
    }
}

/// Copies `file`, stored for another run, to `key` create-only (see [`Staged::copy_all`]).
async fn copy_one(
    storage: Arc<dyn ObjectStore>,
    key: &ObjectKey,
    file: &StoredFile,
) -> Result<StoredFile, ApiError> {
    let copied = runway_storage::copy_new(
        storage.as_ref(),
        file.uri.as_str(),
        key,
        file.sha256.as_str(),
        file.size_bytes,
    )
    .await;
    let receipt = match copied {
        Ok(receipt) => receipt,
        Err(StorageError::NotFound { .. }) => {
            return Err(ApiError::unprocessable(
                "input_file_missing",
                format!(
                    "input file {:?} of the run is no longer in object storage, so the \
                     run cannot be run again; submit it anew",
                    file.name.as_str()
                ),
            ));
        }
        Err(StorageError::Mismatch { .. } | StorageError::TooLarge { .. }) => {
            return Err(ApiError::unprocessable(
                "input_file_changed",
                format!(
                    "input file {:?} of the run no longer has the size and sha256 the run \
                     recorded, so the run cannot be run again; submit it anew",
                    file.name.as_str()
                ),
            ));
        }
        Err(e) => return Err(storage_failure(e, key)),
    };
    Ok(StoredFile {
        uri: StorageUri::parse(receipt.uri.clone()).map_err(|e| {
            anyhow!(
                "object storage returned {}, which validator containers cannot read: {e}",
                receipt.uri
            )
        })?,
        storage_version: StorageVersion::parse(receipt.storage_version)
            .map_err(|e| anyhow!("storage version: {e}"))?,
        ..file.clone()
    })
}

async fn discard(storage: &dyn ObjectStore, key: &ObjectKey) {
    if let Err(e) = storage.delete(key).await {
        tracing::warn!(key = %key, error = %e, "cannot remove an upload of a refused request");
    }
}

fn storage_failure(e: StorageError, key: &ObjectKey) -> ApiError {
    anyhow::Error::new(e)
        .context(format!("storing input file {}", key.as_str()))
        .into()
}

/// Reads a form part to its end, hashing it and forwarding the chunks to `tx` (the storage
/// write) if given. On a client error the write is failed too, so nothing is stored.
async fn pump(
    field: &mut axum::extract::multipart::Field<'_>,
    total: &mut u64,
    mut tx: Option<tokio::sync::mpsc::Sender<io::Result<Bytes>>>,
) -> Result<FileDigest, ApiError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                if let Some(tx) = tx.take() {
                    let _ = tx
                        .send(Err(io::Error::other("the client's form part broke off")))
                        .await;
                }
                return Err(multipart_error(e));
            }
        };
        size += chunk.len() as u64;
        *total += chunk.len() as u64;
        if *total > MAX_MULTIPART_BODY_BYTES {
            if let Some(tx) = tx.take() {
                let _ = tx
                    .send(Err(io::Error::other("over the upload limit")))
                    .await;
            }
            return Err(ApiError::PayloadTooLarge {
                message: format!(
                    "the files of a multipart request may total at most {} MiB",
                    MAX_MULTIPART_BODY_BYTES / MIB as u64
                ),
            });
        }
        hasher.update(&chunk);
        // If the write gave up early (e.g. the object exists), keep hashing without it.
        if let Some(sender) = &tx
            && sender.send(Ok(chunk)).await.is_err()
        {
            tx = None;
        }
    }
    Ok(FileDigest {
        sha256: hex::encode(hasher.finalize()),
        size_bytes: size,
    })
}

fn stored_file(file: &FileMeta, got: Received) -> anyhow::Result<StoredFile> {
    let receipt = got
        .receipt
        .context("a file to store has no storage receipt")?;
    let sent = got.digest;
    anyhow::ensure!(
        receipt.sha256 == sent.sha256 && receipt.size_bytes == sent.size_bytes,
        "object storage stored {} bytes with sha256 {} where {} bytes with sha256 {} were sent",
        receipt.size_bytes,
        receipt.sha256,
        sent.size_bytes,
        sent.sha256
    );
    Ok(StoredFile {
        name: file.name.clone(),
        mime_type: file.mime_type,
        role: file.role.clone(),
        port_key: file.port_key.clone(),
        uri: StorageUri::parse(receipt.uri.clone()).map_err(|e| {
            anyhow!(
                "object storage returned {}, which validator containers cannot read \
                 (use gs:// or file:// storage): {e}",
                receipt.uri
            )
        })?,
        size_bytes: receipt.size_bytes,
        sha256: Sha256Hex::parse(receipt.sha256).map_err(|e| anyhow!("storage sha256: {e}"))?,
        storage_version: StorageVersion::parse(receipt.storage_version)
            .map_err(|e| anyhow!("storage version: {e}"))?,
        resource: file.resource.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use runway_storage::{ByteStream, Expected, ObjectMeta, StorageUri as ObjectsUri};
    use tokio::sync::Barrier;

    use super::*;

    /// Object storage whose writes each wait until `together` writes are under way, which
    /// refuses to write a key ending in `refused`, and counts the most writes under way at once.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<dyn ObjectStore>,
        together: Barrier,
        refused: &'static str,
        under_way: AtomicUsize,
        most: AtomicUsize,
    }

    impl Gated {
        fn new(inner: Arc<dyn ObjectStore>, together: usize, refused: &'static str) -> Self {
            Self {
                inner,
                together: Barrier::new(together),
                refused,
                under_way: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            }
        }
    }

    #[async_trait]
    impl ObjectStore for Gated {
        fn base(&self) -> &ObjectsUri {
            self.inner.base()
        }

        async fn put_new_expecting(
            &self,
            key: &ObjectKey,
            body: Body,
            expected: Expected,
        ) -> Result<PutReceipt, StorageError> {
            let now = self.under_way.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.together.wait().await;
            // Let the other writes that can start, start.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            self.under_way.fetch_sub(1, Ordering::SeqCst);
            if key.as_str().ends_with(self.refused) {
                return Err(StorageError::Io {
                    uri: self.inner.uri_for(key),
                    source: io::Error::other("refused by the test"),
                });
            }
            self.inner.put_new_expecting(key, body, expected).await
        }

        async fn get(&self, uri_or_key: &str, max_bytes: u64) -> Result<ByteStream, StorageError> {
            self.inner.get(uri_or_key, max_bytes).await
        }

        async fn head(&self, uri_or_key: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.inner.head(uri_or_key).await
        }

        async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }

        async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
            self.inner.list(prefix).await
        }
    }

    const NAMES: [&str; 3] = ["model.idf", "weather.epw", "notes.txt"];

    fn staged(storage: Arc<dyn ObjectStore>) -> Staged {
        Staged {
            storage,
            upload: RunPaths::new("acme", uuid::Uuid::now_v7())
                .expect("paths")
                .upload(uuid::Uuid::new_v4()),
            stored: Vec::new(),
            kept: false,
        }
    }

    /// Three files stored through `Gated` (every write waits for all three), refusing the
    /// key ending in `refused`; returns what `put_all` answered (within a minute of paused
    /// time, which passes at once if the writes wait for one another), and the objects under
    /// the upload before and after the request is settled unkept.
    async fn store_three(
        refused: &'static str,
    ) -> (Result<Vec<PutReceipt>, ApiError>, usize, usize) {
        let inner = runway_storage::open("memory://staged", &Default::default())
            .await
            .expect("storage");
        let mut staged = staged(Arc::new(Gated::new(inner.clone(), NAMES.len(), refused)));
        let first = staged.upload.input_file(0, "x").expect("key");
        let prefix = first.as_str().trim_end_matches("0-x").to_owned();
        let names: Vec<SafeName> = NAMES
            .iter()
            .map(|name| SafeName::parse((*name).to_owned()).expect("name"))
            .collect();
        let bodies = names
            .iter()
            .map(|name| (name, Body::Bytes(Bytes::from(name.as_str().to_owned()))));
        let answer = tokio::time::timeout(Duration::from_secs(60), staged.put_all(bodies))
            .await
            .expect("the three writes were under way at once");
        let stored = inner.list(&prefix).await.expect("list").len();
        staged.settle().await;
        let left = inner.list(&prefix).await.expect("list").len();
        (answer, stored, left)
    }

    #[tokio::test(start_paused = true)]
    async fn a_requests_files_are_stored_at_once_and_answered_in_order() {
        let (answer, stored, left) = store_three("no key ends so").await;
        assert_eq!(stored, 3);
        let receipts = answer.expect("stored");
        for (index, (receipt, name)) in receipts.iter().zip(NAMES).enumerate() {
            assert!(
                receipt.uri.ends_with(&format!("/{index}-{name}")),
                "{} is not file {index}",
                receipt.uri
            );
            assert_eq!(receipt.size_bytes, name.len() as u64);
        }
        assert_eq!(
            left, 0,
            "an unkept request's files are removed when it settles"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_refused_by_storage_fails_the_request_and_the_others_are_removed() {
        let (answer, stored, left) = store_three("1-weather.epw").await;
        assert_eq!(stored, 2);
        let Err(ApiError::Internal(cause)) = answer else {
            panic!("a refused write is an internal error: {answer:?}");
        };
        assert!(
            format!("{cause:#}").contains("1-weather.epw"),
            "the failure names the file: {cause:#}"
        );
        assert_eq!(left, 0, "the two files that were stored are removed");
    }

    #[tokio::test]
    async fn a_request_of_many_files_stores_a_few_at_a_time() {
        let inner = runway_storage::open("memory://many", &Default::default())
            .await
            .expect("storage");
        let gated = Arc::new(Gated::new(inner, 1, "no key ends so"));
        let mut staged = staged(gated.clone());
        let names: Vec<SafeName> = (0..MAX_FILES)
            .map(|i| SafeName::parse(format!("f{i}.txt")).expect("name"))
            .collect();
        let bodies = names
            .iter()
            .map(|name| (name, Body::Bytes(Bytes::from_static(b"x"))));
        let receipts = staged.put_all(bodies).await.expect("stored");
        assert_eq!(receipts.len(), MAX_FILES);
        assert_eq!(gated.most.load(Ordering::SeqCst), STORES_AT_ONCE);
    }
}
