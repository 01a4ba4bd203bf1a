"""FSDP2 checkpoints sharded, the final model whole.

Checkpoints (`fsdp_state_dict_type: SHARDED_STATE_DICT` in configs/accelerate/fsdp2*.yaml): each rank writes its
own shard of the weights and optimizer states through torch.distributed.checkpoint, in parallel, and the resume
reads them back, resharded if the world size changed. FULL_STATE_DICT instead gathers every checkpoint's weights
and optimizer states on rank 0's CPU (an 8B full fine-tune: ~96 GB; a 70B: ~840 GB) and writes the weights twice.

The final model must be whole: with SHARDED_STATE_DICT Transformers' `save_model` writes no weights at all, so the
`output_dir` that LLaMA-Factory's final save fills, and that users load with `from_pretrained`, would hold none.
The callback below switches to FULL_STATE_DICT when training ends, before that save (Accelerate's documented use
of `set_state_dict_type`). A stopped run skips the final save and keeps its sharded checkpoint."""

from __future__ import annotations

from transformers import TrainerCallback


class SaveTheFinalModelWhole(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType

        shared = AcceleratorState._shared_state
        if shared.get("distributed_type") == DistributedType.FSDP and shared.get("fsdp_plugin") is not None:
            shared["fsdp_plugin"].set_state_dict_type("FULL_STATE_DICT")
