#!/usr/bin/env bash
# Fill ./wheelhouse on the host, for an image build that needs no index (`pip install
# --no-index` inside the build: no TLS, no network, the same bytes every time):
#   - every package of requirements/lock.txt, hash-checked (--require-hashes), whatever its
#     environment marker: the image's Python may need what the host's does not (Debian
#     bookworm's 3.11.2 needs async-timeout, 3.11.3+ does not);
#   - this project's own wheel, rebuilt every time (so the image never runs stale code).
# PYTHON (default: .venv/bin/python, else python3) runs pip; its platform must be the
# image's (same CPU architecture, glibc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3
out=wheelhouse
mkdir -p "$out"
rm -f "$out"/*.whl
every_line=$(mktemp)
trap 'rm -f "$every_line"' EXIT
# "name==1.0 ; marker \" -> "name==1.0 \"
sed -E 's/^([^ #]+==[^ ]+) ;[^\\]*\\$/\1 \\/' requirements/lock.txt >"$every_line"
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$every_line" -w "$out"
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out" .
ls "$out"/*.whl | wc -l | xargs echo "wheelhouse: wheels:" >&2
