#!/usr/bin/env bash
# Kills coffer-server with SIGKILL while it serves reads, restarts it, and checks that every read
# it answered has its audit event in the database, once.
#
#   bash bench/read-audit-crash.sh
#
# Each round reads one secret at concurrency 8 for 2 s with `wrk` (counting the 200 answers it
# received) and kills the server at a random moment of it; the next round starts a new server on
# the same data directory, which adopts the read-audit journal the killed one left. At the end
# the number of `secrets.read` events must equal the number of answered reads (a read killed
# after its event was kept but before its answer left would count as stored and not answered: the
# check then reports it). SQLite, in a temporary data directory; about 3 s per round.
#
# Environment (all optional):
#   ROUNDS   kill -9 rounds (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
PORT=18290
JSON='content-type: application/json'

log() { printf 'crash: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for tool in wrk jq curl sqlite3; do
	command -v "$tool" >/dev/null || die "$tool is needed (apt-get install $tool)"
done

WORK=$(mktemp -d)
pid=
cleanup() {
	[[ -z "$pid" ]] || kill "$pid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

log "building coffer-server (release)"
cargo build --quiet --release -p coffer-server
COFFER="$CARGO_TARGET_DIR/release/coffer-server"
api="http://127.0.0.1:$PORT/api/v1"

start() {
	env COFFER_LISTEN="127.0.0.1:$PORT" COFFER_DATA_DIR="$WORK/data" COFFER_LOG=warn \
		"$COFFER" >>"$WORK/server.log" 2>&1 &
	pid=$!
	for _ in $(seq 1 100); do curl -fs "$api" >/dev/null && return; sleep 0.1; done
	die "coffer-server did not start (see $WORK/server.log)"
}

start
curl -fs -X POST "$api/auth/register" -H "$JSON" \
	-d '{"email":"crash@example.com","password":"correct horse battery staple","name":"Crash"}' >/dev/null
access=$(curl -fs -X POST "$api/auth/login" -H "$JSON" \
	-d '{"email":"crash@example.com","password":"correct horse battery staple"}' | jq -r .access_token)
session="authorization: Bearer $access"
curl -fs -X POST "$api/orgs" -H "$session" -H "$JSON" -d '{"name":"Crash","slug":"crash"}' >/dev/null
curl -fs -X POST "$api/orgs/crash/projects" -H "$session" -H "$JSON" -d '{"name":"Web","slug":"web"}' >/dev/null
secret="$api/orgs/crash/projects/web/environments/production/secrets"
curl -fs -X POST "$secret" -H "$session" -H "$JSON" -d '{"key":"K","value":"v"}' >/dev/null
token=$(curl -fs -X POST "$api/orgs/crash/service-tokens" -H "$session" -H "$JSON" \
	-d '{"name":"reader","project":"web","environments":["production"],"access":"read"}' | jq -r .token)

cat >"$WORK/count.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) answered = 0 end
function response(status) if status == 200 then answered = answered + 1 end end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("answered") end
  io.write(string.format("answered %d\n", n))
end
EOF

total=0
for round in $(seq 1 "$ROUNDS"); do
	(sleep "0.$((RANDOM % 9 + 1))" && kill -9 "$pid") &
	out=$(wrk -t1 -c8 -d2s --timeout 1s -s "$WORK/count.lua" -H "authorization: Bearer $token" \
		"$secret/K" 2>&1 || true)
	wait "$pid" 2>/dev/null || true
	answered=$(awk '/^answered/ { print $2 }' <<<"$out")
	total=$((total + ${answered:-0}))
	log "round $round: $answered reads answered before the kill"
	start
done

# An audit listing waits for the journal to reach the database.
curl -fs "$api/orgs/crash/audit-events?limit=1" -H "$session" >/dev/null
stored=$(sqlite3 "$WORK/data/coffer.db" "SELECT COUNT(*) FROM audit_events WHERE action = 'secrets.read'")
distinct=$(sqlite3 "$WORK/data/coffer.db" "SELECT COUNT(DISTINCT id) FROM audit_events WHERE action = 'secrets.read'")
log "answered reads: $total; stored read events: $stored ($distinct distinct)"
[[ "$stored" == "$distinct" ]] || die "an event was stored twice"
((stored >= total)) || die "$((total - stored)) answered reads have no audit event"
((stored == total)) || log "$((stored - total)) events of reads killed before their answer left (kept, as they should be)"
log "ok"
