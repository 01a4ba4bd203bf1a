"""Decide: the precision, the FP8 backend and recipe and the processes, then the strategy through fit.py; a pure
function of what inspect found.

Every choice follows one rule, `precedence`: a command-line flag wins over the user's explicit key (in the YAML,
or as key=value), which wins over what auto picks. So `--bf16` wins over `fp8: true`, `fp8_backend: te` keeps
Transformer Engine unless `--backend` says otherwise, and a YAML's `deepspeed:` or `fsdp:` is kept unless
`--strategy` says otherwise. Auto picks FP8 where it was measured to pay, and the fastest strategy that fits in
memory with headroom; when nothing fits it refuses, saying what would."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from . import memory
from .backends import FP8Backend
from .cpu_processes import check_cpu_strategy
from .errors import ConfigInvalid, DoesNotFit, FP8Unavailable, NoGpu
from .fit import Capacity, Fit, RunShape, StrategyChoice, StrategyFit, fit, layout, strategy_in_yaml
from .fp8_payback import compiled_bf16_tip, weigh_run_length
from .fp8_recipe import ALL_GATHER_RECIPE, RECIPES
from .inspection import Inspection
from .memory import MemoryEstimate
from .precedence import Source, precedence
from .precision import choose_precision, choose_recipe, half_precision
from .request import Request
from .strategies import BY_NAME as STRATEGIES_BY_NAME
from .strategies import DDP, STRATEGIES
from .training_config import ALL_GATHER_KEY


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the launcher chose, and why."""

    precision: Literal["fp8", "bf16", "fp16", "fp32"]
    """The precision the run trains in."""
    precision_source: Source
    """Who chose it."""
    backend: FP8Backend | None
    """The FP8 backend; None without FP8."""
    fp8_recipe: str | None = None
    """An fp8_recipe.RECIPES name the trainer applies; None: torchao's default."""
    device: Literal["cuda", "cpu"]
    """Where it trains."""
    processes_per_node: int
    """Training processes on this node."""
    world_size: int
    """Training processes over every node."""
    strategy: StrategyChoice
    """The strategy, and who chose it."""
    layout: str
    """The strategy over the world, in words."""
    memory: MemoryEstimate | None
    """The chosen strategy's memory per GPU; None where the model's size is unknown, or on the CPU."""
    memory_table: tuple[StrategyFit, ...]
    """Every strategy's memory, for `inspect`."""
    gpu_memory_gib: float | None
    """The smallest GPU's memory."""
    host_memory_gib: float | None
    """This node's memory, which CPU offloading may fill."""
    reasons: tuple[str, ...]
    """Why, in words."""
    warnings: tuple[str, ...]
    """What may go wrong, in words."""
    tips: tuple[str, ...] = ()
    """What the user could change for more speed; never applied."""

    @property
    def accelerate_precision(self) -> str:
        return {"fp32": "no"}.get(self.precision, self.precision)

    def precision_keys(self) -> dict[str, object]:
        """The LLaMA-Factory keys that carry the precision."""
        if self.backend is not None:
            return dict(self.backend.training_keys)
        # LLaMA-Factory turns fp8 on for fp8_enable_fsdp_float8_all_gather, so it goes off with fp8
        keys: dict[str, object] = {
            "fp8": False,
            ALL_GATHER_KEY: False,
            "bf16": self.precision == "bf16",
            "fp16": self.precision == "fp16",
        }
        if self.device == "cpu":
            # Transformers refuses bf16 off-GPU without it; Accelerate turns DeepSpeed off under it (FP32 only)
            keys["use_cpu"] = not self.strategy.strategy.uses_deepspeed
        return keys


def decide(inspection: Inspection) -> Decision:
    """Choose precision, FP8 backend, process count and strategy, with the reasons in words."""
    training, gpus = inspection.training, inspection.gpus
    reasons: list[str] = []
    if gpus.count == 0:
        return _cpu_decision(inspection, reasons)

    given = _given_strategy(inspection)
    mig = any(gpu.is_mig_slice for gpu in gpus.gpus)
    processes = _processes(inspection.request, 1 if mig else gpus.count)
    world = processes * inspection.topology.num_machines
    warnings: list[str] = []
    precision, source, backend = choose_precision(inspection, given, reasons)
    recipe = choose_recipe(inspection, backend, reasons, warnings)
    if backend is not None and given is not None and not given.strategy.carries_fp8:
        warnings.append(
            f"FP8 never ran under {given.strategy.label}; "
            "the patched LLaMA-Factory fails the run if no layer runs in FP8"
        )
    reasons.extend(gpus.notes)
    host_gib, host_origin = inspection.node_memory(processes)
    capacity = Capacity(
        gpu_gib=min(gpu.memory_total_gib for gpu in gpus.gpus),
        host_gib=host_gib,
        host_origin=host_origin,
        installed=inspection.installed_strategies,
        one_process_only=mig,
    )
    model = inspection.model.facts
    shape, unestimated = None, memory.unmodeled(training)
    if model is None:
        unestimated = "the model's size is unknown (the model line says why)"
    elif unestimated is None:
        shape = RunShape(
            model=model,
            training=training,
            backend=backend,
            recipe=RECIPES.get(recipe) if recipe else None,
            processes_per_node=processes,
            machines=inspection.topology.num_machines,
        )
    try:
        fitted = fit(shape, given, capacity, world, inspection.request.memory_check, unestimated)
        slower = (
            fitted.choice.strategy.fp8_unproven(training.micro_batch_size, training.cutoff_len) if backend else None
        )
    except DoesNotFit:
        if source != "auto" or backend is None:
            raise
        fitted, slower = None, "FP8 fits under no strategy that carries it"
    length = weigh_run_length(backend.payback, training, model, world) if backend is not None else None
    short = length.why if length is not None and length.too_short else None
    if source != "auto" and slower is not None and fitted.choice.strategy.carries_fp8:
        # under a strategy FP8 never ran with, the warning above already says more than "never measured faster"
        warnings.append(f"{slower}; FP8 kept, as asked")
    if source != "auto" and short is not None:
        warnings.append(f"{short}; FP8 kept, as asked")
    against = slower if slower is not None else short
    if source == "auto" and against is not None:
        # FP8 was chosen before the strategy; where the strategy it needs makes FP8 slower, none fits, or the run is
        # too short for FP8's longer start, auto takes BF16 if it fits (for a short run, under a strategy no slower)
        try:
            bf16_shape = replace(shape, backend=None, recipe=None) if shape else None
            bf16_fit = fit(bf16_shape, given, capacity, world, inspection.request.memory_check, unestimated)
        except DoesNotFit:
            if fitted is None:
                raise
            reasons.append(f"FP8 kept though {against}: BF16 does not fit")
        else:
            if slower is None and STRATEGIES.index(bf16_fit.choice.strategy) > STRATEGIES.index(fitted.choice.strategy):
                reasons.append(
                    f"FP8 kept though {short}: BF16 would need {bf16_fit.choice.strategy.label}, "
                    f"slower than {fitted.choice.strategy.label}"
                )
            else:
                reasons = [f"BF16 because {against}"]
                precision, backend, recipe, fitted = half_precision(gpus, reasons), None, None, bf16_fit
                reasons.extend(gpus.notes)
    if source == "auto" and backend is not None and length is not None and not length.too_short:
        reasons.append(length.why)
    if source == "auto" and slower is None and backend is not None and fitted.choice.strategy.fp8_pays_from_tokens:
        strategy = fitted.choice.strategy
        reasons.append(
            f"FP8 under {strategy.label}: measured faster than BF16 from {strategy.fp8_pays_from_tokens} tokens per "
            f"micro-batch, and this run's is up to {training.micro_batch_size} x {training.cutoff_len}"
        )
    if recipe is not None and RECIPES[recipe].frozen_weights_in_fp8 and fitted.choice.strategy.weights != "replicated":
        raise ConfigInvalid(
            f"--fp8-recipe {recipe} casts each frozen weight whole, once, and {fitted.choice.strategy.label} "
            "splits the weights over the GPUs: use data parallel or DeepSpeed ZeRO-2 (--strategy)"
        )
    if recipe == ALL_GATHER_RECIPE and fitted.choice.strategy.buffers != "fsdp":
        warnings.append(
            f"FP8 recipe {recipe} acts on FSDP2's all-gathers, and this run has none ({fitted.layout}); "
            "it was never run without FSDP2"
        )
    tip = compiled_bf16_tip(backend.payback, training, model) if backend is not None else None
    return _decision(
        precision,
        source,
        backend,
        recipe,
        "cuda",
        processes,
        world,
        fitted,
        capacity,
        inspection,
        reasons,
        warnings,
        tips=(tip,) if tip else (),
    )


def _processes(request: Request, available: int) -> int:
    """--processes, or one per GPU; more than the GPUs here only to rehearse rank 0 of a larger job."""
    if request.processes is None:
        return available
    if request.processes < 1:
        raise ConfigInvalid(f"--processes must be 1 or more, got {request.processes}")
    if request.processes > available and not request.rehearsal:
        raise ConfigInvalid(
            f"--processes {request.processes} needs as many GPUs and this node has {available}: "
            "`llamafactory-fp8 rehearse` runs rank 0 of such a job on one"
        )
    return request.processes


def _decision(
    precision: str,
    source: Source,
    backend: FP8Backend | None,
    recipe: str | None,
    device: str,
    processes: int,
    world: int,
    fitted: Fit,
    capacity: Capacity | None,
    inspection: Inspection,
    reasons: list[str],
    warnings: list[str],
    tips: tuple[str, ...] = (),
) -> Decision:
    return Decision(
        precision=precision,
        precision_source=source,
        backend=backend,
        fp8_recipe=recipe,
        device=device,
        processes_per_node=processes,
        world_size=world,
        strategy=fitted.choice,
        layout=fitted.layout,
        memory=fitted.estimate,
        memory_table=fitted.table,
        gpu_memory_gib=capacity.gpu_gib if capacity else None,
        host_memory_gib=capacity.host_gib if capacity else None,
        reasons=(*reasons, *fitted.reasons),
        warnings=(*inspection.key_warnings, *warnings, *fitted.warnings),
        tips=(*fitted.tips, *([backend.tip] if backend is not None and backend.tip else []), *tips),
    )


def _given_strategy(inspection: Inspection) -> StrategyChoice | None:
    """The strategy the user named: `--strategy`, else the YAML's own."""
    asked = inspection.request.strategy
    flag = None if asked == "auto" else StrategyChoice(strategy=STRATEGIES_BY_NAME[asked], source="flag")
    return precedence(flag, strategy_in_yaml(inspection.training, inspection.deepspeed_json), lambda: None)[0]


def _cpu_decision(inspection: Inspection, reasons: list[str]) -> Decision:
    request, gpus, training = inspection.request, inspection.gpus, inspection.training
    why = gpus.unavailable_reason or "no GPU is visible"
    if request.precision == "fp8" or (request.precision == "auto" and training.fp8):
        raise FP8Unavailable(f"FP8 refused: it needs a GPU and {why}")
    if not request.allow_cpu:
        raise NoGpu(
            f"no GPU visible: {why}; start the container with --gpus all (or pass --allow-cpu to train on the CPU)"
        )
    choose_recipe(inspection, None, reasons, [])  # refuses a recipe asked for: the CPU never runs FP8
    precision = "bf16" if request.precision == "bf16" else "fp32"
    reasons.append(f"CPU training in {precision.upper()} (--allow-cpu; {why})")
    source: Source = "flag" if request.precision == "bf16" else "auto"
    processes = 1 if request.processes is None else request.processes
    world = processes * inspection.topology.num_machines
    choice = _given_strategy(inspection) or StrategyChoice(strategy=DDP, source="auto")
    check_cpu_strategy(choice.strategy, processes, world, precision)
    if choice.source != "auto":
        where = "--strategy" if choice.source == "flag" else f"the training YAML ({choice.kept_from_yaml})"
        reasons.append(f"{choice.strategy.label} from {where}, over {world} CPU processes")
    fitted = Fit(
        choice=choice, estimate=None, table=(), layout=layout(choice.strategy, world), reasons=(), warnings=(), tips=()
    )
    return _decision(precision, source, None, None, "cpu", processes, world, fitted, None, inspection, reasons, [])
