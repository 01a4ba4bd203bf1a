"""Hold each frozen FP8 layer's weight in FP8, cast once.

torchao's Float8Linear casts its weight to FP8 in every forward (gradient checkpointing's recompute included) and, as
written, again for the input gradient, with a scale from the weight's largest magnitude. A frozen weight (LoRA's
base layers) never changes, so each of those casts gives the same bytes and the same scale. Cast once, after
Accelerate has converted the model and before the first step, the weight becomes a torchao Float8TrainingTensor,
which Float8Linear takes as already cast: the GEMMs see exactly what they saw before, the casts are gone, and the
weight's BF16 copy is freed (1 byte a parameter where it held 2). tests/test_frozen_fp8_weights.py holds the outputs
and every gradient equal to torchao's own path, eager and compiled.
"""

from __future__ import annotations

from transformers import TrainerCallback


def cast_frozen_weights_once(model) -> int:
    """Replace the weight of every torchao Float8Linear whose weight is frozen by its FP8 cast; how many."""
    import torch
    from torchao.float8.distributed_utils import tensor_already_casted_to_fp8
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import GemmInputRole

    cast = 0
    for module in model.modules():
        if not isinstance(module, Float8Linear) or module.weight.requires_grad:
            continue
        if tensor_already_casted_to_fp8(module.weight):
            continue
        config = module.config
        with torch.no_grad():
            weight = hp_tensor_to_float8_dynamic(
                module.weight.detach(),
                config.cast_config_weight.target_dtype,
                module.linear_mm_config,
                gemm_input_role=GemmInputRole.WEIGHT,
                round_scales_to_power_of_2=config.round_scales_to_power_of_2,
            )
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
        cast += 1
    return cast


class CastFrozenWeightsOnce(TrainerCallback):
    """At train start, after Accelerate has converted the model to FP8 and before the first (compiled) step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None:
            return
        on_gpu = torch.cuda.is_available()
        before = torch.cuda.memory_allocated() if on_gpu else 0
        cast = cast_frozen_weights_once(model)
        # what the GPU's allocator got back, measured: the BF16 copies are freed only if nothing else holds them
        freed = f", {(before - torch.cuda.memory_allocated()) / 2**30:.2f} GiB freed on this GPU" if on_gpu else ""
        if state.is_world_process_zero:
            print(
                f"[llamafactory-fp8] FP8: {cast} frozen layers' weights cast to FP8 once, held in FP8{freed}",
                flush=True,
            )
