#!/usr/bin/env bash
# Coverage-guided fuzzing of the native walker with atheris (libFuzzer).
#
#   bash scripts/fuzz.sh [SECONDS] [-- LIBFUZZER-OPTIONS...]
#
# Builds the native core with libFuzzer coverage, ASan and UBSan (clang,
# PACSSTORE_SANITIZE=1) in a private copy of the tree under the work
# directory ($PACSSTORE_FUZZ_DIR, default /tmp/pacsstore-fuzz), never in
# the checkout; seeds a working corpus from fuzz/seeds.txt (files of the
# shared corpus); runs fuzz/fuzz_parse.py for SECONDS (default 600) on
# $PACSSTORE_FUZZ_JOBS processes (default 1); and reports executions,
# coverage and findings. Findings (crash-*, timeout-*, oom-*) are written
# to the work directory's artifacts/; the exit status is 1 when there is
# one. The working corpus persists between runs, so a later run starts
# from the coverage an earlier one reached.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${PACSSTORE_FUZZ_DIR:-/tmp/pacsstore-fuzz}"
JOBS="${PACSSTORE_FUZZ_JOBS:-1}"
SECONDS_TO_RUN="${1:-600}"
shift || true
[ "${1:-}" = "--" ] && shift
mkdir -p "$WORK"
# shellcheck source=../fuzz/native_copy.sh
. "$ROOT/fuzz/native_copy.sh"

CORPUS_DIR="$(cd "$ROOT/.." && pwd)/shared/corpus"
COPY="$WORK/pacsstore"
ARTIFACTS="$WORK/artifacts"
CORPUS="$WORK/corpus"

if ! "$VENV_PYTHON" -c 'import atheris' 2>/dev/null; then
    log "installing atheris into $ROOT/.venv"
    "$ROOT/.venv/bin/pip" install -q atheris
fi
command -v clang >/dev/null || {
    log "clang is needed for libFuzzer's coverage instrumentation" \
        "(apt-get install clang)"
    exit 2
}
ATHERIS_DIR="$("$VENV_PYTHON" -c 'import atheris; print(atheris.path())')"
# libFuzzer and the ASan runtime (which carries UBSan's handlers) in one
# library, preloaded into the uninstrumented interpreter.
RUNTIME="$ATHERIS_DIR/asan_with_fuzzer.so"

build_copy "$COPY" CC=clang PACSSTORE_SANITIZE=1 \
    CFLAGS="-fsanitize=fuzzer-no-link"
SAN_ENV=(LD_PRELOAD="$RUNTIME"
         ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
         UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
check_module "$COPY" "${SAN_ENV[@]}" >/dev/null

mkdir -p "$CORPUS" "$ARTIFACTS"
if [ -z "$(ls -A "$CORPUS")" ]; then
    [ -d "$CORPUS_DIR" ] || { log "no shared corpus at $CORPUS_DIR"; exit 2; }
    while read -r path; do
        case "$path" in ''|'#'*) continue ;; esac
        cp "$CORPUS_DIR/$path" "$CORPUS/seed-$(echo "$path" | tr '/' '_')"
    done <"$ROOT/fuzz/seeds.txt"
    log "seeded $CORPUS with $(ls "$CORPUS" | wc -l) corpus files"
fi
# Inputs that once failed are seeds too: they sit next to what broke.
if [ -d "$ROOT/tests/data/regressions" ]; then
    for input in "$ROOT"/tests/data/regressions/*.dcm; do
        [ -e "$input" ] || continue
        cp "$input" "$CORPUS/regression-$(basename "$input")"
    done
fi

PARALLEL=()
[ "$JOBS" -gt 1 ] && PARALLEL=(-jobs="$JOBS" -workers="$JOBS")
LOG="$WORK/fuzz-$(date +%Y%m%d-%H%M%S).log"
log "fuzzing for ${SECONDS_TO_RUN} s on $JOBS process(es); log in $LOG"
before=$(ls "$ARTIFACTS" | wc -l)
status=0
# libFuzzer runs jobs and minimisation by executing argv[0] again: the
# harness is executable and finds the project's interpreter first on PATH.
(cd "$COPY" && env "${SAN_ENV[@]}" PYTHONPATH="$COPY/src" \
    PATH="$ROOT/.venv/bin:$PATH" fuzz/fuzz_parse.py "$CORPUS" \
    -max_total_time="$SECONDS_TO_RUN" -timeout=20 -rss_limit_mb=3072 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$ARTIFACTS/" \
    "${PARALLEL[@]}" "$@") >"$LOG" 2>&1 || status=$?

# Totals: one stat::number_of_executed_units line per process (jobs log
# to fuzz-N.log in the directory they run in); pulse lines give coverage.
logs=("$LOG")
[ "$JOBS" -gt 1 ] && logs+=("$COPY"/fuzz-*.log)
executions=$(cat "${logs[@]}" 2>/dev/null \
    | awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}')
coverage=$(cat "${logs[@]}" 2>/dev/null \
    | grep -a -o 'cov: [0-9]*' | tail -1 || true)
findings=$(( $(ls "$ARTIFACTS" | wc -l) - before ))
printf 'fuzz: %s s, %s executions, %s, %s new finding(s), corpus %s inputs\n' \
    "$SECONDS_TO_RUN" "$executions" "${coverage:-cov: ?}" "$findings" \
    "$(ls "$CORPUS" | wc -l)"
if [ "$findings" -gt 0 ]; then
    ls -t "$ARTIFACTS" | head -"$findings" \
        | sed "s|^|fuzz: finding $ARTIFACTS/|"
    log "see $LOG"
    exit 1
fi
if [ "$status" -ne 0 ]; then
    log "libFuzzer exited with status $status and no finding; see $LOG"
    exit 1
fi
