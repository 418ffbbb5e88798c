#!/usr/bin/env bash
# A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for the operator
# tests, built from Debian's `kubernetes` source package (Kubernetes 1.20.2) and cached outside the
# repository.
#
#   testenv.sh build         build and cache the binaries (once; later calls return at once)
#   testenv.sh path          print the directory holding the binaries
#   testenv.sh env           print the variables the tests read, as shell exports
#   testenv.sh start [FILE…] start a standalone control plane; FILEs (e.g. crds/*.yaml) are applied
#                            before the garbage collector starts, so it knows their kinds at once
#   testenv.sh stop          stop it
#   testenv.sh status        say whether it runs
#
# Environment:
#   COFFER_K8S_CACHE  cache root (default /var/cache/coffer/k8s); binaries go to
#                     $COFFER_K8S_CACHE/<source version>/bin
#   COFFER_K8S_RUN    state directory of the standalone control plane (default /tmp/coffer-k8s)
#   COFFER_K8S_PORT   its kube-apiserver port (default 16443; etcd uses the next two ports)
#
# The kube-testenv crate (tests/kube-testenv) starts its own control plane per test binary with
# the same flags as `start` below; keep the two in step.
set -euo pipefail

# Debian bookworm's source package; the cache is keyed by it (also in tests/kube-testenv/src/lib.rs).
K8S_SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
CACHE_ROOT="${COFFER_K8S_CACHE:-/var/cache/coffer/k8s}"
CACHE_DIR="$CACHE_ROOT/$K8S_SOURCE_VERSION"
BIN_DIR="$CACHE_DIR/bin"
BINARIES=(kube-apiserver kube-controller-manager)
ETCD=/usr/bin/etcd
PACKAGES=(golang-go rsync jq make patch dpkg-dev etcd-server golang-github-modern-go-reflect2-dev openssl)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

RUN_DIR="${COFFER_K8S_RUN:-/tmp/coffer-k8s}"
API_PORT="${COFFER_K8S_PORT:-16443}"

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

is_built() {
	[[ -f "$BIN_DIR/.complete" && -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && -x "$BIN_DIR/etcd" ]] &&
		command -v kubectl >/dev/null
}

missing_packages() {
	local p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
	done
	# the tests also drive kubectl; any recent one works, Debian's matches the server
	command -v kubectl >/dev/null || echo kubernetes-client
}

# A deb-src entry for the mirror and suites of the existing deb entries, so that `apt-get source`
# finds the package. Written once; an existing deb-src entry is left alone.
ensure_deb_src() {
	local target=/etc/apt/sources.list.d/coffer-deb-src.sources
	if grep -rqsE '^(Types:.*deb-src|deb-src[[:space:]])' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		return 0
	fi
	if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
		sed 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$target.tmp"
		mv "$target.tmp" "$target"
	elif grep -qsE '^deb[[:space:]]' /etc/apt/sources.list; then
		sed -n 's/^deb[[:space:]]/deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/coffer-deb-src.list
	else
		die "no Debian deb entry found to derive a deb-src entry from; add one for bookworm by hand"
	fi
	log "added a deb-src entry; updating the package lists"
	apt-get update -qq
}

ensure_prerequisites() {
	local missing
	missing="$(missing_packages | tr '\n' ' ')"
	if [[ -n "${missing// /}" ]]; then
		if [[ $EUID -ne 0 ]]; then
			die "needs Debian packages: $missing(as root: apt-get update && apt-get install -y $missing)"
		fi
		log "installing $missing"
		apt-get update -qq
		# shellcheck disable=SC2086
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
	fi
	mkdir -p "$CACHE_DIR" 2>/dev/null || true
	[[ -w "$CACHE_DIR" ]] || die "cache directory $CACHE_DIR is not writable (create it, or set COFFER_K8S_CACHE)"
}

fetch_source() {
	local dl="$CACHE_DIR/download"
	mkdir -p "$dl"
	if ! ls "$dl"/kubernetes_*.dsc >/dev/null 2>&1; then
		[[ $EUID -eq 0 ]] && ensure_deb_src
		if ! apt-cache showsrc "kubernetes=$K8S_SOURCE_VERSION" 2>/dev/null | grep -q '^Package: kubernetes'; then
			[[ $EUID -eq 0 ]] || die "apt has no deb-src entry for kubernetes $K8S_SOURCE_VERSION; add one for bookworm and run apt-get update"
			apt-get update -qq
		fi
		log "downloading the kubernetes $K8S_SOURCE_VERSION source package"
		if ! (cd "$dl" && apt-get source --download-only -qq "kubernetes=$K8S_SOURCE_VERSION" 2>"$dl/apt.log"); then
			cat "$dl/apt.log" >&2
			die "apt-get source kubernetes=$K8S_SOURCE_VERSION failed"
		fi
		ls "$dl"/kubernetes_*.dsc >/dev/null 2>&1 || die "apt-get source kubernetes=$K8S_SOURCE_VERSION downloaded nothing"
	fi
}

# Unpacks the source (with Debian's patches) into $CACHE_DIR/work/src and makes it build with
# Debian's Go 1.19: the vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18, so it is
# replaced by Debian's 1.0.2.
prepare_tree() {
	local work="$CACHE_DIR/work" src="$CACHE_DIR/work/src"
	rm -rf "$work"
	mkdir -p "$work"
	log "unpacking"
	dpkg-source --no-check -x "$CACHE_DIR"/download/kubernetes_*.dsc "$src" >/dev/null
	rsync -a --delete "$REFLECT2_SRC/" "$src/vendor/github.com/modern-go/reflect2/"
	# Kubernetes pins it with a replace directive; both the directive and vendor/modules.txt name it
	sed -i 's#github.com/modern-go/reflect2 v1\.0\.1#github.com/modern-go/reflect2 v1.0.2#g' \
		"$src/go.mod" "$src/vendor/modules.txt"
	grep -q 'reflect2 => github.com/modern-go/reflect2 v1.0.2' "$src/go.mod" || die "could not update reflect2 in go.mod"
	grep -q '^# github.com/modern-go/reflect2 v1.0.2' "$src/vendor/modules.txt" || die "could not update reflect2 in vendor/modules.txt"
	! grep -q 'modern-go/reflect2 v1.0.1' "$src/go.mod" "$src/vendor/modules.txt" || die "reflect2 v1.0.1 is still named"
	mkdir -p "$work/gopath/src/k8s.io"
	ln -s "$src" "$work/gopath/src/k8s.io/kubernetes"
}

compile() {
	local work="$CACHE_DIR/work" started=$SECONDS
	log "compiling ${BINARIES[*]} (about 15 minutes on 2 cores; log in $work/build.log)"
	(
		cd "$work/gopath/src/k8s.io/kubernetes"
		export GOPATH="$work/gopath" GOCACHE="$work/gocache" HOME="$work" \
			CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off KUBE_VERBOSE=1
		nice -n 10 make WHAT="${BINARIES[*]/#/cmd/}"
	) >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed; see $work/build.log"; }
	log "compiled in $((SECONDS - started)) s"
}

install_binaries() {
	local out="$CACHE_DIR/work/src/_output/bin" tmp="$CACHE_DIR/bin.tmp" b
	rm -rf "$tmp"
	mkdir -p "$tmp"
	for b in "${BINARIES[@]}"; do
		[[ -x "$out/$b" ]] || die "the build produced no $out/$b"
		cp "$out/$b" "$tmp/$b"
	done
	ln -s "$ETCD" "$tmp/etcd"
	"$tmp/kube-apiserver" --version >"$tmp/.complete"
	rm -rf "$BIN_DIR"
	mv "$tmp" "$BIN_DIR"
	# the tree, Go's build cache and the objects take several GB; only the binaries are kept
	[[ -n "${COFFER_K8S_KEEP_WORK:-}" ]] || rm -rf "$CACHE_DIR/work"
	log "binaries in $BIN_DIR"
}

cmd_build() {
	if is_built; then
		echo "$BIN_DIR"
		return 0
	fi
	ensure_prerequisites
	exec 9>"$CACHE_DIR/.lock"
	flock 9
	if is_built; then # another build finished while we waited for the lock
		echo "$BIN_DIR"
		return 0
	fi
	if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && ! -e "$BIN_DIR/etcd" ]]; then
		ln -s "$ETCD" "$BIN_DIR/etcd"
	else
		fetch_source
		prepare_tree
		compile
		install_binaries
	fi
	is_built || die "build finished but $BIN_DIR is incomplete"
	echo "$BIN_DIR"
}

cmd_path() { echo "$BIN_DIR"; }

cmd_env() {
	printf 'export COFFER_K8S_CACHE=%q\n' "$CACHE_ROOT"
	if [[ -f "$RUN_DIR/kubeconfig" ]]; then
		printf 'export KUBECONFIG=%q\n' "$RUN_DIR/kubeconfig"
	fi
}

pid_alive() { [[ -f "$RUN_DIR/$1.pid" ]] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

cmd_status() {
	local c running=0
	for c in etcd kube-apiserver kube-controller-manager; do
		if pid_alive "$c"; then
			echo "$c: running (pid $(cat "$RUN_DIR/$c.pid"))"
			running=1
		else
			echo "$c: stopped"
		fi
	done
	[[ $running -eq 1 ]] && echo "KUBECONFIG=$RUN_DIR/kubeconfig"
	return 0
}

# Starts one component in its own session, detached from this shell.
launch() {
	local name=$1
	shift
	setsid "$@" </dev/null >"$RUN_DIR/$name.log" 2>&1 &
	echo $! >"$RUN_DIR/$name.pid"
}

wait_for() {
	local what=$1 seconds=$2 component=$3
	shift 3
	local deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		if ! pid_alive "$component"; then
			tail -n 30 "$RUN_DIR/$component.log" >&2
			die "$component exited; log: $RUN_DIR/$component.log"
		fi
		((SECONDS < deadline)) || die "timed out waiting for $what; log: $RUN_DIR/$component.log"
		sleep 0.2
	done
}

cmd_start() {
	is_built || die "binaries missing in $BIN_DIR; run: bash $0 build"
	if pid_alive kube-apiserver; then
		log "already running; KUBECONFIG=$RUN_DIR/kubeconfig"
		return 0
	fi
	command -v openssl >/dev/null || die "needs openssl"
	local etcd_port=$((API_PORT + 1)) peer_port=$((API_PORT + 2)) token f
	mkdir -p "$RUN_DIR"
	rm -rf "${RUN_DIR:?}"/*
	mkdir -p "$RUN_DIR/pki"
	token="$(openssl rand -hex 24)"
	printf '%s,admin,admin,"system:masters"\n' "$token" >"$RUN_DIR/tokens.csv"
	openssl genrsa -traditional -out "$RUN_DIR/pki/sa.key" 2048 2>/dev/null
	openssl rsa -in "$RUN_DIR/pki/sa.key" -pubout -out "$RUN_DIR/pki/sa.pub" 2>/dev/null
	chmod 600 "$RUN_DIR/tokens.csv" "$RUN_DIR/pki/sa.key"

	launch etcd "$BIN_DIR/etcd" --name=default --data-dir="$RUN_DIR/etcd" \
		--listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
		--listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
		--initial-cluster="default=http://127.0.0.1:$peer_port" --unsafe-no-fsync --logger=zap --log-level=warn
	launch kube-apiserver "$BIN_DIR/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$etcd_port" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
		--cert-dir="$RUN_DIR/pki" --token-auth-file="$RUN_DIR/tokens.csv" --authorization-mode=RBAC \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$RUN_DIR/pki/sa.pub" --service-account-signing-key-file="$RUN_DIR/pki/sa.key" \
		--service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
		--disable-admission-plugins=ServiceAccount --watch-cache-sizes=podtemplates#0 --profiling=false
	wait_for "the serving certificate" 60 kube-apiserver test -s "$RUN_DIR/pki/apiserver.crt"

	cat >"$RUN_DIR/kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: coffer-test
		  cluster:
		    server: https://127.0.0.1:$API_PORT
		    certificate-authority-data: $(base64 -w0 "$RUN_DIR/pki/apiserver.crt")
		users:
		- name: admin
		  user:
		    token: $token
		contexts:
		- name: coffer-test
		  context:
		    cluster: coffer-test
		    user: admin
		current-context: coffer-test
	EOF
	chmod 600 "$RUN_DIR/kubeconfig"
	export KUBECONFIG="$RUN_DIR/kubeconfig"
	wait_for "kube-apiserver /readyz" 90 kube-apiserver kubectl get --raw /readyz
	for f in "$@"; do
		kubectl apply -f "$f" >&2
	done
	if (($# > 0)); then
		kubectl wait --for condition=established --timeout=60s crd --all >&2 || true
	fi
	launch kube-controller-manager "$BIN_DIR/kube-controller-manager" --kubeconfig="$RUN_DIR/kubeconfig" \
		--controllers=garbagecollector,namespace --leader-elect=false --port=0 --secure-port=0
	log "running; use: export KUBECONFIG=$RUN_DIR/kubeconfig"
	echo "export KUBECONFIG=$RUN_DIR/kubeconfig"
}

cmd_stop() {
	local c pid
	for c in kube-controller-manager kube-apiserver etcd; do
		if pid_alive "$c"; then
			pid="$(cat "$RUN_DIR/$c.pid")"
			kill "$pid"
			for _ in $(seq 50); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -9 "$pid" 2>/dev/null || true
		fi
		rm -f "$RUN_DIR/$c.pid"
	done
	log "stopped"
}

case "${1:-}" in
build) cmd_build ;;
path) cmd_path ;;
env) cmd_env ;;
status) cmd_status ;;
start)
	shift
	cmd_start "$@"
	;;
stop) cmd_stop ;;
*)
	sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0" >&2
	exit 2
	;;
esac
