"""A probe the sharded CPU tests add to every rank of a real run (through LLAMAFACTORY_FP8_CALLBACKS): it writes, per
rank, what the strategy really did to the model at the first step (DTensor shards, DeepSpeed's stage and
partitions), so a test can tell a sharded run from one that silently fell back to data parallel."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROBE_DIR_ENV = "SHARDED_TEST_PROBE_DIR"


def probe_callback(probe_dir: Path):
    import torch.distributed as dist
    from transformers import TrainerCallback

    class ProbeSharding(TrainerCallback):
        done = False

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if self.done:
                return
            self.done = True  # the first step this run takes: the optimizer's states exist from here
            record = describe(model, optimizer)
            record["rank"] = dist.get_rank() if dist.is_initialized() else 0
            record["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
            probe_dir.mkdir(parents=True, exist_ok=True)
            (probe_dir / f"rank{record['rank']}.json").write_text(json.dumps(record))

    return ProbeSharding()


def describe(model, optimizer) -> dict:
    """Parameter and optimizer-state sizes this rank holds, against the model's full size."""
    from accelerate.state import AcceleratorState
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    local = 0
    for p in params:
        if isinstance(p, DTensor):
            local += p.to_local().numel()
        elif hasattr(p, "ds_tensor"):
            local += p.ds_tensor.numel()
        else:
            local += p.numel()
    record = {
        "distributed_type": str(AcceleratorState().distributed_type),
        "parameter_classes": sorted({type(p).__name__ for p in params}),
        "parameter_devices": sorted({str(getattr(p, "ds_tensor", p).device) for p in params}),
        "full_numel": full,
        "local_numel": local,
    }
    plugin = getattr(AcceleratorState(), "deepspeed_plugin", None)
    if plugin is not None:
        record["zero_stage"] = plugin.zero_stage
    group = getattr(getattr(model, "_get_fsdp_state", lambda: None)(), "_fsdp_param_group", None)
    if group is not None:
        record["fsdp_offload_policy"] = type(group.offload_policy).__name__
    inner = getattr(optimizer, "optimizer", optimizer)
    record["optimizer_class"] = type(getattr(inner, "optimizer", inner)).__name__
    states = [
        value for state in getattr(inner, "state", {}).values() for key, value in state.items() if key == "exp_avg"
    ]
    record["exp_avg_numel"] = sum((v.to_local() if isinstance(v, DTensor) else v).numel() for v in states)
    return record


def probe_from_environment():
    """The probe, for LLAMAFACTORY_FP8_CALLBACKS: every rank of the real launcher's run adds it."""
    return probe_callback(Path(os.environ[PROBE_DIR_ENV]))
