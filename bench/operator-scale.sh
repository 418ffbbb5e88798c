#!/usr/bin/env bash
# coffer-operator at scale: 1,000 Environment resources over a handful of projects, on a real
# control plane (tests/k8s/testenv.sh) and a real coffer-server (SQLite), both started here.
#
#   bash bench/operator-scale.sh
#
# Prints the initial sync time (operator start → every Secret written and every Environment
# Ready), the operator's resident memory, and its traffic while idle: requests to coffer-server
# and to the Kubernetes API server per minute, read from the operator's own metrics. Targets:
# initial sync < 30 s, RSS < 100 MiB, idle: at most one conditional request per source per
# refresh interval, and no request to the API server besides its watches.
#
# Environment (all optional):
#   ENVIRONMENTS  Environment resources, one coffer-server environment each (default 1000)
#   PROJECTS      coffer-server projects (and Project resources) they are spread over (default 5)
#   INTERVAL      their refresh interval, seconds (default 30)
#   IDLE          seconds of idle traffic measured after the sync (default 120)
#   PROFILE       cargo profile of the binaries (default release)
#   WORK          scratch directory (default: a new temporary one, removed at the end)
# Runs for about IDLE + 3 minutes after the build; nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVIRONMENTS="${ENVIRONMENTS:-1000}"
PROJECTS="${PROJECTS:-5}"
INTERVAL="${INTERVAL:-30}"
IDLE="${IDLE:-120}"
PROFILE="${PROFILE:-release}"
SERVER_PORT="${SERVER_PORT:-18080}"
METRICS_PORT="${METRICS_PORT:-18081}"
export COFFER_K8S_PORT="${COFFER_K8S_PORT:-17443}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/coffer/target}"

log() { printf 'bench: %s\n' "$*" >&2; }
for tool in curl jq kubectl; do
	command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done

WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
export COFFER_K8S_RUN="$WORK/k8s"
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	bash tests/k8s/testenv.sh stop >/dev/null 2>&1 || true
	[[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

log "building coffer-server and coffer-operator ($PROFILE)"
cargo build --quiet --profile "$PROFILE" -p coffer-server -p coffer-operator
dir="$PROFILE"; [[ "$PROFILE" == dev ]] && dir=debug
BIN="$CARGO_TARGET_DIR/$dir"

log "starting the control plane"
bash tests/k8s/testenv.sh build >/dev/null
bash tests/k8s/testenv.sh start crds/*.yaml >/dev/null
export KUBECONFIG="$COFFER_K8S_RUN/kubeconfig"

log "starting coffer-server on 127.0.0.1:$SERVER_PORT"
COFFER_LISTEN="127.0.0.1:$SERVER_PORT" COFFER_DATA_DIR="$WORK/coffer" COFFER_LOG=warn \
	"$BIN/coffer-server" >"$WORK/server.log" 2>&1 &
pids+=($!)
API="http://127.0.0.1:$SERVER_PORT/api/v1"
for _ in $(seq 1 100); do curl -fs "$API" >/dev/null && break; sleep 0.2; done

JSON='content-type: application/json'
curl -fs -X POST "$API/auth/register" -H "$JSON" \
	-d '{"email":"bench@example.com","password":"correct horse battery staple","name":"Bench"}' >/dev/null
ACCESS=$(curl -fs -X POST "$API/auth/login" -H "$JSON" \
	-d '{"email":"bench@example.com","password":"correct horse battery staple"}' | jq -r .access_token)
AUTH="authorization: Bearer $ACCESS"
TOKEN=$(curl -fs -X POST "$API/api-keys" -H "$AUTH" -H "$JSON" \
	-d '{"name":"operator","read_only":true}' | jq -r .token)
curl -fs -X POST "$API/orgs" -H "$AUTH" -H "$JSON" -d '{"name":"Bench","slug":"bench"}' >/dev/null

log "creating $PROJECTS projects with $ENVIRONMENTS environments in coffer-server"
# environment i belongs to project i % PROJECTS
for p in $(seq 0 $((PROJECTS - 1))); do
	curl -fs -X POST "$API/orgs/bench/projects" -H "$AUTH" -H "$JSON" \
		-d "{\"name\":\"p$p\",\"slug\":\"p$p\"}" >/dev/null
done
export API AUTH JSON PROJECTS
seed() {
	local i=$1 p=$(($1 % PROJECTS))
	local base="$API/orgs/bench/projects/p$p/environments"
	curl -fs -X POST "$base" -H "$AUTH" -H "$JSON" -d "{\"slug\":\"e$i\"}" >/dev/null
	curl -fs -X PUT "$base/e$i/secrets" -H "$AUTH" -H "$JSON" -d "{\"secrets\":[
		{\"key\":\"DB_USER\",\"value\":\"user-$i\"},
		{\"key\":\"DB_PASSWORD\",\"value\":\"$(head -c 24 /dev/urandom | base64)\"},
		{\"key\":\"API_URL\",\"value\":\"https://api.example.com/$i\"}]}" >/dev/null
}
export -f seed
seq 0 $((ENVIRONMENTS - 1)) | xargs -P 4 -I{} bash -c 'seed {}'

log "creating the Project and Environment resources"
kubectl create namespace bench >/dev/null
{
	for p in $(seq 0 $((PROJECTS - 1))); do
		printf -- '---\napiVersion: coffer.dev/v1alpha1\nkind: Project\nmetadata: {name: p%s, namespace: bench}\nspec: {organization: bench, project: p%s}\n' "$p" "$p"
	done
	for i in $(seq 0 $((ENVIRONMENTS - 1))); do
		printf -- '---\napiVersion: coffer.dev/v1alpha1\nkind: Environment\nmetadata: {name: e%s, namespace: bench}\nspec: {projectRef: {name: p%s}, environment: e%s, sync: {refreshInterval: %ss}}\n' \
			"$i" "$((i % PROJECTS))" "$i" "$INTERVAL"
	done
} >"$WORK/resources.yaml"
kubectl apply -f "$WORK/resources.yaml" >/dev/null

log "starting coffer-operator"
started=$(date +%s.%N)
COFFER_SERVER_URL="http://127.0.0.1:$SERVER_PORT" COFFER_TOKEN="$TOKEN" COFFER_LEADER_ELECTION=false \
	COFFER_OPERATOR_NAMESPACE=default COFFER_METRICS_ADDR="127.0.0.1:$METRICS_PORT" RUST_LOG=warn \
	"$BIN/coffer-operator" run >"$WORK/operator.log" 2>&1 &
operator=$!
pids+=("$operator")

ready() {
	kubectl get environments.coffer.dev -n bench \
		-o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
		grep -c '^True$' || true
}
deadline=$(($(date +%s) + 600))
while :; do
	n=$(ready)
	[[ "$n" -ge "$ENVIRONMENTS" ]] && break
	if [[ $(date +%s) -ge $deadline ]]; then
		log "only $n of $ENVIRONMENTS Environments Ready after 10 minutes"
		tail -20 "$WORK/operator.log" >&2
		exit 1
	fi
	sleep 0.5
done
synced=$(date +%s.%N)
secrets=$(kubectl get secrets -n bench -l app.kubernetes.io/managed-by=coffer-operator --no-headers | wc -l)

rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$operator/status"; }
rss_synced=$(rss)
metric() { # sum of a metric's samples whose labels contain $2
	curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" |
		awk -v name="$1" -v label="$2" '$1 ~ "^"name"(\\{|$)" && index($1, label) { sum += $2 } END { print sum + 0 }'
}
idle_counts() {
	printf '%s %s %s\n' \
		"$(metric coffer_operator_upstream_requests_total '')" \
		"$(metric coffer_operator_kube_requests_total '')" \
		"$(metric coffer_operator_kube_requests_total 'verb="watch"')"
}
# Let the writes of the sync settle (status, events), then measure.
sleep "$INTERVAL"
read -r up0 kube0 watch0 < <(idle_counts)
log "measuring idle traffic for $IDLE s"
sleep "$IDLE"
read -r up1 kube1 watch1 < <(idle_counts)
rss_idle=$(rss)

per_minute() { awk -v d="$1" -v s="$IDLE" 'BEGIN { printf "%.1f", d * 60 / s }'; }
sync_seconds=$(awk -v a="$started" -v b="$synced" 'BEGIN { printf "%.1f", b - a }')
up_rate=$(per_minute $((up1 - up0)))
kube_rate=$(per_minute $(((kube1 - kube0) - (watch1 - watch0))))
watch_rate=$(per_minute $((watch1 - watch0)))
up_budget=$(awk -v n="$ENVIRONMENTS" -v i="$INTERVAL" 'BEGIN { printf "%.1f", n * 60 / i }')
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "ok" : "OVER") }'; }

cat <<EOF

coffer-operator, $ENVIRONMENTS Environments over $PROJECTS projects, refresh every ${INTERVAL}s ($PROFILE build)

| measure | value | target | |
|---|---:|---:|---|
| initial sync (start → all Ready) | ${sync_seconds} s | < 30 s | $(verdict "$sync_seconds" 30) |
| Secrets written | $secrets | $ENVIRONMENTS | $([[ $secrets -eq $ENVIRONMENTS ]] && echo ok || echo MISSING) |
| RSS after the sync | ${rss_synced} MiB | < 100 MiB | $(verdict "$rss_synced" 100) |
| RSS after ${IDLE}s idle | ${rss_idle} MiB | < 100 MiB | $(verdict "$rss_idle" 100) |
| idle requests to coffer-server | ${up_rate}/min | ≤ ${up_budget}/min (one per source per interval) | $(verdict "$up_rate" "$up_budget") |
| idle requests to the API server (besides watches) | ${kube_rate}/min | 0 | $(verdict "$kube_rate" 0) |
| idle watch requests (re-established watches) | ${watch_rate}/min | — | |
EOF
