"""The FP8 backends, one record each: everything else (the policy, the Accelerate config, the memory model, the
report) reads these. Adding a backend is one record here plus its file under configs/accelerate/."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class Payback:
    """One measured point: the micro-batches a GPU trained before FP8 was ahead of BF16 in wall time, the time to
    its first step (compiling included) counted."""

    finetuning: Literal["full", "lora"]
    """full stands for freeze too, lora for OFT."""
    checkpointing: bool
    """Gradient checkpointing (it changes what torch.compile compiles, and how long it takes)."""
    bf16_compiled: bool
    """BF16 as the YAML would run it: compiled (torch_compile: true) or eager (LLaMA-Factory's default)."""
    tokens: int
    """Per micro-batch: per_device_train_batch_size x cutoff_len."""
    micro_batches: int | None
    """None where FP8's steady step was the slower one: it never pays back, whatever the run's length."""
    parameters: int
    """The measured model's size: the point stands for models up to it (a larger one gains more a step and pays
    back sooner). Shape counts too: Qwen2.5-7B's 28 layers compiled sooner than the 8B's 32 and paid back after
    3,142 micro-batches against 6,260, so where several points apply the rule takes the fewest."""
    measured: str
    """The result it comes from, for the block."""


@dataclass(frozen=True)
class FP8Backend:
    name: str  # as LLaMA-Factory's `fp8_backend` and `--backend` spell it
    module: str  # probed with importlib, never imported by the launcher
    accelerate_file: str  # under configs/accelerate/
    training_keys: Mapping[str, object]  # what LLaMA-Factory is told when this backend runs
    needs_compile: bool  # slower than BF16 without torch.compile: not picked by auto where the user turned it off
    activation_factor: float  # memory: activations held for backward, as a fraction of BF16's (memory.py)
    why: str
    takes_recipes: bool = False  # whether fp8_recipe.RECIPES (torchao configs and layer filters) apply to it
    # The fp8_recipe.RECIPES entry the trainer applies, by finetuning_type, where one beats the backend's default.
    recipes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tip: str | None = None  # what was measured against the preferred backend, shown wherever this one runs
    # where FP8's longer start was measured to pay back (fp8_payback.py): auto keeps BF16 for a run shorter
    payback: tuple[Payback, ...] = ()


TORCHAO = FP8Backend(
    name="torchao",
    module="torchao",
    accelerate_file="fp8-torchao.yaml",
    # Compiled, the short last batch of an epoch makes torch.compile recompile with a dynamic batch size, after
    # which FP8 ran at 0.59x of BF16 (bench/results/superseded-parity-recompile/): so the last batch is dropped.
    training_keys=MappingProxyType(
        {
            "fp8": True,
            "fp8_backend": "torchao",
            "bf16": True,
            "fp16": False,
            "torch_compile": True,
            "dataloader_drop_last": True,
        }
    ),
    needs_compile=True,
    # Fitted with the other terms of memory.py to every committed torchao run (bench/results/{smoke,repeat,small,
    # parity,large,te,lora}); tests/test_memory.py checks each.
    activation_factor=0.63,
    why="Float8Linear with tensorwise scaling, compiled with torch.compile (it is slower uncompiled)",
    # LoRA on the 8B at full depth (bench/results/lora-depth, lora-default, lora-batch8, causal-lora-batch8): FP8 on
    # the frozen base layers only ran faster than BF16, the default (the rank-16 adapters converted too) slower. Full
    # fine-tuning keeps torchao's tensorwise default: power-of-2 scales ran 2% faster twice (pow2-batch8,
    # causal-batch8) but their loss sat 1.2% above BF16's over 300 steps (parity-1b), and rowwise ran slower
    # (recipes-batch8).
    takes_recipes=True,
    recipes=MappingProxyType({"lora": "lora-base"}),
    # bench/results/payback/committed.md, from the first step and the steady step of each pair: one H200 against
    # BF16 compiled without checkpointing; one H100 with checkpointing (LLaMA-Factory's default) at one, two and four
    # sequences, against BF16 eager (LLaMA-Factory's default) and compiled
    payback=(
        Payback(
            finetuning="full",
            checkpointing=False,
            bf16_compiled=True,
            tokens=2048,
            micro_batches=6260,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H200, bench/results/full-depth",
        ),
        Payback(
            finetuning="full",
            checkpointing=False,
            bf16_compiled=True,
            tokens=2048,
            micro_batches=3142,
            parameters=7_615_616_512,
            measured="Qwen2.5-7B, one H200, bench/results/qwen-full-depth",
        ),
        Payback(
            finetuning="lora",
            checkpointing=False,
            bf16_compiled=True,
            tokens=4096,
            micro_batches=3529,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H200, bench/results/lora-depth",
        ),
        Payback(
            finetuning="lora",
            checkpointing=False,
            bf16_compiled=True,
            tokens=16384,
            micro_batches=391,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H200, bench/results/causal-lora-batch8",
        ),
        Payback(
            finetuning="lora",
            checkpointing=True,
            bf16_compiled=False,
            tokens=2048,
            micro_batches=167,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H100, bench/results/payback-lora-8b-b1",
        ),
        Payback(
            finetuning="lora",
            checkpointing=True,
            bf16_compiled=True,
            tokens=8192,
            micro_batches=16,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H100, bench/results/lora-fp8-weights-h100",
        ),
        Payback(
            finetuning="lora",
            checkpointing=True,
            bf16_compiled=True,
            tokens=2048,
            micro_batches=None,  # FP8 at 0.92x and 0.95x of BF16 compiled, twice
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H100, bench/results/sweep-h100",
        ),
        Payback(
            finetuning="lora",
            checkpointing=True,
            bf16_compiled=True,
            tokens=4096,
            micro_batches=146,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H100, bench/results/sweep-h100",
        ),
        Payback(
            finetuning="lora",
            checkpointing=True,
            bf16_compiled=False,
            tokens=4096,
            micro_batches=95,
            parameters=8_030_261_248,
            measured="Llama-3.1-8B, one H100, bench/results/sweep-h100",
        ),
        Payback(
            finetuning="full",
            checkpointing=True,
            bf16_compiled=False,
            tokens=2048,
            micro_batches=998,
            parameters=3_085_938_688,
            measured="Qwen2.5-3B, one H100, bench/results/sweep-h100",
        ),
        Payback(
            finetuning="full",
            checkpointing=True,
            bf16_compiled=True,
            tokens=2048,
            micro_batches=None,  # FP8 at 0.92x of BF16 compiled
            parameters=3_085_938_688,
            measured="Qwen2.5-3B, one H100, bench/results/sweep-h100",
        ),
        Payback(
            finetuning="full",
            checkpointing=True,
            bf16_compiled=True,
            tokens=4096,
            micro_batches=3136,
            parameters=3_085_938_688,
            measured="Qwen2.5-3B, one H100, bench/results/sweep-h100-rest",
        ),
        Payback(
            finetuning="full",
            checkpointing=True,
            bf16_compiled=False,
            tokens=4096,
            micro_batches=296,
            parameters=3_085_938_688,
            measured="Qwen2.5-3B, one H100, bench/results/sweep-h100 and sweep-h100-rest",
        ),
    ),
)

TE = FP8Backend(
    name="te",
    module="transformer_engine",
    accelerate_file="fp8-te.yaml",
    training_keys=MappingProxyType(
        {"fp8": True, "fp8_backend": "te", "bf16": True, "fp16": False, "torch_compile": False}
    ),
    needs_compile=False,
    activation_factor=0.88,  # fitted to bench/results/te-eager (Transformer Engine against BF16, both eager)
    why="Transformer Engine Linear layers, delayed scaling, eager (TE refuses torch.compile)",
    tip=(
        "Transformer Engine ran 1.01x the speed of compiled BF16, torchao compiled 1.15x (Qwen2.5-7B at 6 layers, "
        "one H100, bench/results/te-eager and te); --backend torchao takes the faster one"
    ),
)

# Preferred first, by measurement (bench/results/te*, Qwen2.5-7B shape, 6 layers, one H100): torchao compiled ran
# ahead of BF16 compiled, while Transformer Engine, whose delayed scaling refuses torch.compile and so runs eager,
# ran ahead of BF16 eager but level with BF16 compiled.
FP8_BACKENDS = (TORCHAO, TE)
BY_NAME = {backend.name: backend for backend in FP8_BACKENDS}


def installed_fp8_backends() -> frozenset[str]:
    """The backends this Python environment could load, found without importing them."""
    return frozenset(backend.name for backend in FP8_BACKENDS if importlib.util.find_spec(backend.module))
