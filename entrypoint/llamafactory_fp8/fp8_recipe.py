"""torchao FP8 recipes that LLaMA-Factory 0.9.5 cannot ask for.

LLaMA-Factory builds Accelerate's `AORecipeKwargs` (a Float8LinearConfig and a layer filter) but never passes it
on, so Accelerate converts every `nn.Linear` except the first and last with torchao's defaults: for LoRA that is
671 of 673 layers, the rank-16 adapters included, whose tiny GEMMs gain nothing from FP8 and whose input casts
cost as much as the base layers' (bench/README.md).

The launcher names a recipe in LLAMAFACTORY_FP8_RECIPE. The trainer process installs it before LLaMA-Factory
builds its Trainer; the Trainer then hands it to the Accelerator as the `AORecipeKwargs` Accelerate documents.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import contract

RECIPE_ENV = contract.FP8_RECIPE.name
# A GEMM whose smaller side is under this gains less from FP8 than its casts cost (torchao's float8 tables).
MIN_FP8_DIM = 1024
# The vocabulary projection stays in BF16, as Accelerate's default filter keeps it (the last linear layer).
KEPT_IN_BF16 = ("lm_head",)
# The recipe LLaMA-Factory's fp8_enable_fsdp_float8_all_gather asks for (precision.py)
ALL_GATHER_RECIPE = "fsdp-float8-all-gather"


@dataclass(frozen=True)
class Fp8Recipe:
    name: str
    description: str  # one line for the launcher's report
    layer_filter: Callable[[object, str], bool] | None = None  # None: Accelerate's (all but the first and last)
    torchao_recipe: str | None = None  # a torchao Float8LinearRecipeName value; None: tensorwise, torchao's default
    power_of_2_scales: bool = False  # round each scale down to a power of 2 (exact rescaling, torchao's option)
    # under FSDP2, cast each weight's shard to FP8 before the all-gather (a 1/N of the cast, half the bytes
    # gathered); Accelerate then precomputes the scales after each optimizer step. No effect without FSDP2.
    fsdp_float8_all_gather: bool = False
    # memory: activations held for backward as a fraction of BF16's; None keeps the backend's (memory.py)
    activation_factor: float | None = None
    # cast each converted layer's frozen weight to FP8 once, before the first step, and hold only that
    # (frozen_fp8_weights.py): the per-step cast of an unchanging weight is gone, and so is its BF16 copy
    frozen_weights_in_fp8: bool = False

    def float8_config(self):
        """torchao's Float8LinearConfig for this recipe: always one, since under FSDP2 Accelerate 1.11 reads the
        config's `enable_fsdp_float8_all_gather` and failed on the None it leaves for torchao's default
        (accelerate#3830; seen rehearsing on an H100: bench/results/rehearsal-8b/fp8.log). Float8LinearConfig() is
        what torchao's conversion takes for None."""
        from torchao.float8 import Float8LinearConfig

        if self.torchao_recipe is not None:
            return Float8LinearConfig.from_recipe_name(self.torchao_recipe)
        return Float8LinearConfig(
            round_scales_to_power_of_2=self.power_of_2_scales,
            enable_fsdp_float8_all_gather=self.fsdp_float8_all_gather,
        )


def large_enough(in_features: int, out_features: int) -> bool:
    """Whether a linear layer of this shape gains from FP8 (and fits its GEMMs' multiples of 16)."""
    return min(in_features, out_features) >= MIN_FP8_DIM and in_features % 16 == 0 and out_features % 16 == 0


def frozen_large_linear(module, fqn: str) -> bool:
    """Convert a linear layer only when its weight is frozen (LoRA's base layers) and both sides are large."""
    return (
        not module.weight.requires_grad
        and large_enough(module.in_features, module.out_features)
        and fqn.rsplit(".", 1)[-1] not in KEPT_IN_BF16
    )


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Fp8Recipe(
            "lora-base",
            f"FP8 on the frozen base linear layers only (both sides >= {MIN_FP8_DIM}); "
            "LoRA adapters and lm_head in BF16",
            layer_filter=frozen_large_linear,
            # frozen layers keep no FP8 input for a weight gradient: the peak equals BF16's (results/lora-batch8/)
            activation_factor=1.0,
        ),
        Fp8Recipe(
            "lora-base-fp8-weights",
            f"FP8 on the frozen base linear layers only (both sides >= {MIN_FP8_DIM}), each weight cast to FP8 once "
            "and held only in FP8 (the same numbers as lora-base; on the 8B, 6.5 GiB less allocated and no faster "
            "than lora-base: bench/results/lora-fp8-weights-h100); LoRA adapters and lm_head in BF16",
            layer_filter=frozen_large_linear,
            activation_factor=1.0,
            frozen_weights_in_fp8=True,
        ),
        Fp8Recipe(
            ALL_GATHER_RECIPE,
            "tensorwise scaling; under FSDP2 each weight shard is cast to FP8 before the all-gather",
            fsdp_float8_all_gather=True,
        ),
        Fp8Recipe(
            "tensorwise-pow2",
            "tensorwise scaling with scales rounded to powers of 2 (its loss sat 1.2% above BF16's at the 1B over 300 "
            "steps, outside the noise: bench/results/parity-1b)",
            power_of_2_scales=True,
        ),
        Fp8Recipe(
            "rowwise",
            "rowwise scaling (one scale per row, powers of 2), CUTLASS rowwise GEMMs",
            torchao_recipe="rowwise",
        ),
        Fp8Recipe(
            "rowwise-gw-hp",
            "rowwise scaling, the weight gradient's GEMM kept in BF16",
            torchao_recipe="rowwise_with_gw_hp",
        ),
    )
}


def recipe_from_environment(environ: Mapping[str, str] = os.environ) -> Fp8Recipe | None:
    name = environ.get(RECIPE_ENV, "")
    if not name:
        return None
    if name not in RECIPES:
        raise ValueError(f"{RECIPE_ENV}={name} is not a known FP8 recipe (known: {', '.join(sorted(RECIPES))})")
    return RECIPES[name]


def install(recipe: Fp8Recipe) -> None:
    """Make every Trainer pass the recipe to its Accelerator when it trains in FP8 through torchao. The Trainer
    builds the Accelerator's arguments in one method; the recipe is appended to its kwargs handlers there."""
    from transformers import Trainer

    original = getattr(Trainer._build_accelerator_args, "unwrapped", Trainer._build_accelerator_args)

    def build_accelerator_args(self, **kwargs):
        args = original(self, **kwargs)
        if args.get("mixed_precision") == "fp8" and os.environ.get("ACCELERATE_FP8_BACKEND", "AO") == "AO":
            from accelerate.utils import AORecipeKwargs

            handlers = list(args.get("kwargs_handlers") or [])
            ao_recipe = AORecipeKwargs(config=recipe.float8_config(), module_filter_func=recipe.layer_filter)
            args["kwargs_handlers"] = [*handlers, ao_recipe]
        return args

    build_accelerator_args.unwrapped = original  # installing again replaces the recipe rather than adding one
    build_accelerator_args.fp8_recipe = recipe
    Trainer._build_accelerator_args = build_accelerator_args


# What the launcher's plan calls no recipe: torchao's own choices, handed over as a config all the same (above).
DEFAULT = Fp8Recipe("default", "torchao's tensorwise scaling, all linear layers but the first and last")


def install_from_environment(environ: Mapping[str, str] = os.environ) -> Fp8Recipe:
    recipe = recipe_from_environment(environ) or DEFAULT
    install(recipe)
    return recipe
