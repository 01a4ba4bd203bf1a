"""Decide: the precision, the FP8 backend, the processes and the strategy, a pure function of what inspect found.

Every choice follows one rule, `precedence`: a command-line flag wins over the user's explicit key (in the YAML,
or as key=value), which wins over what auto picks. So `--bf16` wins over `fp8: true`, `fp8_backend: te` keeps
Transformer Engine unless `--backend` says otherwise, and a YAML's `deepspeed:` or `fsdp:` is kept unless
`--strategy` says otherwise. Auto picks FP8 where it was measured to pay, and the fastest strategy that fits in
memory with headroom; when nothing fits it refuses, saying what would."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal, TypeVar

from . import memory
from .backends import BY_NAME as BACKENDS
from .backends import FP8_BACKENDS, FP8Backend
from .errors import BF16Unavailable, ConfigInvalid, DoesNotFit, FP8Unavailable, NoGpu
from .fp8_recipe import RECIPES, Fp8Recipe
from .gpus import GpuInventory
from .inspection import Inspection
from .memory import MemoryEstimate
from .strategies import BY_NAME as STRATEGIES_BY_NAME
from .strategies import DDP, FSDP2, FSDP2_OFFLOAD, STRATEGIES, ZERO2, ZERO3, ZERO3_OFFLOAD, Strategy
from .training_config import FP8_CAPABLE_STAGES, TrainingConfig

Source = Literal["flag", "yaml", "auto"]
T = TypeVar("T")

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper and newer have FP8 tensor cores
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere and newer

# Auto picks FP8 from this model size up, per fine-tuning type. Every torchao result under bench/results/ (FP8
# compiled against BF16 compiled, through this product, with the recipe the backend record applies;
# tests/test_policy.py holds this rule to each) has FP8 ahead: least at the smallest shape measured, 0.51B parameters
# (`smoke`, `repeat`), by 5% or more from 1.24B (`small`), most at full depth with 8 sequences per step
# (`causal-batch8`, `causal-repeat`, `causal-lora-batch8`, with the trainer's causal-attention fix). Keeping BF16
# below 1.24B would leave the 0.51B shape's gain, past the 3% auto may lose, on the table; so each threshold sits at
# the smallest shape measured, and sizes below it, never measured and where FP8's gain shrinks with size, stay in
# BF16. LoRA is measured at 8B only (`lora-depth`, `lora-batch8`, `causal-lora-batch8`). Freeze-tuning is not
# measured and follows full fine-tuning; OFT follows LoRA.
AUTO_FP8_MIN_PARAMETERS = {"full": 0.5e9, "freeze": 0.5e9, "lora": 8.0e9, "oft": 8.0e9}


def precedence(flag: T | None, explicit: T | None, auto: Callable[[], T]) -> tuple[T, Source]:
    """The one rule for every choice: a command-line flag > the user's explicit key (YAML or key=value) > auto."""
    if flag is not None:
        return flag, "flag"
    if explicit is not None:
        return explicit, "yaml"
    return auto(), "auto"


@dataclass(frozen=True)
class StrategyChoice:
    strategy: Strategy
    source: Source
    kept_from_yaml: str | None = None  # how the YAML names it, where it is kept as the YAML has it


@dataclass(frozen=True)
class Decision:
    precision: Literal["fp8", "bf16", "fp16", "fp32"]
    precision_source: Source
    backend: FP8Backend | None
    device: Literal["cuda", "cpu"]
    processes_per_node: int
    strategy: StrategyChoice
    memory: MemoryEstimate | None  # of the chosen strategy; None where the model's size is unknown or on the CPU
    memory_table: tuple[MemoryEstimate, ...]  # every strategy, for `inspect`
    gpu_memory_gib: float | None
    host_memory_gib: float | None  # what CPU offloading may fill
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    fp8_recipe: str | None = None  # an fp8_recipe.RECIPES name the trainer applies; None: torchao's default
    tips: tuple[str, ...] = ()  # what the user could change for more speed; never applied

    @property
    def accelerate_precision(self) -> str:
        return {"fp32": "no"}.get(self.precision, self.precision)

    def precision_keys(self) -> dict[str, object]:
        """The LLaMA-Factory keys that carry the precision."""
        if self.backend is not None:
            return dict(self.backend.training_keys)
        keys: dict[str, object] = {"fp8": False, "bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}
        if self.device == "cpu":
            keys["use_cpu"] = True  # Transformers refuses bf16 off-GPU without it
        return keys


def decide(inspection: Inspection) -> Decision:
    """Choose precision, FP8 backend, process count and strategy, with the reasons in words."""
    training, gpus = inspection.training, inspection.gpus
    reasons: list[str] = []
    warnings: list[str] = []
    if gpus.count == 0:
        return _cpu_decision(inspection, reasons)

    given = _given_strategy(inspection)
    precision, source, backend = _precision(inspection, given, reasons)
    recipe = _fp8_recipe(inspection, backend, reasons)
    if backend is not None and given is not None and not given.strategy.carries_fp8:
        warnings.append(
            f"FP8 may stay off under {given.strategy.label} (accelerate#3360); the patched LLaMA-Factory then fails the run"
        )
    processes = 1 if any(gpu.is_mig_slice for gpu in gpus.gpus) else gpus.count
    reasons.extend(gpus.notes)
    gpu_gib = min(gpu.memory_total_gib for gpu in gpus.gpus)
    world = processes * inspection.topology.num_machines
    model = inspection.model.facts
    fp8_recipe = RECIPES.get(recipe) if recipe else None
    table = (
        tuple(memory.estimate(model, training, backend, s, world, processes, fp8_recipe) for s in STRATEGIES)
        if model
        else ()
    )
    strategy, estimate = _strategy(
        inspection, given, precision, backend, fp8_recipe, processes, gpu_gib, table, reasons, warnings
    )
    tips = _more_tokens_tip(inspection, backend, fp8_recipe, strategy.strategy, gpu_gib, processes)
    return Decision(
        precision,
        source,
        backend,
        "cuda",
        processes,
        strategy,
        estimate,
        table,
        gpu_gib,
        inspection.host_memory_gib,
        tuple(reasons),
        tuple(warnings),
        recipe,
        tips,
    )


# FP8 gained most with 8 sequences of 2048 per micro-batch, where the optimizer update, the weight casts and the
# CPU's kernel launches, fixed per step, are shared by the most tokens (bench/README.md, "Third round" and
# "Fourth round").
FP8_BEST_TOKENS_PER_MICRO_BATCH = 8 * 2048


def _more_tokens_tip(
    inspection: Inspection,
    backend: FP8Backend | None,
    recipe: Fp8Recipe | None,
    strategy: Strategy,
    gpu_gib: float,
    processes: int,
) -> tuple[str, ...]:
    """Where FP8 runs with fewer tokens per micro-batch than it gained most at: the largest micro-batch up to that
    which fits the chosen strategy, with gradient accumulation cut to keep the optimizer's batch where it can be,
    and, for full fine-tuning (where it was measured faster on both sides), with gradient checkpointing turned on if
    nothing fits without. Said, not applied: the batch is the user's."""
    training, model = inspection.training, inspection.model.facts
    if backend is None or model is None:
        return ()
    world = processes * inspection.topology.num_machines
    largest = FP8_BEST_TOKENS_PER_MICRO_BATCH // max(training.cutoff_len, 1)
    batches = [2**k for k in range(largest.bit_length(), -1, -1) if training.micro_batch_size < 2**k <= largest]
    checkpointing = (training.gradient_checkpointing,)
    if training.finetuning_type == "full" and not training.gradient_checkpointing:
        checkpointing += (True,)
    for batch in batches:
        accumulation = max(1, training.gradient_accumulation_steps * training.micro_batch_size // batch)
        for on in checkpointing:
            config = replace(
                training, micro_batch_size=batch, gradient_accumulation_steps=accumulation, gradient_checkpointing=on
            )
            estimate = memory.estimate(model, config, backend, strategy, world, processes, recipe)
            if not estimate.fits(gpu_gib, inspection.host_memory_gib):
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
                f"{', '.join(keys)} fits (~{estimate.total_gib:.0f} GiB of {gpu_gib:.0f}), and the optimizer sees {optimizer}",
            )
    return ()


def _fp8_recipe(inspection: Inspection, backend: FP8Backend | None, reasons: list[str]) -> str | None:
    """`--fp8-recipe` > the backend record's recipe for the fine-tuning type. Recipes are torchao's."""
    asked = inspection.request.fp8_recipe
    flag = None if asked == "auto" else asked
    if flag is not None and flag != "default" and (backend is None or not backend.takes_recipes):
        chosen = f"FP8 through {backend.name}" if backend else "no FP8"
        raise ConfigInvalid(f"--fp8-recipe {flag} is a torchao recipe, and this run has {chosen}")
    if backend is None:
        return None
    name, source = precedence(flag, None, lambda: backend.recipes.get(inspection.training.finetuning_type, "default"))
    if name != "default":
        by = "--fp8-recipe" if source == "flag" else f"auto for {inspection.training.finetuning_type}"
        reasons.append(f"FP8 recipe {name} ({by}): {RECIPES[name].description}")
    return None if name == "default" else name


def _given_strategy(inspection: Inspection) -> StrategyChoice | None:
    """The strategy the user named: `--strategy`, else the YAML's own (read only where no flag replaces it)."""
    flag = (
        None
        if inspection.request.strategy == "auto"
        else StrategyChoice(STRATEGIES_BY_NAME[inspection.request.strategy], "flag")
    )
    in_yaml = strategy_in_yaml(inspection.training, inspection.workdir) if flag is None else None  # replaced unread
    return precedence(flag, in_yaml, lambda: None)[0]


def _precision(
    inspection: Inspection, given: StrategyChoice | None, reasons: list[str]
) -> tuple[str, Source, FP8Backend | None]:
    request, training, gpus = inspection.request, inspection.training, inspection.gpus
    explicit = "fp8" if training.fp8 else "fp16" if training.fp16 else "no-fp8" if training.fp8 is False else None
    flag = None if request.precision == "auto" else request.precision
    asked, source = precedence(flag, explicit, lambda: "auto")
    if source == "flag":
        over = " (over the YAML's fp8: true)" if asked == "bf16" and training.fp8 else ""
        reasons.append(f"--{asked} asked for {asked.upper()}{over}")
    elif asked == "fp8":
        reasons.append("the training YAML sets fp8: true")
    elif asked == "fp16":
        reasons.append("the training YAML sets fp16: true")
        return "fp16", source, None
    elif asked == "no-fp8":
        reasons.append("the training YAML sets fp8: false")

    if asked == "bf16":
        return _half_precision(gpus, reasons, forced=True), source, None
    if asked == "no-fp8":
        return _half_precision(gpus, reasons), source, None
    backend, blocker = _backend(inspection, forced=asked == "fp8", reasons=reasons)
    if blocker and asked == "fp8":
        raise FP8Unavailable(f"FP8 refused: {blocker}")
    if blocker:
        reasons.append(f"BF16 because {blocker}")
        return _half_precision(gpus, reasons), source, None
    if asked == "auto" and not _fp8_pays(inspection, reasons):
        return _half_precision(gpus, reasons), source, None
    if asked == "auto" and given is not None and not given.strategy.carries_fp8:
        reasons.append(f"BF16 because FP8 may stay off under {given.strategy.label} (accelerate#3360)")
        return _half_precision(gpus, reasons), source, None
    reasons.append(f"FP8 through {backend.name}: {backend.why}")
    return "fp8", source, backend


def _backend(inspection: Inspection, forced: bool, reasons: list[str]) -> tuple[FP8Backend | None, str | None]:
    """The FP8 backend by precedence, or why FP8 cannot run here at all."""
    request, training, gpus = inspection.request, inspection.training, inspection.gpus
    lacking = [gpu for gpu in gpus.gpus if gpu.compute_capability < FP8_MIN_COMPUTE_CAPABILITY]
    if lacking:
        gpu = lacking[0]
        major, minor = gpu.compute_capability
        return None, f"GPU {gpu.index} ({gpu.name}) has compute capability {major}.{minor}; FP8 needs 8.9 or newer"
    if training.stage not in FP8_CAPABLE_STAGES:
        return (
            None,
            f"LLaMA-Factory configures FP8 only for stages {'/'.join(FP8_CAPABLE_STAGES)}, not {training.stage}",
        )
    if training.quantization_bit is not None:
        return None, "the model is quantized (quantization_bit), which LLaMA-Factory does not combine with FP8"
    installed = [backend for backend in FP8_BACKENDS if backend.name in inspection.installed_backends]
    name, source = precedence(
        None if request.backend == "auto" else request.backend,
        None if training.fp8_backend in (None, "auto") else training.fp8_backend,
        lambda: _auto_backend(installed, training, forced),
    )
    if name is None:
        if not installed:
            return None, "no FP8 backend (torchao or Transformer Engine) is installed"
        return None, f"{installed[0].name} FP8 needs torch_compile, which the training YAML turns off"
    if name not in BACKENDS:
        return None, f"fp8_backend {name} is not one this launcher runs ({', '.join(BACKENDS)})"
    if name not in inspection.installed_backends:
        return None, f"FP8 backend {name} is not installed"
    if source != "auto":
        reasons.append(
            f"backend {name} from " + ("--backend" if source == "flag" else "the training YAML's fp8_backend")
        )
    return BACKENDS[name], None


def _auto_backend(installed: list[FP8Backend], training: TrainingConfig, forced: bool) -> str | None:
    """The preferred installed backend; one that needs torch.compile only where the user did not turn it off,
    unless FP8 itself was asked for (then torch_compile is replaced, and the block lists it)."""
    compile_off = training.sets("torch_compile") and not training.torch_compile
    usable = [backend for backend in installed if not (compile_off and backend.needs_compile and not forced)]
    return usable[0].name if usable else None


def _fp8_pays(inspection: Inspection, reasons: list[str]) -> bool:
    model, kind = inspection.model.facts, inspection.training.finetuning_type
    if model is None:
        reasons.append(f"BF16 because the model's size is unknown ({inspection.model.unknown_because})")
        return False
    threshold = AUTO_FP8_MIN_PARAMETERS[kind]
    size = f"{model.billions:.2f}B parameters"
    if model.num_parameters < threshold:
        limit = f"below {threshold / 1e9:.1f}B, the smallest size measured to gain"
        reasons.append(f"BF16 because FP8 for {kind} at {size} is {limit}")
        return False
    reasons.append(f"FP8 pays for {kind} at {size} (from {threshold / 1e9:.1f}B)")
    return True


def _half_precision(gpus: GpuInventory, reasons: list[str], forced: bool = False) -> str:
    lacking = [gpu for gpu in gpus.gpus if gpu.compute_capability < BF16_MIN_COMPUTE_CAPABILITY]
    if lacking and forced:
        raise BF16Unavailable(f"BF16 refused: {lacking[0].name} has no BF16 (compute capability below 8.0)")
    if lacking:
        reasons.append(f"FP16 because {lacking[0].name} has no BF16 (compute capability below 8.0)")
        return "fp16"
    return "bf16"


def strategy_in_yaml(training: TrainingConfig, workdir: Path) -> StrategyChoice | None:
    """A strategy the YAML already names, as LLaMA-Factory's `deepspeed:` or Transformers' `fsdp:` (the way
    LLaMA-Factory's own FP8 examples write them), recognised so that it is kept, reported and estimated."""
    if training.deepspeed is not None:
        config, named = _deepspeed_config(training.deepspeed, workdir)
        zero = _mapping(config.get("zero_optimization"))
        stage = zero.get("stage", 0)
        offload = any(
            _mapping(zero.get(part)).get("device") in ("cpu", "nvme") for part in ("offload_optimizer", "offload_param")
        )
        strategy = ZERO3_OFFLOAD if offload else ZERO3 if stage == 3 else ZERO2 if stage in (1, 2) else DDP
        return StrategyChoice(
            strategy, "yaml", f"deepspeed: {named} (ZeRO stage {stage}{', CPU offload' if offload else ''})"
        )
    if training.fsdp is not None:
        options = training.fsdp.split()
        strategy = FSDP2_OFFLOAD if "offload" in options else ZERO2 if "shard_grad_op" in options else FSDP2
        return StrategyChoice(strategy, "yaml", f"fsdp: {training.fsdp}")
    return None


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _deepspeed_config(value: object, workdir: Path) -> tuple[dict, str]:
    if isinstance(value, dict):
        return value, "(a mapping in the YAML)"
    path = workdir / str(value)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigInvalid(
            f"training config: deepspeed names {value}, which is not a readable DeepSpeed JSON ({path})"
        ) from None
    if not isinstance(config, dict):
        raise ConfigInvalid(f"training config: deepspeed names {value}, which is not a DeepSpeed JSON object ({path})")
    return config, str(value)


def _strategy(
    inspection: Inspection,
    given: StrategyChoice | None,
    precision: str,
    backend: FP8Backend | None,
    recipe: Fp8Recipe | None,
    processes: int,
    gpu_gib: float,
    table: tuple[MemoryEstimate, ...],
    reasons: list[str],
    warnings: list[str],
) -> tuple[StrategyChoice, MemoryEstimate | None]:
    request = inspection.request
    world = processes * inspection.topology.num_machines
    estimates = {estimate.strategy: estimate for estimate in table}
    if given is not None:
        _explain_given(given, inspection, estimates.get(given.strategy.name), gpu_gib, world, reasons, warnings)
        return given, estimates.get(given.strategy.name)
    if not table:
        reasons.append(
            f"{_layout(DDP, world)}; memory not estimated: the model's size is unknown ({inspection.model.unknown_because})"
        )
        return StrategyChoice(DDP, "auto"), None

    candidates = _candidates(inspection, inspection.training, precision)
    host = inspection.host_memory_gib
    for strategy in candidates:
        if estimates[strategy.name].fits(gpu_gib, host):
            chosen = estimates[strategy.name]
            fastest = estimates[candidates[0].name]
            would = (
                f"; {candidates[0].label} would need ~{fastest.total_gib:.0f}" if strategy is not candidates[0] else ""
            )
            reasons.append(
                f"memory ~{chosen.total_gib:.0f} GiB of {gpu_gib:.0f} per GPU ({_layout(strategy, world)}){would}"
            )
            return StrategyChoice(strategy, "auto"), chosen
    smallest = min((estimates[s.name] for s in candidates), key=lambda e: e.total_gib)
    if request.memory_check:
        raise DoesNotFit(_does_not_fit(inspection, precision, backend, recipe, gpu_gib, processes))
    strategy = STRATEGIES_BY_NAME[smallest.strategy]
    warnings.append(
        f"nothing fits: the smallest estimate is ~{smallest.total_gib:.0f} GiB of {gpu_gib:.0f} per GPU "
        f"({_layout(strategy, world)}); --no-memory-check runs it anyway"
    )
    reasons.append(
        f"memory ~{smallest.total_gib:.0f} GiB of {gpu_gib:.0f} per GPU ({_layout(strategy, world)}), the smallest estimate"
    )
    return StrategyChoice(strategy, "auto"), smallest


def _candidates(inspection: Inspection, training: TrainingConfig, precision: str) -> list[Strategy]:
    """The strategies auto may take, fastest first: installed ones; for FP8 those that keep it on; for a 4-bit or
    8-bit model none that moves its weights to the CPU, which bitsandbytes' packed weights cannot follow."""
    return [
        s
        for s in STRATEGIES
        if s.name in inspection.installed_strategies
        and (s.carries_fp8 or precision != "fp8")
        and not (training.quantization_bit and s.weights == "offloaded")
    ]


def _explain_given(
    choice: StrategyChoice,
    inspection: Inspection,
    estimate: MemoryEstimate | None,
    gpu_gib: float,
    world: int,
    reasons: list[str],
    warnings: list[str],
) -> None:
    strategy = choice.strategy
    where = f"--strategy {strategy.name}" if choice.source == "flag" else f"the training YAML ({choice.kept_from_yaml})"
    reasons.append(f"{strategy.label} from {where}")
    if strategy.name not in inspection.installed_strategies:
        warnings.append(
            f"{strategy.label} needs {strategy.module}, which is not installed here: the run will fail to start"
        )
    if estimate is None:
        return
    layout = _layout(strategy, world)
    if estimate.fits(gpu_gib, inspection.host_memory_gib):
        reasons.append(f"memory ~{estimate.total_gib:.0f} GiB of {gpu_gib:.0f} per GPU ({layout})")
    else:
        warnings.append(
            f"{strategy.label} needs ~{estimate.total_gib:.0f} GiB (+{estimate.margin_gib:.0f} margin) of {gpu_gib:.0f} per GPU ({layout})"
            + _host_note(estimate, inspection.host_memory_gib)
            + ": it may run out of memory"
        )


def _host_note(estimate: MemoryEstimate, host_gib: float | None) -> str:
    if estimate.host_fits(host_gib):
        return ""
    return f", and ~{estimate.host_gib:.0f} GiB of CPU memory of {host_gib:.0f}"


def _layout(strategy: Strategy, world: int) -> str:
    if strategy is DDP:
        return "one device" if world == 1 else f"data parallel over {world}"
    return f"{strategy.label} over {world}"


def _does_not_fit(
    inspection: Inspection,
    precision: str,
    backend: FP8Backend | None,
    recipe: Fp8Recipe | None,
    gpu_gib: float,
    processes: int,
) -> str:
    """One line: what the run needs at best, and the changes that would make it fit (one at a time, else together)."""
    training, model, host = inspection.training, inspection.model.facts, inspection.host_memory_gib
    world = processes * inspection.topology.num_machines

    def first_fit(config: TrainingConfig, world: int, per_node: int) -> MemoryEstimate | None:
        estimates = (
            memory.estimate(model, config, backend, s, world, per_node, recipe)
            for s in _candidates(inspection, config, precision)
        )
        return next((e for e in estimates if e.fits(gpu_gib, host)), None)

    changes: list[tuple[str, TrainingConfig]] = []
    if training.finetuning_type in ("full", "freeze"):
        changes.append(("finetuning_type: lora", replace(training, finetuning_type="lora")))
    if training.finetuning_type in ("full", "freeze", "lora", "oft") and training.quantization_bit is None:
        changes.append(("quantization_bit: 4 (QLoRA)", replace(training, finetuning_type="lora", quantization_bit=4)))
    if not training.gradient_checkpointing:
        changes.append(("disable_gradient_checkpointing: false", replace(training, gradient_checkpointing=True)))
    if training.micro_batch_size > 1:
        changes.append(("per_device_train_batch_size: 1", replace(training, micro_batch_size=1)))
    if training.cutoff_len > 512:
        changes.append(
            (f"cutoff_len: {training.cutoff_len // 2}", replace(training, cutoff_len=training.cutoff_len // 2))
        )
    fitting = [(label, found) for label, config in changes if (found := first_fit(config, world, processes))]
    if not any(gpu.is_mig_slice for gpu in inspection.gpus.gpus):  # a MIG slice runs one process only
        per_node = max(processes, 8)
        for nodes in (1, 2, 4, 8, 16, 32, 64, 128):
            if nodes * per_node > world and (found := first_fit(training, nodes * per_node, per_node)):
                fitting.append(
                    (
                        f"{nodes * per_node} GPUs like these"
                        if nodes == 1
                        else f"{nodes} nodes of {per_node} such GPUs",
                        found,
                    )
                )
                break
    if not fitting:  # every change at once, as a last resort
        together = training
        for _, config in changes:
            changed = {
                f.name: getattr(config, f.name)
                for f in fields(config)
                if getattr(config, f.name) != getattr(training, f.name)
            }
            together = replace(together, **changed)
        found = first_fit(together, world, processes)
        if found:
            fitting.append((", ".join(label for label, _ in changes) + " together", found))

    candidates = _candidates(inspection, training, precision)
    on_gpu = [
        memory.estimate(model, training, backend, s, world, processes, recipe)
        for s in candidates
        if s.weights != "offloaded"
    ]
    best = min(on_gpu, key=lambda e: e.total_gib)
    needs = (
        f"does not fit: {training.finetuning_type} fine-tuning of {model.billions:.1f}B parameters needs "
        f"~{best.total_gib:.0f} GiB per GPU at best ({_layout(STRATEGIES_BY_NAME[best.strategy], world)}) "
        f"and a GPU here has {gpu_gib:.0f}"
    )
    offloaded = [
        memory.estimate(model, training, backend, s, world, processes, recipe)
        for s in candidates
        if s.weights == "offloaded"
    ]
    if offloaded:
        least = min(offloaded, key=lambda e: e.total_gib)
        needs += f"; with CPU offload ~{least.total_gib:.0f} GiB per GPU" + (
            f" and ~{least.host_gib:.0f} GiB of CPU memory ({host:.0f} here)" if host is not None else ""
        )
    if not fitting:
        return f"{needs}; nothing fits even with every change at once ({', '.join(label for label, _ in changes)}): choose a smaller model"
    return f"{needs}; would fit: " + ", or ".join(
        f"{label} (~{found.total_gib:.0f} GiB, {_layout(STRATEGIES_BY_NAME[found.strategy], found.world_size)})"
        for label, found in fitting
    )


def _cpu_decision(inspection: Inspection, reasons: list[str]) -> Decision:
    request, gpus, training = inspection.request, inspection.gpus, inspection.training
    why = gpus.unavailable_reason or "no GPU is visible"
    if not request.allow_cpu:
        raise NoGpu(
            f"no GPU visible: {why}; start the container with --gpus all (or pass --allow-cpu to train on the CPU)"
        )
    if request.precision == "fp8" or (request.precision == "auto" and training.fp8):
        raise FP8Unavailable(f"FP8 refused: it needs a GPU and {why}")
    _fp8_recipe(inspection, None, reasons)  # refuses a recipe asked for: the CPU never runs FP8
    precision = "bf16" if request.precision == "bf16" else "fp32"
    reasons.append(f"CPU training in {precision.upper()} (--allow-cpu; {why})")
    source: Source = "flag" if request.precision == "bf16" else "auto"
    return Decision(
        precision, source, None, "cpu", 1, StrategyChoice(DDP, "auto"), None, (), None, None, tuple(reasons), ()
    )
