#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite; exits non-zero on any
# failure. Benchmarks, where there are any, run once each as a smoke test
# (--benchmark-disable) so that they cannot rot. Extra arguments go to
# pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"

targets=(tests)
if compgen -G "benchmarks/test_*.py" >/dev/null \
    || compgen -G "benchmarks/*_test.py" >/dev/null; then
    targets+=(benchmarks)
fi
exec "$ROOT/.venv/bin/python" -m pytest "${targets[@]}" \
    --benchmark-disable "$@"
