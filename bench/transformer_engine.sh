#!/usr/bin/env bash
# Transformer Engine for the lent GPU machine, which has torch but no TE, no network, and takes at most 64 MiB
# a call: TE's core wheel (276 MB) travels in parts over consecutive calls while the machine stays warm, and
# its torch binding (an sdist) is built there, in the background, while the parts arrive.
#
#   here:   bench/transformer_engine.sh fetch      # -> .te1 ... .te5 (git-ignored), one folder per call
#   there:  bench/transformer_engine.sh receive N  # call N carries .teN
#           bench/transformer_engine.sh build      # after part 1: builds transformer_engine_torch, detached
#           bench/transformer_engine.sh install    # after part 5: joins the core wheel, installs, checks
set -euo pipefail

VERSION=2.20.2
CORE_WHEEL=transformer_engine_cu13-$VERSION-py3-none-manylinux_2_28_x86_64.whl
STASH=/tmp/te-stash
# apart from /tmp/site, which bench/device_setup.sh makes anew every call; it puts this one on the path after it
SITE=${SITE:-/tmp/te-site}
FIRST_PART_BYTES=30000000 # part 1 also carries the small wheels and the sdist; .whl rides along with it

fetch() {
    local download=/tmp/te-fetch
    rm -rf .te1 .te2 .te3 .te4 .te5 "$download"
    mkdir -p "$download" .te1 .te2 .te3 .te4 .te5
    grep -qx '/.te\*/' .git/info/exclude || echo '/.te*/' >>.git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$download" "transformer_engine_cu13==$VERSION" \
        "transformer_engine==$VERSION" nvidia-cudnn-frontend==1.32.0 einops==0.8.2 nvdlfw-inspect==0.2.2
    python3 -m pip download -q --no-deps --no-binary=transformer_engine_torch -d "$download" \
        "transformer_engine_torch==$VERSION"
    # TE imports pydantic, which the GPU machine lacks; part 2 has room for it
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d .te2 pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 \
        typing-inspection==0.4.2
    (cd "$download" && sha256sum "$CORE_WHEEL" >core.sha256)
    head -c "$FIRST_PART_BYTES" "$download/$CORE_WHEEL" >.te1/core.part0
    tail -c +"$((FIRST_PART_BYTES + 1))" "$download/$CORE_WHEEL" >"$download/rest"
    split -n 4 -d -a 1 "$download/rest" "$download/core.part"
    for n in 0 1 2 3; do mv "$download/core.part$n" ".te$((n + 2))/core.part$((n + 1))"; done
    mv "$download/core.sha256" "$download"/transformer_engine-*.whl "$download"/nvidia_cudnn_frontend-*.whl \
        "$download"/einops-*.whl "$download"/nvdlfw_inspect-*.whl "$download"/transformer_engine_torch-*.tar.gz .te1/
    du -sh .te1 .te2 .te3 .te4 .te5
}

receive() {
    mkdir -p "$STASH"
    cp ".te$1"/* "$STASH/"
    ls -l "$STASH"
}

build() {
    mkdir -p "$STASH/build" "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STASH"/nvidia_cudnn_frontend-*.whl \
        "$STASH"/einops-*.whl "$STASH"/nvdlfw_inspect-*.whl
    tar xzf "$STASH/transformer_engine_torch-$VERSION.tar.gz" -C "$STASH/build"
    # cudnn.h and nccl.h come with torch's CUDA wheels, cudnn_frontend.h with its own wheel
    local headers
    headers=$(python3 -c 'import nvidia, pathlib; print(":".join(str(p) for r in nvidia.__path__ for p in pathlib.Path(r).glob("*/include")))')
    CPLUS_INCLUDE_PATH="$SITE/include:$headers" NVTE_PYTORCH_FORCE_BUILD=TRUE NVTE_CUDA_ARCHS=90 NVTE_WITH_NCCL_EP=0 \
        MAX_JOBS=16 setsid nohup bash -c "python3 -m pip wheel -v --no-build-isolation --no-deps -w '$STASH/wheel' \
        '$STASH/build/transformer_engine_torch-$VERSION' >'$STASH/build.log' 2>&1; echo \$? >'$STASH/build.rc'" \
        </dev/null >/dev/null 2>&1 &
    echo "building transformer_engine_torch in the background: $STASH/build.log"
}

install() {
    cat "$STASH"/core.part0 "$STASH"/core.part1 "$STASH"/core.part2 "$STASH"/core.part3 "$STASH"/core.part4 \
        >"$STASH/$CORE_WHEEL"
    (cd "$STASH" && sha256sum -c core.sha256)
    local waited=0
    until [ -f "$STASH/build.rc" ] || [ "$waited" -ge 540 ]; do sleep 10; waited=$((waited + 10)); done
    tail -n 5 "$STASH/build.log"
    [ "$(cat "$STASH/build.rc" 2>/dev/null)" = 0 ] || { echo "the torch binding did not build"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STASH/$CORE_WHEEL" \
        "$STASH"/transformer_engine-"$VERSION"-py3-none-any.whl "$STASH"/wheel/transformer_engine_torch-*.whl \
        "$STASH"/pydantic*.whl "$STASH"/annotated_types-*.whl "$STASH"/typing_inspection-*.whl
    PYTHONPATH=$SITE python3 - <<'EOF'
import torch
import transformer_engine.pytorch as te
from transformer_engine.common.recipe import DelayedScaling

layer = te.Linear(4096, 4096, params_dtype=torch.bfloat16, device="cuda")
x = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
with te.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling()):
    y = layer(x)
y.sum().backward()  # gradients of one: the first step's FP8 scale is 1, so tiny ones would flush to zero
print("transformer_engine FP8 forward and backward ran; input gradient nonzero:", bool(x.grad.abs().sum() > 0))
EOF
}

"$@"
