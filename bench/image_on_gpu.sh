#!/usr/bin/env bash
# The image's Python set on the GPU machine, which has no Docker: docker/install.py installs docker/requirements.lock
# over that machine's own torch (and over Transformer Engine, carried by bench/transformer_engine.sh), then the
# product runs end to end there: inspect, the demo in FP8 through torchao and through Transformer Engine, and in
# BF16, each log saying on how many linear layers FP8 ran. Wheels travel in calls of at most 64 MiB.
#
#   here:   bench/image_on_gpu.sh wheels VERSIONS   # .lockwheels/partN/ (one call each): the locked wheels for
#                                                   # Python 3.12 whose version differs from VERSIONS (what
#                                                   # `pip list --format=freeze` printed there)
#   there:  bench/image_on_gpu.sh receive DIR       # keep a call's wheels in /tmp/image-wheels
#           bench/image_on_gpu.sh run OUT           # install, then the runs; logs and a summary in OUT
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELS=/tmp/image-wheels
SITE=/tmp/image-site # apart from the benchmark's /tmp/site; Transformer Engine goes here too (SITE=... there)

wheels() {
    local differing=build/lock-differing.txt
    rm -rf .lockwheels
    mkdir -p build .lockwheels
    grep -qx '/.lockwheels/' .git/info/exclude || echo '/.lockwheels/' >>.git/info/exclude
    python3 bench/lock_parts.py differing "$1" >"$differing"
    python3 -m pip download --quiet --no-deps --require-hashes --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -r "$differing" -d .lockwheels
    python3 bench/lock_parts.py split .lockwheels
}

receive() {
    mkdir -p "$WHEELS"
    cp "$1"/* "$WHEELS/"
}

run() {
    local out=$1 code
    mkdir -p "$out"
    python3 docker/install.py --target "$SITE" --record "$out/installed.json" image -- --no-index \
        --find-links "$WHEELS" 2>&1 | tee "$out/install.log"
    export PYTHONPATH=$SITE:$PWD/entrypoint:$PWD/healthcheck
    python3 -m llamafactory_fp8 inspect 2>&1 | tee "$out/inspect.log"
    for run in fp8-torchao:"--fp8 --backend torchao" fp8-te:"--fp8 --backend te" bf16:--bf16; do
        # shellcheck disable=SC2086  # the flags are meant to split
        python3 -m llamafactory_fp8 train configs/examples/demo.yaml ${run#*:} "output_dir=/tmp/demo-${run%%:*}" \
            >"$out/demo-${run%%:*}.log" 2>&1 && code=0 || code=$?
        echo "demo ${run%%:*}: exit $code; $(grep -o 'FP8 active: [0-9]* of [0-9]* linear layers' "$out/demo-${run%%:*}.log" \
            || echo "no FP8 layers"); $(grep -oE "train_loss +=[^ ]* +[0-9.]+" "$out/demo-${run%%:*}.log" | tail -n 1)" \
            | tee -a "$out/summary.txt"
    done
}

"$@"
