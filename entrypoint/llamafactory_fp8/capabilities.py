"""What this environment cannot run, one record each: a stage, trainer or option of LLaMA-Factory that needs a
package the image does not carry (or a device it is not), found from the YAML's keys and the model's config.json
before anything loads, and refused in one line (exit 25) instead of failing minutes later in an import."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from packaging.version import Version

from .errors import Unsupported
from .model_facts import ModelFacts


@dataclass(frozen=True, kw_only=True)
class Limit:
    """One thing a run may ask for that this environment may not have."""

    asks: Callable[[Mapping, ModelFacts | None], str | None]
    """The option in the user's words where the run asks for it (its keys, its model's config.json), else None."""
    lacks: Callable[[], str | None]
    """What this environment lacks for it, in words, or None where it has everything."""
    why: str
    """What to do instead."""


def _report_to(values: Mapping) -> list[str]:
    named = values.get("report_to") or []
    names = named.replace(",", " ").split() if isinstance(named, str) else [str(name) for name in named]
    return [name for name in names if name not in ("none", "all")]


def _key(name: str, predicate: Callable[[object], bool] = bool) -> Callable[[Mapping, ModelFacts | None], str | None]:
    return lambda values, _model: f"{name}: {values[name]}" if predicate(values.get(name)) else None


def _quantized(methods: tuple[str, ...]) -> Callable[[Mapping, ModelFacts | None], str | None]:
    """A model quantized by one of `methods`: on the fly (quantization_bit with quantization_method) or already
    (its config.json's quantization_config)."""

    def asks(values: Mapping, model: ModelFacts | None) -> str | None:
        method = str(values.get("quantization_method") or "bnb")
        if values.get("quantization_bit") is not None and method in methods:
            return f"quantization_bit with quantization_method: {method}"
        if model is not None and model.quantization in methods:
            return f"a {model.quantization.upper()}-quantized model ({model.source})"
        return None

    return asks


def _multimodal(values: Mapping, model: ModelFacts | None) -> str | None:
    if model is not None and model.multimodal:
        return f"a vision-language model ({model.source})"
    keys = [key for key in ("image_max_pixels", "video_max_pixels", "audio_sampling_rate") if key in values]
    return f"{keys[0]} (images, video or audio)" if keys else None


def _modules(*names: str) -> Callable[[], str | None]:
    def lacks() -> str | None:
        missing = [name for name in names if not _installed(name)]
        return f"it needs {' and '.join(missing)}" if missing else None

    return lacks


def _trl_too_new() -> str | None:
    try:
        version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return "it needs trl"
    return f"it has trl {version}" if Version(version) > MAX_TRL_FOR_PPO else None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


# Transformers' optimizers (the `optim` key) by the package its Trainer imports for each, which it does only once the
# model has loaded; tests/test_capabilities.py holds this to the pinned Transformers
OPTIMIZER_PACKAGES = {
    "bitsandbytes": (
        *("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "ademamix", "ademamix_8bit"),
        *("paged_ademamix_32bit", "paged_ademamix_8bit", "lion_32bit", "lion_8bit", "paged_lion_32bit"),
        *("paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit"),
    ),
    "galore_torch": (
        *("galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise"),
        *("galore_adamw_8bit_layerwise", "galore_adafactor_layerwise"),
    ),
    "apollo_torch": ("apollo_adamw", "apollo_adamw_layerwise"),
    "lomo_optim": ("lomo", "adalomo"),
    "grokadamw": ("grokadamw",),
    "schedulefree": ("schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd"),
    "optimi": ("stable_adamw",),
    "torchdistx": ("adamw_anyprecision",),
    "apex": ("adamw_apex_fused",),
    "torch_xla": ("adamw_torch_xla",),
    "torch_npu": ("adamw_torch_npu_fused",),
}
MEGATRON_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size")
MAX_TRL_FOR_PPO = Version("0.9.6")  # LLaMA-Factory 0.9.5's PPO trainer imports names trl removed after this

LIMITS = (
    Limit(
        asks=_key("stage", lambda stage: stage == "ppo"),
        lacks=_trl_too_new,
        why=f"LLaMA-Factory 0.9.5's PPO needs trl {MAX_TRL_FOR_PPO} or older, and its other stages need the newer trl "
        "this image has: train the reward model here (stage: rm) and PPO elsewhere",
    ),
    Limit(
        asks=_key("use_kt"),
        lacks=_modules("ktransformers"),
        why="KTransformers' CPU-GPU hybrid MoE training is not in this image",
    ),
    Limit(
        asks=lambda values, _model: next((f"{key} (Megatron)" for key in MEGATRON_KEYS if key in values), None),
        lacks=_modules("mcore_adapter"),
        why="LLaMA-Factory's Megatron path (mcore_adapter) is not in this image: "
        "use --strategy fsdp2 or a DeepSpeed one",
    ),
    Limit(
        asks=lambda values, _model: "ray_num_workers (Ray)" if "ray_num_workers" in values else None,
        lacks=_modules("ray"),
        why="Ray is not in this image; the launcher spreads the run over this node's GPUs itself",
    ),
    Limit(
        asks=_key("dataset_dir", lambda folder: str(folder or "").startswith("REMOTE:")),
        lacks=_modules("ray"),
        why="a REMOTE: dataset_dir is read through Ray, which is not in this image: use a local folder",
    ),
    # the packages LLaMA-Factory's get_train_args requires for these keys (its _check_extra_dependencies)
    *(
        Limit(asks=_key(key), lacks=_modules(module), why=f"drop {key}")
        for key, module in (
            ("use_unsloth", "unsloth"),
            ("enable_liger_kernel", "liger_kernel"),
            ("mixture_of_depths", "MoD"),
        )
    ),
    *(
        Limit(
            asks=_key(key),
            lacks=_modules(module),
            why=f"drop {key} to train with AdamW instead of {optimizer}; for less memory, "
            "finetuning_type: lora, or a sharded --strategy over several GPUs",
        )
        for key, optimizer, module in (
            ("use_galore", "GaLore", "galore_torch"),
            ("use_apollo", "APOLLO", "apollo_torch"),
            ("use_badam", "BAdam", "badam"),
            ("use_adam_mini", "Adam-mini", "adam_mini"),
        )
    ),
    *(
        Limit(
            asks=_key("optim", lambda name, names=names: name in names),
            lacks=_modules(package),
            why="drop optim for the default (adamw_torch_fused), or use adamw_torch_8bit for 8-bit states (torchao's)",
        )
        for package, names in OPTIMIZER_PACKAGES.items()
    ),
    Limit(
        asks=_key("use_swanlab"),
        lacks=_modules("swanlab"),
        why="use_swanlab: false, or an image with it added",
    ),
    Limit(
        asks=_key("predict_with_generate"),
        lacks=_modules("jieba", "nltk", "rouge_chinese"),
        why="LLaMA-Factory scores generated text (BLEU, ROUGE) with these, which this image leaves out: evaluate "
        "the loss here (do_eval: true, predict_with_generate: false, no do_predict), and generate elsewhere",
    ),
    Limit(
        asks=_multimodal,
        lacks=_modules("torchvision"),
        why="multimodal training needs torchvision (and av for video), which this image leaves out: their wheels pin "
        "a torch of their own; text fine-tuning of the same model family runs",
    ),
    Limit(
        asks=_quantized(("bnb",)),
        lacks=_modules("bitsandbytes"),
        why="bitsandbytes (QLoRA) is not in this image: use finetuning_type lora without quantization_bit",
    ),
    Limit(
        asks=_quantized(("gptq",)), lacks=_modules("gptqmodel", "optimum"), why="use the model's unquantized release"
    ),
    Limit(asks=_quantized(("awq",)), lacks=_modules("awq"), why="use the model's unquantized release"),
    Limit(asks=_quantized(("aqlm",)), lacks=_modules("aqlm"), why="use the model's unquantized release"),
    Limit(asks=_quantized(("hqq",)), lacks=_modules("hqq"), why="use the model's unquantized release"),
    Limit(asks=_quantized(("eetq",)), lacks=_modules("eetq"), why="use the model's unquantized release"),
    Limit(asks=_quantized(("quanto",)), lacks=_modules("optimum.quanto"), why="use the model's unquantized release"),
)
# report_to's integrations, by the module Transformers imports for each
REPORTERS = {
    "wandb": "wandb",
    "swanlab": "swanlab",
    "mlflow": "mlflow",
    "tensorboard": "tensorboard",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "neptune": "neptune",
    "trackio": "trackio",
    "dvclive": "dvclive",
    "codecarbon": "codecarbon",
    "azure_ml": "azureml",
}


def refuse_unsupported(values: Mapping, model: ModelFacts | None) -> None:
    """One line (exit 25) for the first thing this run asks for that this environment cannot run."""
    for limit in LIMITS:
        asked = limit.asks(values, model)
        lacking = limit.lacks() if asked is not None else None
        if lacking is not None:
            raise Unsupported(f"this image cannot run {asked}: {lacking}; {limit.why}")
    for name in _report_to(values):
        module = REPORTERS.get(name)
        if module is not None and not _installed(module):
            raise Unsupported(
                f"this image cannot run report_to: {name}: the {module} package is not installed; "
                "use report_to: none, or an image with it added"
            )
