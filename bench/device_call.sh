#!/usr/bin/env bash
# One call on the lent GPU machine, from the root of the tree (or of a snapshot of it): install the carried wheels (.whl),
# apply our LLaMA-Factory patches, run the benchmark with the arguments given, then pack the results into $OUT
# (at most 8 files come back from a call). DEADLINE_S bounds the benchmark itself (run_bench.py --deadline-s).
#   bash bench/device_call.sh NAME DEADLINE_S run_bench.py-arguments...
set -uo pipefail
name=$1 deadline=$2
shift 2
rm -rf /tmp/site # a warm machine keeps the last call's, and the patches do not apply twice
wheels=.whl
[ -d "$wheels" ] || wheels=../.whl # beside a snapshot of the tree (.gpu/), as the earlier calls ran
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl || exit 1
version=$(sed -n 's/^llamafactory==\([^ ]*\) .*/\1/p' docker/requirements.lock) # the pin, written once
(cd /tmp/site && for p in "$OLDPWD/patches/llamafactory-$version"/*.patch; do patch -s -p1 <"$p" || exit 1; done) || exit 1
export PYTHONPATH=/tmp/site:$PWD/entrypoint:$PWD/healthcheck PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv
mkdir -p /tmp/res
python3 bench/run_bench.py --out "/tmp/res/$name" --deadline-s "$deadline" "$@" 2>&1 | tee "/tmp/res/$name.out"
tar czf "$OUT/$name.tgz" -C /tmp/res "$name" "$name.out"
cp "/tmp/res/$name"/*.md "$OUT/"
