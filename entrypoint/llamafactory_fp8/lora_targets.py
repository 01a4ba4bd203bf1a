"""`lora_target` checked against the model's own module names before its weights load. PEFT matches each name to
the end of a module's name and raises only when no name matches anything, after the weights have loaded (minutes for
an 8B); a name that matches nothing beside one that does is passed over, so `q_proj,v_porj` would train q_proj alone.
The model is built from its config.json on the meta device, which holds no weights."""

from __future__ import annotations

import difflib
import warnings


def lora_target_problem(model_args, finetuning_args) -> str | None:
    """The names in lora_target that no module of the model ends in, in one line; None where all match, and where
    this cannot tell (`all`, an adapter resumed, LLaMA-Pro's expanded layers, a model Transformers' causal-LM classes
    do not build), so LLaMA-Factory's own handling stands."""
    targets = list(finetuning_args.lora_target)
    if (
        finetuning_args.finetuning_type not in ("lora", "oft")  # OFT reads lora_target too
        or targets == ["all"]
        or model_args.adapter_name_or_path
        or finetuning_args.use_llama_pro
    ):
        return None
    modules = _modules_on_meta(model_args)
    if modules is None:
        return None
    names = [name for name, _ in modules]
    unmatched = [target for target in targets if not any(n == target or n.endswith(f".{target}") for n in names)]
    if not unmatched:
        return None
    import torch

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, torch.nn.Linear)})
    named = [f"{target}{_nearest(target, linear)}" for target in unmatched]
    return (
        f"lora_target: {', '.join(named)} is the name of no module in {model_args.model_name_or_path} "
        f"(its linear layers: {', '.join(linear)}; or lora_target: all)"
    )


def _nearest(target: str, names: list[str]) -> str:
    close = difflib.get_close_matches(target, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _modules_on_meta(model_args) -> list | None:
    from accelerate import init_empty_weights
    from llamafactory.model.loader import load_config
    from transformers import AutoModelForCausalLM

    try:
        config = load_config(model_args)  # LLaMA-Factory's own: its Hub, revision, token and remote-code keys
        with init_empty_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError):  # not a causal LM Transformers knows: LLaMA-Factory decides
        return None
    return list(model.named_modules())
