"""Decide the precision: a pure function of GPU facts, model facts, the training YAML and the user's flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import BF16Unavailable, FP8Unavailable, NoGpu
from .gpus import GpuInventory
from .model_facts import ModelFacts
from .training_config import FP8_CAPABLE_STAGES

Precision = Literal["auto", "fp8", "bf16"]
Backend = Literal["auto", "te", "torchao"]
Strategy = Literal["auto", "ddp", "fsdp2", "deepspeed-zero2", "deepspeed-zero3"]

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada and Hopper and newer have FP8 tensor cores
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere and newer

# Auto picks FP8 from this model size up, per fine-tuning type. Measured on one H100 through this product
# (bench/results/, FP8 = torchao compiled, against BF16 compiled; the mean where a shape ran more than once):
# full fine-tuning 0.51B parameters (Llama-3.2-1B shape, 4 layers; 3 runs) 1.038x; 1.24B (Llama-3.2-1B) 1.08x;
# 1.24B (Qwen2.5-3B shape, 12 layers) 1.088x; 2.49B (Qwen2.5-7B, 6 layers; 2 runs) 1.149x; 2.80B (Llama-3.1-8B,
# 8 layers) 1.091x. LoRA: 8.03B (Llama-3.1-8B, full depth) 1.037x. FP8 wins on every measured shape. It wins by
# 5% or more from 1.24B, but keeping BF16 below that would leave a 3.8% (0.51B) or 3.7% (LoRA 8B) gain on the
# table, past the 3% that auto may lose; so each threshold sits at the smallest measured shape, and sizes below
# it, never measured and where FP8's gain shrinks with size, stay in BF16. Freeze-tuning is not measured and
# follows full fine-tuning.
AUTO_FP8_MIN_PARAMETERS = {"full": 0.5e9, "freeze": 0.5e9, "lora": 8.0e9}

# Preferred first, by measurement (bench/results/te*, Qwen2.5-7B shape, 6 layers, one H100): torchao compiled ran
# 1.15x BF16 compiled; Transformer Engine, whose delayed scaling refuses torch.compile and so runs eager, 1.18x
# BF16 eager but 1.01x BF16 compiled. torchao's float8 pays only compiled (slower than BF16 eager, per the project
# brief). Compiled, the short last batch of an epoch makes torch.compile recompile with a dynamic batch size,
# after which FP8 ran at 0.59x of BF16 (bench/results/superseded-parity-recompile/): so the launcher drops it.
FP8_BACKEND_PREFERENCE = ("torchao", "te")
FP8_TRAINING_KEYS = {
    "torchao": {
        "fp8": True, "fp8_backend": "torchao", "bf16": True, "fp16": False,
        "torch_compile": True, "dataloader_drop_last": True,
    },  # fmt: skip
    "te": {"fp8": True, "fp8_backend": "te", "bf16": True, "fp16": False, "torch_compile": False},
}


@dataclass(frozen=True)
class Request:
    """What the user asked for on the command line."""

    precision: Precision = "auto"
    backend: Backend = "auto"
    strategy: Strategy = "auto"
    allow_cpu: bool = False


@dataclass(frozen=True)
class TrainingFacts:
    """The parts of the training YAML that bear on precision and launching."""

    stage: str = "sft"
    finetuning_type: str = "lora"
    asks_for_fp8: bool = False
    deepspeed: str | None = None
    quantized: bool = False


@dataclass(frozen=True)
class Decision:
    precision: Literal["fp8", "bf16", "fp16", "fp32"]
    backend: str | None
    device: Literal["cuda", "cpu"]
    num_processes: int
    strategy: Literal["single", "ddp", "fsdp2", "deepspeed"]
    deepspeed_stage: int | None
    reasons: tuple[str, ...]
    training_keys: dict[str, object] = field(default_factory=dict)

    @property
    def accelerate_precision(self) -> str:
        return {"fp32": "no"}.get(self.precision, self.precision)


def decide(
    gpus: GpuInventory,
    model: ModelFacts | None,
    training: TrainingFacts,
    request: Request,
    installed_backends: frozenset[str],
) -> Decision:
    """Choose precision, FP8 backend, process count and strategy, with the reasons in words."""
    reasons: list[str] = []
    if gpus.count == 0:
        return _cpu_decision(gpus, training, request, reasons)

    forced_fp8 = request.precision == "fp8" or (request.precision == "auto" and training.asks_for_fp8)
    if request.precision == "fp8":
        reasons.append("--fp8 asked for FP8")
    elif forced_fp8:
        reasons.append("the training YAML sets fp8: true")
    elif request.precision == "bf16":
        reasons.append("--bf16 asked for BF16" + (" (over the YAML's fp8: true)" if training.asks_for_fp8 else ""))

    if request.precision == "bf16":
        precision, backend = _half_precision(gpus, reasons, forced=True), None
    else:
        blocker = _fp8_blocker(gpus, training, request, installed_backends)
        if blocker and forced_fp8:
            raise FP8Unavailable(f"FP8 refused: {blocker}")
        if blocker:
            reasons.append(f"BF16 because {blocker}")
            precision, backend = _half_precision(gpus, reasons), None
        elif not forced_fp8 and not _fp8_pays(model, training, reasons):
            precision, backend = _half_precision(gpus, reasons), None
        else:
            backend = _pick_backend(request, installed_backends)
            precision = "fp8"
            reasons.append(f"FP8 through {backend}: {_BACKEND_WHY[backend]}")

    strategy, deepspeed_stage, num_processes = _strategy(gpus, training, request, reasons)
    keys = dict(FP8_TRAINING_KEYS[backend]) if precision == "fp8" else _non_fp8_keys(precision)
    return Decision(precision, backend, "cuda", num_processes, strategy, deepspeed_stage, tuple(reasons), keys)


_BACKEND_WHY = {
    "torchao": "Float8Linear with tensorwise scaling, compiled with torch.compile (it is slower uncompiled)",
    "te": "Transformer Engine Linear layers, delayed scaling, eager (TE refuses torch.compile)",
}


def _fp8_blocker(
    gpus: GpuInventory, training: TrainingFacts, request: Request, installed_backends: frozenset[str]
) -> str | None:
    """Why FP8 cannot run here at all, or None."""
    lacking = [gpu for gpu in gpus.gpus if gpu.compute_capability < FP8_MIN_COMPUTE_CAPABILITY]
    if lacking:
        gpu = lacking[0]
        major, minor = gpu.compute_capability
        return f"GPU {gpu.index} ({gpu.name}) has compute capability {major}.{minor}; FP8 needs 8.9 or newer"
    if training.stage not in FP8_CAPABLE_STAGES:
        return f"LLaMA-Factory configures FP8 only for stages {'/'.join(FP8_CAPABLE_STAGES)}, not {training.stage}"
    if training.quantized:
        return "the model is quantized (quantization_bit), which LLaMA-Factory does not combine with FP8"
    if request.backend != "auto" and request.backend not in installed_backends:
        return f"FP8 backend {request.backend} is not installed"
    if not installed_backends:
        return "no FP8 backend (torchao or Transformer Engine) is installed"
    return None


def _fp8_pays(model: ModelFacts | None, training: TrainingFacts, reasons: list[str]) -> bool:
    if model is None:
        reasons.append("BF16 because the model's config.json was not found locally, so its size is unknown")
        return False
    threshold = AUTO_FP8_MIN_PARAMETERS.get(training.finetuning_type, AUTO_FP8_MIN_PARAMETERS["full"])
    size = f"{model.billions:.2f}B parameters"
    if model.num_parameters < threshold:
        limit = f"below {threshold / 1e9:.1f}B, the smallest size measured to gain"
        reasons.append(f"BF16 because FP8 for {training.finetuning_type} at {size} is {limit}")
        return False
    reasons.append(f"FP8 pays for {training.finetuning_type} at {size} (from {threshold / 1e9:.1f}B)")
    return True


def _pick_backend(request: Request, installed_backends: frozenset[str]) -> str:
    if request.backend != "auto":
        return request.backend
    return next(name for name in FP8_BACKEND_PREFERENCE if name in installed_backends)


def _half_precision(gpus: GpuInventory, reasons: list[str], forced: bool = False) -> str:
    lacking = [gpu for gpu in gpus.gpus if gpu.compute_capability < BF16_MIN_COMPUTE_CAPABILITY]
    if lacking and forced:
        raise BF16Unavailable(f"BF16 refused: {lacking[0].name} has no BF16 (compute capability below 8.0)")
    if lacking:
        reasons.append(f"FP16 because {lacking[0].name} has no BF16 (compute capability below 8.0)")
        return "fp16"
    return "bf16"


def _non_fp8_keys(precision: str) -> dict[str, object]:
    return {"fp8": False, "bf16": precision == "bf16", "fp16": precision == "fp16"}


def _strategy(
    gpus: GpuInventory, training: TrainingFacts, request: Request, reasons: list[str]
) -> tuple[str, int | None, int]:
    num_processes = 1 if any(gpu.is_mig_slice for gpu in gpus.gpus) else gpus.count
    reasons.extend(gpus.notes)
    if request.strategy.startswith("deepspeed-"):
        stage = int(request.strategy[-1])
        return "deepspeed", stage, num_processes
    if training.deepspeed is not None:
        reasons.append(f"DeepSpeed from the training YAML ({training.deepspeed})")
        return "deepspeed", None, num_processes
    if request.strategy == "fsdp2":
        return "fsdp2", None, num_processes
    return ("ddp" if num_processes > 1 else "single"), None, num_processes


def _cpu_decision(gpus: GpuInventory, training: TrainingFacts, request: Request, reasons: list[str]) -> Decision:
    why = gpus.unavailable_reason or "no GPU is visible"
    if not request.allow_cpu:
        raise NoGpu(f"no GPU visible: {why}; start the container with --gpus all (or pass --allow-cpu to train on the CPU)")
    if request.precision == "fp8" or (request.precision == "auto" and training.asks_for_fp8):
        raise FP8Unavailable(f"FP8 refused: it needs a GPU and {why}")
    precision = "bf16" if request.precision == "bf16" else "fp32"
    reasons.append(f"CPU training in {precision.upper()} (--allow-cpu; {why})")
    keys = {**_non_fp8_keys(precision), "use_cpu": True}  # Transformers refuses bf16 off-GPU without it
    return Decision(precision, None, "cpu", 1, "single", None, tuple(reasons), keys)
