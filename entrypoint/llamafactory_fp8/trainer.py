"""What each training process runs under `accelerate launch`: LLaMA-Factory's own `run_exp`, with a callback that
writes a checkpoint and stops when the launcher asks (SIGTERM from Docker or Kubernetes)."""

from __future__ import annotations

import faulthandler
import importlib
import os

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import fp8_recipe
from .step_profiler import profiler_from_environment
from .stop_request import StopAnswer, StopFiles


class CheckpointAndStopOnRequest(TrainerCallback):
    """At each step boundary, a request seen by any rank makes every rank save and leave together: one rank
    leaving alone would hang the others in their next collective."""

    def __init__(self, files: StopFiles):
        self.files = files
        self.stopping = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self._asked_on_any_rank(args):
            self._leave(state, checkpoint=None)  # nothing trained yet, so nothing to save

    def on_step_end(self, args, state, control, **kwargs):
        if self._asked_on_any_rank(args):
            self.stopping = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.stopping:
            self._leave(state, checkpoint=os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))

    def _asked_on_any_rank(self, args) -> bool:
        asked = self.files.asked()
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([int(asked)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            asked = bool(flag.item())
        return asked

    def _leave(self, state, checkpoint: str | None) -> None:
        """Skip what LLaMA-Factory does after training (final save, evaluation): it would outlast the grace period
        and present a half-trained model as the result."""
        if dist.is_initialized():
            dist.barrier()  # every rank's share of the checkpoint is on disk
            dist.destroy_process_group()
        if state.is_local_process_zero:
            self.files.write_answer(StopAnswer(state.global_step, checkpoint))
        raise SystemExit(0)


def let_accelerate_find_te_fp8() -> None:
    """Accelerate 1.11 calls `transformer_engine.pytorch.fp8.check_mxfp8_support()` through the package attribute,
    which Transformer Engine 2.20 no longer sets: the benchmark's first TE run failed with AttributeError
    (bench/README.md). Importing the submodule sets it."""
    if os.environ.get("ACCELERATE_FP8_BACKEND", "").upper() == "TE":
        importlib.import_module("transformer_engine.pytorch.fp8")


def main() -> None:
    faulthandler.enable()  # a crash in native code (NCCL, CUDA) still leaves a Python traceback in the log
    let_accelerate_find_te_fp8()
    fp8_recipe.install_from_environment()  # LLAMAFACTORY_FP8_RECIPE, set by the launcher
    from llamafactory.train.tuner import run_exp

    files = StopFiles.from_environment()
    callbacks = ([CheckpointAndStopOnRequest(files)] if files else []) + profiler_from_environment()
    run_exp(callbacks=callbacks or None)


if __name__ == "__main__":
    main()
