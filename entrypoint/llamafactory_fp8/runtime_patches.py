"""The patches each rank makes to the libraries it runs, at run time: each works around one defect or gap of a
pinned release, says which, and is guarded by a test (patches/README.md lists them with the file patches)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

from . import contract
from .progress import ProgressReporter

# Lines libraries print on every start that say nothing about this run: torchao's C extensions, built for another
# torch than the one here (its float8 training is pure Python over torch._scaled_mm, and runs without them), and
# torch's notice to library authors about registering enums with pytree.
KNOWN_NOISE = {
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}


class _DropKnownNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_known_noise() -> None:
    """Drop KNOWN_NOISE's lines, and show a model's config once (Transformers logs it at every load of the config,
    four times a run), before anything imports the libraries that print them."""
    for name, fragments in KNOWN_NOISE.items():
        logging.getLogger(name).addFilter(_DropKnownNoise(fragments))
    logging.getLogger("transformers.configuration_utils").setLevel(logging.WARNING)


def let_accelerate_find_te_fp8() -> None:
    """Accelerate 1.11 calls `transformer_engine.pytorch.fp8.check_mxfp8_support()` through the package attribute,
    which Transformer Engine 2.20 no longer sets: the benchmark's first TE run failed with AttributeError
    (bench/README.md). Importing the submodule sets it."""
    if os.environ.get("ACCELERATE_FP8_BACKEND", "").upper() == "TE":
        importlib.import_module("transformer_engine.pytorch.fp8")


def recompute_te_layers_in_fp8() -> None:
    """LLaMA-Factory's gradient checkpointing recomputes each layer's forward during backward through
    torch.utils.checkpoint, outside the FP8 autocast Accelerate wraps the forward in; Transformer Engine's layers
    read that global state (TE 2.20's `init_fp8_metadata`), so by TE's source the recompute and the whole backward
    run in BF16 while the block says FP8 (not yet seen on a GPU: bench/te_recompute_probe.py). TE's own
    checkpoint, a drop-in for torch's, re-enters the forward's FP8 autocast and recipe for the recompute:
    LLaMA-Factory's checkpointing calls it in place of torch's (the same keywords, use_reentrant among them).
    Unsloth's checkpointing, which LLaMA-Factory calls instead where asked, is left as it is."""
    if os.environ.get("ACCELERATE_FP8_BACKEND", "").upper() != "TE":
        return
    from functools import partial

    import torch.utils.checkpoint
    from llamafactory.model.model_utils import checkpointing
    from transformer_engine.pytorch import checkpoint as te_checkpoint

    only_trainable_layers = checkpointing.get_custom_gradient_checkpointing_func

    def through_te_checkpoint(checkpoint):
        if isinstance(checkpoint, partial) and checkpoint.func is torch.utils.checkpoint.checkpoint:
            checkpoint = partial(te_checkpoint, **checkpoint.keywords)
            if os.environ.get("RANK", "0") == "0":
                print("[llamafactory-fp8] FP8: checkpointed layers recompute through TE's checkpoint", flush=True)
        return only_trainable_layers(checkpoint)

    checkpointing.get_custom_gradient_checkpointing_func = through_te_checkpoint


def let_peft_build_lora_beside_newer_torchao() -> None:
    """PEFT 0.18 (LLaMA-Factory 0.9.5's pin) checks every LoRA target's weight against torchao.quantization's
    LinearActivationQuantizedTensor, which torchao 0.18 removed: every LoRA model, BF16 or FP8, failed to build
    with ImportError (bench/README.md, "torchao 0.18"). No tensor can be of a class that no longer exists, so the
    name is given a class nothing instantiates; PEFT 0.19 no longer asks. Without torchao, PEFT asks nothing."""
    if importlib.util.find_spec("torchao") is None:
        return
    import torchao.quantization

    if not hasattr(torchao.quantization, "LinearActivationQuantizedTensor"):
        torchao.quantization.LinearActivationQuantizedTensor = type("LinearActivationQuantizedTensor", (), {})


def let_torch_load_cpu_rank_tensors() -> None:
    """Ranks on several CPU nodes keep tensors on device `cpu:0`, and torch.save tags them so, but torch.load
    restores only `cpu`: resuming such a run failed ("don't know how to restore data location ... cpu:0")."""
    import torch.serialization

    torch.serialization.register_package(
        11, lambda _obj: None, lambda obj, location: obj if location.startswith("cpu:") else None
    )


def give_collectives_their_timeout() -> None:
    """Transformers hands ddp_timeout to the process group on GPUs but not on CPUs, where gloo then waits 30
    minutes for a node that froze: the process group gets the run's timeout (the launcher passes it) wherever
    the caller named none."""
    from datetime import timedelta

    import torch.distributed

    seconds = contract.COLLECTIVE_TIMEOUT_S.read()
    if seconds is None:
        return
    original = torch.distributed.init_process_group

    def init_process_group(*args, **kwargs):
        kwargs.setdefault("timeout", timedelta(seconds=seconds))
        return original(*args, **kwargs)

    torch.distributed.init_process_group = init_process_group


class TokenCount:
    """Tokens every training micro-batch of this process carried, summed where the batch is (on the GPU, without
    waiting for it), read once at the end. Transformers' own count (`include_num_input_tokens_seen`) gathers and
    waits every step."""

    total = None

    @classmethod
    def read(cls) -> int:
        return 0 if cls.total is None else int(cls.total)


def count_training_tokens() -> None:
    """Wrap the Trainer's training_step (which every stage's trainer inherits: LLaMA-Factory's and TRL's override
    compute_loss, not this) to add up the attention masks of the micro-batches it trains on."""
    from transformers import Trainer

    original = getattr(Trainer.training_step, "unwrapped", Trainer.training_step)

    def training_step(self, model, inputs, *args, **kwargs):
        # 2-D masks (neat_packing numbers each sequence: non-zero is a token); a 4-D mask counts no tokens
        masks = [
            value for key, value in inputs.items() if key.endswith("attention_mask") and getattr(value, "ndim", 0) == 2
        ]
        if masks:
            counted = sum((mask != 0).sum() for mask in masks)
            TokenCount.total = counted if TokenCount.total is None else TokenCount.total + counted
        return original(self, model, inputs, *args, **kwargs)

    training_step.unwrapped = original
    Trainer.training_step = training_step


def report_llamafactory_phases(reporter: ProgressReporter) -> None:
    """Loading and preprocessing happen before the Trainer exists, so no callback sees them: LLaMA-Factory's
    workflows take these three functions from their packages when imported, so wrapping them there first reports
    each phase, with the cache whose growth is its progress (a download, the tokenized dataset)."""
    import datasets.config
    import huggingface_hub.constants
    import llamafactory.data
    import llamafactory.model

    def reporting(module, name: str, phase: str, watch: str):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            reporter.enter(phase, watch=watch)
            return original(*args, **kwargs)

        setattr(module, name, wrapper)

    reporting(llamafactory.model, "load_tokenizer", "loading", huggingface_hub.constants.HF_HUB_CACHE)
    reporting(llamafactory.model, "load_model", "loading", huggingface_hub.constants.HF_HUB_CACHE)
    reporting(llamafactory.data, "get_dataset", "preprocessing", str(datasets.config.HF_DATASETS_CACHE))
