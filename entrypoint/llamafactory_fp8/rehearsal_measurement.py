"""What a rehearsal measures on rank 0 (rehearsal.py): step time, tokens per second, peak memory, and the
communication estimate for the job it stands for, written as JSON when training ends."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback

from .communication import estimate_communication, wire_bytes
from .rehearsal import RehearsalRequest, join_fake_process_group
from .strategies import BY_NAME


class MeasureRehearsal(TrainerCallback):
    """Rank 0's step time (the first step, which compiles and warms up, left out), tokens per second, peak memory
    and the communication estimate, written as JSON when training ends."""

    def __init__(self, request: RehearsalRequest):
        self.request = request
        self.step_seconds: list[float] = []
        self.tokens: list[int] = []
        self.counted = 0
        self.started = 0.0
        self.parameters = self.trainable = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.parameters, self.trainable = _parameter_counts(model)
        model.register_forward_pre_hook(self._count_tokens, with_kwargs=True)
        _reset_peak_memory()

    def _count_tokens(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.counted += ids.numel()

    def on_step_begin(self, args, state, control, **kwargs):
        _synchronize()
        self.counted, self.started = 0, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        self.step_seconds.append(time.perf_counter() - self.started)
        self.tokens.append(self.counted)

    def on_train_end(self, args, state, control, **kwargs):
        report = self.report(args)
        Path(self.request.report).parent.mkdir(parents=True, exist_ok=True)
        Path(self.request.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"rehearsal: {json.dumps(report)}", file=sys.stderr, flush=True)
        import torch.distributed as dist

        dist.destroy_process_group()
        raise SystemExit(0)  # before LLaMA-Factory's final save: the fake group trained noise

    def report(self, args) -> dict:
        from accelerate.state import AcceleratorState

        measured = self.step_seconds[1:] or self.step_seconds
        step_s = statistics.median(measured)
        tokens = statistics.median(self.tokens[1:] or self.tokens)
        strategy = BY_NAME[self.request.strategy]
        weight_bytes, gradient_bytes = wire_bytes(strategy, self.request.precision)
        communication = estimate_communication(
            strategy,
            self.request.world_size,
            self.parameters,
            self.trainable,
            args.gradient_accumulation_steps,
            weight_bytes,
            gradient_bytes,
        )
        shared = AcceleratorState._shared_state
        return {
            "world_size": self.request.world_size,
            "strategy": self.request.strategy,
            "precision": self.request.precision,
            "accelerate": {
                "distributed_type": str(shared.get("distributed_type")),
                "num_processes": shared.get("num_processes"),
            },
            "steps_measured": len(measured),
            "step_s": round(step_s, 6),
            "tokens_per_step_per_rank": tokens,
            "tokens_per_s_per_rank": round(tokens / step_s, 1),
            "memory": {**_peak_memory(), "estimate_gib": self.request.estimate_gib},
            "parameters": self.parameters,
            "trainable_parameters": self.trainable,
            "communication_estimate": asdict(communication),
        }


def _parameter_counts(model) -> tuple[int, int]:
    """The whole model's counts, whatever rank 0 holds of it (DTensor reports its global size; DeepSpeed ZeRO-3
    keeps it in `ds_numel`)."""
    total = trainable = 0
    for parameter in model.parameters():
        count = getattr(parameter, "ds_numel", parameter.numel())
        total += count
        trainable += count if parameter.requires_grad else 0
    return total, trainable


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak_memory() -> None:
    """Peaks from here on: the GPU allocator's, and on Linux the process's resident-set high-water mark."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory() -> dict[str, float]:
    """GiB. On a GPU, the allocator's peaks over the measured steps (what the memory model estimates); on the CPU,
    the resident set's peak over the steps (VmHWM, reset at the first step) and over the whole process."""
    import torch

    gib = 2**30
    peaks = {"process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib, 3)}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks["training_peak_rss_gib"] = round(int(line.split()[1]) * 1024 / gib, 3)
    if torch.cuda.is_available():
        peaks["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / gib, 3)
        peaks["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / gib, 3)
    return peaks


def rehearse_from_environment() -> MeasureRehearsal | None:
    """In the training process, before LLaMA-Factory starts: where the launcher asked for a rehearsal, join the
    fake group and return the callback that measures it."""
    request = RehearsalRequest.from_environment()
    if request is None:
        return None
    join_fake_process_group(request.world_size, request.processes_per_node)
    return MeasureRehearsal(request)
