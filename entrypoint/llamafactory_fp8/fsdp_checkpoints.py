"""FSDP2 checkpoints sharded, the final model whole, and the sharded optimizer resumed.

Checkpoints (`fsdp_state_dict_type: SHARDED_STATE_DICT` in configs/accelerate/fsdp2*.yaml): each rank writes its
own shard of the weights (a LoRA run: of its adapter) and optimizer states through torch.distributed.checkpoint, in
parallel, and the resume reads them back, resharded if the world size changed. FULL_STATE_DICT instead gathers
every checkpoint's weights and optimizer states on rank 0's CPU (an 8B full fine-tune: ~96 GB; a 70B: ~840 GB) and
writes the weights twice; and under FSDP2 Accelerate 1.11 reloads a LoRA adapter so gathered on rank 0 only, so the
other ranks resumed with their adapter shards as initialised (measured: the loss left the uninterrupted run's).

The final model must be whole: with SHARDED_STATE_DICT Transformers' `save_model` writes no weights at all, so the
`output_dir` that LLaMA-Factory's final save fills, and that users load with `from_pretrained`, would hold none.
SaveTheFinalModelWhole switches to FULL_STATE_DICT when training ends, before that save (Accelerate's documented
use of `set_state_dict_type`). A stopped run skips the final save and keeps its sharded checkpoint. A sharded LoRA
checkpoint holds no `adapter_config.json` of its own, which the resume reads to check the run matches it:
NameTheAdapter writes it beside the shards."""

from __future__ import annotations

import functools
import os

from transformers import TrainerCallback


class SaveTheFinalModelWhole(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType

        shared = AcceleratorState._shared_state
        if shared.get("distributed_type") == DistributedType.FSDP and shared.get("fsdp_plugin") is not None:
            shared["fsdp_plugin"].set_state_dict_type("FULL_STATE_DICT")


class NameTheAdapter(TrainerCallback):
    """Must run before CheckpointAndStopOnRequest, whose `on_save` ends the process on a stop."""

    def on_save(self, args, state, control, model=None, **kwargs):
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType
        from torch.distributed.fsdp.fully_sharded_data_parallel import StateDictType

        plugin = AcceleratorState._shared_state.get("fsdp_plugin")
        sharded = (
            AcceleratorState._shared_state.get("distributed_type") == DistributedType.FSDP
            and plugin is not None
            and plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
        )
        configs = getattr(model, "peft_config", None)
        if sharded and configs and state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            configs[model.active_adapter].save_pretrained(checkpoint)


def let_fsdp2_resume_its_sharded_optimizer() -> None:
    """Patches `load_fsdp_optimizer` where Transformers' Trainer and Accelerate's Accelerator call it. Accelerate
    1.11 saves an FSDP2 sharded optimizer with `get_optimizer_state_dict` (keyed by parameter name) but loads it
    into `optimizer.state_dict()` (keyed by index, and empty before the first step), so the resume read nothing
    and silently restarted AdamW's moments: the loss left the uninterrupted run's at the first step after the
    resume (accelerate#3971 reports the same line failing outright on 1.12). The patched load reads into
    `get_optimizer_state_dict`'s own layout, as torch.distributed.checkpoint documents. Other cases go through."""
    import accelerate.accelerator
    import accelerate.utils.fsdp_utils
    import transformers.trainer

    original = accelerate.utils.fsdp_utils.load_fsdp_optimizer
    if getattr(original, "resumes_sharded_fsdp2", False):
        return

    @functools.wraps(original)
    def load_fsdp_optimizer(fsdp_plugin, accelerator, optimizer, model, input_dir, optimizer_index=0, **kwargs):
        from torch.distributed.fsdp.fully_sharded_data_parallel import StateDictType

        if fsdp_plugin.fsdp_version != 2 or fsdp_plugin.state_dict_type != StateDictType.SHARDED_STATE_DICT:
            return original(fsdp_plugin, accelerator, optimizer, model, input_dir, optimizer_index, **kwargs)
        import torch.distributed.checkpoint as dist_cp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        accelerator.wait_for_everyone()
        folder = f"{accelerate.utils.fsdp_utils.OPTIMIZER_NAME}_{optimizer_index}"
        checkpoint = input_dir if folder in input_dir else os.path.join(input_dir, folder)
        inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper steps only when gradients sync
        state = {"optimizer": get_optimizer_state_dict(model, inner)}
        dist_cp.load(state, storage_reader=dist_cp.FileSystemReader(checkpoint))
        set_optimizer_state_dict(model, inner, state["optimizer"])

    load_fsdp_optimizer.resumes_sharded_fsdp2 = True
    for module in (accelerate.utils.fsdp_utils, accelerate.accelerator, transformers.trainer):
        module.load_fsdp_optimizer = load_fsdp_optimizer
