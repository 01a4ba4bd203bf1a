"""Probe for the sharded issue: compile each decoder layer's own forward, inside FSDP2's hooks and the checkpoint.

Under FSDP2 with checkpointing, Accelerate's whole-model compile breaks its graph at FSDP2's hooks (dynamo-disabled),
and torch.utils.checkpoint, reached from eager code, runs every decoder layer uncompiled (rehearsal-8b-profile: no
compiled kernel). Added to a run as LLAMAFACTORY_FP8_CALLBACKS=bench.compile_layers:CompileLayers. Kept because
results/rehearsal-8b-compile-layers ran with it; the product's own form is entrypoint/llamafactory_fp8/fsdp_compile.py.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback


class CompileLayers(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        layers = [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]
        for layer in layers:
            layer.forward = torch.compile(layer.forward)
        print(f"compile_layers: {len(layers)} decoder layers' forward compiled", flush=True)
