//! Conformance of Runway's contract types with validibot-shared 0.28.0, the authoritative
//! definition, used as an oracle (`oracle.py`, run with the project venv's Python):
//!
//! - JSON Runway writes validates under validibot-shared's Pydantic models, and our canonical
//!   `input_envelope_sha256` equals theirs;
//! - JSON validibot-shared writes parses in Runway, to the same hash;
//! - bad documents are refused by both, and Runway's error names the field.
//!
//! Envelopes are random (seeded; set `RUNWAY_CONFORMANCE_SEED` to replay) with edge-case
//! strings and numbers, not one fixture.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use runway_contract::energyplus::{
    EnergyPlusInputs, EnergyPlusLogs, EnergyPlusMetrics, EnergyPlusOutputFiles, EnergyPlusOutputs,
    IdfCheck, InvocationMode, ReviewProfile, TimestepPerHour,
};
use runway_contract::fmu::{FmuInputs, FmuOutputs, FmuSimulation};
use runway_contract::output::RawOutputsFormat;
use runway_contract::*;
use serde_json::{Map, Value, json};

/// validibot-shared behind a pipe.
struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    fn start() -> Self {
        let python = runway_tests::python();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py");
        let mut child = Command::new(&python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the oracle with {python}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").expect("write to oracle");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from oracle");
        assert!(
            !line.is_empty(),
            "the oracle exited; is validibot-shared installed?"
        );
        serde_json::from_str(&line).expect("oracle answers JSON")
    }

    fn check(&mut self, kind: &str, document: &[u8]) -> Value {
        let text = std::str::from_utf8(document).expect("utf-8");
        self.call(json!({"op": "check", "kind": kind, "json": text}))
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed() -> u64 {
    std::env::var("RUNWAY_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026)
}

// --- random Runway-made documents -------------------------------------------------------

const TRICKY: &[&str] = &[
    "",
    "plain",
    "quote\" and \\ backslash",
    "tab\tnew\nline\rcr",
    "\u{0}\u{1}\u{1f}\u{7f}",
    "\u{2028}\u{2029}",
    "é ö ü ß",
    "€ 中文 日本語",
    "😀 🚀 🧪",
    "\u{fb33}\u{80}",
];

fn text(rng: &mut StdRng, max: usize) -> String {
    if rng.random_bool(0.3) {
        return (*TRICKY.choose(rng).expect("non-empty")).to_owned();
    }
    let alphabet: Vec<char> = "abcXYZ019 _-./:é€😀\"\\\n\t\u{1}".chars().collect();
    (0..rng.random_range(0..=max))
        .map(|_| *alphabet.choose(rng).expect("non-empty"))
        .collect()
}

fn hex64(rng: &mut StdRng) -> Sha256Hex {
    let bytes: [u8; 32] = rng.random();
    Sha256Hex::from_bytes(bytes)
}

fn uuid_str(rng: &mut StdRng) -> String {
    let v: u128 = rng.random();
    format!("{:032x}", v)
}

fn uri(rng: &mut StdRng, leaf: &str) -> StorageUri {
    let id = uuid_str(rng);
    let s = if rng.random_bool(0.5) {
        format!("gs://bucket-{}/runs/{id}/{leaf}", rng.random_range(0..9))
    } else {
        format!("file:///var/runway/{id}/{leaf}")
    };
    StorageUri::try_from(s).expect("valid uri")
}

fn safe_name(rng: &mut StdRng) -> SafeName {
    let base: String = (0..rng.random_range(1..10))
        .map(|_| {
            *['a', 'Z', 'é', '€', ' ', '_', '-', '.']
                .choose(rng)
                .expect("x")
        })
        .collect();
    let name = format!("x{base}{}", [".idf", ".fmu", ""].choose(rng).expect("x"));
    SafeName::try_from(name).expect("safe")
}

fn number(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!(rng.random::<i64>()),
        1 => json!(rng.random_range(-1000..1000)),
        2 => json!(rng.random::<u64>()),
        3 => json!(
            *[
                0.0,
                -0.0,
                0.1,
                1e21,
                1e-7,
                5e-324,
                f64::MAX,
                1e16,
                0.000001,
                123.456
            ]
            .choose(rng)
            .expect("x")
        ),
        4 => json!(rng.random_range(-1e6..1e6)),
        _ => loop {
            let f = f64::from_bits(rng.random());
            if f.is_finite() {
                break json!(f);
            }
        },
    }
}

fn any_json(rng: &mut StdRng, depth: u32) -> Value {
    let pick = rng.random_range(0..10);
    if depth > 2 || pick < 5 {
        return match rng.random_range(0..4) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => number(rng),
            _ => Value::String(text(rng, 12)),
        };
    }
    if pick < 8 {
        Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| any_json(rng, depth + 1))
                .collect(),
        )
    } else {
        Value::Object(object(rng, depth + 1))
    }
}

fn object(rng: &mut StdRng, depth: u32) -> Map<String, Value> {
    (0..rng.random_range(0..5))
        .map(|_| (text(rng, 6), any_json(rng, depth)))
        .collect()
}

fn nonce(rng: &mut StdRng) -> CallbackNonce {
    let alphabet: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(['_', '-'])
        .collect();
    let s: String = (0..rng.random_range(43..90))
        .map(|_| *alphabet.choose(rng).expect("x"))
        .collect();
    CallbackNonce::try_from(s).expect("valid nonce")
}

fn random_input(rng: &mut StdRng) -> InputEnvelope {
    let kind = *ValidatorType::ALL.choose(rng).expect("x");
    let attempt = uuid_str(rng);
    let prefix = uri(rng, &format!("attempts/{attempt}"));
    let callbacks = rng.random_bool(0.8);
    let callback_nonce = (callbacks || rng.random_bool(0.5)).then(|| nonce(rng));
    let context: ExecutionContext = serde_json::from_value(json!({
        "execution_attempt_id": attempt,
        "step_run_id": format!("s{}", text(rng, 8)),
        "attempt_contract_version": "validibot.attempt.v2",
        "expected_output_uri": format!("{prefix}/output.json"),
        "callback_id": callbacks.then(|| uuid_str(rng)),
        "callback_nonce_commitment": callback_nonce.as_ref().map(|n| n.commitment()),
        "callback_nonce": callback_nonce,
        "callback_url": callbacks.then(|| *["http://127.0.0.1:8081", "https://cb.example.com/v1/callbacks", "http://[::1]:9/x?y=1"].choose(rng).expect("x")),
        "skip_callback": !callbacks && rng.random_bool(0.5),
        "execution_bundle_uri": prefix,
        "timeout_seconds": rng.random_range(1..86_400),
        "tags": (0..rng.random_range(0..3)).map(|_| text(rng, 6)).collect::<Vec<_>>(),
    }))
    .expect("valid context");
    let input_files = (0..rng.random_range(0..3))
        .map(|_| InputFileItem {
            size_bytes: rng.random_range(0..1u64 << 40),
            sha256: hex64(rng),
            storage_version: StorageVersion::try_from(rng.random::<u32>().to_string()).expect("x"),
            name: safe_name(rng),
            mime_type: *MimeType::ALL.choose(rng).expect("x"),
            role: [None, Some("primary-model".to_owned()), Some(text(rng, 5))]
                .choose(rng)
                .expect("x")
                .clone(),
            port_key: PortKey::try_from(*["primary_model", "fmu_model"].choose(rng).expect("x"))
                .expect("x"),
            uri: uri(rng, "in"),
        })
        .collect();
    let resource_files = (0..rng.random_range(0..2))
        .map(|_| ResourceFileItem {
            size_bytes: rng.random_range(0..1_000_000_000),
            sha256: hex64(rng),
            storage_version: StorageVersion::for_local_digest(&hex64(rng)),
            id: uuid_str(rng),
            name: safe_name(rng),
            kind: "weather".to_owned(),
            port_key: PortKey::try_from("weather_file").expect("x"),
            uri: uri(rng, "r"),
        })
        .collect();
    let inputs = match kind {
        ValidatorType::Energyplus => ValidatorInputs::EnergyPlus(EnergyPlusInputs {
            timestep_per_hour: TimestepPerHour::try_from(rng.random_range(1..=60)).expect("x"),
            run_period_days: rng.random_bool(0.5).then(|| rng.random_range(1..365)),
            invocation_mode: *[InvocationMode::Cli, InvocationMode::PythonApi]
                .choose(rng)
                .expect("x"),
            idf_checks: [IdfCheck::DuplicateNames, IdfCheck::HvacSizing]
                .into_iter()
                .filter(|_| rng.random_bool(0.5))
                .collect(),
            run_simulation: rng.random(),
            review_profile: *[ReviewProfile::Standard, ReviewProfile::LeedReview]
                .choose(rng)
                .expect("x"),
        }),
        ValidatorType::Fmu => {
            let start = rng.random_range(0.0..100.0);
            ValidatorInputs::Fmu(FmuInputs {
                input_values: object(rng, 1),
                simulation: FmuSimulation {
                    start_time: start,
                    stop_time: start + rng.random_range(0.001..1000.0),
                    step_size: rng.random_range(1e-6..10.0),
                    tolerance: rng.random_bool(0.5).then(|| rng.random_range(1e-9..1e-2)),
                },
                output_variables: (0..rng.random_range(0..3)).map(|_| text(rng, 6)).collect(),
            })
        }
        _ => {
            let mut inputs = object(rng, 0);
            if rng.random_bool(0.2) {
                inputs.insert(
                    "nested".into(),
                    json!({"callback_nonce": nonce(rng), "k": 1}),
                );
            }
            ValidatorInputs::Other(inputs)
        }
    };
    InputEnvelope {
        schema_version: InputSchemaVersion,
        run_id: uuid_str(rng),
        validator: ValidatorInfo {
            id: text(rng, 8),
            kind,
            version: text(rng, 4),
        },
        org: OrganizationInfo {
            id: text(rng, 8),
            name: text(rng, 8),
        },
        workflow: WorkflowInfo {
            id: text(rng, 8),
            step_id: text(rng, 8),
            step_name: rng.random_bool(0.5).then(|| text(rng, 8)),
        },
        input_files,
        resource_files,
        inputs,
        context,
    }
}

fn random_output(rng: &mut StdRng) -> OutputEnvelope {
    let kind = *ValidatorType::ALL.choose(rng).expect("x");
    let nonneg = |rng: &mut StdRng| NonNegative::try_from(rng.random_range(0.0..1e6)).expect("x");
    let outputs = match kind {
        ValidatorType::Energyplus => {
            Some(ValidatorOutputs::EnergyPlus(Box::new(EnergyPlusOutputs {
                outputs: EnergyPlusOutputFiles {
                    eplusout_sql: Some("eplusout.sql".into()),
                    ..Default::default()
                },
                metrics: EnergyPlusMetrics {
                    site_electricity_kwh: Some(nonneg(rng)),
                    peak_electric_demand_w: rng.random_bool(0.5).then(|| nonneg(rng)),
                    ..Default::default()
                },
                logs: rng.random_bool(0.5).then(|| EnergyPlusLogs {
                    err_tail: Some(text(rng, 60)),
                    ..Default::default()
                }),
                energyplus_returncode: rng.random_range(-9..9),
                execution_seconds: nonneg(rng),
                invocation_mode: InvocationMode::Cli,
                energyplus_binary_version: Some("25.2.0".into()),
                energyplus_binary_build: None,
                idd_version: None,
                idd_build: None,
                idd_path: None,
                idf_version: Some("25.2".into()),
                version_match: Some(true),
                completed_successfully: rng.random(),
                warning_count: rng.random_range(0..10),
                severe_count: 0,
                fatal_count: 0,
                review_issue_count: 0,
                has_sql_output: true,
                has_err_output: true,
                has_csv_output: false,
                has_eso_output: false,
            })))
        }
        ValidatorType::Fmu => rng.random_bool(0.7).then(|| {
            ValidatorOutputs::Fmu(FmuOutputs {
                output_values: object(rng, 1),
                fmu_guid: Some(uuid_str(rng)),
                fmi_version: Some("2.0".into()),
                model_name: Some(text(rng, 6)),
                execution_seconds: nonneg(rng),
                simulation_time_reached: nonneg(rng),
                fmu_log: None,
            })
        }),
        _ => rng
            .random_bool(0.5)
            .then(|| ValidatorOutputs::Other(object(rng, 0))),
    };
    let when = |rng: &mut StdRng| {
        rng.random_bool(0.7).then(|| {
            chrono::DateTime::from_timestamp_micros(rng.random_range(0..4_000_000_000_000_000))
                .expect("in range")
        })
    };
    OutputEnvelope {
        schema_version: OutputSchemaVersion,
        run_id: uuid_str(rng),
        step_run_id: NonEmpty::try_from("step").expect("x"),
        execution_attempt_id: NonEmpty::try_from(uuid_str(rng)).expect("x"),
        attempt_contract_version: AttemptContractVersion,
        input_envelope_sha256: hex64(rng),
        output_uri: uri(rng, "output.json"),
        validator: ValidatorInfo {
            id: text(rng, 6),
            kind,
            version: "1".into(),
        },
        status: *ValidationStatus::ALL.choose(rng).expect("x"),
        timing: ValidationTiming {
            queued_at: when(rng),
            started_at: when(rng),
            finished_at: when(rng),
        },
        messages: (0..rng.random_range(0..4))
            .map(|_| ValidationMessage {
                severity: *Severity::ALL.choose(rng).expect("x"),
                code: rng.random_bool(0.5).then(|| "EP001".into()),
                text: text(rng, 40),
                location: rng.random_bool(0.5).then(|| MessageLocation {
                    line: Some(rng.random_range(1..1_000_000)),
                    ..Default::default()
                }),
                tags: vec![text(rng, 5)],
            })
            .collect(),
        metrics: (0..rng.random_range(0..4))
            .map(|_| ValidationMetric {
                name: format!("m{}", text(rng, 6)),
                value: match rng.random_range(0..3) {
                    0 => MetricValue::Int(rng.random()),
                    1 => MetricValue::Float(rng.random_range(-1e9..1e9)),
                    _ => MetricValue::Text(text(rng, 8)),
                },
                unit: Some("kWh".into()),
                category: None,
                tags: vec![],
            })
            .collect(),
        artifacts: (0..rng.random_range(0..2))
            .map(|_| ValidationArtifact {
                size_bytes: rng.random_range(0..1_000_000),
                sha256: hex64(rng),
                storage_version: StorageVersion::try_from("1700000000000000").expect("x"),
                name: safe_name(rng),
                kind: "simulation-db".into(),
                mime_type: Some("application/x-sqlite3".into()),
                uri: uri(rng, "outputs/eplusout.sql"),
            })
            .collect(),
        raw_outputs: rng.random_bool(0.3).then(|| RawOutputs {
            format: RawOutputsFormat::Directory,
            manifest_uri: uri(rng, "manifest.json"),
        }),
        outputs,
    }
}

fn random_callback(rng: &mut StdRng) -> CallbackPayload {
    CallbackPayload {
        run_id: uuid_str(rng),
        callback_id: NonEmpty::try_from(uuid_str(rng)).expect("x"),
        callback_nonce: nonce(rng),
        status: *ValidationStatus::ALL.choose(rng).expect("x"),
        result_uri: uri(rng, "output.json"),
    }
}

fn ok_dump(answer: &Value, what: &str) -> Vec<u8> {
    assert_eq!(
        answer["ok"], true,
        "validibot-shared rejected {what}: {answer}"
    );
    answer["dump"].as_str().expect("dump").as_bytes().to_vec()
}

// --- tests ------------------------------------------------------------------------------

#[test]
fn runway_input_envelopes_validate_under_validibot_and_hash_alike() {
    let mut oracle = Oracle::start();
    let mut rng = StdRng::seed_from_u64(seed());
    for i in 0..300 {
        let envelope = random_input(&mut rng);
        let json = envelope.to_json().expect("serializes");
        let answer = oracle.check("input", &json);
        let dump = ok_dump(&answer, &format!("input #{i} (seed {})", seed()));
        let ours = envelope.canonical_sha256().expect("hash");
        assert_eq!(
            answer["sha256"].as_str(),
            Some(ours.as_str()),
            "input #{i}: canonical hash differs (seed {}): {}",
            seed(),
            String::from_utf8_lossy(&json)
        );
        // What validibot-shared writes back parses to the same envelope and hash.
        let back = InputEnvelope::from_json(&dump).expect("their dump parses");
        assert_eq!(
            back, envelope,
            "input #{i} changed through validibot-shared"
        );
        assert_eq!(back.canonical_sha256().expect("hash"), ours);
    }
}

#[test]
fn runway_output_envelopes_and_callbacks_validate_under_validibot() {
    let mut oracle = Oracle::start();
    let mut rng = StdRng::seed_from_u64(seed() ^ 1);
    for i in 0..300 {
        let envelope = random_output(&mut rng);
        let json = envelope.to_json().expect("serializes");
        let dump = ok_dump(&oracle.check("output", &json), &format!("output #{i}"));
        let back = OutputEnvelope::from_json(&dump).expect("their dump parses");
        assert_eq!(
            back, envelope,
            "output #{i} changed through validibot-shared"
        );

        let callback = random_callback(&mut rng);
        let json = serde_json::to_vec(&callback).expect("serializes");
        let dump = ok_dump(&oracle.check("callback", &json), &format!("callback #{i}"));
        assert_eq!(CallbackPayload::from_json(&dump).expect("parses"), callback);
    }
}

#[test]
fn validibot_envelopes_parse_in_runway_and_hash_alike() {
    let mut oracle = Oracle::start();
    let generated = oracle.call(json!({"op": "generate", "seed": seed(), "count": 300}));
    for (i, item) in generated["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .enumerate()
    {
        let json = item["json"].as_str().expect("json");
        let envelope = InputEnvelope::from_json(json.as_bytes())
            .unwrap_or_else(|e| panic!("validibot input #{i} refused: {e}\n{json}"));
        assert_eq!(
            envelope.canonical_sha256().expect("hash").as_str(),
            item["sha256"].as_str().expect("sha"),
            "validibot input #{i}: canonical hash differs\n{json}"
        );
        // Re-serialized by Runway, it is the same document.
        let theirs: Value = serde_json::from_str(json).expect("json");
        let ours: Value = serde_json::from_slice(&envelope.to_json().expect("ser")).expect("json");
        assert_eq!(
            ours, theirs,
            "validibot input #{i} re-serializes differently"
        );
    }
    for (i, item) in generated["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .enumerate()
    {
        let json = item["json"].as_str().expect("json");
        let envelope = OutputEnvelope::from_json(json.as_bytes())
            .unwrap_or_else(|e| panic!("validibot output #{i} refused: {e}\n{json}"));
        let ours = envelope.to_json().expect("ser");
        ok_dump(
            &oracle.check("output", &ours),
            &format!("re-serialized output #{i}"),
        );
    }
    for (i, item) in generated["callbacks"]
        .as_array()
        .expect("callbacks")
        .iter()
        .enumerate()
    {
        let json = item["json"].as_str().expect("json");
        let callback = CallbackPayload::from_json(json.as_bytes())
            .unwrap_or_else(|e| panic!("validibot callback #{i} refused: {e}\n{json}"));
        let theirs: Value = serde_json::from_str(json).expect("json");
        assert_eq!(serde_json::to_value(&callback).expect("ser"), theirs);
    }
}

/// A valid EnergyPlus input envelope as JSON, the base the bad cases mutate.
fn valid_input() -> Value {
    let mut rng = StdRng::seed_from_u64(7);
    loop {
        let mut envelope = random_input(&mut rng);
        if envelope.validator.kind != ValidatorType::Energyplus
            || envelope.input_files.is_empty()
            || envelope.context.callback_url.is_none()
        {
            continue;
        }
        envelope.validator.kind = ValidatorType::Energyplus;
        return serde_json::from_slice(&envelope.to_json().expect("ser")).expect("json");
    }
}

/// Applies `edit` to a copy of `base`.
fn mutate(base: &Value, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = base.clone();
    edit(&mut v);
    serde_json::to_vec(&v).expect("ser")
}

#[test]
fn bad_input_envelopes_are_refused_naming_the_field() {
    let mut oracle = Oracle::start();
    let base = valid_input();
    let nonce = "n".repeat(43);
    // (document, a fragment the error must contain, whether validibot-shared refuses it too:
    // Runway is stricter on storage URIs, which the models type as plain strings)
    let cases: Vec<(Vec<u8>, &str, bool)> = vec![
        (
            mutate(&base, |v| v["surprise"] = json!(1)),
            "surprise",
            true,
        ),
        (
            mutate(&base, |v| v["context"]["surprise"] = json!(1)),
            "context",
            true,
        ),
        (
            mutate(&base, |v| {
                v["input_files"][0]["name"] = json!("../etc/passwd")
            }),
            "input_files[0].name",
            true,
        ),
        (
            mutate(&base, |v| v["input_files"][0]["name"] = json!("a\\b")),
            "input_files[0].name",
            true,
        ),
        (
            mutate(&base, |v| v["input_files"][0]["sha256"] = json!("ABC")),
            "input_files[0].sha256",
            true,
        ),
        (
            mutate(&base, |v| {
                v["input_files"][0]["sha256"] = json!("A".repeat(64))
            }),
            "input_files[0].sha256",
            true,
        ),
        (
            mutate(&base, |v| {
                v["input_files"][0]["mime_type"] = json!("text/plain")
            }),
            "input_files[0].mime_type",
            true,
        ),
        (
            mutate(&base, |v| v["input_files"][0]["size_bytes"] = json!(-1)),
            "input_files[0].size_bytes",
            true,
        ),
        (
            mutate(&base, |v| {
                v["input_files"][0]["storage_version"] = json!("")
            }),
            "input_files[0].storage_version",
            true,
        ),
        (
            mutate(&base, |v| v["input_files"][0]["extra"] = json!(true)),
            "input_files[0]",
            true,
        ),
        (
            mutate(&base, |v| {
                v["input_files"][0]["uri"] = json!("http://example.com/x")
            }),
            "input_files[0].uri",
            false,
        ),
        (
            mutate(&base, |v| v["schema_version"] = json!("validibot.input.v2")),
            "schema_version",
            true,
        ),
        (
            mutate(&base, |v| v["validator"]["type"] = json!("NOPE")),
            "validator.type",
            true,
        ),
        (
            mutate(&base, |v| {
                v.as_object_mut().expect("obj").remove("run_id");
            }),
            "run_id",
            true,
        ),
        (
            mutate(&base, |v| {
                v["context"]["attempt_contract_version"] = json!("validibot.attempt.v1")
            }),
            "context.attempt_contract_version",
            true,
        ),
        (
            mutate(&base, |v| v["context"]["callback_nonce"] = json!("short")),
            "context.callback_nonce",
            true,
        ),
        (
            mutate(&base, |v| {
                v["context"]["callback_nonce_commitment"] = json!("0".repeat(64))
            }),
            "commitment",
            true,
        ),
        (
            mutate(&base, |v| {
                v["context"]["callback_nonce"] = json!(nonce);
            }),
            "commitment",
            true,
        ),
        (
            mutate(&base, |v| v["context"]["callback_id"] = Value::Null),
            "callback_id",
            true,
        ),
        (
            mutate(&base, |v| {
                v["context"]["callback_url"] = json!("ftp://example.com/")
            }),
            "context.callback_url",
            true,
        ),
        (
            mutate(&base, |v| v["context"]["expected_output_uri"] = json!("")),
            "context.expected_output_uri",
            true,
        ),
        (
            mutate(&base, |v| v["inputs"]["timestep_per_hour"] = json!(61)),
            "inputs.timestep_per_hour",
            true,
        ),
        (
            mutate(&base, |v| v["inputs"]["review_profile"] = json!("lenient")),
            "inputs.review_profile",
            true,
        ),
        (
            mutate(&base, |v| v["inputs"]["surprise"] = json!(1)),
            "inputs",
            true,
        ),
        (
            mutate(&base, |v| {
                v.as_object_mut().expect("obj").remove("inputs");
            }),
            "inputs",
            true,
        ),
        (b"{\"run_id\": \"x\"".to_vec(), "input envelope", true),
        (b"[]".to_vec(), "input envelope", true),
    ];
    for (i, (doc, fragment, validibot_refuses)) in cases.iter().enumerate() {
        let err = InputEnvelope::from_json(doc)
            .map(|_| ())
            .expect_err(&format!("case #{i} ({fragment}) must be refused"));
        let message = err.to_string();
        assert!(
            message.contains(fragment),
            "case #{i}: error {message:?} does not name {fragment:?}"
        );
        assert!(
            !message.contains(&nonce),
            "case #{i}: error leaks the nonce"
        );
        if *validibot_refuses {
            let answer = oracle.check("input", doc);
            assert_eq!(
                answer["ok"], false,
                "case #{i} ({fragment}): validibot-shared accepted it"
            );
        }
    }
    // The unmutated base is valid on both sides (so each case fails for its own reason).
    let doc = serde_json::to_vec(&base).expect("ser");
    assert!(InputEnvelope::from_json(&doc).is_ok());
    ok_dump(&oracle.check("input", &doc), "the base envelope");
}

#[test]
fn bad_outputs_and_callbacks_are_refused_naming_the_field() {
    let mut oracle = Oracle::start();
    let mut rng = StdRng::seed_from_u64(11);
    let base = loop {
        let envelope = random_output(&mut rng);
        if envelope.validator.kind == ValidatorType::Energyplus && !envelope.messages.is_empty() {
            break serde_json::from_slice::<Value>(&envelope.to_json().expect("ser"))
                .expect("json");
        }
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            mutate(&base, |v| v["input_envelope_sha256"] = json!("xyz")),
            "input_envelope_sha256",
        ),
        (mutate(&base, |v| v["status"] = json!("ok")), "status"),
        (
            mutate(&base, |v| v["messages"][0]["severity"] = json!("FATAL")),
            "messages[0].severity",
        ),
        (mutate(&base, |v| v["outputs"] = Value::Null), "outputs"),
        (
            mutate(&base, |v| v["outputs"]["execution_seconds"] = json!(-1.0)),
            "outputs.execution_seconds",
        ),
        (
            mutate(&base, |v| {
                v["schema_version"] = json!("validibot.output.v0")
            }),
            "schema_version",
        ),
        (
            mutate(&base, |v| v["execution_attempt_id"] = json!("")),
            "execution_attempt_id",
        ),
        (
            mutate(&base, |v| v["timing"]["started_at"] = json!("yesterday")),
            "timing.started_at",
        ),
        (mutate(&base, |v| v["extra"] = json!([])), "extra"),
    ];
    for (i, (doc, fragment)) in cases.iter().enumerate() {
        let message = OutputEnvelope::from_json(doc)
            .map(|_| ())
            .expect_err(&format!("output case #{i} ({fragment}) must be refused"))
            .to_string();
        assert!(
            message.contains(fragment),
            "output case #{i}: {message:?} lacks {fragment:?}"
        );
        assert_eq!(
            oracle.check("output", doc)["ok"],
            false,
            "output case #{i}: validibot accepted"
        );
    }

    let callback = serde_json::to_value(random_callback(&mut rng)).expect("ser");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            mutate(&callback, |v| v["callback_nonce"] = json!("x".repeat(42))),
            "callback_nonce",
        ),
        (
            mutate(&callback, |v| {
                v["callback_nonce"] = json!(format!("{}!", "x".repeat(50)))
            }),
            "callback_nonce",
        ),
        (
            mutate(&callback, |v| v["callback_id"] = json!("")),
            "callback_id",
        ),
        (mutate(&callback, |v| v["status"] = json!("done")), "status"),
        (mutate(&callback, |v| v["outputs"] = json!({})), "outputs"),
    ];
    for (i, (doc, fragment)) in cases.iter().enumerate() {
        let message = CallbackPayload::from_json(doc)
            .map(|_| ())
            .expect_err(&format!("callback case #{i} must be refused"))
            .to_string();
        assert!(
            message.contains(fragment),
            "callback case #{i}: {message:?} lacks {fragment:?}"
        );
        assert!(
            !message.contains(&"x".repeat(42)),
            "callback case #{i}: error leaks the nonce"
        );
        assert_eq!(
            oracle.check("callback", doc)["ok"],
            false,
            "callback case #{i}: validibot accepted"
        );
    }
}

#[test]
fn oversize_documents_are_refused_before_parsing() {
    let mut big = valid_input();
    big["inputs"] = json!({});
    big["validator"]["type"] = json!("JSON_SCHEMA");
    big["inputs"]["blob"] = json!("x".repeat(input::MAX_INPUT_ENVELOPE_BYTES));
    let doc = serde_json::to_vec(&big).expect("ser");
    let err = InputEnvelope::from_json(&doc).expect_err("too large");
    assert!(
        matches!(err, ContractError::TooLarge { limit, .. } if limit == input::MAX_INPUT_ENVELOPE_BYTES)
    );
    assert!(err.to_string().contains("limit"), "{err}");

    let doc = vec![b' '; output::MAX_OUTPUT_ENVELOPE_BYTES + 1];
    assert!(matches!(
        OutputEnvelope::from_json(&doc),
        Err(ContractError::TooLarge { .. })
    ));
    let doc = vec![b' '; output::MAX_CALLBACK_BYTES + 1];
    assert!(matches!(
        CallbackPayload::from_json(&doc),
        Err(ContractError::TooLarge { .. })
    ));
}
