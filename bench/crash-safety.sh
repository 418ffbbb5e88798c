#!/usr/bin/env bash
# Kills coffer-server with SIGKILL during a storm of writes, ROUNDS times, restarts it, and checks
# that no acknowledged write was lost, every secret still decrypts, and a restart takes < 2 s.
#
#   bash bench/crash-safety.sh                 # SQLite, in a temporary data directory
#   DATABASE_URL=postgres://… bash bench/crash-safety.sh   # PostgreSQL: an empty database
#
# The client keeps a ledger of acknowledged writes (bench/crash_safety.py explains the check).
# About 2 s per round. Environment (all optional): ROUNDS (20), THREADS (8 writers),
# KEYS_PER_THREAD (25), PORT (18291), DATABASE_URL, PROFILE (release, or dev for a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PROFILE="${PROFILE:-release}"
printf 'crash-safety: building coffer-server (%s)\n' "$PROFILE" >&2
cargo build --quiet --profile "$PROFILE" -p coffer-server --bin coffer-server
dir=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
COFFER_BIN="$CARGO_TARGET_DIR/$dir/coffer-server" WORK="$WORK" python3 bench/crash_safety.py
