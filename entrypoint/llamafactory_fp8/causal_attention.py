"""SDPA's causal kernel for training under torch.compile.

While compiling, Transformers always builds the full causal mask: the check that would let SDPA use `is_causal`
reads the padding mask's values, which it will not do while tracing. SDPA then runs its masked kernel over every
query-key block, about 3x slower than the causal one: the compiled runs' attention took 37.8 ms a sequence against
12.0 ms eager, the same cuDNN kernels (bench/results/full-batch8/, batch4-defaults/).

Training batches are padded on the right (LLaMA-Factory loads every tokenizer so), and under a causal mask a real
token only sees earlier positions, all real: the padding mask changes no output that a label reads. So while
gradients are on, the plain causal pattern goes to SDPA as `is_causal` and the padding mask is dropped. Every
other pattern (sliding windows, packed sequences, image tokens, a cache) and every pass without gradients
(evaluation, generation, which pads on the left) keeps Transformers' mask.
"""

from __future__ import annotations

import sys

from transformers import TrainerCallback


def _causal_sdpa_mask(*args, **kwargs):
    import torch
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    plain_causal_training = (
        torch.is_grad_enabled()
        and kwargs.get("allow_is_causal_skip", True)
        and kwargs.get("mask_function", causal_mask_function) is causal_mask_function
        and kwargs.get("local_size") is None
        and kwargs.get("q_offset", 0) == 0
        and kwargs.get("kv_offset", 0) == 0
        and kwargs.get("q_length") == kwargs.get("kv_length")
    )
    if plain_causal_training and not args:  # Transformers passes every argument by name
        return None  # sdpa_attention_forward passes is_causal=True for a missing mask
    return sdpa_mask(*args, **kwargs)


def install() -> None:
    from transformers.masking_utils import AttentionMaskInterface

    AttentionMaskInterface.register("sdpa", _causal_sdpa_mask)


def uninstall() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionMaskInterface.register("sdpa", sdpa_mask)


class KeepMaskUnlessRightPadded(TrainerCallback):
    """The guard behind the argument above: a run whose tokenizer pads on the left keeps Transformers' mask. The
    log line says which attention the run got: the fix reaches only models that attend through SDPA."""

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps its tokenizer
        padding_side = getattr(tokenizer, "padding_side", "right")
        if padding_side != "right":
            uninstall()
        if state.is_world_process_zero:
            attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
            if attention != "sdpa":
                said = f"{attention}, with Transformers' own masks"
            elif padding_side == "right":
                said = "SDPA causal kernel for training batches"
            else:
                said = f"Transformers' mask kept: the tokenizer pads on the {padding_side}"
            print(f"attention: {said}", file=sys.stderr, flush=True)
