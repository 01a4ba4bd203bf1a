"""Build the built-in demo's model offline: a BPE tokenizer trained on the shipped demo data and a tiny
random-init Llama. Nothing is downloaded, so the demo and the tests run on a machine with no network."""

from __future__ import annotations

import json
from pathlib import Path

DEMO_MODEL_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
DEMO_VOCAB_SIZE = 512
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
# The markers of the chat templates LLaMA-Factory's own examples use (qwen3, llama3), so that the demo model trains
# under them unchanged: a template whose markers the vocabulary lacks adds them, and the embeddings no longer fit.
CHAT_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def train_bpe_tokenizer(texts, vocab_size: int, chat_tokens: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained on `texts`, with the special tokens LLaMA-Factory needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS.values(), *chat_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, additional_special_tokens=list(chat_tokens), **SPECIAL_TOKENS
    )


def build_demo_model(destination: Path, data_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = train_bpe_tokenizer(_demo_texts(data_dir), DEMO_VOCAB_SIZE, CHAT_TOKENS)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        **DEMO_MODEL_SHAPE,
    )
    destination.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(destination)
    fast.save_pretrained(destination)
    return destination


def _demo_texts(data_dir: Path):
    for path in sorted((data_dir / "demo").glob("*.json")):
        for record in json.loads(path.read_text()):
            yield " ".join(str(value) for value in record.values())
