#!/usr/bin/env bash
# The full reliability run (docs/reliability.md): hundreds of SIGKILLs of
# writers through the API and through the node, every crash point at many
# hits, repeated full-disk cycles on a small tmpfs, longer concurrency
# phases; then the figures the documentation quotes; then the sanitizer
# tests and a fuzz run (PACSSTORE_FUZZ_SECONDS). The same tests run
# short in the ordinary suite. The tmpfs cases need root (or
# CAP_SYS_ADMIN) and skip without it. Extra arguments go to pytest; the
# PACSSTORE_* variables below may be set to change the sizes. Exits
# non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Set up only a checkout that was never set up: setup.sh may rebuild the
# native core, which a run beside other work on this tree must not do.
[ -x .venv/bin/python ] || bash scripts/setup.sh

REPORT="$(mktemp -t pacsstore-reliability.XXXXXX)"
trap 'rm -f "$REPORT"' EXIT
export PACSSTORE_RELIABILITY_REPORT="$REPORT"
: "${PACSSTORE_KILLS:=200}"                 # API writer, random kills
: "${PACSSTORE_NODE_KILLS:=40}"             # pacsstore serve, random kills
: "${PACSSTORE_CRASH_HITS:=1,2,3,5,8,13}"   # hits tried at each point
: "${PACSSTORE_FULL_DISK_ROUNDS:=5}"        # fill-and-free cycles
: "${PACSSTORE_FULL_DISK_SIZE:=16m}"
: "${PACSSTORE_FULL_DISK_FILESYSTEMS:=tmpfs,ext4}"
: "${PACSSTORE_CONCURRENCY_SECONDS:=10}"    # each reader/writer phase
: "${PACSSTORE_OPEN_RACES:=25}"             # two writers racing, per case
: "${PACSSTORE_SEED:=$(date +%s)}"          # kill timings; set to repeat
export PACSSTORE_KILLS PACSSTORE_NODE_KILLS PACSSTORE_CRASH_HITS \
    PACSSTORE_FULL_DISK_ROUNDS PACSSTORE_FULL_DISK_SIZE \
    PACSSTORE_FULL_DISK_FILESYSTEMS PACSSTORE_CONCURRENCY_SECONDS \
    PACSSTORE_OPEN_RACES PACSSTORE_SEED

started=$(date +%s)
status=0
.venv/bin/python -m pytest -p no:cacheprovider -q -rs \
    tests/test_durability.py tests/test_crash_points.py \
    tests/test_full_disk.py tests/test_multiprocess.py "$@" || status=$?
elapsed=$(( $(date +%s) - started ))

echo
echo "seed: PACSSTORE_SEED=$PACSSTORE_SEED"
.venv/bin/python - "$REPORT" "$elapsed" "$status" <<'PY'
import collections
import json
import sys

path, elapsed, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = collections.defaultdict(list)
with open(path, encoding="utf-8") as handle:
    for line in handle:
        row = json.loads(line)
        rows[row.pop("test")].append(row)


def total(test, field):
    return sum(row.get(field, 0) for row in rows[test])


api = total("api_random_kills", "kills")
node = total("node_random_kills", "kills")
named = total("crash_point", "kills")
print(f"pacsstore reliability run: {elapsed} s, "
      f"{'all checks passed' if status == 0 else 'FAILURES (see above)'}")
print(f"kills survived: {api + node + named} "
      f"(API writer at random {api}, node at random {node}, "
      f"named crash points {named})")
print(f"API: {total('api_random_kills', 'acknowledged')} instances "
      f"acknowledged before a kill, "
      f"{total('api_random_kills', 'acknowledged_checks')} checks of an "
      f"acknowledged instance after a kill, "
      f"{total('api_random_kills', 'instance_reads')} instance reads "
      f"compared byte for byte, "
      f"{total('api_random_kills', 'set_aside_files')} uncommitted tails "
      f"set aside")
print(f"node: {total('node_random_kills', 'acknowledged')} instances "
      f"storescu saw succeed before a kill, all present; "
      f"{total('node_random_kills', 'instances')} in the store at the end")
points = collections.Counter(row["point"].split(":")[0]
                             for row in rows["crash_point"])
print("named points:", ", ".join(f"{name} x{count}"
                                 for name, count in sorted(points.items())))
for row in rows["full_disk_api"]:
    print(f"full disk ({row['filesystem']}, {row['rounds']} fill and "
          f"free rounds): {row['refused_in_segment_write']} stores refused "
          f"in the segment write, {row['refused_in_index_commit']} in the "
          f"index commit; {row['acknowledged']} acknowledged, all intact")
for row in rows["full_disk_node"]:
    print(f"full disk, node ({row['filesystem']}): {row['refused']} "
          f"C-STORE answered 0xA700, all accepted once space returned")
for row in rows["full_disk_reopen_after_crash"]:
    print(f"full disk at reopen after a crash ({row['filesystem']}): "
          f"refused, then recovered; {row['acknowledged']} acknowledged "
          f"intact")
for row in rows["index_map_full"]:
    print(f"index map full at max_map_size={row['max_map_size']}: "
          f"{row['refused']} refused after {row['acknowledged']} stored")
for row in rows["readers_beside_writer"]:
    print(f"readers: writer {row['writer_alone_per_s']}/s alone, "
          f"{row['writer_beside_readers_per_s']}/s beside 2 reader "
          f"processes, a held read transaction and the CLI "
          f"({row['seconds']} s each); {row['api_reads']} API and "
          f"{row['cli_reads']} CLI reads, all whole")
races = total("open_races", "races")
if races:
    print(f"open races: {races} races of two writers, one lock each time")
PY
# Hostile input, the long way: the parser and store tests under ASan and
# UBSan, then coverage-guided fuzzing (docs/fuzzing.md). Both build in a
# private copy of the tree. PACSSTORE_FUZZ_SECONDS=0 skips them.
: "${PACSSTORE_FUZZ_SECONDS:=600}"
if [ "$PACSSTORE_FUZZ_SECONDS" != 0 ]; then
    bash scripts/sanitize.sh 0 || status=$?
    bash scripts/fuzz.sh "$PACSSTORE_FUZZ_SECONDS" || status=$?
fi
exit "$status"
