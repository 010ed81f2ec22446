#!/usr/bin/env bash
# Builds examples/decay-fmu into a binary FMI 2.0 co-simulation FMU (linux64) at $1, compiling
# sources/decay.c against the FMI headers fmpy ships. Needs cc and the .venv from setup.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: build-test-fmu.sh OUT.fmu}"
python="${RUNWAY_FMU_PYTHON:-$root/.venv/bin/python}"
headers="$("$python" -c 'import fmpy, os; print(os.path.join(os.path.dirname(fmpy.__file__), "c-code"))')"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/binaries/linux64" "$stage/sources"
cc -shared -fPIC -O2 -I"$headers" -o "$stage/binaries/linux64/decay.so" \
  "$root/examples/decay-fmu/sources/decay.c" -lm
cp "$root/examples/decay-fmu/modelDescription.xml" "$stage/"
cp "$root/examples/decay-fmu/sources/decay.c" "$stage/sources/"
"$python" - "$stage" "$out" <<'PY'
import os, sys, zipfile
stage, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
    for dirpath, _, names in os.walk(stage):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            z.write(path, os.path.relpath(path, stage))
os.replace(out + ".tmp", out)
PY
