"""Read a LLaMA-Factory training YAML once, with the user's key=value overrides, into a typed frozen config.

Only the keys the launcher decides on are typed here, with LLaMA-Factory's own defaults (`hparams/`); every other
key passes through to LLaMA-Factory untouched. A key of the wrong kind is one line and exit 13 here rather than a
traceback from LLaMA-Factory's argument parser minutes later."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .backends import FP8_BACKENDS
from .errors import ConfigInvalid, ConfigMissing, ConfigNotMapping, ConfigUnparsable, OutputNotWritable, Unsupported
from .precedence import Source

STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto")  # LLaMA-Factory's FinetuningArguments.stage
FP8_CAPABLE_STAGES = ("pt", "sft")  # LLaMA-Factory configures FP8 only in these trainers
FINETUNING_TYPES = ("full", "freeze", "lora", "oft")
QUANTIZATION_BITS = (2, 3, 4, 5, 6, 8)
# LLaMA-Factory's Fp8Arguments.fp8_backend: auto, the backends this launcher runs, and MS-AMP, which it does not
LLAMAFACTORY_FP8_BACKENDS = ("auto", *(backend.name for backend in FP8_BACKENDS), "msamp")
ALL_GATHER_KEY = "fp8_enable_fsdp_float8_all_gather"


@dataclass(frozen=True)
class RunLength:
    """The most micro-batches each process trains, and how that follows from the YAML."""

    micro_batches: int
    why: str


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """A training YAML as LLaMA-Factory will read it, with LLaMA-Factory's defaults for the keys the launcher
    decides on; each of those fields is named after its key, or says which key it reads."""

    path: Path
    """The YAML file."""
    values: Mapping[str, Any]
    """The YAML with the user's key=value applied, YAML-typed."""
    written: Mapping[str, Any]
    """The YAML as the user wrote it."""
    overrides: Mapping[str, str]
    """The user's key=value, as typed (passed on unchanged)."""
    model: str
    """model_name_or_path."""
    trains: bool
    """do_train; false (Transformers' default): the run only evaluates or predicts (do_eval, do_predict)."""
    model_revision: str
    hf_hub_token: str | None
    cache_dir: str | None
    output_dir: Path
    dataset_dir: str
    stage: str
    finetuning_type: str
    quantization_bit: int | None
    lora_rank: int
    lora_target: tuple[str, ...]
    adapters: tuple[str, ...]
    """adapter_name_or_path: the adapters LLaMA-Factory loads onto the model, folders or Hub ids."""
    freeze_trainable_layers: int
    micro_batch_size: int
    """per_device_train_batch_size."""
    cutoff_len: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    """not disable_gradient_checkpointing."""
    torch_compile: bool
    optim: str
    pure_bf16: bool
    enable_liger_kernel: bool
    fp8: bool | None
    """None: the YAML does not say. True where only fp8_enable_fsdp_float8_all_gather is, as LLaMA-Factory's parser
    turns fp8 on for it."""
    fp8_backend: str | None
    """None or "auto": the YAML leaves it to the launcher."""
    fsdp_float8_all_gather: bool
    """fp8_enable_fsdp_float8_all_gather: torchao's float8 all-gather under FSDP2."""
    fp16: bool
    deepspeed: str | Mapping | None
    """A DeepSpeed JSON's path, or the config as a mapping."""
    fsdp: str | None
    """Transformers' fsdp options as one string; None: off."""
    fsdp_config: Mapping | str | None
    resume_from_checkpoint: str | None
    max_steps: int
    """Transformers' max_steps; 0 or less: train num_train_epochs."""
    num_train_epochs: float
    max_samples: int | None
    """LLaMA-Factory's cap on each training dataset's examples; None: no cap."""
    datasets: tuple[str, ...]
    """The training datasets' names (dataset)."""

    def run_length(self, world: int) -> RunLength | None:
        """At most how many micro-batches each of `world` processes trains: max_steps, or num_train_epochs over at
        most max_samples examples from each dataset, in optimizer steps as Transformers 5 counts them (an epoch's
        last step may accumulate fewer), times the accumulation; None where neither bounds it."""
        accumulated = f" x gradient_accumulation_steps {self.gradient_accumulation_steps}"
        if self.max_steps > 0:
            return RunLength(
                self.max_steps * self.gradient_accumulation_steps, f"max_steps {self.max_steps}{accumulated}"
            )
        if self.max_samples is None or not self.datasets:
            return None
        examples = self.max_samples * len(self.datasets)
        per_epoch = math.ceil(examples / (self.micro_batch_size * world))  # micro-batches, the last one short
        steps = math.ceil(self.num_train_epochs * max(math.ceil(per_epoch / self.gradient_accumulation_steps), 1))
        datasets = f"each of {len(self.datasets)} datasets" if len(self.datasets) > 1 else "its dataset"
        return RunLength(
            steps * self.gradient_accumulation_steps,
            f"{self.num_train_epochs:g} epoch{'' if self.num_train_epochs == 1 else 's'} over at most {examples:,} "
            f"examples, max_samples {self.max_samples} from {datasets}: {steps:,} optimizer steps{accumulated}",
        )

    def source_of(self, key: str) -> Source:
        """Where the user set `key`: on the command line (key=value) or in the YAML."""
        return "override" if key in self.overrides else "yaml"

    def sets(self, key: str) -> bool:
        """Whether the user set `key` explicitly (in the YAML or as key=value), not left it to a default."""
        return key in self.values


def load_training_config(path: Path, overrides: list[str]) -> TrainingConfig:
    """Read and check the YAML; every problem becomes a one-line LaunchError."""
    if not path.is_file():
        raise ConfigMissing(f"training config not found: {path}")
    try:
        written = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigUnparsable(f"training config is not valid YAML{where}: {path}") from None
    if not isinstance(written, dict):
        raise ConfigNotMapping(
            f"training config must be a YAML mapping of LLaMA-Factory keys, got {_kind(written)}: {path}"
        )
    written = {str(key): value for key, value in written.items()}
    parsed = parse_overrides(overrides)
    values = {**written, **{key: _typed(raw) for key, raw in parsed.items()}}
    if "model" in values and "model_name_or_path" not in values:
        raise Unsupported(
            f"this image cannot run LLaMA-Factory's v1 trainer schema (model:, train_dataset:, dist_config:): {path} "
            "is for `USE_V1=1 llamafactory-cli train`; write it for the v0 trainer (model_name_or_path:, dataset:)"
        )
    read = _Reader(values, path)
    model = read.text("model_name_or_path", required=True)
    trains = read.flag("do_train", False)
    if not (trains or read.flag("do_eval", False) or read.flag("do_predict", False)):
        raise ConfigInvalid(_nothing_to_run(values, path))
    deepspeed = values.get("deepspeed")
    if deepspeed is not None and not isinstance(deepspeed, (str, dict)):
        raise ConfigInvalid(
            f"training config: deepspeed must be a path to a DeepSpeed JSON or a mapping, got {deepspeed!r}: {path}"
        )
    return TrainingConfig(
        path=path,
        values=MappingProxyType(values),
        written=MappingProxyType(written),
        overrides=MappingProxyType(parsed),
        model=model,
        trains=trains,
        model_revision=read.text("model_revision", "main"),
        hf_hub_token=read.text("hf_hub_token", None),
        cache_dir=read.text("cache_dir", None),
        output_dir=Path(read.text("output_dir", required=True)),
        dataset_dir=read.text("dataset_dir", "data"),
        stage=read.choice("stage", STAGES, "sft"),
        finetuning_type=read.choice("finetuning_type", FINETUNING_TYPES, "lora"),
        quantization_bit=read.choice("quantization_bit", QUANTIZATION_BITS, None),
        lora_rank=read.integer("lora_rank", 8, minimum=1),
        lora_target=read.names("lora_target", "all"),
        adapters=read.names("adapter_name_or_path", ""),
        freeze_trainable_layers=read.integer("freeze_trainable_layers", 2),
        micro_batch_size=read.integer("per_device_train_batch_size", 8, minimum=1),  # Transformers' default
        cutoff_len=read.integer("cutoff_len", 2048, minimum=1),
        gradient_accumulation_steps=read.integer("gradient_accumulation_steps", 1, minimum=1),
        gradient_checkpointing=not read.flag("disable_gradient_checkpointing", False),
        torch_compile=read.flag("torch_compile", False),
        optim=read.text("optim", "adamw_torch_fused"),  # Transformers' default with torch >= 2.8
        pure_bf16=read.flag("pure_bf16", False),
        enable_liger_kernel=read.flag("enable_liger_kernel", False),
        fp8=_fp8(read, path),
        fp8_backend=read.choice("fp8_backend", LLAMAFACTORY_FP8_BACKENDS, None),
        fsdp_float8_all_gather=read.flag(ALL_GATHER_KEY, False),
        fp16=read.flag("fp16", False),
        deepspeed=deepspeed,
        fsdp=_fsdp_options(values.get("fsdp"), path),
        fsdp_config=values.get("fsdp_config") if isinstance(values.get("fsdp_config"), (dict, str)) else None,
        resume_from_checkpoint=read.text("resume_from_checkpoint", None),
        max_steps=read.integer("max_steps", -1),
        num_train_epochs=read.number("num_train_epochs", 3.0),
        max_samples=read.integer("max_samples", None, minimum=1),
        datasets=read.names("dataset", ""),
    )


def _fp8(read: _Reader, path: Path) -> bool | None:
    """The YAML's fp8, where fp8_enable_fsdp_float8_all_gather: true asks for it too: LLaMA-Factory's parser turns
    fp8 on for that key, over an fp8: false, which is refused here as the contradiction it is."""
    fp8, all_gather = read.flag("fp8", None), read.flag(ALL_GATHER_KEY, False)
    if fp8 is False and all_gather:
        raise ConfigInvalid(
            f"training config: fp8: false and {ALL_GATHER_KEY}: true contradict each other "
            f"(LLaMA-Factory turns FP8 on for the second): {path}"
        )
    return True if all_gather else fp8


def _nothing_to_run(values: Mapping[str, Any], path: Path) -> str:
    """A YAML with none of do_train, do_eval, do_predict: LLaMA-Factory would load the model and stop. Often one of
    its other commands' configs, copied from its examples."""
    if "export_dir" in values:
        return f"{path} is an export config (export_dir), which `llamafactory-cli export` runs; llamafactory-fp8 trains"
    if "infer_backend" in values:
        return (
            f"{path} is an inference config (infer_backend), which `llamafactory-cli chat` runs; "
            "llamafactory-fp8 trains"
        )
    return f"training config does nothing: set do_train: true (or do_eval, do_predict): {path}"


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """key=value pairs as LLaMA-Factory's CLI takes them; the values stay text (YAML types them when read)."""
    parsed = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigInvalid(f"override must look like key=value, got: {item}")
        parsed[key] = raw
    return parsed


def check_writable(folder: Path, what: str) -> None:
    """Fail before deciding anything rather than after the first checkpoint: the folder, or the nearest existing
    folder above it, where it would be made."""
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as error:  # a name longer than the filesystem takes, say
        raise OutputNotWritable(f"{what} cannot be made: {error.strerror}: {folder}") from None
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"{what} is not writable: {folder} ({existing} does not allow writing)")


class _Reader:
    """Typed reads of one key each, with LLaMA-Factory's default where the key is absent."""

    def __init__(self, values: dict[str, Any], path: Path):
        self.values, self.path = values, path

    def _invalid(self, key: str, wanted: str) -> ConfigInvalid:
        return ConfigInvalid(f"training config: {key} must be {wanted}, got {self.values[key]!r}: {self.path}")

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.values.get(key)
        if value is None or value == "":
            if required:
                raise ConfigInvalid(f"training config has no {key}: {self.path}")
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self._invalid(key, "a text value")
        if "\x00" in str(value):  # no path or name can hold it; the OS refuses it with a ValueError
            raise self._invalid(key, "text without a NUL character")
        return str(value)

    def integer(self, key: str, default: int | None, minimum: int | None = None) -> int | None:
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        wanted = "an integer" + (f" of at least {minimum}" if minimum is not None else "")
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self._invalid(key, wanted)
        return value

    def number(self, key: str, default: float) -> float:
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise self._invalid(key, "a number of at least 0")
        return float(value)

    def flag(self, key: str, default: bool | None) -> bool | None:
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self._invalid(key, "true or false")
        return value

    def names(self, key: str, default: str) -> tuple[str, ...]:
        """Module names as LLaMA-Factory's `split_arg` reads them: "q_proj,v_proj" or a list."""
        value = self.values.get(key)
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return tuple(value)
        return tuple(name.strip() for name in self.text(key, default).split(",") if name.strip())

    def choice(self, key: str, allowed: tuple, default):
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value.isdigit() and all(isinstance(option, int) for option in allowed):
            value = int(value)
        if isinstance(value, bool) or value not in allowed:
            raise self._invalid(key, "one of " + ", ".join(map(str, allowed)))
        return value


def _fsdp_options(value: Any, path: Path) -> str | None:
    """Transformers' `fsdp`: options as one string ("full_shard auto_wrap") or a list of them; "" means off."""
    if value in (None, "", False, []):
        return None
    if isinstance(value, list) and all(isinstance(option, str) for option in value):
        return " ".join(value)
    if isinstance(value, str):
        return value
    raise ConfigInvalid(
        f"training config: fsdp must be FSDP options such as 'full_shard auto_wrap', got {value!r}: {path}"
    )


def _typed(raw: str) -> Any:
    """An override's value as LLaMA-Factory's OmegaConf command line will read it."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"
