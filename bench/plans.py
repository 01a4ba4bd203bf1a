"""The plans: which cases each `--plan` runs, with why in each builder's docstring."""

from __future__ import annotations

from dataclasses import replace

from .cases import Case

LORA_ALL = ("lora_target=all",)


def pairs(shape, layers, finetuning, steps=40, bf16_eager=False, batch=4, extra=(), repeat=0, **options):
    cases = [
        Case(shape, layers, finetuning, p, True, steps, batch=batch, extra=extra, repeat=repeat, **options)
        for p in ("bf16", "fp8")
    ]
    if bf16_eager:
        cases.insert(
            0, Case(shape, layers, finetuning, "bf16", False, steps, batch=batch, extra=extra, repeat=repeat, **options)
        )
    return cases


def transformer_engine_side_by_side(shape, layers, steps=30, batch=4, **options):
    """TE runs eager (its delayed scaling refuses torch.compile): compare it with BF16 both ways and with torchao."""
    eager = [
        Case(shape, layers, "full", "bf16", False, steps, batch=batch, **options),
        Case(shape, layers, "full", "fp8", False, steps, batch=batch, backend="te", **options),
    ]
    return eager + pairs(shape, layers, "full", steps=steps, batch=batch, **options)


# Full fine-tuning of the 8B at full depth on one H200: AdamW states in float32 (LLaMA-Factory upcasts trainable
# weights) take 120 GiB, so one sequence of 2048 per optimizer step. With four micro-batches per step, both compiled
# runs ran out of memory in the second step's forward (136-137 GiB allocated, results/full-depth-ga4-oom/): the
# float32 gradients are held while the compiled forward keeps about a BF16 copy of the weights' size.
FULL_8B = dict(shape="llama-3.1-8b", layers=None, finetuning="full", batch=1, steps=30)


def full_depth_8b():
    """Compiled BF16 against the product's FP8 (torchao tensorwise, compiled), each profiled after its timed steps,
    then LLaMA-Factory's defaults (BF16, eager, gradient checkpointing)."""
    compiled = pairs(**FULL_8B, profile_steps=2, expected_s=150)
    defaults = Case(
        **FULL_8B,
        precision="bf16",
        compile=False,
        grad_ckpt=True,
        warmup_steps=5,
        profile_steps=1,
        extra=("flash_attn=auto",),
        label="llamafactory-defaults",
        expected_s=60,
    )
    return [compiled[0], replace(compiled[1], expected_s=240), defaults]


def full_depth_200(shape: str, profile_steps: int):
    """Compiled BF16 against the product's FP8 at full depth for 200 steps on real text: the speed pair again and
    the loss at step 200, profiled for `profile_steps` after the timed ones."""
    options = dict(FULL_8B, shape=shape, steps=200, profile_steps=profile_steps)
    return [
        Case(**options, precision="bf16", compile=True, expected_s=200),
        Case(**options, precision="fp8", compile=True, expected_s=330),
    ]


def full_depth_recipes():
    """torchao's other scalings at the 8B's full depth, beside compiled BF16 and the default tensorwise."""
    return [Case(**FULL_8B, precision="bf16", compile=True, expected_s=150)] + [
        Case(**FULL_8B, precision="fp8", compile=True, recipe=recipe, expected_s=240)
        for recipe in ("rowwise", "tensorwise-pow2")
    ]


# Eight sequences per micro-batch with gradient checkpointing (LLaMA-Factory's default), so that the AdamW step and
# the per-step weight casts are shared by 8x the tokens. The peak stays the optimizer step's (memory.py's estimate:
# ~127 GiB at batch 1 or 8).
FULL_8B_BATCH8 = dict(FULL_8B, batch=8, grad_ckpt=True, steps=20, warmup_steps=6)


def full_depth_batch8():
    """Compiled BF16, the product's FP8, and LLaMA-Factory's defaults at FULL_8B_BATCH8, profiled."""
    options = dict(FULL_8B_BATCH8, profile_steps=1)
    defaults = Case(
        **dict(options, steps=10, warmup_steps=4),
        precision="bf16",
        compile=False,
        extra=("flash_attn=auto",),
        label="llamafactory-defaults",
        expected_s=120,
    )
    return [
        Case(**options, precision="bf16", compile=True, expected_s=150),
        Case(**options, precision="fp8", compile=True, expected_s=180),
        defaults,
    ]


def full_depth_batch8_repeat(
    shape: str = "llama-3.1-8b", recipes: tuple[str | None, ...] = (None,), repeat: int = 0, profile_steps: int = 0
):
    """full_depth_batch8's compiled pair again (another machine, another model, or a repeat), with torchao's other
    scalings beside the default tensorwise where `recipes` names them."""
    options = dict(FULL_8B_BATCH8, shape=shape, expected_s=120, repeat=repeat, profile_steps=profile_steps)
    return [Case(**options, precision="bf16", compile=True)] + [
        Case(**options, precision="fp8", compile=True, recipe=recipe) for recipe in recipes
    ]


# LoRA r16 on every linear layer of the 8B at full depth, two sequences of 2048: without gradient checkpointing
# this fits an H100 on both sides (the memory model's estimate: ~47 GiB).
LORA_8B = dict(shape="llama-3.1-8b", layers=None, finetuning="lora", batch=2, extra=(*LORA_ALL, "lora_rank=16"))


def lora_8b(grad_ckpt: bool):
    """BF16 against FP8 on the frozen base layers only (lora-base) and the product's default FP8 (every linear
    layer but the first and last, adapters included). Profiled, to count the GEMMs per step."""
    options = dict(LORA_8B, steps=30, profile_steps=2, grad_ckpt=grad_ckpt, expected_s=150)
    return [
        Case(**options, precision="bf16", compile=True),
        Case(**options, precision="fp8", compile=True, recipe="lora-base"),
        Case(**options, precision="fp8", compile=True),
    ]


def lora_8b_batch8():
    """LoRA at eight sequences per step, no checkpointing (~104 GiB by the two-sequence runs, so an H200): the
    launch gap that held lora-base to 1.085x at two sequences is shared by 4x the GPU work."""
    options = dict(LORA_8B, batch=8, steps=20, warmup_steps=6, profile_steps=1, expected_s=200)
    return [
        Case(**options, precision="bf16", compile=True),
        Case(**options, precision="fp8", compile=True, recipe="lora-base"),
    ]


def lora_fp8_weights_8b(batch: int, grad_ckpt: bool):
    """The 8B's LoRA, BF16 compiled against FP8 on the frozen base layers cast every step (lora-base) and cast once,
    held in FP8 (lora-base-fp8-weights): the same numbers, so what the per-step weight casts cost, and the base's
    memory (peak allocated). One call: 4 x 2048 with checkpointing fits an H100, 8 x 2048 without an H200."""
    options = dict(LORA_8B, batch=batch, grad_ckpt=grad_ckpt, steps=24, warmup_steps=8, profile_steps=1)
    return [
        Case(**options, precision="bf16", compile=True, expected_s=150),
        Case(**options, precision="fp8", compile=True, recipe="lora-base", expected_s=200),
        Case(**options, precision="fp8", compile=True, recipe="lora-base-fp8-weights", expected_s=200),
    ]


def memory_points():
    """Peak memory for issue 11's memory model: LoRA at three ranks, freeze, QLoRA, gradient checkpointing on and
    off, batch 1, 2 and 4. BF16 eager (what the product runs when it keeps BF16); several at a time."""
    one = dict(
        shape="llama-3.2-1b",
        layers=None,
        compile=False,
        precision="bf16",
        steps=5,
        warmup_steps=0,
        profile_steps=1,
        memory_only=True,
    )
    lora = dict(one, finetuning="lora", grad_ckpt=True)
    return [
        Case(**one, finetuning="full", batch=4, grad_ckpt=False),
        Case(**lora, extra=(*LORA_ALL, "lora_rank=8")),
        Case(**lora, extra=(*LORA_ALL, "lora_rank=64")),
        Case(**one, finetuning="full", batch=4, grad_ckpt=True),
        Case(**dict(lora, grad_ckpt=False), extra=(*LORA_ALL, "lora_rank=16")),
        Case(**one, finetuning="freeze", grad_ckpt=True, extra=("freeze_trainable_layers=2",)),
        Case(**one, finetuning="full", batch=2, grad_ckpt=True),
        Case(**lora, extra=(*LORA_ALL, "lora_rank=16", "quantization_bit=4")),
        Case(**one, finetuning="full", batch=1, grad_ckpt=True),
        Case(**dict(lora, shape="qwen2.5-3b"), extra=(*LORA_ALL, "lora_rank=16")),
    ]


def parity_1b(steps: int = 300):
    """Loss parity at the 1B with the attention fix (issue 21): BF16 twice (the noise band between two runs of one
    precision), FP8 tensorwise and FP8 with power-of-2 scales, on the stdlib corpus (about 2.3 epochs at 300 steps).
    They may share the GPU (--parallel, four fit an H200 by their peaks in results/parity/): their losses count, their
    speeds do not."""
    options = dict(shape="llama-3.2-1b", layers=None, finetuning="full", compile=True, steps=steps, loss_only=True)
    return [
        Case(**options, precision="bf16", expected_s=240),
        Case(**options, precision="fp8", expected_s=240),
        Case(**options, precision="bf16", repeat=1, expected_s=200),
        Case(**options, precision="fp8", recipe="tensorwise-pow2", expected_s=240),
    ]


def parity_8b(steps: int = 300):
    """Loss parity at the headline shape (issue 21): the 8B's full fine-tuning at 8 x 2048 with checkpointing, FP8
    first, then BF16 compiled twice (the noise band), one at a time (one fills most of an H200), so each run's
    tokens/s over 300 steps counts too. The BF16 repeat reuses the first's compile cache, which changes no kernel
    choice and saves its compile. About 1,550 s in all (from results/causal-batch8's speeds): the first call of a
    session that gets an H200, every call with needs_h200."""
    options = dict(FULL_8B_BATCH8, steps=steps, warmup_steps=6, compile=True)
    bf16 = dict(options, precision="bf16", compile_cache="parity-8b-bf16")
    return [
        Case(**options, precision="fp8", expected_s=460),
        Case(**bf16, expected_s=590),
        Case(**bf16, repeat=1, expected_s=540),
    ]


def end_to_end_8b():
    """The product's FP8 at 8 x 2048 against LLaMA-Factory's defaults (BF16, eager, checkpointing) at the largest
    batch they fit, tried from 7 down (8 ran out of memory: results/batch8-defaults-oom/), in one call with the same
    timed window: 20 steps, 6 of warm-up, then one profiled step that ends the run unsaved."""
    options = dict(FULL_8B_BATCH8, profile_steps=1)
    defaults = [
        Case(
            **dict(options, batch=batch),
            precision="bf16",
            compile=False,
            extra=("flash_attn=auto",),
            label="llamafactory-defaults",
            search="llamafactory-defaults",
            expected_s=100,
        )
        for batch in (7, 6, 5, 4)
    ]
    return [Case(**options, precision="fp8", compile=True, expected_s=120), *defaults]


def micro_batch_sweep_8b(batches=(1, 2, 4), shape="llama-3.1-8b"):
    """BF16 (eager and compiled) against FP8 for the 8B's full fine-tuning with checkpointing at fewer sequences
    per step than the headline's eight: steady tokens/s and the wall time to each logged step, loading and compiling
    included (`seconds_to_step`), for the auto rule's micro-batch and run length. Another shape (the 3B fits an
    H100) the same way."""
    options = dict(FULL_8B_BATCH8, shape=shape, profile_steps=1, expected_s=100)
    return [case for batch in batches for case in three_ways(dict(options, batch=batch))]


def three_ways(options: dict) -> list[Case]:
    """BF16 eager (what a YAML without torch_compile runs, and auto's BF16 keeps), BF16 compiled, and FP8."""
    return [
        Case(**options, precision="bf16", compile=False),
        Case(**options, precision="bf16", compile=True),
        Case(**options, precision="fp8", compile=True),
    ]


def micro_batch_sweep_lora_8b(batches=(1, 2, 4)):
    """BF16 (eager and compiled) against the product's FP8 for the 8B's LoRA (r16, every linear layer,
    checkpointing, LLaMA-Factory's default) at few sequences per step, 50 steps: does a short run at batch 1 lose
    to BF16 through compile or fixed per-step costs? Steady tokens/s and the wall time to each logged step
    (`seconds_to_step`)."""
    options = dict(LORA_8B, steps=50, warmup_steps=10, grad_ckpt=True)
    # the deadline's estimates: the longest of each batch's three runs in results/sweep-h100 (65, 80 and 95 s at
    # 1, 2 and 4 sequences on an H100), a fifth more, and a guess at 8
    expected = {1: 80, 2: 95, 4: 115, 8: 150}
    return [case for batch in batches for case in three_ways(dict(options, batch=batch, expected_s=expected[batch]))]


def sft_alpaca():
    """LLaMA-Factory's own examples as users run them: sft on the shipped alpaca_en_demo (short instructions, so
    each micro-batch has a length of its own, which a compiled run sees as new shapes), one sequence per
    micro-batch, checkpointing. The 8B's LoRA as examples/train_lora (r8, every linear layer, 8 accumulated) and
    the 3B's full fine-tuning as examples/train_full (2 accumulated), each three ways. tokens/s counts the tokens
    LLaMA-Factory saw; the wall time to each step compares the three."""
    sft = ("stage=sft", "dataset=alpaca_en_demo", "template=default")
    common = dict(layers=None, batch=1, grad_ckpt=True, steps=30, warmup_steps=6, label="sft-alpaca", expected_s=150)
    lora = dict(common, shape="llama-3.1-8b", finetuning="lora", grad_accum=8, extra=(*sft, *LORA_ALL, "lora_rank=8"))
    full = dict(common, shape="qwen2.5-3b", finetuning="full", grad_accum=2, extra=sft)
    return [*three_ways(lora), *three_ways(full)]


def cuda_graphs_b1():
    """At one sequence with checkpointing FP8 lost to compiled BF16 through launch gaps (results/sweep-h100: 6,411
    kernels a step against 4,006, of 23 us on average); CUDA graphs replay a step's kernels in one launch. The 8B's
    LoRA and the 3B's full fine-tuning, compiled BF16 then FP8, each as before and with Transformers'
    torch_compile_mode reduce-overhead (its own pair, as repeat 1), one call on an H100."""
    options = [
        dict(LORA_8B, batch=1, steps=50, warmup_steps=10, grad_ckpt=True, expected_s=80),
        dict(FULL_8B_BATCH8, shape="qwen2.5-3b", batch=1, profile_steps=1, expected_s=90),
    ]
    graphs = dict(repeat=1, label="cudagraphs")
    return [
        Case(**dict(one, **variant, extra=(*one.get("extra", ()), *keys)), precision=precision, compile=True)
        for one in options
        for variant, keys in (({}, ()), (graphs, ("torch_compile_mode=reduce-overhead",)))
        for precision in ("bf16", "fp8")
    ]


def rerun_with_cache_kept(cases):
    """The cases, each with a compile cache of its own, then each again sharing the cache its first run filled: a
    user's rerun where Inductor's cache is kept on a volume, against the first run in a fresh container."""
    first = [replace(case, compile_cache=case.name) for case in cases]
    return first + [replace(case, repeat=1) for case in first if case.compile]


# The 1B at full depth, 4 x 2048 per GPU, compiled: data parallel fits one H100 with room (results/memory/), so
# every strategy runs the same shape and each can be set beside one GPU at the same optimizer batch.
SEVERAL_GPUS = dict(shape="llama-3.2-1b", layers=None, finetuning="full", compile=True, steps=20, warmup_steps=8)


def several_gpus(strategy: str, processes: int = 2):
    """One strategy over `processes` GPUs of one machine, through the product's real launch, BF16 and FP8, after
    one GPU accumulating `processes` micro-batches a step (the same optimizer batch): tokens/s per GPU, rank 0's
    peak memory, and the loss against one GPU's, in one call of about 8 minutes."""
    one_gpu = [Case(**SEVERAL_GPUS, precision=p, grad_accum=processes, expected_s=120) for p in ("bf16", "fp8")]
    sharded = [
        Case(**SEVERAL_GPUS, precision=p, strategy=strategy, processes=processes, expected_s=120)
        for p in ("bf16", "fp8")
    ]
    return one_gpu + sharded


PLANS = {
    "smoke": pairs("llama-3.2-1b", 4, "full", steps=20),
    "small": pairs("llama-3.2-1b", None, "full", bf16_eager=True) + pairs("qwen2.5-3b", 12, "full"),
    "large": pairs("qwen2.5-7b", 6, "full", steps=30) + pairs("llama-3.1-8b", 8, "full", steps=30, batch=2),
    "lora": pairs("llama-3.1-8b", None, "lora", steps=30, batch=2, extra=(*LORA_ALL, "lora_rank=16"), grad_ckpt=True),
    "parity": pairs("llama-3.2-1b", None, "full", steps=200),
    # the smallest measured pair again, twice, the second in the other order, to see the noise
    "repeat": pairs("llama-3.2-1b", 4, "full", steps=20, repeat=1)
    + pairs("llama-3.2-1b", 4, "full", steps=20, repeat=2)[::-1],
    "te": transformer_engine_side_by_side("qwen2.5-7b", 6),
    "te-eager": transformer_engine_side_by_side("qwen2.5-7b", 6)[:2],  # the two eager runs alone, to retry TE
    # TE at full depth on an H100: the 3B's full fine-tuning, one sequence, 4 accumulated so the optimizer's step
    # weighs less, no checkpointing (~62 GiB planned) until te_recompute_probe.py has shown TE recomputing in FP8
    "te-3b": transformer_engine_side_by_side("qwen2.5-3b", None, batch=1, grad_accum=4, warmup_steps=6, expected_s=150),
    "full-depth": full_depth_8b(),
    "full-depth-200": full_depth_200("llama-3.1-8b", profile_steps=0),  # profiled in full-depth already
    "qwen-depth": full_depth_200("qwen2.5-7b", profile_steps=2),
    "recipes": full_depth_recipes(),
    "lora-depth": lora_8b(grad_ckpt=False),
    "lora-ckpt": lora_8b(grad_ckpt=True),
    "lora-default": lora_8b(grad_ckpt=False)[
        2:
    ],  # the product's default FP8 alone: its compile outlasts a call beside the others
    "full-batch8": full_depth_batch8(),
    "recipes-batch8": full_depth_batch8_repeat(recipes=(None, "rowwise", "tensorwise-pow2"), repeat=1),
    "qwen-batch8": full_depth_batch8_repeat("qwen2.5-7b"),
    "pow2-batch8": full_depth_batch8_repeat(recipes=("tensorwise-pow2", "rowwise-gw-hp"), repeat=2),
    # the power-of-2 FP8 run alone again, short, to fit the session's last device minutes
    "pow2-repeat": [
        replace(
            full_depth_batch8_repeat(recipes=("tensorwise-pow2",), repeat=3)[1], steps=12, warmup_steps=4, expected_s=90
        )
    ],
    "lora-batch8": lora_8b_batch8(),
    # after the trainer's causal-attention fix (entrypoint/llamafactory_fp8/causal_attention.py): profiled
    "causal-batch8": full_depth_batch8_repeat(recipes=(None, "tensorwise-pow2"), profile_steps=1),
    "batch8-defaults": full_depth_batch8()[2:],  # ran out of GPU memory: results/batch8-defaults-oom/
    "batch4-defaults": [replace(full_depth_batch8()[2], batch=4)],  # the largest power-of-2 batch the defaults fit
    "memory": memory_points(),
    # issue 21, with the attention fix exact or off
    "parity-1b": parity_1b(),
    "parity-8b": parity_8b(),
    "end-to-end-8b": end_to_end_8b(),
    "sweep-8b": micro_batch_sweep_8b(),
    "sweep-lora-8b": micro_batch_sweep_lora_8b(),
    "sweep-lora-8b-b1": micro_batch_sweep_lora_8b(batches=(1,)),
    "cudagraphs-b1": cuda_graphs_b1(),
    "sft-alpaca": sft_alpaca(),
    # what sweep-h100 left of the LoRA sweep: FP8 at 4 (its deadline), and 8 sequences, on an H100
    "sweep-lora-8b-4-8": micro_batch_sweep_lora_8b(batches=(4, 8)),
    # the least that gives one payback point at LLaMA-Factory's defaults: FP8 first, then BF16 eager
    "payback-lora-8b-b1": micro_batch_sweep_lora_8b(batches=(1,))[::-2],
    "payback-3b-b1": micro_batch_sweep_8b(batches=(1,), shape="qwen2.5-3b")[::-2],  # the same for the 3B's full
    # one H100's share of both sweeps, the shortest first: LoRA at 1 sequence, cold and rerun with the compile cache
    # kept, then at 2 and 4 interleaved with the 3B's full fine-tuning (the 8B's does not fit 80 GB)
    "sweep-h100": [
        *rerun_with_cache_kept(micro_batch_sweep_lora_8b(batches=(1,))),
        *micro_batch_sweep_8b(batches=(1,), shape="qwen2.5-3b"),
        *micro_batch_sweep_lora_8b(batches=(2,)),
        *micro_batch_sweep_8b(batches=(2,), shape="qwen2.5-3b"),
        *micro_batch_sweep_lora_8b(batches=(4,)),
    ],
    # what torch.compile's cache kept on a volume saves a rerun, at the least device time: the 1B's full FP8, cold
    # and again with the cache its first run filled
    "cache-rerun-1b": rerun_with_cache_kept(
        [Case("llama-3.2-1b", None, "full", "fp8", True, 20, batch=4, warmup_steps=8, expected_s=120)]
    ),
    # the frozen base held in FP8, cast once, against cast every step (issue 21's LoRA lever)
    "lora-fp8-weights-h100": lora_fp8_weights_8b(batch=4, grad_ckpt=True)[::-1],  # the new recipe first
    "lora-fp8-weights-8b": lora_fp8_weights_8b(batch=8, grad_ckpt=False),
    # the least that shows the recipe running compiled on a GPU: the 1B's LoRA, each recipe once, short
    "lora-fp8-weights-smoke": [
        replace(case, shape="llama-3.2-1b", steps=12, warmup_steps=4, profile_steps=0, expected_s=90)
        for case in lora_fp8_weights_8b(batch=4, grad_ckpt=True)[:0:-1]
    ],
    # issue 20, the day a machine with two GPUs is lent: a call each
    "gpus-2-ddp": several_gpus("ddp"),
    "gpus-2-fsdp2": several_gpus("fsdp2"),
    "gpus-2-zero3": several_gpus("deepspeed-zero3"),
}
# the runs of sweep-h100 that its first call's deadline left out (results/sweep-h100/ has the first 12)
PLANS["sweep-h100-rest"] = PLANS["sweep-h100"][12:]
