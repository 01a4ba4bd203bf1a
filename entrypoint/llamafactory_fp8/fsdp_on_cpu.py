"""FSDP2 over CPU processes: Accelerate 1.11 turns an FSDP config into `DistributedType.FSDP` only on GPU-like
devices; on CPU processes the state stays `MULTI_CPU` and the Trainer wraps the model in DDP, so a run configured
for FSDP2 trained unsharded without a word. torch's own FSDP2 runs over gloo, so the patch below hands Accelerate's
FSDP setup the CPU processes too. Installed in each training process, before the Trainer builds its Accelerator."""

from __future__ import annotations

import functools


def let_fsdp_run_on_cpu_processes() -> None:
    """Patches `accelerate.state.AcceleratorState.__init__`: where the fresh state came out `MULTI_CPU` while an FSDP
    plugin was given (Accelerator builds one from `ACCELERATE_USE_FSDP`), finish the setup Accelerate does for GPUs
    (the MULTI_GPU branch of that `__init__`): the FSDP distributed type, shared with `PartialState`, the plugin and
    its mixed precision. CPU offload keeps its memory unpinned: pinning needs an accelerator, and fully_shard failed
    without one ("Cannot access accelerator device when none is available"). Idempotent; on GPUs the state never
    comes out `MULTI_CPU`, so nothing changes there."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import CPUOffloadPolicy

    original = AcceleratorState.__init__
    if getattr(original, "lets_fsdp_run_on_cpu", False):
        return

    @functools.wraps(original)
    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        fresh = not AcceleratorState._shared_state
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fresh and fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            if isinstance(fsdp_plugin.cpu_offload, CPUOffloadPolicy):
                fsdp_plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__.lets_fsdp_run_on_cpu = True
    AcceleratorState.__init__ = __init__
