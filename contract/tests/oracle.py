"""Conformance oracle: validibot-shared's own Pydantic models, driven over stdin/stdout.

Started by contract/tests/conformance.rs with the project venv's Python. One JSON request per
line in, one JSON answer per line out:

- {"op": "check", "kind": "input"|"output"|"callback", "json": "<document>"}
  -> {"ok": true, "dump": "<model_dump_json>", "sha256": "<input_envelope_sha256>"|null}
  |  {"ok": false, "error": "<pydantic's message>"}
  The model is chosen by validator.type, as Validibot does: EnergyPlus and FMU envelopes use
  their typed subclasses, every other type the base envelope.
- {"op": "generate", "seed": N, "count": K}
  -> {"inputs": [{"json", "sha256"}], "outputs": [{"json"}], "callbacks": [{"json"}]}
  Random envelopes built with the models' constructors (so they are what Validibot would emit).
"""

from __future__ import annotations

import json
import random
import string
import sys
import uuid

from validibot_shared.canonicalization import (
    compute_callback_nonce_commitment,
    sha256_hex_for_model,
)
from validibot_shared.energyplus.envelopes import (
    EnergyPlusInputEnvelope,
    EnergyPlusInputs,
    EnergyPlusOutputEnvelope,
    EnergyPlusOutputs,
)
from validibot_shared.energyplus.models import (
    EnergyPlusSimulationLogs,
    EnergyPlusSimulationMetrics,
    EnergyPlusSimulationOutputs,
)
from validibot_shared.fmu.envelopes import (
    FMUInputEnvelope,
    FMUInputs,
    FMUOutputEnvelope,
    FMUOutputs,
    FMUSimulationConfig,
)
from validibot_shared.validations.envelopes import (
    ExecutionContext,
    InputFileItem,
    MessageLocation,
    OrganizationInfo,
    RawOutputs,
    ResourceFileItem,
    Severity,
    SupportedMimeType,
    ValidationArtifact,
    ValidationCallback,
    ValidationInputEnvelope,
    ValidationMessage,
    ValidationMetric,
    ValidationOutputEnvelope,
    ValidationStatus,
    ValidationTiming,
    ValidatorInfo,
    ValidatorType,
    WorkflowInfo,
)

INPUT_MODELS = {"ENERGYPLUS": EnergyPlusInputEnvelope, "FMU": FMUInputEnvelope}
OUTPUT_MODELS = {"ENERGYPLUS": EnergyPlusOutputEnvelope, "FMU": FMUOutputEnvelope}


def validator_type_of(document: str) -> str | None:
    try:
        return json.loads(document)["validator"]["type"]
    except Exception:  # noqa: BLE001 - any shape problem is the model's to report
        return None


def check(kind: str, document: str) -> dict:
    if kind == "input":
        model = INPUT_MODELS.get(validator_type_of(document), ValidationInputEnvelope)
    elif kind == "output":
        model = OUTPUT_MODELS.get(validator_type_of(document), ValidationOutputEnvelope)
    elif kind == "callback":
        model = ValidationCallback
    else:
        return {"ok": False, "error": f"unknown kind {kind!r}"}
    try:
        parsed = model.model_validate_json(document)
    except Exception as exc:  # noqa: BLE001 - report every rejection to the caller
        return {"ok": False, "error": str(exc)}
    sha = sha256_hex_for_model(parsed) if kind == "input" else None
    return {"ok": True, "dump": parsed.model_dump_json(), "sha256": sha}


# --- random envelopes -------------------------------------------------------------------

TRICKY = [
    "",
    "plain",
    "quote\" and \\ backslash",
    "tab\tnew\nline\rcr",
    "\x00\x01\x1f\x7f",
    "\u2028\u2029",
    "é ö ü ß",
    "€ 中文 日本語",
    "😀 🚀 \U0001f9ea",
    "\ufb33\u0080",
    "a" * 300,
]


def rand_str(rng: random.Random, max_len: int = 12) -> str:
    if rng.random() < 0.3:
        return rng.choice(TRICKY)
    alphabet = string.ascii_letters + string.digits + " _-./:é€😀\"\\\n\t"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))


def rand_name(rng: random.Random) -> str:
    base = "".join(rng.choice(string.ascii_letters + "é€ _-.") for _ in range(rng.randint(1, 10)))
    name = base + rng.choice([".idf", ".epw", ".fmu", ".json", ""])
    return name if name not in {".", ".."} else "x" + name


def rand_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice([0.0, 0.1, 1.0, 1e21, 1e-7, 5e-324, 1.7976931348623157e308, 123.456, 1e16, 0.000001])
    if pick < 0.6:
        return rng.uniform(-1e6, 1e6)
    import struct

    while True:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if value == value and value not in (float("inf"), float("-inf")):
            return value


def rand_json(rng: random.Random, depth: int = 0):
    pick = rng.random()
    if depth > 2 or pick < 0.5:
        return rng.choice(
            [
                lambda: None,
                lambda: rng.random() < 0.5,
                lambda: rng.randint(-(2**63), 2**63 - 1),
                lambda: rng.randint(-1000, 1000),
                lambda: rand_float(rng),
                lambda: rand_str(rng),
            ]
        )()
    if pick < 0.75:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rand_str(rng, 6): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def rand_uri(rng: random.Random, leaf: str = "x") -> str:
    if rng.random() < 0.5:
        return f"gs://bucket-{rng.randint(0, 9)}/runs/{uuid.UUID(int=rng.getrandbits(128))}/{leaf}"
    return f"file:///var/runway/{uuid.UUID(int=rng.getrandbits(128))}/{leaf}"


def rand_hex(rng: random.Random) -> str:
    return "%064x" % rng.getrandbits(256)


def rand_nonce(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "_-"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(43, 90)))


def rand_input(rng: random.Random):
    vtype = rng.choice(list(ValidatorType))
    attempt = str(uuid.UUID(int=rng.getrandbits(128)))
    prefix = rand_uri(rng, f"attempts/{attempt}")
    callbacks = rng.random() < 0.8
    nonce = rand_nonce(rng) if callbacks or rng.random() < 0.5 else None
    context = ExecutionContext(
        execution_attempt_id=attempt,
        step_run_id=rand_str(rng) or "s",
        attempt_contract_version="validibot.attempt.v2",
        expected_output_uri=prefix + "/output.json",
        callback_id=str(uuid.UUID(int=rng.getrandbits(128))) if callbacks else None,
        callback_nonce=nonce,
        callback_nonce_commitment=compute_callback_nonce_commitment(nonce) if nonce else None,
        callback_url=rng.choice(
            ["http://127.0.0.1:8081", "https://callback.example.com/v1/callbacks", "http://[::1]:9/x?y=1"]
        )
        if callbacks
        else None,
        skip_callback=not callbacks and rng.random() < 0.5,
        execution_bundle_uri=prefix,
        timeout_seconds=rng.randint(1, 86400),
        tags=[rand_str(rng) for _ in range(rng.randint(0, 3))],
    )
    files = [
        InputFileItem(
            name=rand_name(rng),
            mime_type=rng.choice(list(SupportedMimeType)),
            role=rng.choice([None, "primary-model", rand_str(rng)]),
            port_key=rng.choice(["primary_model", "fmu_model", "x" * 255]),
            uri=rand_uri(rng, "in"),
            size_bytes=rng.randint(0, 2**40),
            sha256=rand_hex(rng),
            storage_version=rng.choice([str(rng.getrandbits(60)), "sha256:" + rand_hex(rng)]),
        )
        for _ in range(rng.randint(0, 3))
    ]
    resources = [
        ResourceFileItem(
            id=str(uuid.UUID(int=rng.getrandbits(128))),
            name=rand_name(rng),
            type=rng.choice(["weather", "library"]),
            port_key="weather_file",
            uri=rand_uri(rng, "r"),
            size_bytes=rng.randint(0, 10**9),
            sha256=rand_hex(rng),
            storage_version="sha256:" + rand_hex(rng),
        )
        for _ in range(rng.randint(0, 2))
    ]
    common = dict(
        run_id=str(uuid.UUID(int=rng.getrandbits(128))),
        validator=ValidatorInfo(id=rand_str(rng), type=vtype, version=rand_str(rng, 5)),
        org=OrganizationInfo(id=rand_str(rng), name=rand_str(rng)),
        workflow=WorkflowInfo(id=rand_str(rng), step_id=rand_str(rng), step_name=rng.choice([None, rand_str(rng)])),
        input_files=files,
        resource_files=resources,
        context=context,
    )
    if vtype == ValidatorType.ENERGYPLUS:
        inputs = EnergyPlusInputs(
            timestep_per_hour=rng.randint(1, 60),
            run_period_days=rng.choice([None, rng.randint(1, 365)]),
            invocation_mode=rng.choice(["cli", "python_api"]),
            idf_checks=rng.sample(["duplicate-names", "hvac-sizing", "schedule-coverage"], rng.randint(0, 3)),
            run_simulation=rng.random() < 0.5,
            review_profile=rng.choice(["standard", "leed_review"]),
        )
        return EnergyPlusInputEnvelope(inputs=inputs, **common)
    if vtype == ValidatorType.FMU:
        start = abs(rand_float(rng)) % 100
        inputs = FMUInputs(
            input_values={rand_str(rng, 8): rand_json(rng, 1) for _ in range(rng.randint(0, 4))},
            simulation=FMUSimulationConfig(
                start_time=start,
                stop_time=start + rng.uniform(0.001, 1000),
                step_size=rng.uniform(1e-6, 10),
                tolerance=rng.choice([None, rng.uniform(1e-9, 1e-2)]),
            ),
            output_variables=[rand_str(rng, 8) for _ in range(rng.randint(0, 3))],
        )
        return FMUInputEnvelope(inputs=inputs, **common)
    inputs = {rand_str(rng, 8): rand_json(rng) for _ in range(rng.randint(0, 6))}
    if rng.random() < 0.2:
        inputs["nested"] = {"callback_nonce": rand_nonce(rng), "k": 1}
    return ValidationInputEnvelope(inputs=inputs, **common)


def rand_output(rng: random.Random):
    vtype = rng.choice(list(ValidatorType))
    attempt = str(uuid.UUID(int=rng.getrandbits(128)))
    messages = [
        ValidationMessage(
            severity=rng.choice(list(Severity)),
            code=rng.choice([None, "EP001", rand_str(rng)]),
            text=rand_str(rng, 40),
            location=rng.choice(
                [None, MessageLocation(file_role=rand_str(rng), line=rng.randint(1, 10**6), column=None, path=None)]
            ),
            tags=[rand_str(rng)],
        )
        for _ in range(rng.randint(0, 4))
    ]
    metrics = [
        ValidationMetric(
            name=rand_str(rng) or "m",
            value=rng.choice([rng.randint(-(2**63), 2**63 - 1), rand_float(rng), rand_str(rng)]),
            unit=rng.choice([None, "kWh", "W"]),
            category=rng.choice([None, "energy"]),
        )
        for _ in range(rng.randint(0, 4))
    ]
    artifacts = [
        ValidationArtifact(
            name=rand_name(rng),
            type="simulation-db",
            mime_type=rng.choice([None, "application/x-sqlite3"]),
            uri=rand_uri(rng, "outputs/eplusout.sql"),
            size_bytes=rng.randint(0, 10**9),
            sha256=rand_hex(rng),
            storage_version=str(rng.getrandbits(50)),
        )
        for _ in range(rng.randint(0, 2))
    ]
    timing = ValidationTiming(
        queued_at=rng.choice([None, "2026-11-22T10:00:00Z"]),
        started_at=rng.choice([None, "2026-11-22T10:00:01.123456+00:00"]),
        finished_at=rng.choice([None, "2026-11-22T11:00:01.5+02:00"]),
    )
    common = dict(
        run_id=str(uuid.UUID(int=rng.getrandbits(128))),
        step_run_id=rand_str(rng) or "s",
        execution_attempt_id=attempt,
        attempt_contract_version="validibot.attempt.v2",
        input_envelope_sha256=rand_hex(rng),
        output_uri=rand_uri(rng, "output.json"),
        validator=ValidatorInfo(id=rand_str(rng), type=vtype, version="1.0"),
        status=rng.choice(list(ValidationStatus)),
        timing=timing,
        messages=messages,
        metrics=metrics,
        artifacts=artifacts,
        raw_outputs=rng.choice([None, RawOutputs(format="directory", manifest_uri=rand_uri(rng, "manifest.json"))]),
    )
    if vtype == ValidatorType.ENERGYPLUS:
        outputs = EnergyPlusOutputs(
            outputs=EnergyPlusSimulationOutputs(eplusout_sql=rng.choice([None, "eplusout.sql"])),
            metrics=EnergyPlusSimulationMetrics(
                site_electricity_kwh=rng.choice([None, abs(rand_float(rng))]),
                peak_electric_demand_w=rng.choice([None, 1000.0]),
            ),
            logs=rng.choice([None, EnergyPlusSimulationLogs(err_tail=rand_str(rng, 60))]),
            energyplus_returncode=rng.randint(-9, 9),
            execution_seconds=rng.uniform(0, 100),
            invocation_mode="cli",
            energyplus_binary_version=rng.choice([None, "25.2.0"]),
            warning_count=rng.randint(0, 10),
            completed_successfully=rng.random() < 0.5,
            has_sql_output=rng.random() < 0.5,
        )
        return EnergyPlusOutputEnvelope(outputs=outputs, **common)
    if vtype == ValidatorType.FMU:
        outputs = rng.choice(
            [
                None,
                FMUOutputs(
                    output_values={rand_str(rng, 6): rand_json(rng, 2) for _ in range(rng.randint(0, 3))},
                    fmu_guid=str(uuid.UUID(int=rng.getrandbits(128))),
                    fmi_version="2.0",
                    model_name=rand_str(rng),
                    execution_seconds=rng.uniform(0, 5),
                    simulation_time_reached=rng.uniform(0, 5),
                ),
            ]
        )
        return FMUOutputEnvelope(outputs=outputs, **common)
    outputs = rng.choice([None, {rand_str(rng, 6): rand_json(rng) for _ in range(rng.randint(0, 3))}])
    return ValidationOutputEnvelope(outputs=outputs, **common)


def rand_callback(rng: random.Random) -> ValidationCallback:
    return ValidationCallback(
        run_id=str(uuid.UUID(int=rng.getrandbits(128))),
        callback_id=str(uuid.UUID(int=rng.getrandbits(128))),
        callback_nonce=rand_nonce(rng),
        status=rng.choice(list(ValidationStatus)),
        result_uri=rand_uri(rng, "output.json"),
    )


def generate(seed: int, count: int) -> dict:
    rng = random.Random(seed)
    inputs = []
    for _ in range(count):
        envelope = rand_input(rng)
        inputs.append({"json": envelope.model_dump_json(), "sha256": sha256_hex_for_model(envelope)})
    outputs = [{"json": rand_output(rng).model_dump_json()} for _ in range(count)]
    callbacks = [{"json": rand_callback(rng).model_dump_json()} for _ in range(count)]
    return {"inputs": inputs, "outputs": outputs, "callbacks": callbacks}


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "check":
            answer = check(request["kind"], request["json"])
        elif request["op"] == "generate":
            answer = generate(int(request["seed"]), int(request["count"]))
        else:
            answer = {"ok": False, "error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
