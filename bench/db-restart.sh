#!/usr/bin/env bash
# Restarts PostgreSQL (fast, then immediate) under half of coffer-server's load and checks that
# requests meanwhile get 503 with Retry-After (never 500), that service is back within 5 s of the
# database, and that no acknowledged write is lost (bench/db_restart.py explains the steps).
# PostgreSQL is a private instance in a temporary directory on a free port, never the shared
# cluster; needs root (it runs PostgreSQL as the postgres user). About 30 s.
#
#   bash bench/db-restart.sh
#
# Environment (all optional): THREADS (8), PORT (18291), PROFILE (release, or dev), KEEP (keep
# the temporary directory, with the server's log).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
PGBIN=/usr/lib/postgresql/15/bin
WORK=$(mktemp -d)
chmod 755 "$WORK"
PGDATA="$WORK/pg"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
stop_pg() { su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m immediate stop" >/dev/null 2>&1 || true; }
trap 'stop_pg; [[ -n "${KEEP:-}" ]] || rm -rf "$WORK"' EXIT
install -d -o postgres -g postgres "$PGDATA"
su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U coffer >/dev/null"
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$PGPORT" "$PGDATA" >>"$PGDATA/postgresql.conf"
su postgres -c "$PGBIN/pg_ctl -D $PGDATA -w -l $PGDATA/server.log start" >/dev/null
su postgres -c "$PGBIN/createdb -h 127.0.0.1 -p $PGPORT -U coffer coffer"

PROFILE="${PROFILE:-release}"
printf 'db-restart: building coffer-server (%s)\n' "$PROFILE" >&2
cargo build --quiet --profile "$PROFILE" -p coffer-server --bin coffer-server
dir=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
COFFER_BIN="$CARGO_TARGET_DIR/$dir/coffer-server" WORK="$WORK" PG_CTL="$PGBIN/pg_ctl" PGDATA="$PGDATA" \
	DATABASE_URL="postgres://coffer@127.0.0.1:$PGPORT/coffer" python3 bench/db_restart.py
