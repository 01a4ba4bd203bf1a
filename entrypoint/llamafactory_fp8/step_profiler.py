"""Profile a few steady-state training steps when LLAMAFACTORY_FP8_PROFILE asks (`FIRST-LAST:DIRECTORY`), then
end the run: the benchmark's per-step time breakdown (bench/README.md).

It writes `DIRECTORY/profile.json`: the wall time of the profiled optimizer steps and every GPU kernel with its
call count and total time. The run ends after the last profiled step (exit 0), without LLaMA-Factory's final
save: a profiling run's weights are not worth keeping, and for an 8B model in float32 that save takes minutes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import contract


class StepProfiler(TrainerCallback):
    def __init__(self, first: int, last: int, directory: Path):
        self.first, self.last, self.directory = first, last, directory
        self.profiler: torch.profiler.profile | None = None
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first:
            _synchronize()
            self.profiler = torch.profiler.profile(activities=[_activity()])
            self.profiler.start()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step < self.last:
            return
        _synchronize()
        wall_s = time.perf_counter() - self.started
        self.profiler.stop()
        if state.is_world_process_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
            record = {"steps": self.last - self.first + 1, "wall_s": wall_s, "kernels": kernel_table(self.profiler)}
            (self.directory / "profile.json").write_text(json.dumps(record, indent=1))
        raise SystemExit(0)


def _activity() -> torch.profiler.ProfilerActivity:
    """GPU kernels; on a machine without CUDA (the CPU tests), CPU operators in their place."""
    return torch.profiler.ProfilerActivity.CUDA if torch.cuda.is_available() else torch.profiler.ProfilerActivity.CPU


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def kernel_table(profiler: torch.profiler.profile) -> list[dict]:
    """Every GPU kernel, memcpy and memset seen (CPU operators without CUDA), by name, most time first."""
    rows = []
    for event in profiler.key_averages():
        if torch.cuda.is_available():
            total_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        else:
            total_us = event.self_cpu_time_total
        if total_us > 0:
            rows.append({"name": event.key, "calls": event.count, "total_us": round(total_us, 1)})
    return sorted(rows, key=lambda row: -row["total_us"])


def profiler_from_environment(environ: Mapping[str, str] = os.environ) -> list[StepProfiler]:
    """The callbacks to add: one StepProfiler when asked, else none."""
    asked = contract.PROFILE.read(environ)
    return [] if asked is None else [StepProfiler(*asked)]
