"""The causal-attention fix is exact or off, in every LLaMA-Factory stage: each case trains one step through
LLaMA-Factory's own workflow (its dataset processing, collator and trainer) on the demo's tiny Llama, once with
Transformers' mask and once as the trainer runs it (the fix installed, its guard deciding). The loss, every gradient
and every logged metric must agree. Where the guard keeps the mask, a third run with the fix forced on shows what it
would have changed."""

import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from llamafactory_fp8 import causal_attention
from llamafactory_fp8.demo import build_demo_model
from transformers import TrainerCallback

from .conftest import ROOT

WORDS = ("lantern", "river", "mountain", "copper", "window", "garden", "silver", "thunder")
TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("model"), ROOT / "data")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Records of lengths that differ within every batch of four, so that each batch pads."""
    folder = tmp_path_factory.mktemp("data")

    def words(i: int, count: int) -> str:
        return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(count))

    files = {
        "sft": [
            {"instruction": "Repeat the words.", "input": words(i, 2), "output": words(i, 1 + i % 7)} for i in range(16)
        ],
        "pt": [{"text": words(i, 2 + (5 * i) % 11)} for i in range(16)],
        "pairwise": [
            {
                "instruction": words(i, 1 + i % 3),
                "input": "",
                "chosen": words(i, 1 + i % 5),
                "rejected": words(i, 6 - i % 5),
            }
            for i in range(16)
        ],
        "kto": [
            {
                "instruction": words(i, 1 + i % 3),
                "input": "",
                "output": words(i, 1 + (3 * i) % 7),
                "kto_tag": i % 2 == 0,
            }
            for i in range(16)
        ],
    }
    for name, records in files.items():
        (folder / f"{name}.json").write_text(json.dumps(records))
    info = {
        "sft": {"file_name": "sft.json"},
        "pt": {"file_name": "pt.json", "columns": {"prompt": "text"}},
        "pairwise": {
            "file_name": "pairwise.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
        },
        "kto": {
            "file_name": "kto.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "kto_tag": "kto_tag"},
        },
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


@dataclass
class Step:
    """What one training step did: its logged metrics, every gradient, the first training batch's padding mask,
    and, for each SDPA call with gradients on, whether it got a mask."""

    logs: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    attention_mask: torch.Tensor | None = None
    masked_training_calls: list = field(default_factory=list)


class Record(TrainerCallback):
    def __init__(self, step: Step):
        self.step = step

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def first_batch(module, args, kwargs):
            if self.step.attention_mask is None and torch.is_grad_enabled():
                self.step.attention_mask = kwargs.get("attention_mask")

        model.register_forward_pre_hook(first_batch, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.step.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.step.logs:
            self.step.logs = {key: value for key, value in logs.items() if key not in TIMING}


class PadOnTheLeft(TrainerCallback):
    """LLaMA-Factory loads every tokenizer padding on the right; this turns the collator's tokenizer around."""

    def on_train_begin(self, args, state, control, processing_class=None, **kwargs):
        processing_class.padding_side = "left"


STAGES = {
    "sft": dict(stage="sft", dataset="sft"),
    "pt": dict(stage="pt", dataset="pt", packing=False),
    "dpo": dict(stage="dpo", dataset="pairwise"),
    "kto": dict(stage="kto", dataset="kto"),
    "rm": dict(stage="rm", dataset="pairwise"),
}
# (case, LLaMA-Factory keys, callbacks before the guard, what the guard's log line must say)
CASES = [
    ("sft", STAGES["sft"], (), "SDPA causal kernel for training batches (sft"),
    ("sft-packing", dict(STAGES["sft"], packing=True), (), "SDPA causal kernel for training batches (sft"),
    ("pt", STAGES["pt"], (), "SDPA causal kernel for training batches (pt"),
    ("pt-packing", dict(STAGES["pt"], packing=True), (), "SDPA causal kernel for training batches (pt"),
    ("rm", STAGES["rm"], (), "SDPA causal kernel for training batches (rm"),
    ("sft-pad-labels", dict(STAGES["sft"], ignore_pad_token_for_loss=False), (), "mask kept (sft): labels pad"),
    ("sft-neat-packing", dict(STAGES["sft"], neat_packing=True), (), "mask kept (sft): neat_packing"),
    ("sft-left", STAGES["sft"], (PadOnTheLeft,), "mask kept (sft): the tokenizer pads on the left"),
    ("pt-left", STAGES["pt"], (PadOnTheLeft,), "mask kept (pt): the tokenizer pads on the left"),
    ("dpo-sigmoid", STAGES["dpo"], (), "mask kept (dpo): dpo logs logits averaged"),
    ("dpo-sigmoid-pad-labels", dict(STAGES["dpo"], ignore_pad_token_for_loss=False), (), "mask kept (dpo)"),
    ("dpo-orpo", dict(STAGES["dpo"], pref_loss="orpo"), (), "mask kept (dpo)"),
    ("dpo-simpo", dict(STAGES["dpo"], pref_loss="simpo"), (), "mask kept (dpo)"),
    ("kto", STAGES["kto"], (), "mask kept (kto): kto logs logits summed"),
    ("kto-pad-labels", dict(STAGES["kto"], ignore_pad_token_for_loss=False), (), "mask kept (kto)"),
]
EXACT = {"sft", "sft-packing", "pt", "pt-packing", "rm"}
UNPADDED = {"sft-packing", "pt-packing"}  # packed to the cutoff: nothing for the collator to pad
BLOCK_DIAGONAL = {"sft-neat-packing"}  # the collator hands SDPA its own 4D mask, which the fix cannot reach


@pytest.fixture
def sdpa_calls(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        if torch.is_grad_enabled():
            calls.append(kwargs.get("attn_mask") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


def train_one_step(model_dir, dataset_dir, out, keys, callbacks, sdpa_calls) -> Step:
    from llamafactory.train.tuner import run_exp

    step = Step()
    sdpa_calls.clear()
    arguments = dict(
        model_name_or_path=str(model_dir),
        do_train=True,
        finetuning_type="full",
        dataset_dir=str(dataset_dir),
        template="default",
        cutoff_len=48,
        max_samples=16,
        output_dir=str(out),
        overwrite_output_dir=True,
        per_device_train_batch_size=4,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        flash_attn="sdpa",
        preprocessing_num_workers=1,
        dataloader_num_workers=0,
        overwrite_cache=True,
        seed=42,
        **keys,
    )
    run_exp(args=arguments, callbacks=[*(make() for make in callbacks), Record(step)])
    step.masked_training_calls = list(sdpa_calls)
    return step


def assert_same(step: Step, reference: Step) -> None:
    assert step.logs.keys() == reference.logs.keys()
    for key, value in reference.logs.items():
        assert step.logs[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert step.grads.keys() == reference.grads.keys() and step.grads
    for name, grad in reference.grads.items():
        torch.testing.assert_close(step.grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def differs(step: Step, reference: Step) -> bool:
    try:
        assert_same(step, reference)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize(("case", "keys", "before", "said"), CASES, ids=[case[0] for case in CASES])
def test_the_fix_is_exact_or_off(case, keys, before, said, model_dir, dataset_dir, tmp_path, sdpa_calls, capsys):
    causal_attention.uninstall()
    stock = train_one_step(model_dir, dataset_dir, tmp_path / "stock", keys, before, sdpa_calls)
    causal_attention.install()  # as the trainer does before LLaMA-Factory starts
    try:
        capsys.readouterr()
        guarded = train_one_step(
            model_dir,
            dataset_dir,
            tmp_path / "guarded",
            keys,
            (*before, causal_attention.KeepMaskUnlessExact),
            sdpa_calls,
        )
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("attention: ")]
        causal_attention.install()
        forced = train_one_step(model_dir, dataset_dir, tmp_path / "forced", keys, before, sdpa_calls)
    finally:
        causal_attention.uninstall()

    assert_same(guarded, stock)
    if case in BLOCK_DIAGONAL:
        assert stock.attention_mask.dim() == 4
        assert_same(forced, stock)
    else:
        padded = bool((stock.attention_mask == 0).any())
        assert padded == (case not in UNPADDED)
    if case in EXACT:
        assert not any(guarded.masked_training_calls), "the fix ran with the padding mask it should drop"
    elif case not in BLOCK_DIAGONAL:
        assert differs(forced, stock), "the guard kept the mask where dropping it would have changed nothing"
        assert all(guarded.masked_training_calls)
    assert said in line
