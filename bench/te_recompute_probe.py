"""Does a Transformer Engine run with LLaMA-Factory's gradient checkpointing compute its backward in FP8?

On the GPU machine, once bench/transformer_engine.sh has installed TE: a small Llama, converted by Accelerate's own
converter and run under TE's FP8 autocast as Accelerate wraps the forward, prepared by LLaMA-Factory's own training
preparation; one forward and backward from the same weights, without checkpointing (the reference), with
LLaMA-Factory's checkpointing through torch's checkpoint, and through TE's (the launcher's runtime patch,
`recompute_te_layers_in_fp8`), plus BF16 with no FP8 at all. Prints how far each run's weight gradients are from
the reference's: a recompute in FP8 gives the reference's gradients, one that fell back to BF16 does not.
    python3 bench/te_recompute_probe.py
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import transformer_engine.pytorch as te
from accelerate.utils.transformer_engine import convert_model
from llamafactory.model.model_utils import checkpointing
from llamafactory_fp8.runtime_patches import recompute_te_layers_in_fp8
from transformer_engine.common.recipe import DelayedScaling
from transformers import LlamaConfig, LlamaForCausalLM

SHAPE = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8, vocab_size=1024)


def fresh_model() -> torch.nn.Module:
    """The same weights every time, with TE's layers where Accelerate puts them for fp8_backend: te."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).to("cuda", torch.bfloat16)
    with torch.no_grad():
        convert_model(model)
    return model


def gradients(tokens: torch.Tensor, fp8: bool, checkpointed: bool) -> dict[str, torch.Tensor]:
    """One forward and backward of a fresh model, checkpointed the way LLaMA-Factory does by default."""
    model = fresh_model()
    if checkpointed:
        switches = dict(upcast_layernorm=False, upcast_lmhead_output=False, use_unsloth_gc=False)
        args = SimpleNamespace(**switches, disable_gradient_checkpointing=False, use_reentrant_gc=True)
        checkpointing.prepare_model_for_training(model, args)
    model.train()
    with te.fp8_autocast(enabled=fp8, fp8_recipe=DelayedScaling()):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    return {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None and p.ndim == 2}


def main() -> None:
    tokens = torch.randint(0, SHAPE["vocab_size"], (4, 256), device="cuda")
    reference = gradients(tokens, fp8=True, checkpointed=False)
    runs = {"BF16, no FP8 at all": gradients(tokens, fp8=False, checkpointed=False)}
    runs["FP8, torch's checkpoint (unpatched)"] = gradients(tokens, fp8=True, checkpointed=True)
    os.environ["ACCELERATE_FP8_BACKEND"] = "TE"
    recompute_te_layers_in_fp8()
    runs["FP8, TE's checkpoint (the launcher's patch)"] = gradients(tokens, fp8=True, checkpointed=True)
    print("| run | largest relative difference of a weight's gradient from FP8 without checkpointing |")
    print("|---|---|")
    for label, grads in runs.items():
        worst = max((grads[name] - ref).norm().item() / ref.norm().item() for name, ref in reference.items())
        print(f"| {label} | {worst:.2e} |")


if __name__ == "__main__":
    main()
