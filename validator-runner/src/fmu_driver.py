"""Simulates one FMU with fmpy for Runway's validator-runner, in a process of its own.

Usage: python3 fmu_driver.py REQUEST.json RESULT.json

REQUEST: {"fmu", "start_time", "stop_time", "step_size", "tolerance", "input_values",
"output_variables"}. RESULT: {"ok": true, "output_values", "fmu_guid", "fmi_version",
"model_name", "time_reached"} or {"ok": false, "kind": "invalid_input" | "simulation", "error"}.
"""

import json
import math
import sys


def main(request_path, result_path):
    with open(request_path) as f:
        req = json.load(f)

    def answer(result):
        with open(result_path + ".tmp", "w") as f:
            json.dump(result, f)
        import os
        os.replace(result_path + ".tmp", result_path)

    try:
        from fmpy import read_model_description, simulate_fmu
    except Exception as e:  # fmpy missing is the runner's problem, not the model's
        answer({"ok": False, "kind": "environment", "error": f"cannot import fmpy: {e}"})
        return

    try:
        md = read_model_description(req["fmu"], validate=False)
    except Exception as e:
        answer({"ok": False, "kind": "invalid_input", "error": f"modelDescription.xml cannot be read: {e}"})
        return
    by_name = {v.name: v for v in md.modelVariables}
    outputs = req["output_variables"] or [v.name for v in md.modelVariables if v.causality == "output"]
    unknown = [n for n in list(req["input_values"]) + outputs if n not in by_name]
    if unknown:
        answer({"ok": False, "kind": "invalid_input",
                "error": "the FMU has no variable(s) " + ", ".join(repr(n) for n in unknown)})
        return
    settable = {"input", "parameter"}
    fixed = [n for n in req["input_values"] if by_name[n].causality not in settable]
    if fixed:
        answer({"ok": False, "kind": "invalid_input",
                "error": "not an input or parameter of the FMU: " + ", ".join(repr(n) for n in fixed)})
        return
    fmi_type = "CoSimulation" if md.coSimulation is not None else "ModelExchange"
    try:
        result = simulate_fmu(
            req["fmu"],
            start_time=req["start_time"],
            stop_time=req["stop_time"],
            step_size=req["step_size"],
            output_interval=req["step_size"],
            relative_tolerance=req["tolerance"],
            start_values=req["input_values"],
            output=outputs,
            fmi_type=fmi_type,
        )
    except Exception as e:
        answer({"ok": False, "kind": "simulation", "error": f"{type(e).__name__}: {e}"})
        return
    last = result[-1]
    values = {}
    for name in outputs:
        v = last[name].item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        values[name] = v
    answer({
        "ok": True,
        "output_values": values,
        "fmu_guid": md.guid,
        "fmi_version": md.fmiVersion,
        "model_name": md.modelName,
        "time_reached": float(last["time"]),
    })


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
