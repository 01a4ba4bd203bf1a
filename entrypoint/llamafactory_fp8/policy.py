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
from .backends import BY_NAME as BACKENDS
from .backends import FP8_BACKENDS, FP8Backend
from .cpu_processes import check_cpu_strategy
from .errors import BF16Unavailable, ConfigInvalid, DoesNotFit, FP8Unavailable, NoGpu
from .fit import Capacity, Fit, RunShape, StrategyChoice, StrategyFit, fit, layout, strategy_in_yaml
from .fp8_payback import weigh_run_length
from .fp8_recipe import ALL_GATHER_RECIPE, RECIPES
from .gpus import GpuInventory
from .inspection import Inspection
from .memory import MemoryEstimate
from .precedence import Source, precedence
from .request import Request
from .strategies import BY_NAME as STRATEGIES_BY_NAME
from .strategies import DDP, STRATEGIES
from .training_config import ALL_GATHER_KEY, FP8_CAPABLE_STAGES, TrainingConfig

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper and newer have FP8 tensor cores
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere and newer

# Auto picks FP8 from this model size up, per fine-tuning type: each threshold sits at the smallest shape where
# every torchao result under bench/results/ has FP8 ahead (FP8 compiled against BF16 compiled, through this
# product, with the backend record's recipe); sizes below it were never measured, and FP8's gain shrinks with size.
# tests/test_policy.py holds the rule to each result. LoRA is measured at 8B only; freeze-tuning is not measured
# and follows full fine-tuning; OFT follows LoRA.
AUTO_FP8_MIN_PARAMETERS = {"full": 0.5e9, "freeze": 0.5e9, "lora": 8.0e9, "oft": 8.0e9}


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
    precision, source, backend = _precision(inspection, given, reasons)
    recipe = _fp8_recipe(inspection, backend, reasons, warnings)
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
                precision, backend, recipe, fitted = _half_precision(gpus, reasons), None, None, bf16_fit
                reasons.extend(gpus.notes)
    if source == "auto" and backend is not None and length is not None and not length.too_short:
        reasons.append(length.why)
    if source == "auto" and slower is None and backend is not None and fitted.choice.strategy.fp8_pays_from_tokens:
        strategy = fitted.choice.strategy
        reasons.append(
            f"FP8 under {strategy.label}: measured faster than BF16 from {strategy.fp8_pays_from_tokens} tokens per "
            f"micro-batch, and this run's is up to {training.micro_batch_size} x {training.cutoff_len}"
        )
    if recipe == ALL_GATHER_RECIPE and fitted.choice.strategy.buffers != "fsdp":
        warnings.append(
            f"FP8 recipe {recipe} acts on FSDP2's all-gathers, and this run has none ({fitted.layout}); "
            "it was never run without FSDP2"
        )
    return _decision(
        precision, source, backend, recipe, "cuda", processes, world, fitted, capacity, inspection, reasons, warnings
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
        tips=(*fitted.tips, *([backend.tip] if backend is not None and backend.tip else [])),
    )


def _fp8_recipe(
    inspection: Inspection, backend: FP8Backend | None, reasons: list[str], warnings: list[str]
) -> str | None:
    """`--fp8-recipe` > the YAML's fp8_enable_fsdp_float8_all_gather > the backend record's recipe for the
    fine-tuning type. Recipes are torchao's."""
    asked, training = inspection.request.fp8_recipe, inspection.training
    flag = None if asked == "auto" else asked
    if flag is not None and flag != "default" and (backend is None or not backend.takes_recipes):
        chosen = f"FP8 through {backend.name}" if backend else "no FP8"
        raise ConfigInvalid(f"--fp8-recipe {flag} is a torchao recipe, and this run has {chosen}")
    if backend is None:
        return None
    all_gather = training.fsdp_float8_all_gather
    if all_gather and not backend.takes_recipes:
        warnings.append(f"{ALL_GATHER_KEY}: true is torchao's; FP8 through {backend.name} ignores it")
    in_yaml = ALL_GATHER_RECIPE if all_gather and backend.takes_recipes else None
    kind = training.finetuning_type
    name, source = precedence(
        flag, in_yaml, lambda: backend.recipes.get(kind, "default"), training.source_of(ALL_GATHER_KEY)
    )
    if name != "default":
        by = {"flag": "--fp8-recipe", "auto": f"auto for {kind}"}.get(source, f"{ALL_GATHER_KEY}: true")
        reasons.append(f"FP8 recipe {name} ({by}): {RECIPES[name].description}")
    return None if name == "default" else name


def _given_strategy(inspection: Inspection) -> StrategyChoice | None:
    """The strategy the user named: `--strategy`, else the YAML's own."""
    asked = inspection.request.strategy
    flag = None if asked == "auto" else StrategyChoice(strategy=STRATEGIES_BY_NAME[asked], source="flag")
    return precedence(flag, strategy_in_yaml(inspection.training, inspection.deepspeed_json), lambda: None)[0]


def _precision(
    inspection: Inspection, given: StrategyChoice | None, reasons: list[str]
) -> tuple[str, Source, FP8Backend | None]:
    request, training, gpus = inspection.request, inspection.training, inspection.gpus
    if training.fp8:
        explicit = "fp8"
    elif training.fp16:
        explicit = "fp16"
    else:
        explicit = "no-fp8" if training.fp8 is False else None
    flag = None if request.precision == "auto" else request.precision
    # LLaMA-Factory turns fp8 on for fp8_enable_fsdp_float8_all_gather: true; the block names the key that asked
    fp8_key = "fp8" if training.sets("fp8") or not training.fsdp_float8_all_gather else ALL_GATHER_KEY
    key = "fp16" if explicit == "fp16" else fp8_key
    asked, source = precedence(flag, explicit, lambda: "auto", training.source_of(key))
    said = "the training YAML sets" if source == "yaml" else "the command line's key=value sets"
    if source == "flag":
        over = f" (over the YAML's {fp8_key}: true)" if asked == "bf16" and training.fp8 else ""
        reasons.append(f"--{asked} asked for {asked.upper()}{over}")
    elif asked == "fp8":
        reasons.append(f"{said} {fp8_key}: true")
    elif asked == "fp16":
        reasons.append(f"{said} fp16: true")
        return "fp16", source, None
    elif asked == "no-fp8":
        reasons.append(f"{said} fp8: false")

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
        reasons.append(f"BF16 because FP8 never ran under {given.strategy.label}")
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
        stages = "/".join(FP8_CAPABLE_STAGES)
        return None, f"LLaMA-Factory configures FP8 only for stages {stages}, not {training.stage}"
    if not training.trains:
        return None, "this run does not train (do_train is not true; it evaluates or predicts), and FP8 is for training"
    if training.quantization_bit is not None:
        return None, "the model is quantized (quantization_bit), which LLaMA-Factory does not combine with FP8"
    installed = [backend for backend in FP8_BACKENDS if backend.name in inspection.installed_backends]
    name, source = precedence(
        None if request.backend == "auto" else request.backend,
        None if training.fp8_backend in (None, "auto") else training.fp8_backend,
        lambda: _auto_backend(installed, training, forced),
        training.source_of("fp8_backend"),
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
        by = {"flag": "--backend", "yaml": "the training YAML's fp8_backend", "override": "fp8_backend="}[source]
        reasons.append(f"backend {name} from {by}")
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
        reasons.append("BF16 because the model's size is unknown (the model line says why)")
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


def _cpu_decision(inspection: Inspection, reasons: list[str]) -> Decision:
    request, gpus, training = inspection.request, inspection.gpus, inspection.training
    why = gpus.unavailable_reason or "no GPU is visible"
    if request.precision == "fp8" or (request.precision == "auto" and training.fp8):
        raise FP8Unavailable(f"FP8 refused: it needs a GPU and {why}")
    if not request.allow_cpu:
        raise NoGpu(
            f"no GPU visible: {why}; start the container with --gpus all (or pass --allow-cpu to train on the CPU)"
        )
    _fp8_recipe(inspection, None, reasons, [])  # refuses a recipe asked for: the CPU never runs FP8
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
