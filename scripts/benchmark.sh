#!/usr/bin/env bash
# Run pacsstore's benchmarks against its peers and write the results
# table into docs/benchmarks.md. Installs what is missing first: the
# peers (DCMTK's storescp and storescu, Orthanc) with apt-get, as root;
# the project (scripts/setup.sh); the `bench` extra of pyproject.toml
# (py-spy, for profiles). Options go to `python -m benchmarks.run`:
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

missing_peers() {
    { [ -x /usr/bin/storescp ] && [ -x /usr/bin/storescu ]; } || echo dcmtk
    [ -x /usr/sbin/Orthanc ] || echo orthanc
}

install_peers() {
    local packages
    packages="$(missing_peers | tr '\n' ' ')"
    [ -z "${packages// }" ] && return 0
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        log "missing peers: $packages (install them, or run this as root)"
        return 1
    fi
    log "installing the peers with apt-get: $packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the list is intended
    apt-get install -y -qq --no-install-recommends $packages >/dev/null
}

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

install_peers
bash "$ROOT/scripts/setup.sh"
install_bench_extra
cd "$ROOT"
exec "$PYTHON" -m benchmarks.run "$@"
