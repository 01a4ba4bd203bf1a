"""Read the model's size from its config.json, locally or from the Hugging Face cache, never from the network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFacts:
    source: str
    model_type: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_parameters: int

    @property
    def billions(self) -> float:
        return self.num_parameters / 1e9


def read_model_facts(model: str) -> ModelFacts | None:
    """None when no config.json can be found without downloading (the policy then says so)."""
    config_path = _find_config(model)
    if config_path is None:
        return None
    config = json.loads(config_path.read_text())
    config = config.get("text_config", config)  # multimodal wrappers keep the language model's shape here
    hidden = int(config["hidden_size"])
    return ModelFacts(
        source=str(config_path),
        model_type=str(config.get("model_type", "unknown")),
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
        vocab_size=int(config["vocab_size"]),
        num_parameters=estimate_parameters(config),
    )


def estimate_parameters(config: dict) -> int:
    """Parameters of a decoder-only transformer with gated MLP (Llama, Qwen, Mistral layout)."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or hidden // heads)
    intermediate = int(config.get("intermediate_size", 4 * hidden))
    vocab = int(config["vocab_size"])
    attention = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp = 3 * hidden * intermediate
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return layers * (attention + mlp + norms) + embeddings + hidden


def _find_config(model: str) -> Path | None:
    local = Path(model) / "config.json"
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id=model, filename="config.json")
    except ValueError:  # not a repo id either
        return None
    return Path(cached) if isinstance(cached, str) else None
