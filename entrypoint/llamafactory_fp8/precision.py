"""The precision, the FP8 backend and the FP8 recipe, each by `precedence`: a flag, then the user's explicit key,
then auto, which picks FP8 where it was measured to pay. policy.py then fits the strategy around them."""

from __future__ import annotations

from .backends import BY_NAME as BACKENDS
from .backends import FP8_BACKENDS, FP8Backend
from .errors import BF16Unavailable, ConfigInvalid, FP8Unavailable
from .fit import StrategyChoice
from .fp8_recipe import ALL_GATHER_RECIPE, RECIPES
from .gpus import GpuInventory
from .inspection import Inspection
from .precedence import Source, precedence
from .training_config import ALL_GATHER_KEY, FP8_CAPABLE_STAGES, TrainingConfig

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper and newer have FP8 tensor cores
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere and newer

# Auto picks FP8 from this model size up, per fine-tuning type: each threshold sits at the smallest shape where
# every torchao result under bench/results/ has FP8 ahead (FP8 compiled against BF16 compiled, through this
# product, with the backend record's recipe); sizes below it were never measured, and FP8's gain shrinks with size.
# tests/test_policy.py holds the rule to each result. LoRA is measured at 8B only; freeze-tuning is not measured
# and follows full fine-tuning; OFT follows LoRA.
AUTO_FP8_MIN_PARAMETERS = {"full": 0.5e9, "freeze": 0.5e9, "lora": 8.0e9, "oft": 8.0e9}


def choose_recipe(
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


def choose_precision(
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
        return half_precision(gpus, reasons, forced=True), source, None
    if asked == "no-fp8":
        return half_precision(gpus, reasons), source, None
    backend, blocker = _backend(inspection, forced=asked == "fp8", reasons=reasons)
    if blocker and asked == "fp8":
        raise FP8Unavailable(f"FP8 refused: {blocker}")
    if blocker:
        reasons.append(f"BF16 because {blocker}")
        return half_precision(gpus, reasons), source, None
    if asked == "auto" and not _fp8_pays(inspection, reasons):
        return half_precision(gpus, reasons), source, None
    if asked == "auto" and given is not None and not given.strategy.carries_fp8:
        reasons.append(f"BF16 because FP8 never ran under {given.strategy.label}")
        return half_precision(gpus, reasons), source, None
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
        by = {"flag": "--backend", "yaml": "the training YAML's fp8_backend", "override": f"fp8_backend={name}"}[source]
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


def half_precision(gpus: GpuInventory, reasons: list[str], forced: bool = False) -> str:
    lacking = [gpu for gpu in gpus.gpus if gpu.compute_capability < BF16_MIN_COMPUTE_CAPABILITY]
    if lacking and forced:
        raise BF16Unavailable(f"BF16 refused: {lacking[0].name} has no BF16 (compute capability below 8.0)")
    if lacking:
        reasons.append(f"FP16 because {lacking[0].name} has no BF16 (compute capability below 8.0)")
        return "fp16"
    return "bf16"
