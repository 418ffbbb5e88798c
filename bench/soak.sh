#!/usr/bin/env bash
# Soaks coffer-server for DURATION seconds (600) at 70 % of its measured maximum, 90/10 reads and
# writes, and checks p99 drift, RSS and open files (bench/soak.py explains the criteria). Not run
# in CI: it takes ten minutes.
#
#   bash bench/soak.sh                                   # SQLite
#   DATABASE_URL=postgres://…/empty_db bash bench/soak.sh  # PostgreSQL
#
# Environment (all optional): DURATION (600), WINDOW (30), WARMUP (300), CLIENTS (8), PORT (18291),
# DATABASE_URL, PROFILE (release, or dev).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PROFILE="${PROFILE:-release}"
printf 'soak: building coffer-server (%s)\n' "$PROFILE" >&2
cargo build --quiet --profile "$PROFILE" -p coffer-server --bin coffer-server
dir=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
COFFER_BIN="$CARGO_TARGET_DIR/$dir/coffer-server" WORK="$WORK" python3 bench/soak.py
