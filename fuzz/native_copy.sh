# Sourced by scripts/fuzz.sh and scripts/sanitize.sh: build the native
# core with instrumentation in a private copy of the tree.
#
# The in-place build (src/pacsstore/_parse*.so) is shared by everyone
# working in the checkout and by the test suite; an instrumented build
# there would make every other run load ASan or libFuzzer. So the sources
# are copied to a work directory and built there, with a build
# environment of its own (Cython, setuptools) made from the project's
# interpreter, and the copy is put first on PYTHONPATH by the caller.
#
# Expects ROOT (the checkout) and WORK (a directory of the caller's).

VENV_PYTHON="$ROOT/.venv/bin/python"

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# The build environment: the project's interpreter plus Cython.
build_env() {
    local env="$WORK/buildenv"
    if ! "$env/bin/python" -c 'import Cython, setuptools' 2>/dev/null; then
        log "creating the build environment $env"
        "$VENV_PYTHON" -m venv "$env"
        "$env/bin/pip" install -q "Cython>=3.0" "setuptools>=77" wheel
    fi
    printf '%s\n' "$env/bin/python"
}

# copy_tree DEST: the sources, tests and fuzz harness, without build
# products. DEST's parent gets a link to the shared corpus, which the
# tests look for beside the checkout (tests/corpus.py).
copy_tree() {
    local dest="$1"
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -C "$ROOT" -c --exclude='*.so' --exclude='__pycache__' \
        --exclude='*.egg-info' --exclude='src/_native/*.c' \
        --exclude='src/_native/*.html' \
        setup.py pyproject.toml src tests fuzz | tar -C "$dest" -x
    if [ -d "$ROOT/../shared" ] && [ ! -e "$(dirname "$dest")/shared" ]; then
        ln -s "$(cd "$ROOT/../shared" && pwd)" "$(dirname "$dest")/shared"
    fi
}

# build_copy DEST VAR=VALUE...: copy the tree to DEST and build the
# native core in place there with the given environment (compiler and
# flags).
build_copy() {
    local dest="$1"; shift
    local python
    python="$(build_env)"
    copy_tree "$dest"
    log "building the native core in $dest ($*)"
    (cd "$dest" && env "$@" "$python" setup.py -q build_ext --inplace \
        --build-temp "$dest/build" >"$dest/build.log" 2>&1) || {
        tail -30 "$dest/build.log" >&2
        log "build failed; the whole log is $dest/build.log"
        return 1
    }
}

# check_module DEST [VAR=VALUE...]: import the native modules from the
# copy (with the given environment, e.g. LD_PRELOAD) and make sure they
# are the copy's build, not the checkout's.
check_module() {
    local dest="$1"; shift
    env "$@" PYTHONPATH="$dest/src" "$VENV_PYTHON" - "$dest" <<'PY'
import importlib
import sys
for name in ("pacsstore._parse", "pacsstore._filters", "pacsstore._assemble"):
    native = importlib.import_module(name)
    if not native.__file__.startswith(sys.argv[1]):
        sys.exit(f"{name} comes from {native.__file__}, not the "
                 f"instrumented copy in {sys.argv[1]}")
    print(native.__file__)
PY
}
