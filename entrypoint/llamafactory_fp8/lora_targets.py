"""`lora_target` and `additional_target` checked against the model's own module names before its weights load.
PEFT matches each target to the end of a module's name and raises only when no target matches anything, after the
weights have loaded (minutes for an 8B); a target that matches nothing beside one that does is passed over, so
`q_proj,v_porj` would train q_proj alone, and so is a module to save (additional_target) that matches nothing. The
model is built from its config.json on the meta device, which holds no weights."""

from __future__ import annotations

import difflib
import warnings


def lora_target_problem(model_args, finetuning_args) -> str | None:
    """The names in lora_target (or additional_target) that no module of the model ends in, in one line; None where
    all match, and where this cannot tell (`all`, an adapter resumed, LLaMA-Pro's expanded layers, a model
    Transformers' causal-LM classes do not build), so LLaMA-Factory's own handling stands."""
    targets = list(finetuning_args.lora_target)
    if (
        finetuning_args.finetuning_type not in ("lora", "oft")  # OFT reads lora_target too
        or model_args.adapter_name_or_path
        or finetuning_args.use_llama_pro
    ):
        return None
    additional = list(finetuning_args.additional_target or [])
    if targets == ["all"] and not additional:
        return None
    modules = _modules_on_meta(model_args)
    if modules is None:
        return None
    names = [name for name, _ in modules]
    # PEFT's matching: a target module's name ends in ".<target>" (or is it); a module to save, in "<target>"
    unmatched = {
        "lora_target": [t for t in targets if t != "all" and not any(n == t or n.endswith(f".{t}") for n in names)],
        "additional_target": [t for t in additional if not any(n.endswith(t) for n in names)],
    }
    key = next((key for key, missing in unmatched.items() if missing), None)
    if key is None:
        return None
    import torch

    if key == "lora_target":
        kind, wanted = "its linear layers", lambda module: isinstance(module, torch.nn.Linear)
    else:
        kind, wanted = "its modules with weights", lambda module: any(True for _ in module.parameters(recurse=False))
    offered = sorted({name.rsplit(".", 1)[-1] for name, module in modules if name and wanted(module)})
    named = [f"{target}{_nearest(target, offered)}" for target in unmatched[key]]
    alternative = "; or lora_target: all" if key == "lora_target" else ""
    return (
        f"{key}: {', '.join(named)} is the name of no module in {model_args.model_name_or_path} "
        f"({kind}: {', '.join(offered)}{alternative})"
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
