#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of hostile input (fuzz/, cargo-fuzz on the nightly
# toolchain): each target for SECONDS (first argument, default 600), FUZZ_JOBS targets at once
# (default 2), starting from the seeds in fuzz/corpus/<target>. New inputs libFuzzer finds go to
# .fuzz-run/corpus/<target> (git-ignored), crashes to fuzz/artifacts/<target>. Installs
# cargo-fuzz if it is missing. Prints, per target, the inputs tried, crashes and hangs; exits
# non-zero if any target crashed or hung. `scripts/fuzz.sh report` prints the table of the last
# campaign again without running anything. (The test suite replays the seeds on stable:
# fuzz-targets/tests/replay.rs.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-600}"
jobs="${FUZZ_JOBS:-2}"
run="$root/.fuzz-run"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)." >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo +nightly install --locked cargo-fuzz
fi
cd "$root/fuzz"
targets=$(cargo +nightly fuzz list)
if [ "$seconds" != report ]; then
  echo "fuzz: building $(echo $targets | wc -w) targets"
  cargo +nightly fuzz build -O
  mkdir -p "$run"
  export seconds run
  echo "$targets" | xargs -P "$jobs" -I{} sh -c '
    mkdir -p "$run/corpus/{}"
    cargo +nightly fuzz run -O {} "$run/corpus/{}" corpus/{} -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$run/{}.log" 2>&1
    echo $? >"$run/{}.rc"'
fi
status=0
printf "%-26s %12s %10s %8s %6s\n" target inputs exec/s crashes hangs
for t in $targets; do
  log="$run/$t.log"
  units=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  crashes=$(find artifacts/"$t" -name 'crash-*' 2>/dev/null | wc -l)
  hangs=$(find artifacts/"$t" -name 'timeout-*' 2>/dev/null | wc -l)
  printf "%-26s %12s %10s %8s %6s\n" "$t" "$units" "$speed" "$crashes" "$hangs"
  if [ "$(cat "$run/$t.rc" 2>/dev/null)" != 0 ] || [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then status=1; fi
done
exit $status
