#!/bin/sh
# Installs the Schemathesis the contract test (tests/api/contract.rs) runs, into
# /var/cache/coffer/schemathesis-<version>/ (or $1). Needs python3 with pip; run once per machine.
set -eu
version=4.32.5
dir=${1:-/var/cache/coffer/schemathesis-$version}
if [ -f "$dir/.complete" ]; then
    echo "schemathesis $version is installed in $dir"
    exit 0
fi
rm -rf "$dir"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dir" "schemathesis==$version"
PYTHONPATH="$dir" "$dir/bin/schemathesis" --version
# The test uses the directory only once this marker says the install finished.
touch "$dir/.complete"
echo "schemathesis $version installed in $dir"
