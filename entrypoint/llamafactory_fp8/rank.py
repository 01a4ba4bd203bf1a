"""The per-rank entry: what `accelerate launch` runs in each training process. It is a watcher (watcher.py) that
runs itself again as its worker child; the worker installs the runtime patches (runtime_patches.py) and runs
LLaMA-Factory's own `run_exp`, with callbacks that checkpoint and stop when the launcher asks (SIGTERM from Docker or
Kubernetes) and that report the process's progress (progress.py). It imports nothing of the planner, and heavy
imports wait for the worker."""

from __future__ import annotations

import errno
import faulthandler

from . import contract, watcher
from .progress import CONFIG_REFUSED, DISK_FULL, FAILED, FINISHED, LOST_PEER, STOPPED, reporter_from_environment

# How gloo and NCCL word a peer that died (its connection drops) or froze (the collective times out)
LOST_PEER_SIGNS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Timed out waiting",
    "collective operation timeout",
)


def describe_failure(error: BaseException) -> str:
    """One line for the launcher: a full disk and a lost peer are named as such (their errors come from deep in
    safetensors, torch or the collective library, worded their own ways)."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    words = " ".join(str(link) for link in chain)
    if any(getattr(link, "errno", None) == errno.ENOSPC for link in chain) or "No space left on device" in words:
        return DISK_FULL + next((str(link.filename) for link in chain if getattr(link, "filename", None)), "")
    first = (str(error).strip().splitlines() or [""])[0][:300]
    if any(sign in words for sign in LOST_PEER_SIGNS):
        return LOST_PEER + first
    return f"{FAILED}{type(error).__name__}: {first}"


def run_worker() -> None:
    faulthandler.enable()  # a crash in native code (NCCL, CUDA) still leaves a Python traceback in the log
    from . import runtime_patches

    runtime_patches.quiet_known_noise()  # before the imports below load torch, torchao and Transformers
    from . import causal_attention, fp8_recipe
    from .callbacks import CheckpointAndStopOnRequest, ReportProgress
    from .frozen_fp8_weights import CastFrozenWeightsOnce
    from .fsdp_checkpoints import NameTheAdapter, SaveTheFinalModelWhole, let_fsdp2_resume_its_sharded_optimizer
    from .fsdp_compile import CompileShardedLayers
    from .fsdp_on_cpu import let_fsdp_run_on_cpu_processes
    from .rehearsal_measurement import rehearse_from_environment
    from .step_profiler import profiler_from_environment
    from .stop_request import StopFiles

    rehearsal = rehearse_from_environment()  # joins the fake process group before anything builds an Accelerator
    runtime_patches.let_accelerate_find_te_fp8()
    runtime_patches.recompute_te_layers_in_fp8()
    runtime_patches.let_peft_build_lora_beside_newer_torchao()
    let_fsdp_run_on_cpu_processes()
    let_fsdp2_resume_its_sharded_optimizer()
    recipe = fp8_recipe.install_from_environment()  # LLAMAFACTORY_FP8_RECIPE, set by the launcher
    causal_attention.install()
    runtime_patches.let_torch_load_cpu_rank_tensors()
    runtime_patches.give_collectives_their_timeout()
    runtime_patches.count_training_tokens()
    reporter = reporter_from_environment()
    if reporter is not None:
        runtime_patches.report_llamafactory_phases(reporter)
    from llamafactory.train.tuner import run_exp

    refuse_arguments_in_one_line()
    files = StopFiles.from_environment()
    stop = CheckpointAndStopOnRequest(files) if files else None
    # the adapter's config is written beside a sharded checkpoint before the stop's on_save can end the process
    callbacks = [
        causal_attention.KeepMaskUnlessRightPadded(),
        NameTheAdapter(),
        SaveTheFinalModelWhole(),
        CompileShardedLayers(),
        *([CastFrozenWeightsOnce()] if recipe.frozen_weights_in_fp8 else []),
    ]
    callbacks += [callback for callback in (stop, reporter and ReportProgress(reporter, stop), rehearsal) if callback]
    try:
        run_exp(callbacks=callbacks + users_callbacks() + profiler_from_environment())
    except ArgumentsRefused as refusal:
        if reporter is None:
            raise
        reporter.end(CONFIG_REFUSED + str(refusal))
        raise SystemExit(1) from None
    except SystemExit as leaving:
        if reporter is not None:
            reporter.end(STOPPED if leaving.code in (0, None) else f"{FAILED}exit {leaving.code}")
        raise
    except BaseException as error:
        if reporter is not None:
            reporter.end(describe_failure(error))
        raise
    if reporter is not None:
        reporter.end(FINISHED)


class ArgumentsRefused(Exception):
    """What LLaMA-Factory's argument checks refused, in their first line."""


def refuse_arguments_in_one_line() -> None:
    """LLaMA-Factory's own argument checks (`get_train_args`, the first thing run_exp does) raise ValueError for
    rules across keys that no key's schema holds (do_predict without predict_with_generate, neat_packing outside
    sft): named as such, they end this process with one line for the launcher instead of a traceback, before the
    model loads. So does a lora_target that names no module of the model (lora_targets.py)."""
    from llamafactory.train import tuner

    from .lora_targets import lora_target_problem

    parse = tuner.get_train_args

    def checked(args):
        try:
            parsed = parse(args)
        except ValueError as refusal:
            raise ArgumentsRefused((str(refusal).strip().splitlines() or [""])[0][:300]) from None
        model_args, _data_args, _training_args, finetuning_args, _generating_args = parsed
        problem = lora_target_problem(model_args, finetuning_args)
        if problem is not None:
            raise ArgumentsRefused(problem)
        return parsed

    tuner.get_train_args = checked


def users_callbacks() -> list:
    """The TrainerCallbacks named in LLAMAFACTORY_FP8_CALLBACKS (`package.module:factory`, comma-separated): each
    factory is called with no arguments, in each rank. LLaMA-Factory's YAML has no key for callbacks of one's own."""
    import importlib

    callbacks = []
    for name in contract.CALLBACKS.read():
        module, _, factory = name.partition(":")
        callbacks.append(getattr(importlib.import_module(module), factory)())
    return callbacks


def main() -> None:
    if watcher.is_worker():
        run_worker()
    else:
        watcher.main()


if __name__ == "__main__":
    main()
