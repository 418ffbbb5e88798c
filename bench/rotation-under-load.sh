#!/usr/bin/env bash
# Rotates the master key while reads and writes run, kills a rotation mid-way and reruns it, and
# checks that no request failed and that the new key alone reads everything afterwards
# (bench/rotation_under_load.py explains the steps). About 15 s.
#
#   bash bench/rotation-under-load.sh                          # SQLite
#   DATABASE_URL=postgres://… bash bench/rotation-under-load.sh  # PostgreSQL: an empty database
#
# Environment (all optional): THREADS (8), PROJECTS (40), PORT (18291), DATABASE_URL,
# PROFILE (release, or dev for a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PROFILE="${PROFILE:-release}"
printf 'rotation: building coffer-server (%s)\n' "$PROFILE" >&2
cargo build --quiet --profile "$PROFILE" -p coffer-server --bin coffer-server
dir=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
COFFER_BIN="$CARGO_TARGET_DIR/$dir/coffer-server" WORK="$WORK" python3 bench/rotation_under_load.py
