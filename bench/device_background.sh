#!/usr/bin/env bash
# Benchmarks longer than one call (600 s) on the lent GPU machine: the first call starts run_bench.py in a process
# session of its own (setsid), which runs on between calls while the machine stays warm (30 s after each call, so
# send the next at once); every call then waits up to WAIT_S for it and brings back what it has measured so far
# (run_bench.py writes its JSON and Markdown after every run), the logs too once it has ended.
#   bash bench/device_background.sh start NAME WAIT_S DEADLINE_S run_bench.py-arguments...
#   bash bench/device_background.sh wait NAME WAIT_S
set -uo pipefail
verb=$1 name=$2 wait_s=$3
shift 3
results=/tmp/res/$name
if [ "$verb" = start ]; then
  deadline=$1
  shift
  source bench/device_setup.sh || exit 1
  mkdir -p /tmp/res
  setsid nohup python3 bench/run_bench.py --out "$results" --deadline-s "$deadline" "$@" \
    >"$results.out" 2>&1 </dev/null &
  echo $! >"$results.pid"
fi
for _ in $(seq "$wait_s"); do
  kill -0 "$(cat "$results.pid")" 2>/dev/null || break
  sleep 1
done
cp "$results.out" "$OUT/"
cp "$results"/*.md "$results"/*.json "$OUT/" 2>/dev/null
if kill -0 "$(cat "$results.pid")" 2>/dev/null; then
  echo "device_background: $name still running"
else
  tar czf "$OUT/$name.tgz" -C /tmp/res "$name" "$name.out"
  echo "device_background: $name ended"
fi
grep -E "^[a-z0-9.-]+: exit" "$results.out"
