"""Know the model before deciding: its shape from config.json, read from a local folder, the Hugging Face cache,
or fetched alone (a few KB) from the Hugging Face Hub or ModelScope, the way LLaMA-Factory will fetch the model.

A gated or missing model is one line and its own exit code here, before anything launches; a Hub that cannot be
reached (or HF_HUB_OFFLINE) leaves the size unknown, and the block says so."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelGated, ModelNotFound

HUB_TIMEOUT_S = 5.0  # for the metadata request: an unreachable Hub costs seconds, not minutes
CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's, beside the adapter's weights


@dataclass(frozen=True)
class ModelFacts:
    """The shape of a decoder-only transformer (Llama, Qwen, Mistral layout; Mixtral- and Qwen-MoE experts)."""

    source: str  # the config.json read
    origin: str  # local folder, Hugging Face cache, Hugging Face Hub, ModelScope
    model_type: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int  # per token: the dense MLP's, or the routed experts' sum for a mixture of experts
    vocab_size: int
    tie_word_embeddings: bool
    num_parameters: int
    quantization: str | None = None  # quantization_config's quant_method: a model shipped quantized
    multimodal: bool = False  # a vision or audio tower beside the language model

    @property
    def billions(self) -> float:
        return self.num_parameters / 1e9

    @property
    def linear_shapes_per_layer(self) -> tuple[tuple[str, int, int], ...]:
        """(name, in, out) of each linear layer of one decoder layer, as LoRA's `lora_target` names them."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
            self.intermediate_size,
        )
        return (
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        )


@dataclass(frozen=True)
class ModelLookup:
    """What is known of the model: its facts, or why its size is unknown."""

    name: str
    facts: ModelFacts | None
    unknown_because: str | None = None


def look_up_model(
    name: str,
    workdir: Path,
    revision: str = "main",
    token: str | None = None,
    cache_dir: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> ModelLookup:
    """A local folder first (as LLaMA-Factory does), then ModelScope where USE_MODELSCOPE_HUB says so, else the
    Hugging Face Hub (HF_ENDPOINT, HF_TOKEN or the YAML's hf_hub_token, HF_HUB_OFFLINE, the YAML's revision)."""
    local = workdir / name
    if (local / CONFIG_FILE).is_file():
        return ModelLookup(name, read_model_facts(str(local)))
    if local.is_dir():
        raise ModelNotFound(f"model folder {local} has no {CONFIG_FILE}: it is not a model LLaMA-Factory can load")
    if names_a_path(name):
        raise ModelNotFound(f"model not found: {name} is not a folder")
    if _enabled(environ.get("USE_MODELSCOPE_HUB")):
        return _from_modelscope(name, revision, cache_dir)
    return _from_hugging_face(name, revision, token or environ.get("HF_TOKEN") or None, cache_dir, environ)


def names_a_path(name: str) -> bool:
    """Whether `name` can only be a folder: a Hub id is `name` or `owner/name`."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def check_adapters(names: tuple[str, ...], workdir: Path) -> None:
    """Each adapter a folder holding PEFT's adapter_config.json, or a Hub id: LLaMA-Factory loads them only once the
    model's weights have."""
    for name in names:
        local = workdir / name
        if local.is_dir() and not (local / ADAPTER_CONFIG_FILE).is_file():
            raise ModelNotFound(
                f"adapter folder {local} has no {ADAPTER_CONFIG_FILE}: adapter_name_or_path names a PEFT adapter"
            )
        if not local.is_dir() and names_a_path(name):
            raise ModelNotFound(f"adapter not found: {name} is not a folder")


def read_model_facts(model: str, origin: str = "local folder") -> ModelFacts | None:
    """The facts of a model folder (or a config.json's own folder); None where it has no config.json."""
    config_path = Path(model) / CONFIG_FILE
    if not config_path.is_file():
        return None
    return facts_from_config(config_path, origin)


def facts_from_config(config_path: Path, origin: str) -> ModelFacts:
    try:
        whole = json.loads(config_path.read_text())
        config = whole.get("text_config", whole)  # multimodal wrappers keep the language model's shape here
        quantization = (whole.get("quantization_config") or {}).get("quant_method")
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return ModelFacts(
            source=str(config_path),
            origin=origin,
            model_type=str(config.get("model_type", "unknown")),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=_active_intermediate_size(config),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            num_parameters=estimate_parameters(config),
            quantization=str(quantization).lower() if quantization else None,
            multimodal=any(key in whole for key in ("vision_config", "audio_config", "visual")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as error:
        raise ModelNotFound(
            f"{config_path} is not a transformer's config.json ({type(error).__name__}: {error})"
        ) from None


def estimate_parameters(config: dict) -> int:
    """Parameters of a decoder-only transformer with gated MLP (Llama, Qwen, Mistral layout), experts counted."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab = int(config["vocab_size"])
    qkv_width = head_dim * (heads + 2 * kv_heads)
    attention = hidden * qkv_width + heads * head_dim * hidden + _attention_biases(config, qkv_width, hidden)
    experts = _experts(config)
    if experts:
        expert = int(config.get("moe_intermediate_size") or config["intermediate_size"])
        shared = int(config.get("shared_expert_intermediate_size") or 0)
        mlp = experts * 3 * hidden * expert + hidden * experts + 3 * hidden * shared
    else:
        mlp = 3 * hidden * int(config.get("intermediate_size", 4 * hidden))
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return layers * (attention + mlp + norms) + embeddings + hidden


def _attention_biases(config: dict, qkv_width: int, hidden: int) -> int:
    """Qwen2 always biases its query, key and value projections; Llama-style models bias all four projections
    where `attention_bias` says so."""
    if config.get("model_type") == "qwen2":
        return qkv_width
    if config.get("attention_bias"):
        return qkv_width + hidden
    return 0


def _experts(config: dict) -> int:
    return int(config.get("num_local_experts") or config.get("num_experts") or 0)


def _active_intermediate_size(config: dict) -> int:
    """The MLP width one token passes through: a mixture of experts routes each token to a few of them."""
    hidden = int(config["hidden_size"])
    if not _experts(config):
        return int(config.get("intermediate_size", 4 * hidden))
    expert = int(config.get("moe_intermediate_size") or config["intermediate_size"])
    per_token = int(config.get("num_experts_per_tok") or 2)
    return per_token * expert + int(config.get("shared_expert_intermediate_size") or 0)


def _from_hugging_face(
    repo_id: str, revision: str, token: str | None, cache_dir: str | None, environ: Mapping[str, str]
) -> ModelLookup:
    """One metadata request without retries first: hf_hub_download alone retries an unreachable Hub with backoff
    for about 20 s before it falls back to the cache. Its answer tells a gated, missing or unreachable model apart;
    then hf_hub_download fetches config.json into the cache, where LLaMA-Factory will find it."""
    import httpx
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = (environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    where = dict(revision=revision, cache_dir=cache_dir, endpoint=endpoint)
    offline = "offline (HF_HUB_OFFLINE)" if _enabled(environ.get("HF_HUB_OFFLINE")) else None
    try:
        if offline is None:
            url = hf_hub_url(repo_id, CONFIG_FILE, revision=revision, endpoint=endpoint)
            get_hf_file_metadata(url, token=token, timeout=HUB_TIMEOUT_S, endpoint=endpoint)
            path = hf_hub_download(repo_id, CONFIG_FILE, token=token, etag_timeout=HUB_TIMEOUT_S, **where)
            return ModelLookup(
                repo_id, facts_from_config(Path(path), f"Hugging Face Hub ({endpoint}, revision {revision})")
            )
    except HFValidationError:
        raise ModelNotFound(
            f"model not found: {repo_id} is neither a local folder nor a Hugging Face model id"
        ) from None
    except GatedRepoError:
        raise _gated(repo_id, endpoint) from None
    except RevisionNotFoundError:
        raise ModelNotFound(
            f"model revision not found: {repo_id} has no revision {revision!r} (model_revision)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFound(
            f"model not found on {endpoint}: {repo_id} (check the id; a private model needs HF_TOKEN with access)"
        ) from None
    except RemoteEntryNotFoundError:
        raise ModelNotFound(f"model {repo_id} has no {CONFIG_FILE} at revision {revision!r}") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise _gated(repo_id, endpoint) from None
        if status == 404:
            raise ModelNotFound(f"model not found on {endpoint}: {repo_id}") from None
        offline = f"offline: {endpoint} answered {status}"
    except (httpx.HTTPError, OSError) as error:  # refused, timed out, reset; a cache folder that cannot be written
        offline = f"offline: {endpoint} could not be reached ({type(error).__name__})"
    try:
        path = hf_hub_download(repo_id, CONFIG_FILE, local_files_only=True, **where)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        if offline.startswith("offline (HF_HUB_OFFLINE)"):  # LLaMA-Factory could not load it either
            raise ModelNotFound(
                f"model {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it first "
                "(or unset HF_HUB_OFFLINE)"
            ) from None
        return ModelLookup(repo_id, None, f"{offline}, and {repo_id}'s {CONFIG_FILE} is not in the Hugging Face cache")
    return ModelLookup(repo_id, facts_from_config(Path(path), f"Hugging Face cache; {offline}"))


def _gated(repo_id: str, endpoint: str) -> ModelGated:
    return ModelGated(
        f"model {repo_id} is gated or private and this token has no access: accept its license at "
        f"{endpoint}/{repo_id} and set HF_TOKEN to a token of that account"
    )


def _from_modelscope(model_id: str, revision: str, cache_dir: str | None) -> ModelLookup:
    try:
        from modelscope.hub.file_download import model_file_download
    except ImportError:
        raise ModelNotFound(
            f"USE_MODELSCOPE_HUB is set but the modelscope package is not installed, so neither this launcher nor "
            f"LLaMA-Factory can fetch {model_id}: pip install 'modelscope>=1.14'"
        ) from None
    try:  # LLaMA-Factory's try_download_model_from_other_hub spells the default revision as ModelScope does
        path = model_file_download(
            model_id, CONFIG_FILE, revision="master" if revision == "main" else revision, cache_dir=cache_dir
        )
    except Exception as error:  # noqa: BLE001 - ModelScope's errors have no common base; its words are kept
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        return ModelLookup(
            model_id, None, f"offline: ModelScope did not give {model_id}'s {CONFIG_FILE} ({first_line})"
        )
    return ModelLookup(model_id, facts_from_config(Path(path), "ModelScope"))


def _enabled(value: str | None) -> bool:
    """LLaMA-Factory's and huggingface_hub's reading of a boolean environment variable."""
    return (value or "").strip().lower() in ("1", "true", "y", "yes", "on")
