#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demonstration: a DICOM node on the
# store ./pacsstore-data receives real files from DCMTK's storescu, and
# they come back byte for byte. Extra arguments go to the demo
# (--slices N, --store PATH, --port N).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" -m pacsstore.demo "$@"
