#!/usr/bin/env bash
# Prepare a checkout of pacsstore to run: DCMTK, Orthanc and a build toolchain from
# apt where missing, a virtual environment in .venv, and an editable
# install of pacsstore with its test extras (which compiles the native
# core). Idempotent: a second run only checks, unless the build inputs
# changed since the last install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.pacsstore-install-stamp"
cd "$ROOT"

log() { printf 'setup: %s\n' "$*" >&2; }

missing_packages() {
    command -v storescu >/dev/null || echo dcmtk
    # Orthanc is the peer of the Q/R interoperability tests and benchmarks.
    command -v Orthanc >/dev/null || echo orthanc
    command -v python3 >/dev/null || echo python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || echo python3-venv
    command -v gcc >/dev/null || echo gcc
    [ -e /usr/include/zlib.h ] || echo zlib1g-dev
    [ -e /usr/include/zstd.h ] || echo libzstd-dev
    [ -e /usr/include/openssl/evp.h ] || echo libssl-dev
    python3 - 2>/dev/null <<'PY' || echo python3-dev
import os, sysconfig, sys
sys.exit(0 if os.path.exists(
    os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
}

install_system_packages() {
    local packages
    packages="$(missing_packages | sort -u | tr '\n' ' ')"
    [ -z "${packages// }" ] && return 0
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        log "missing: $packages (install them, or run this as root with apt-get)"
        return 1
    fi
    log "installing with apt-get: $packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the list is intended
    apt-get install -y -qq --no-install-recommends $packages >/dev/null
}

# Everything an editable install compiles or reads its metadata from.
build_inputs_digest() {
    cat pyproject.toml setup.py \
        $(find src/_native -type f \( -name '*.pyx' -o -name '*.pxd' \
              -o -name '*.pxi' -o -name '*.h' \) | sort) \
        | sha256sum | cut -d' ' -f1
}

install_python_packages() {
    [ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
    local digest
    digest="$(build_inputs_digest)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ] \
        && "$VENV/bin/python" -c 'import pacsstore._parse' 2>/dev/null; then
        log "pacsstore is installed and up to date in $VENV"
        return 0
    fi
    log "installing pacsstore and its test extras into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --upgrade pip setuptools wheel
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e ".[test]"
    echo "$digest" > "$STAMP"
}

install_system_packages
install_python_packages
