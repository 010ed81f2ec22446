#!/usr/bin/env bash
# Docker backend benchmark fixture. Starts `runway dev` (release build) with the suite's FMU
# validator on the Docker backend, its callback service and identity on a Docker network of
# its own, and prints what to time:
#   A: `runway submit` of one FMU run through the Docker backend, to its result
#   B: a bare `docker run` of the same image, same hardening, on a prepared attempt
#   C: N runs submitted at once, to all their results (the backend launching in parallel)
#   D: the same N runs one after another (as a one-at-a-time local mode does)
# It leaves `runway dev` running until you press Enter, then stops it and removes the network.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-/tmp/runway-bench-docker}"
n="${BENCH_RUNS:-8}"
bin="$root/target/release"
for b in runway runway-validator-runner; do
  [ -x "$bin/$b" ] || { echo "bench: cargo build --release -p runway-cli -p runway-validator-runner first" >&2; exit 1; }
done
RUNWAY_RUNNER_BIN="$bin/runway-validator-runner" "$root/containers/build-images.sh" >/dev/null
rm -rf "$dir" && mkdir -p "$dir"
"$root/scripts/build-test-fmu.sh" "$dir/decay.fmu"
net="runway-bench-$$"
docker network create "$net" >/dev/null
gw="$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$net")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
lp="$(free_port)"; cp="$(free_port)"; ip="$(free_port)"
cat > "$dir/validators.json" <<JSON
{"validators": [{"id": "fmu", "type": "FMU", "version": "2.0", "backend": "docker",
  "image": "runway/fmu-validator:local", "network": "connected", "timeout_seconds": 120,
  "max_attempts": 1, "limits": {"cpus": 1, "memory_mb": 1024, "pids": 128}}]}
JSON
RUNWAY_DATA_DIR="$dir/data" RUNWAY_VALIDATORS_FILE="$dir/validators.json" \
  RUNWAY_LAUNCHER_ADDR="127.0.0.1:$lp" RUNWAY_CALLBACK_ADDR="$gw:$cp" RUNWAY_IDENTITY_ADDR="$gw:$ip" \
  RUNWAY_DOCKER_NETWORK="$net" RUNWAY_DOCKER_SCOPE="bench-$$" RUST_LOG=warn \
  "$bin/runway" dev >"$dir/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null; docker network rm "$net" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$lp/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
inputs='{"input_values": {"u": 0.5}, "simulation": {"stop_time": 2, "step_size": 0.1}}'
submit="$bin/runway submit --launcher-url http://127.0.0.1:$lp $dir/decay.fmu --inputs '$inputs'"
# B's attempt: the envelope of a finished run, re-pointed at a fresh folder with no callback.
eval "$submit" >/dev/null 2>&1
python3 - "$dir" <<'PY'
import glob, json, os, shutil, sys
d = sys.argv[1]
src = sorted(glob.glob(f"{d}/data/objects/runs/*/*/attempts/*/input.json"))[0]
env = json.load(open(src))
att = os.path.join(d, "bare", "attempt")
os.makedirs(att)
os.chown(att, 1000, 1000)
env["context"]["expected_output_uri"] = "file://" + att + "/output.json"
env["context"]["execution_bundle_uri"] = "file://" + att
env["context"]["skip_callback"] = True
json.dump(env, open(os.path.join(att, "input.json"), "w"))
open(os.path.join(d, "bare", "mounts"), "w").write(" ".join(
    f"-v {f['uri'][7:]}:{f['uri'][7:]}:ro" for f in env["input_files"]) + f" -v {att}:{att}:rw")
PY
att="$dir/bare/attempt"
bare="docker run --rm --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges:true --read-only --init \
--tmpfs /scratch:rw,exec,nosuid,nodev,size=1024m,mode=1777 --pids-limit 128 --memory 1g --cpus 1 --network $net \
-e RUNWAY_WORK_DIR=/scratch -e TMPDIR=/scratch $(cat "$dir/bare/mounts") runway/fmu-validator:local file://$att/input.json"
echo "A: sh -c \"$submit >/dev/null 2>&1\""
echo "B: sh -c 'rm -f $att/output.json; exec $bare'"
echo "C: sh -c 'for i in \$(seq $n); do $submit >/dev/null 2>&1 & done; wait'"
echo "D: sh -c 'for i in \$(seq $n); do $submit >/dev/null 2>&1; done'"
echo "(runway dev on 127.0.0.1:$lp; press Enter to stop)"
read -r _ || true
