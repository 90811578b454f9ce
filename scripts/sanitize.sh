#!/usr/bin/env bash
# The native walker under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   bash scripts/sanitize.sh [FUZZ-SECONDS]
#
# 1. Copies the tree to a work directory ($PACSSTORE_SANITIZE_DIR,
#    default a new temporary directory) and builds the native core there
#    with PACSSTORE_SANITIZE=1 (gcc, -fsanitize=address,undefined; see
#    setup.py). The checkout's own build is never touched.
# 2. Runs the parser, store and regression tests against that build, in
#    the project's interpreter with libasan preloaded (CPython itself is
#    not instrumented). Any ASan or UBSan report aborts the run.
# 3. Runs the fuzz harness for FUZZ-SECONDS (default 60; 0 skips it)
#    through scripts/fuzz.sh, whose build is ASan + UBSan too, in a work
#    directory of its own beside the copy.
#
# Exits non-zero on any sanitizer report, test failure or fuzz finding.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_SECONDS="${1:-60}"
WORK="${PACSSTORE_SANITIZE_DIR:-$(mktemp -d /tmp/pacsstore-sanitize.XXXXXX)}"
mkdir -p "$WORK"
# shellcheck source=../fuzz/native_copy.sh
. "$ROOT/fuzz/native_copy.sh"

COPY="$WORK/pacsstore"
# The tests that drive the walker and the store; the network and CLI
# tests add nothing native to them.
TESTS=(tests/test_parse.py tests/test_parse_corpus.py
       tests/test_parse_frames.py tests/test_parse_fuzz.py
       tests/test_parse_hostile.py tests/test_parse_wide_lengths.py
       tests/test_parse_mutations.py tests/test_regressions.py
       tests/test_corpus_roundtrip.py tests/test_archive_api.py
       tests/test_store_blocks.py tests/test_store_buffers.py
       tests/test_store_damaged_header.py tests/test_filters.py
       tests/test_read_assembly.py tests/test_get_many.py)

start=$(date +%s)
build_copy "$COPY" CC=gcc PACSSTORE_SANITIZE=1
LIBASAN="$(gcc -print-file-name=libasan.so)"
# CPython's allocations at exit are no leaks of ours; a failed
# allocation must come back as MemoryError, not abort the run.
ASAN="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
SAN_ENV=(LD_PRELOAD="$LIBASAN" ASAN_OPTIONS="$ASAN"
         UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
check_module "$COPY" "${SAN_ENV[@]}"
if ! nm -D "$COPY"/src/pacsstore/_parse*.so | grep __asan_init >/dev/null; then
    log "the copy's build carries no ASan instrumentation"
    exit 1
fi

log "running ${#TESTS[@]} test files under ASan + UBSan"
status=0
(cd "$COPY" && env "${SAN_ENV[@]}" PYTHONPATH="$COPY/src" \
    "$VENV_PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    >"$WORK/tests.log" 2>&1) || status=$?
tail -5 "$WORK/tests.log"
if grep -q -E 'ERROR: AddressSanitizer|runtime error:' "$WORK/tests.log"; then
    grep -E -A30 'ERROR: AddressSanitizer|runtime error:' "$WORK/tests.log" \
        | head -60 >&2
    log "sanitizer report; the whole log is $WORK/tests.log"
    exit 1
fi
tests_seconds=$(( $(date +%s) - start ))

if [ "$FUZZ_SECONDS" -gt 0 ]; then
    PACSSTORE_FUZZ_DIR="$WORK/fuzz" bash "$ROOT/scripts/fuzz.sh" \
        "$FUZZ_SECONDS" || status=1
fi
log "tests under sanitizers: ${tests_seconds} s (build included);" \
    "work directory $WORK"
exit "$status"
