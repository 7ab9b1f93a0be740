#!/usr/bin/env bash
# The long fuzz run: tests/test_fuzz.py under the "long" hypothesis profile (20x the CI examples,
# fresh random seeds, shrinking of failures), every run logged as one JSON line, and a summary of
# what the examples reached (exit statuses, error messages, slowest runs, peak RSS).
#
#   scripts/fuzz.sh                      # about 10 minutes on 2 cores
#   scripts/fuzz.sh -k face_media        # one test
#   scripts/fuzz.sh --hypothesis-seed=7  # reproducible
#
# Failing examples are saved in .hypothesis/ and replayed first by the next run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
LOG=${TRTALK_FUZZ_LOG:-$(mktemp -t trtalk-fuzz-XXXXXX.jsonl)}
echo "fuzz log: $LOG"
TRTALK_FUZZ=long TRTALK_FUZZ_LOG="$LOG" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_fuzz.py "$@"
status=$?
"$PY" - "$LOG" <<'PYEOF'
import collections, json, re, sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
print(f"\n{len(rows)} runs")
for test in sorted({r["test"] for r in rows}):
    rs = [r for r in rows if r["test"] == test]
    codes = collections.Counter(r["rc"] for r in rs)
    print(f"  {test.split('::')[-1]}: {len(rs)} runs, exit {dict(sorted(codes.items()))}, "
          f"max {max(r['seconds'] for r in rs):.1f} s, max RSS {max(r['maxrss_mb'] for r in rs):.0f} MB")
# Error messages with paths and numbers blanked: which checks the examples reached.
kinds = collections.Counter(re.sub(r"(/\S+|\d+)", "_", r["last"])[:90] for r in rows if r["rc"] == 2)
print("most common errors:")
for text, n in kinds.most_common(15):
    print(f"  {n:5d}  {text}")
PYEOF
exit $status
