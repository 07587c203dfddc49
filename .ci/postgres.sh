#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL server on loopback for the scale-out tests.
#   source .ci/postgres.sh start   -> exports HEROSTACK_TEST_POSTGRES (a storage URL)
#   bash .ci/postgres.sh stop
set -euo pipefail
PGPORT=${PGPORT:-54329}
PGROOT=${PGROOT:-/tmp/herostack-pg}
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

case "${1:-}" in
  install)
    if [ -z "$(pg_bin)" ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    ;;
  start)
    BIN=$(pg_bin)
    [ -n "$BIN" ] || { echo "postgres.sh: PostgreSQL is not installed (run: bash .ci/postgres.sh install)" >&2; exit 1; }
    if [ -f "$PGROOT/data/postmaster.pid" ]; then
      su postgres -c "$BIN/pg_ctl -D $PGROOT/data stop -m fast" >/dev/null 2>&1 || true
    fi
    rm -rf "$PGROOT"; mkdir -p "$PGROOT"; chown postgres "$PGROOT"
    su postgres -c "$BIN/initdb -D $PGROOT/data -A trust -U postgres" >/dev/null
    su postgres -c "$BIN/pg_ctl -D $PGROOT/data -l $PGROOT/log -w start -o '-h 127.0.0.1 -p $PGPORT -k $PGROOT -c max_connections=200'" >/dev/null
    su postgres -c "$BIN/createdb -h 127.0.0.1 -p $PGPORT -U postgres herostack_test"
    export HEROSTACK_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/herostack_test"
    echo "PostgreSQL on 127.0.0.1:$PGPORT ($HEROSTACK_TEST_POSTGRES)"
    ;;
  stop)
    BIN=$(pg_bin)
    [ -n "$BIN" ] && [ -d "$PGROOT/data" ] && su postgres -c "$BIN/pg_ctl -D $PGROOT/data stop -m fast" >/dev/null || true
    rm -rf "$PGROOT"
    ;;
  *) echo "usage: postgres.sh install|start|stop" >&2; exit 2 ;;
esac
