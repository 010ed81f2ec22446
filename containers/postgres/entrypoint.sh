#!/bin/sh
# Initialises the cluster on first start, then runs the server in the foreground.
set -e
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$bin/initdb" -D "$PGDATA" -U postgres -A trust --no-sync -E UTF8 >/dev/null
  echo "host all all all trust" >> "$PGDATA/pg_hba.conf"
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
