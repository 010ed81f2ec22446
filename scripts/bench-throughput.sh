#!/usr/bin/env bash
# Runway's throughput beside its database's own ceiling, in one run on this machine.
#
# Starts a throwaway PostgreSQL 15 cluster (fsync on, defaults otherwise) on a free 127.0.0.1
# port, measures it with pgbench (insert-only, 32 clients), then runs `runway bench` (release
# build, service in its own process, file storage on this disk) on Postgres and on SQLite, and an
# open-loop run at a fixed rate on each for latencies. Prints the ceiling (pgbench tx/s ÷ Runway's
# commits per run) and Runway's share of it. Where /dev/shm is a tmpfs, SQLite runs once more
# with the objects there, which shows what the file store's work on this disk costs. The
# cluster and the objects are removed however the script ends.
#
#   scripts/bench-throughput.sh              # 2,000 runs each
#   RUNS=100000 scripts/bench-throughput.sh  # the drain test
#   RATE=500 PGBENCH_SECONDS=20 scripts/bench-throughput.sh
#   SETTLE_SECONDS=0 scripts/bench-throughput.sh   # no pause before each bench (see settle)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${RUNS:-2000}"
clients="${CLIENTS:-32}"
rate="${RATE:-500}"
pgbench_seconds="${PGBENCH_SECONDS:-15}"
pg_bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
for tool in initdb pg_ctl pgbench psql; do
  command -v "$pg_bin/$tool" >/dev/null 2>&1 || command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-throughput: $tool not found; install PostgreSQL 15 (server and client) or set PG_BIN." >&2
    exit 1
  }
done
pgbench_cmd="$(command -v "$pg_bin/pgbench" || command -v pgbench)"
psql_cmd="$(command -v "$pg_bin/psql" || command -v psql)"

cargo build --release --locked -p runway-cli
runway="$root/target/release/runway"

work="$(mktemp -d /tmp/runway-bench.XXXXXX)"
if [ "$(id -u)" = 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi
shm_objects="/dev/shm/runway-bench-$$"
cleanup() {
  status=$?
  rm -rf "$shm_objects"
  as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT INT TERM
chmod 755 "$work"
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 >"$work/pg/initdb.log" 2>&1 || {
  cat "$work/pg/initdb.log" >&2; exit 1; }
as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -o \
  "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$work/pg -c max_connections=200" \
  start >/dev/null
url="postgres://postgres@127.0.0.1:$port"
"$psql_cmd" -q "$url/postgres" -c "CREATE DATABASE ceiling" -c "CREATE DATABASE runway_bench"

echo "== pgbench: insert-only, $clients clients, ${pgbench_seconds} s (fsync on)"
"$psql_cmd" -q "$url/ceiling" -c "CREATE TABLE history (id bigserial PRIMARY KEY, aid int, delta int, mtime timestamptz)"
cat >"$work/insert.sql" <<'SQL'
\set aid random(1, 100000)
INSERT INTO history (aid, delta, mtime) VALUES (:aid, 1, now());
SQL
"$pgbench_cmd" -n -c "$clients" -j 2 -T "$pgbench_seconds" -f "$work/insert.sql" "$url/ceiling" \
  | tee "$work/pgbench.txt" | grep -E "tps|latency average"
tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.txt" | head -n1)"

# Each bench removes its temp dir (thousands of files and folders) when it ends. On ext4 without
# a journal (this machine's root), allocating an inode skips the ones freed in the last 60 s
# (360 s while their inode-table block is dirty; `RECENTCY_MIN`, `RECENTCY_DIRTY` in the
# kernel's fs/ext4/ialloc.c), one buffer-cache lookup each, so a bench started right after
# another's cleanup spends up to twice the CPU per run (`perf`: `recently_deleted` under
# `ext4_mkdir`/`ext4_create`). Wait it out.
settle="${SETTLE_SECONDS:-65}"
settle() { sleep "$settle"; }

echo "== runway bench: Postgres (same cluster)"
settle
"$runway" bench --runs "$runs" --concurrency "$clients" --database-url "$url/runway_bench" | tee "$work/pg.txt"
echo "== runway bench: SQLite"
settle
"$runway" bench --runs "$runs" --concurrency "$clients" | tee "$work/sqlite.txt"
sqlite_shm_rps=0
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then
  echo "== runway bench: SQLite, objects on tmpfs ($shm_objects)"
  settle
  "$runway" bench --runs "$runs" --concurrency "$clients" --storage "file://$shm_objects" \
    | tee "$work/sqlite-shm.txt"
  rm -rf "$shm_objects"
  sqlite_shm_rps="$(sed -n 's/.*(\([0-9.]*\) runs\/s end to end).*/\1/p' "$work/sqlite-shm.txt")"
fi
echo "== runway bench: open loop at $rate runs/s, Postgres"
settle
"$runway" bench --runs "$(( rate * 10 ))" --rate "$rate" --database-url "$url/runway_bench" | tee "$work/open.txt"
echo "== runway bench: open loop at $rate runs/s, SQLite"
settle
"$runway" bench --runs "$(( rate * 10 ))" --rate "$rate" | tee "$work/open-sqlite.txt"

pg_rps="$(sed -n 's/.*(\([0-9.]*\) runs\/s end to end).*/\1/p' "$work/pg.txt")"
sqlite_rps="$(sed -n 's/.*(\([0-9.]*\) runs\/s end to end).*/\1/p' "$work/sqlite.txt")"
commits="$(sed -n 's/^  commits per run *\([0-9.]*\).*/\1/p' "$work/pg.txt")"
writes="$(sed -n 's/^  writes per run *\([0-9.]*\).*/\1/p' "$work/pg.txt")"
python3 - "$tps" "$commits" "$writes" "$pg_rps" "$sqlite_rps" "$sqlite_shm_rps" <<'PY'
import sys
tps, commits, writes, pg, sqlite, sqlite_shm = map(float, sys.argv[1:])
ceiling = tps / commits
print("== summary")
print(f"  pgbench insert-only     {tps:8.0f} tx/s")
print(f"  Runway commits per run  {commits:8.2f}  ({writes:.2f} of them writing)")
print(f"  commit ceiling          {ceiling:8.0f} runs/s  (pgbench tx/s / commits per run)")
print(f"  Runway on Postgres      {pg:8.0f} runs/s  = {pg / ceiling:.2f} of the ceiling (goal 0.6, and 1,000 runs/s)")
if writes > 0:
    # pgbench's transactions each write; so do only `writes` of Runway's commits per run.
    print(f"  counting writing commits only: ceiling {tps / writes:.0f} runs/s, share {pg * writes / tps:.2f}")
print(f"  Runway on SQLite        {sqlite:8.0f} runs/s  (goal 1,000 runs/s)")
if sqlite_shm > 0:
    print(f"  SQLite, objects on tmpfs {sqlite_shm:7.0f} runs/s  (what the file store on this disk costs)")
PY
