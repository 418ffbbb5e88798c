#!/bin/sh
# Regenerates the dashboard screenshots in docs/ from the browser tests (Debian's chromium and
# chromium-driver must be installed): the tests save every main page under
# $CARGO_TARGET_DIR/browser-screenshots, and three of them are copied here.
set -eu
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
CARGO_TARGET_DIR="$target" cargo test -p coffer-server --test browser
for page in secrets-grid environment audit-live; do
  cp "$target/browser-screenshots/$page.png" "docs/dashboard-$page.png"
done
echo "docs/dashboard-{secrets-grid,environment,audit-live}.png updated"
