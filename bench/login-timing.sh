#!/usr/bin/env bash
# Checks the login throttles and compares the time of a login for an unknown email with that of
# a wrong password (bench/login_timing.py explains the test). About a minute (argon2 at its
# default cost, TRIES logins of each kind).
#
#   bash bench/login-timing.sh
#
# Environment (all optional): TRIES (300), PORT (18291), PROFILE (release, or dev).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PROFILE="${PROFILE:-release}"
printf 'login-timing: building coffer-server (%s)\n' "$PROFILE" >&2
cargo build --quiet --profile "$PROFILE" -p coffer-server --bin coffer-server
dir=$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")
COFFER_BIN="$CARGO_TARGET_DIR/$dir/coffer-server" WORK="$WORK" python3 bench/login_timing.py
