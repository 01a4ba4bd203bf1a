"""A profiled run's GPU time per optimizer step by kernel group, from the raw torch.profiler kernel table."""

from __future__ import annotations

import re

# Kernel groups for the per-step breakdown, first match wins. Names are what CUPTI reports: cuBLAS/cuBLASLt GEMMs
# (nvjet_sm90_tst_* in BF16; nvjet_sm90_qqtst_*/qrtst_* with FP8 operands), cuDNN attention, ATen kernels, and
# Inductor's Triton kernels, named after the ops they fuse. Attention comes before GEMMs (cuDNN's attention kernels
# carry GEMM words); the optimizer before FP8 (its multi-tensor kernels include the gradient-norm clipping); FP8
# casts before norms (Inductor fuses a norm with the cast of its output: that time counts as casting); a kernel
# that only converts dtypes is the per-step cast of the float32 master weights to BF16 (or of activations).
KERNEL_GROUPS = (
    ("attention", r"flash|fmha|sdpa|attention"),
    ("gemm", r"gemm|nvjet|cutlass|xmma|cublas|splitk"),
    ("optimizer + grad clipping", r"multi_tensor_apply|adam|foreach"),
    ("fp8 cast/amax/scale", r"amax|abs_max|float8|fp8|e4m3|e5m2|reciprocal|clamp|scaled_mm"),
    ("dtype casts (fp32 weights to bf16)", r"^triton_poi_fused__to_copy(_t)?_\d+$|bfloat16_copy|direct_copy"),
    ("norm", r"rsqrt|norm|rms|meanops|pow_tensor"),
    ("loss (vocab softmax)", r"softmax|nll_loss|cross_entropy|logsumexp"),
    ("elementwise/activation", r"elementwise|triton_|silu|mul|add|copy|cat|fill|where|neg|sigmoid|index|embedding"),
)
TOP_KERNELS = 15  # per profiled run in the report; the raw profile beside it has every kernel
FP8_GEMM = re.compile(r"e4m3|e5m2|f8|fp8|nvjet_sm\d+_[qr][qr]")


def kernel_group(name: str) -> str:
    lowered = name.lower()
    return next((group for group, pattern in KERNEL_GROUPS if re.search(pattern, lowered)), "other")


def breakdown(profile: dict) -> dict:
    """Milliseconds per optimizer step by kernel group, the GEMM calls per step split BF16/FP8, and the gap between
    the profiled wall time and the kernels' (launch overhead, host work, synchronisation)."""
    steps = profile["steps"]
    groups: dict[str, float] = {}
    gemm_calls = {"bf16": 0, "fp8": 0}
    for kernel in profile["kernels"]:
        group = kernel_group(kernel["name"])
        groups[group] = groups.get(group, 0.0) + kernel["total_us"] / 1000 / steps
        if group == "gemm":
            gemm_calls["fp8" if FP8_GEMM.search(kernel["name"].lower()) else "bf16"] += kernel["calls"]
    kernels_ms = sum(groups.values())
    wall_ms = profile["wall_s"] * 1000 / steps
    return {
        "wall_ms_per_step": round(wall_ms, 1),
        "kernel_ms_per_step": round(kernels_ms, 1),
        "gap_ms_per_step": round(wall_ms - kernels_ms, 1),
        "ms_per_step": {group: round(ms, 2) for group, ms in sorted(groups.items(), key=lambda item: -item[1])},
        "gemm_calls_per_step": {kind: count // steps for kind, count in gemm_calls.items()},
        "top_kernels": [
            {
                "name": k["name"],
                "group": kernel_group(k["name"]),
                "ms_per_step": round(k["total_us"] / 1000 / steps, 2),
                "calls_per_step": k["calls"] // steps,
            }
            for k in sorted(profile["kernels"], key=lambda k: -k["total_us"])[:TOP_KERNELS]
        ],
    }
