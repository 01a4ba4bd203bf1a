"""SDPA's causal kernel for training under torch.compile, where it is exact, and Transformers' mask elsewhere.

While compiling, Transformers always builds the full causal mask: the check that would let SDPA use `is_causal`
reads the padding mask's values, which it will not do while tracing. SDPA then runs its masked kernel over every
query-key block, about 3x slower than the causal one (bench/results/full-batch8/ against batch4-defaults/).

Dropping the padding mask changes the outputs at padded positions only, and only where padding comes after the real
tokens: a real token then sees earlier positions alone, all real. So the fix is exact for a run whose batches pad
on the right and whose loss, gradients and logged metrics read no padded position: labels that pad with -100 and a
trainer that logs nothing averaged over padding. `KeepMaskUnlessExact` checks that at train start from the
trainer's own collator and model, and keeps Transformers' mask for anything else. Per call, only the plain causal
pattern with gradients on is changed: sliding windows, packed sequences, image tokens, a cache, and every pass
without gradients (evaluation, generation) keep the mask.
"""

from __future__ import annotations

import sys

from transformers import TrainerCallback

IGNORE_INDEX = -100  # the label Transformers' and LLaMA-Factory's losses skip


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


def stage_and_obstacle(collator, model) -> tuple[str, str | None]:
    """The stage a training collator serves, and why dropping the padding mask would change that run's training
    (None where it changes nothing). Only collators checked against the stock mask (tests/) may keep the fix."""
    from llamafactory.data.collator import (
        KTODataCollatorWithPadding,
        PairwiseDataCollatorWithPadding,
        SFTDataCollatorWith4DAttentionMask,
    )
    from transformers import DataCollatorForLanguageModeling

    collator = getattr(collator, "data_collator", collator)  # the Trainer's RemoveColumnsCollator wraps it
    kind = type(collator)
    if kind is KTODataCollatorWithPadding:
        return "kto", "kto logs logits summed over padded positions"
    if kind is PairwiseDataCollatorWithPadding and not hasattr(model, "v_head"):
        return "dpo", "dpo logs logits averaged over padded positions"
    stage = {
        SFTDataCollatorWith4DAttentionMask: "sft",
        DataCollatorForLanguageModeling: "pt",
        PairwiseDataCollatorWithPadding: "rm",  # the reward is read at each sequence's last real token
    }.get(kind)
    if stage is None:
        return "unknown", f"{kind.__name__} is not a collator the fix was checked with"
    padding_side = getattr(collator.tokenizer, "padding_side", None)
    if padding_side != "right":
        return stage, f"the tokenizer pads on the {padding_side}"
    if getattr(collator, "label_pad_token_id", IGNORE_INDEX) != IGNORE_INDEX:
        return stage, "labels pad with the pad token (ignore_pad_token_for_loss: false), so the loss reads padding"
    if getattr(collator, "block_diag_attn", False):
        return stage, "neat_packing's block-diagonal mask"
    return stage, None


class KeepMaskUnlessExact(TrainerCallback):
    """The guard behind the argument above, at train start: a run whose collator does not meet it keeps
    Transformers' mask. The log line says which case applied: the fix reaches only models that attend through
    SDPA."""

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        stage, obstacle = stage_and_obstacle(getattr(train_dataloader, "collate_fn", None), model)
        if obstacle is not None:
            uninstall()
        if state.is_world_process_zero:
            attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
            if attention != "sdpa":
                said = f"{attention}, with Transformers' own masks"
            elif obstacle is None:
                said = f"SDPA causal kernel for training batches ({stage}: right padding, labels pad with -100)"
            else:
                said = f"Transformers' mask kept ({stage}): {obstacle}"
            print(f"attention: {said}", file=sys.stderr, flush=True)


KeepMaskUnlessRightPadded = KeepMaskUnlessExact  # the name trainer.py installs
