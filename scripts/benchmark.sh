#!/usr/bin/env bash
# Run pacsstore's benchmarks against its peers and write the results
# table into docs/benchmarks.md. Installs what is missing first, through
# scripts/setup.sh: the peers (DCMTK's storescp and storescu, Orthanc)
# with apt-get, as root, and the project; then the `bench` extra of
# pyproject.toml (py-spy, for profiles). Options go to `python -m benchmarks.run`:
#   --quick          one repetition per row, for development (no page)
#   --only A,B       only these families (parse, ingest_api, ingest_net,
#                    retrieve, storage_ratio, memory, cfind)
#   --repeat N       repetitions per row (default 5)
#   --data DIR       cache of the generated data sets
#   --output PATH    the results page to write
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="$ROOT/.venv/bin/python"

log() { printf 'benchmark: %s\n' "$*" >&2; }

# The requirements of the `bench` extra whose package is not installed,
# without reinstalling pacsstore itself (which would rebuild its core).
missing_bench_requirements() {
    "$PYTHON" - "$ROOT/pyproject.toml" <<'PY'
import re, sys, tomllib
from importlib import metadata
with open(sys.argv[1], "rb") as handle:
    extra = tomllib.load(handle)["project"]["optional-dependencies"]["bench"]
for requirement in extra:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(requirement)
PY
}

install_bench_extra() {
    local listed requirements
    listed="$(missing_bench_requirements)"
    [ -z "$listed" ] && return 0
    mapfile -t requirements <<< "$listed"
    log "installing the bench extra: ${requirements[*]}"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "${requirements[@]}"
}

# setup.sh installs the peers too (DCMTK, Orthanc) with apt-get.
bash "$ROOT/scripts/setup.sh"
install_bench_extra
cd "$ROOT"
exec "$PYTHON" -m benchmarks.run "$@"
