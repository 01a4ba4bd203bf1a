"""The callbacks each training process adds to LLaMA-Factory's Trainer: stop on request, and report progress."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .progress import ProgressReporter
from .runtime_patches import TokenCount
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


def is_fp8_linear(module: torch.nn.Module) -> bool:
    """torchao's Float8Linear, or a Transformer Engine layer with its own FP8 GEMMs."""
    kind = type(module)
    if kind.__module__.startswith("transformer_engine"):
        return kind.__name__ in ("Linear", "LayerNormLinear", "LayerNormMLP")
    return kind.__name__ == "Float8Linear"


class ReportProgress(TrainerCallback):
    """Every step, and every change of phase: training, evaluating, saving (a checkpoint, or the final model), and
    saving to stop. Runs after Transformers' own flow callback and after CheckpointAndStopOnRequest, so `control`
    already says whether this step ends in an evaluation, a save or a stop."""

    def __init__(self, reporter: ProgressReporter, stop: CheckpointAndStopOnRequest | None = None):
        self.reporter, self.stop = reporter, stop

    def on_step_end(self, args, state, control, **kwargs):
        self.reporter.step(state.global_step)
        self._after_step(state, control)

    def on_evaluate(self, args, state, control, **kwargs):
        self._after_step(state, control, evaluated=True)

    def on_prediction_step(self, args, state, control, **kwargs):
        self.reporter.touch()

    def on_save(self, args, state, control, **kwargs):
        self.reporter.back_to_training()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.reporter.begin_training(state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        seconds = time.perf_counter() - self.started
        tokens = TokenCount.read()
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        fp8 = sum(map(is_fp8_linear, model.modules())) if model is not None else 0
        self.reporter.summarize(tokens / seconds if tokens and seconds > 0 else None, peak, fp8)
        self.reporter.enter("saving", "the final model")

    def _after_step(self, state, control, evaluated: bool = False) -> None:
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if control.should_evaluate and not evaluated:
            self.reporter.enter("evaluating")
        elif control.should_save:
            self.reporter.enter("stopping" if self.stop and self.stop.stopping else "saving", checkpoint)
        elif evaluated:
            self.reporter.back_to_training()
