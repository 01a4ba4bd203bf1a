"""Fit: which strategy a run takes, whether it fits in memory, what would make it fit, and the larger micro-batch
FP8 would gain from; all over one RunShape. The precision is decided before (policy.py), which calls this."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from . import memory
from .backends import FP8Backend
from .errors import DoesNotFit
from .fp8_recipe import Fp8Recipe
from .memory import MemoryEstimate
from .model_facts import ModelFacts
from .precedence import Source
from .strategies import BY_NAME, DDP, FSDP2, FSDP2_OFFLOAD, STRATEGIES, ZERO2, ZERO3, ZERO3_OFFLOAD, Strategy
from .training_config import TrainingConfig

# FP8 gained most with 8 sequences of 2048 per micro-batch, where the optimizer update, the weight casts and the
# CPU's kernel launches, fixed per step, are shared by the most tokens (bench/README.md, "Third round" and
# "Fourth round").
FP8_BEST_TOKENS_PER_MICRO_BATCH = 8 * 2048
NODE_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)  # what the does-not-fit search offers
GPUS_PER_NODE_OFFERED = 8  # a node of the does-not-fit search has at least this many GPUs


@dataclass(frozen=True, kw_only=True)
class RunShape:
    """What the memory of one process depends on."""

    model: ModelFacts
    """The model's shape."""
    training: TrainingConfig
    """The training keys (batch, sequence, fine-tuning type, optimizer...)."""
    backend: FP8Backend | None
    """The FP8 backend; None: no FP8."""
    recipe: Fp8Recipe | None
    """The torchao recipe the trainer applies; None: the backend's default."""
    processes_per_node: int
    """Processes (GPUs) on each node."""
    machines: int
    """Nodes."""

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.machines

    def estimate(self, strategy: Strategy) -> MemoryEstimate:
        return memory.estimate(
            self.model, self.training, self.backend, strategy, self.world_size, self.processes_per_node, self.recipe
        )

    def with_training(self, **changes) -> RunShape:
        return replace(self, training=replace(self.training, **changes))


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """What a run has to fit in, on this machine."""

    gpu_gib: float
    """The smallest GPU's memory."""
    host_gib: float | None
    """The node's memory, which loading and CPU offloading fill; None: unknown."""
    host_origin: str = "here"
    """Where host_gib comes from, in words after the figure: this machine, or a rehearsed job's node."""
    installed: frozenset[str]
    """The strategies this environment could run."""
    one_process_only: bool
    """A MIG slice runs one process only, so more GPUs like it are no remedy."""

    def fits(self, estimate: MemoryEstimate) -> bool:
        return estimate.fits(self.gpu_gib, self.host_gib)

    def host_words(self) -> str:
        return f"{self.host_gib:.0f} {self.host_origin}"


@dataclass(frozen=True, kw_only=True)
class StrategyChoice:
    """The strategy a run takes, and who chose it."""

    strategy: Strategy
    """The strategy record."""
    source: Source
    """flag (--strategy), yaml or override (the user's deepspeed/fsdp key), or auto."""
    kept_from_yaml: str | None = None
    """How the YAML names it, where it is kept as the YAML has it."""


@dataclass(frozen=True, kw_only=True)
class StrategyFit:
    """One row of `inspect`'s memory table."""

    strategy: str
    """The strategy's name."""
    estimate: MemoryEstimate
    """Its memory per GPU."""
    fits: bool
    """Whether the estimate with its margin fits this machine."""


@dataclass(frozen=True, kw_only=True)
class Fit:
    """The strategy part of a decision."""

    choice: StrategyChoice
    """The strategy taken."""
    estimate: MemoryEstimate | None
    """Its memory per GPU; None where the model's size is unknown."""
    table: tuple[StrategyFit, ...]
    """Every strategy's estimate; empty where the model's size is unknown."""
    layout: str
    """The strategy over the world, in words: "one device", "FSDP2 over 8"."""
    reasons: tuple[str, ...]
    """Why, in words."""
    warnings: tuple[str, ...]
    """What may go wrong with a strategy the user named, or one that does not fit."""
    tips: tuple[str, ...]
    """What the user could change for more speed; never applied."""


def layout(strategy: Strategy, world_size: int) -> str:
    if strategy is DDP:
        return "one device" if world_size == 1 else f"data parallel over {world_size}"
    return f"{strategy.label} over {world_size}"


def strategy_in_yaml(training: TrainingConfig, deepspeed_json: Mapping | None) -> StrategyChoice | None:
    """A strategy the YAML already names, as LLaMA-Factory's `deepspeed:` or Transformers' `fsdp:` (the way
    LLaMA-Factory's own FP8 examples write them), recognised so that it is kept, reported and estimated."""
    if deepspeed_json is not None:
        zero = _mapping(deepspeed_json.get("zero_optimization"))
        stage = zero.get("stage", 0)
        offload = any(
            _mapping(zero.get(part)).get("device") in ("cpu", "nvme") for part in ("offload_optimizer", "offload_param")
        )
        strategy = ZERO3_OFFLOAD if offload else ZERO3 if stage == 3 else ZERO2 if stage in (1, 2) else DDP
        named = "(a mapping in the YAML)" if isinstance(training.deepspeed, Mapping) else training.deepspeed
        kept = f"deepspeed: {named} (ZeRO stage {stage}{', CPU offload' if offload else ''})"
        return StrategyChoice(strategy=strategy, source=training.source_of("deepspeed"), kept_from_yaml=kept)
    if training.fsdp is not None:
        options = training.fsdp.split()
        strategy = FSDP2_OFFLOAD if "offload" in options else ZERO2 if "shard_grad_op" in options else FSDP2
        return StrategyChoice(
            strategy=strategy, source=training.source_of("fsdp"), kept_from_yaml=f"fsdp: {training.fsdp}"
        )
    return None


def _mapping(value: object) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def fit(
    shape: RunShape | None,
    given: StrategyChoice | None,
    capacity: Capacity,
    world_size: int,
    memory_check: bool,
    unestimated_because: str | None,
) -> Fit:
    """The strategy the user named, with what its memory says, or the fastest that fits; a refusal (DoesNotFit)
    where nothing fits and the memory check is on. `shape` is None where memory is not estimated
    (`unestimated_because` says why)."""
    reasons: list[str] = []
    warnings: list[str] = []
    estimated = [(s, shape.estimate(s)) for s in STRATEGIES] if shape else []
    table = tuple(StrategyFit(strategy=s.name, estimate=e, fits=capacity.fits(e)) for s, e in estimated)
    estimates = {row.strategy: row.estimate for row in table}
    if given is not None:
        _explain_given(given, estimates.get(given.strategy.name), capacity, world_size, reasons, warnings)
        choice, estimate = given, estimates.get(given.strategy.name)
    elif shape is None:
        reasons.append(f"{layout(DDP, world_size)}; memory not estimated: {unestimated_because}")
        choice, estimate = StrategyChoice(strategy=DDP, source="auto"), None
    else:
        choice, estimate = _fastest_that_fits(shape, capacity, estimates, memory_check, reasons, warnings)
    tips = more_tokens_tip(shape, choice.strategy, capacity) if shape else ()
    return Fit(
        choice=choice,
        estimate=estimate,
        table=table,
        layout=layout(choice.strategy, world_size),
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        tips=tips,
    )


def candidates(shape: RunShape, capacity: Capacity) -> list[Strategy]:
    """The strategies auto may take, fastest first: installed ones; for FP8 those that keep it on; for a 4-bit or
    8-bit model none that moves its weights to the CPU, which bitsandbytes' packed weights cannot follow."""
    return [
        s
        for s in STRATEGIES
        if s.name in capacity.installed
        and (s.carries_fp8 or shape.backend is None)
        and not (shape.training.quantization_bit and s.weights == "offloaded")
    ]


def _fastest_that_fits(
    shape: RunShape,
    capacity: Capacity,
    estimates: dict[str, MemoryEstimate],
    memory_check: bool,
    reasons: list[str],
    warnings: list[str],
) -> tuple[StrategyChoice, MemoryEstimate]:
    world, gpu = shape.world_size, capacity.gpu_gib
    usable = candidates(shape, capacity)
    for strategy in usable:
        chosen = estimates[strategy.name]
        if capacity.fits(chosen):
            fastest = estimates[usable[0].name]
            would = f"; {usable[0].label} would need ~{fastest.total_gib:.0f}" if strategy is not usable[0] else ""
            reasons.append(
                f"memory ~{chosen.total_gib:.0f} GiB of {gpu:.0f} per GPU ({layout(strategy, world)}){would}"
            )
            return StrategyChoice(strategy=strategy, source="auto"), chosen
    if memory_check:
        raise DoesNotFit(does_not_fit(shape, capacity))
    smallest = min((estimates[s.name] for s in usable), key=lambda e: e.total_gib)
    strategy = BY_NAME[smallest.strategy]
    where = f"~{smallest.total_gib:.0f} GiB of {gpu:.0f} per GPU ({layout(strategy, world)})"
    warnings.append(f"nothing fits: the smallest estimate is {where}; --no-memory-check runs it anyway")
    reasons.append(f"memory {where}, the smallest estimate")
    return StrategyChoice(strategy=strategy, source="auto"), smallest


def _explain_given(
    choice: StrategyChoice,
    estimate: MemoryEstimate | None,
    capacity: Capacity,
    world_size: int,
    reasons: list[str],
    warnings: list[str],
) -> None:
    strategy = choice.strategy
    where = f"--strategy {strategy.name}" if choice.source == "flag" else f"the training YAML ({choice.kept_from_yaml})"
    reasons.append(f"{strategy.label} from {where}")
    if strategy.name not in capacity.installed:
        warnings.append(
            f"{strategy.label} needs {strategy.module}, which is not installed here: the run will fail to start"
        )
    if estimate is None:
        return
    size = f"~{estimate.total_gib:.0f} GiB"
    of = f"of {capacity.gpu_gib:.0f} per GPU ({layout(strategy, world_size)})"
    if capacity.fits(estimate):
        reasons.append(f"memory {size} {of}")
        return
    beyond = ""
    if estimate.load_gib > capacity.gpu_gib:
        beyond = f", and ~{estimate.load_gib:.0f} GiB on each GPU while it loads the whole model"
    if not estimate.host_fits(capacity.host_gib):
        beyond += f", and ~{estimate.host_gib:.0f} GiB of CPU memory ({capacity.host_words()})"
    warnings.append(
        f"{strategy.label} needs {size} (+{estimate.margin_gib:.0f} margin) {of}{beyond}: it may run out of memory"
    )


def does_not_fit(shape: RunShape, capacity: Capacity) -> str:
    """One line: what the run needs at best, and the changes that would make it fit (one at a time, else
    together)."""
    training, model = shape.training, shape.model

    def first_fit(candidate: RunShape) -> MemoryEstimate | None:
        estimates = (candidate.estimate(s) for s in candidates(candidate, capacity))
        return next((e for e in estimates if capacity.fits(e)), None)

    changes: list[tuple[str, RunShape]] = []
    if training.finetuning_type in ("full", "freeze"):
        changes.append(("finetuning_type: lora", shape.with_training(finetuning_type="lora")))
    if training.finetuning_type in ("full", "freeze", "lora", "oft") and training.quantization_bit is None:
        changes.append(("quantization_bit: 4 (QLoRA)", shape.with_training(finetuning_type="lora", quantization_bit=4)))
    if not training.gradient_checkpointing:
        changes.append(("disable_gradient_checkpointing: false", shape.with_training(gradient_checkpointing=True)))
    if training.micro_batch_size > 1:
        changes.append(("per_device_train_batch_size: 1", shape.with_training(micro_batch_size=1)))
    if training.cutoff_len > 512:
        changes.append(
            (f"cutoff_len: {training.cutoff_len // 2}", shape.with_training(cutoff_len=training.cutoff_len // 2))
        )
    fitting = [(label, found) for label, changed in changes if (found := first_fit(changed))]
    if not capacity.one_process_only:
        per_node = max(shape.processes_per_node, GPUS_PER_NODE_OFFERED)
        for nodes in NODE_COUNTS:
            more = replace(shape, processes_per_node=per_node, machines=nodes)
            if more.world_size > shape.world_size and (found := first_fit(more)):
                words = f"{more.world_size} GPUs like these" if nodes == 1 else f"{nodes} nodes of {per_node} such GPUs"
                fitting.append((words, found))
                break
    if not fitting:  # every change at once, as a last resort
        together = {}
        for _, changed in changes:
            together |= {
                f.name: getattr(changed.training, f.name)
                for f in fields(training)
                if getattr(changed.training, f.name) != getattr(training, f.name)
            }
        found = first_fit(shape.with_training(**together))
        if found:
            fitting.append((", ".join(label for label, _ in changes) + " together", found))

    usable = candidates(shape, capacity)
    best = min((shape.estimate(s) for s in usable if s.weights != "offloaded"), key=lambda e: e.total_gib)
    run = f"does not fit: {training.finetuning_type} fine-tuning of {model.billions:.1f}B parameters"
    where = layout(BY_NAME[best.strategy], shape.world_size)
    if best.total_gib + best.margin_gib <= capacity.gpu_gib and best.load_gib > capacity.gpu_gib:
        needs = (
            f"{run} fits the GPUs at ~{best.total_gib:.0f} GiB each ({where}) but each process loads the whole "
            f"model onto its GPU first: ~{best.load_gib:.0f} GiB, and a GPU here has {capacity.gpu_gib:.0f}"
        )
    else:
        needs = (
            f"{run} needs ~{best.total_gib:.0f} GiB per GPU at best ({where}) and a GPU here has {capacity.gpu_gib:.0f}"
        )
    offloaded = [shape.estimate(s) for s in usable if s.weights == "offloaded"]
    if offloaded:
        least = min(offloaded, key=lambda e: e.total_gib)
        needs += f"; with CPU offload ~{least.total_gib:.0f} GiB per GPU"
        if capacity.host_gib is not None:
            needs += f" and ~{least.host_gib:.0f} GiB of CPU memory ({capacity.host_words()})"
    if not fitting:
        tried = ", ".join(label for label, _ in changes)
        return f"{needs}; nothing fits even with every change at once ({tried}): choose a smaller model"
    return f"{needs}; would fit: " + ", or ".join(
        f"{label} (~{found.total_gib:.0f} GiB, {layout(BY_NAME[found.strategy], found.world_size)})"
        for label, found in fitting
    )


def more_tokens_tip(shape: RunShape, strategy: Strategy, capacity: Capacity) -> tuple[str, ...]:
    """Where FP8 runs with fewer tokens per micro-batch than it gained most at: the largest micro-batch up to that
    which fits the chosen strategy, with gradient accumulation cut to keep the optimizer's batch where it can be,
    and, for full fine-tuning (where it was measured faster on both sides), with gradient checkpointing turned on if
    nothing fits without. Said, not applied: the batch is the user's."""
    training = shape.training
    if shape.backend is None:
        return ()
    largest = FP8_BEST_TOKENS_PER_MICRO_BATCH // max(training.cutoff_len, 1)
    batches = [2**k for k in range(largest.bit_length(), -1, -1) if training.micro_batch_size < 2**k <= largest]
    checkpointing = (training.gradient_checkpointing,)
    if training.finetuning_type == "full" and not training.gradient_checkpointing:
        checkpointing += (True,)
    for batch in batches:
        accumulation = max(1, training.gradient_accumulation_steps * training.micro_batch_size // batch)
        for on in checkpointing:
            changed = shape.with_training(
                micro_batch_size=batch, gradient_accumulation_steps=accumulation, gradient_checkpointing=on
            )
            estimate = changed.estimate(strategy)
            if not capacity.fits(estimate):
                continue
            keys = [f"per_device_train_batch_size: {batch}"]
            if accumulation != training.gradient_accumulation_steps:
                keys.append(f"gradient_accumulation_steps: {accumulation}")
            if on != training.gradient_checkpointing:
                keys.append("disable_gradient_checkpointing: false")
            growth = batch * accumulation / (training.micro_batch_size * training.gradient_accumulation_steps)
            optimizer = "the same batch" if growth == 1 else f"{growth:g}x the batch"
            return (
                f"more tokens per micro-batch let FP8 gain more (measured up to {FP8_BEST_TOKENS_PER_MICRO_BATCH:,}): "
                f"{', '.join(keys)} fits (~{estimate.total_gib:.0f} GiB of {capacity.gpu_gib:.0f}), "
                f"and the optimizer sees {optimizer}",
            )
    return ()
