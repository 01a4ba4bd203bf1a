"""What each training process runs under `accelerate launch`: a watcher (watcher.py) that runs LLaMA-Factory's own
`run_exp` as its child, with callbacks that checkpoint and stop when the launcher asks (SIGTERM from Docker or
Kubernetes) and that report the process's progress (progress.py). Heavy imports wait for the child."""

from __future__ import annotations

import errno
import faulthandler
import importlib
import os

from . import watcher
from .progress import DISK_FULL, FAILED, FINISHED, LOST_PEER, STOPPED, ProgressReporter, reporter_from_environment


def let_accelerate_find_te_fp8() -> None:
    """Accelerate 1.11 calls `transformer_engine.pytorch.fp8.check_mxfp8_support()` through the package attribute,
    which Transformer Engine 2.20 no longer sets: the benchmark's first TE run failed with AttributeError
    (bench/README.md). Importing the submodule sets it."""
    if os.environ.get("ACCELERATE_FP8_BACKEND", "").upper() == "TE":
        importlib.import_module("transformer_engine.pytorch.fp8")


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

    from .launcher import COLLECTIVE_TIMEOUT_ENV

    seconds = os.environ.get(COLLECTIVE_TIMEOUT_ENV)
    if not seconds:
        return
    original = torch.distributed.init_process_group

    def init_process_group(*args, **kwargs):
        kwargs.setdefault("timeout", timedelta(seconds=int(seconds)))
        return original(*args, **kwargs)

    torch.distributed.init_process_group = init_process_group


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
    let_accelerate_find_te_fp8()
    from . import causal_attention, fp8_recipe
    from .callbacks import CheckpointAndStopOnRequest, ReportProgress
    from .step_profiler import profiler_from_environment
    from .stop_request import StopFiles

    fp8_recipe.install_from_environment()  # LLAMAFACTORY_FP8_RECIPE, set by the launcher
    causal_attention.install()
    let_torch_load_cpu_rank_tensors()
    give_collectives_their_timeout()
    reporter = reporter_from_environment()
    if reporter is not None:
        report_llamafactory_phases(reporter)
    from llamafactory.train.tuner import run_exp

    files = StopFiles.from_environment()
    stop = CheckpointAndStopOnRequest(files) if files else None
    callbacks = [causal_attention.KeepMaskUnlessRightPadded()]
    callbacks += [callback for callback in (stop, reporter and ReportProgress(reporter, stop)) if callback]
    try:
        run_exp(callbacks=callbacks + profiler_from_environment())
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


def main() -> None:
    if watcher.is_worker():
        run_worker()
    else:
        watcher.main()


if __name__ == "__main__":
    main()
