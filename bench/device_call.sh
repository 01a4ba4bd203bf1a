#!/usr/bin/env bash
# One call on the lent GPU machine, from the root of the tree (or of a snapshot of it): set it up
# (bench/device_setup.sh), run the benchmark with the arguments given, then pack the results into $OUT
# (at most 8 files come back from a call). DEADLINE_S bounds the benchmark itself (run_bench.py --deadline-s).
#   bash bench/device_call.sh NAME DEADLINE_S run_bench.py-arguments...
set -uo pipefail
name=$1 deadline=$2
shift 2
source bench/device_setup.sh || exit 1
mkdir -p /tmp/res
python3 bench/run_bench.py --out "/tmp/res/$name" --deadline-s "$deadline" "$@" 2>&1 | tee "/tmp/res/$name.out"
tar czf "$OUT/$name.tgz" -C /tmp/res "$name" "$name.out"
cp "/tmp/res/$name"/*.md "$OUT/"
