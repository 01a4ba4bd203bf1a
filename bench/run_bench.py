"""BF16 and FP8 side by side through the product's real path (llamafactory-fp8 -> accelerate launch ->
LLaMA-Factory), on model shapes from bench/models/*/config.json with random weights.

Each run trains the same data, sequence length, batch, seed, attention and compile setting; only what the case
names differs. Per run it records steady-state tokens/s (warm-up steps excluded), peak GPU memory, the loss at fixed
steps, how many linear layers ran in FP8, the LLaMA-Factory keys and model shape it ran with (so a memory model can
be checked against it), and, where asked, a per-step GPU time breakdown from torch.profiler. It prints a table of
ratios last and writes JSON and Markdown after every run.

    python bench/run_bench.py --plan smoke --out results-dir
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / "models"
BENCH_YAML = ROOT / "bench" / "configs" / "pt.yaml"
FP8_LAYERS = re.compile(r"FP8 active: (\d+) of (\d+) linear layers")
PARAMETERS = re.compile(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)")
LORA_ALL = ("lora_target=all",)
# How a run's name spells the extra keys that tell cases apart (other extra keys stay out of the name).
NAME_KEYS = {"lora_rank": "r", "quantization_bit": "int", "freeze_trainable_layers": "top"}


@dataclass(frozen=True)
class Case:
    shape: str
    layers: int | None  # truncated depth (same per-layer shapes); None keeps the model's own
    finetuning: str  # full | lora | freeze
    precision: str  # bf16 | fp8
    compile: bool
    steps: int = 40
    warmup_steps: int = 10
    batch: int = 4
    seq: int = 2048
    extra: tuple[str, ...] = ()  # further LLaMA-Factory keys, key=value
    backend: str = "torchao"  # the FP8 backend; ignored for bf16
    repeat: int = 0  # repeated runs of one case in one call are told apart by this
    grad_accum: int = 1
    grad_ckpt: bool = False
    recipe: str | None = None  # LLAMAFACTORY_FP8_RECIPE for the trainer (fp8 only); None is the product's default
    profile_steps: int = 0  # steps profiled after the timed ones; the run ends after them, unsaved
    memory_only: bool = False  # run beside other memory-only cases: its peak memory counts, its speed does not
    label: str = ""  # appended to the name, e.g. "llamafactory-defaults"
    expected_s: int = 120  # rough wall time, to skip a case that cannot finish before the deadline

    @property
    def family(self) -> str:
        """What runs compared as 'the same batch' share: shape, depth, fine-tuning, batch and sequence."""
        depth = f"{self.layers}L" if self.layers else "full-depth"
        accumulation = f"x{self.grad_accum}" if self.grad_accum > 1 else ""
        label = f"{self.shape}-{depth}-{self.finetuning}-b{self.batch}{accumulation}x{self.seq}"
        return label + (f"-r{self.repeat}" if self.repeat else "")

    @property
    def pair(self) -> str:
        """What an FP8 run and its BF16 baselines share: the family and gradient checkpointing."""
        return self.family + ("-ckpt" if self.grad_ckpt else "")

    @property
    def name(self) -> str:
        precision = "fp8-te" if self.precision == "fp8" and self.backend == "te" else self.precision
        keys = dict(item.split("=", 1) for item in self.extra)
        parts = [self.pair, precision, self.recipe, "compiled" if self.compile else "eager", self.label]
        parts += [f"{short}{keys[key]}" for key, short in NAME_KEYS.items() if key in keys]
        return "-".join(part for part in parts if part)

    @property
    def max_steps(self) -> int:
        return self.steps + self.profile_steps


@dataclass
class Result:
    case: Case
    exit_code: int
    tokens_per_s: float | None = None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    losses: dict[int, float] = field(default_factory=dict)
    fp8_layers: tuple[int, int] | None = None
    wall_s: float = 0.0
    error: str | None = None
    training: dict = field(default_factory=dict)  # the LLaMA-Factory keys this run trained with
    model: dict = field(default_factory=dict)  # the model's shape and parameter counts
    breakdown: dict | None = None  # per-step GPU time by kernel group, from the profiled steps


def pairs(shape, layers, finetuning, steps=40, bf16_eager=False, batch=4, extra=(), repeat=0, **options):
    cases = [
        Case(shape, layers, finetuning, p, True, steps, batch=batch, extra=extra, repeat=repeat, **options)
        for p in ("bf16", "fp8")
    ]
    if bf16_eager:
        cases.insert(
            0, Case(shape, layers, finetuning, "bf16", False, steps, batch=batch, extra=extra, repeat=repeat, **options)
        )
    return cases


def transformer_engine_side_by_side(shape, layers, steps=30):
    """TE runs eager (its delayed scaling refuses torch.compile): compare it with BF16 both ways and with torchao."""
    eager = [
        Case(shape, layers, "full", "bf16", False, steps),
        Case(shape, layers, "full", "fp8", False, steps, backend="te"),
    ]
    return eager + pairs(shape, layers, "full", steps=steps)


# Full fine-tuning of the 8B at full depth on one H200: AdamW states in float32 (LLaMA-Factory upcasts trainable
# weights) take 120 GiB, so one sequence of 2048 per optimizer step. With four micro-batches per step, both compiled
# runs ran out of memory in the second step's forward (136-137 GiB allocated, results/full-depth-ga4-oom/): the
# float32 gradients are held while the compiled forward keeps about a BF16 copy of the weights' size.
FULL_8B = dict(shape="llama-3.1-8b", layers=None, finetuning="full", batch=1, steps=30)


def full_depth_8b():
    """Compiled BF16 against the product's FP8 (torchao tensorwise, compiled), each profiled after its timed steps,
    then LLaMA-Factory's defaults (BF16, eager, gradient checkpointing)."""
    compiled = pairs(**FULL_8B, profile_steps=2, expected_s=150)
    defaults = Case(
        **FULL_8B,
        precision="bf16",
        compile=False,
        grad_ckpt=True,
        warmup_steps=5,
        profile_steps=1,
        extra=("flash_attn=auto",),
        label="llamafactory-defaults",
        expected_s=60,
    )
    return [compiled[0], replace(compiled[1], expected_s=240), defaults]


def full_depth_200(shape: str, profile_steps: int):
    """Compiled BF16 against the product's FP8 at full depth for 200 steps on real text: the speed pair again and
    the loss at step 200, profiled for `profile_steps` after the timed ones."""
    options = dict(FULL_8B, shape=shape, steps=200, profile_steps=profile_steps)
    return [
        Case(**options, precision="bf16", compile=True, expected_s=200),
        Case(**options, precision="fp8", compile=True, expected_s=330),
    ]


def full_depth_recipes():
    """torchao's other scalings at the 8B's full depth, beside compiled BF16 and the default tensorwise."""
    return [Case(**FULL_8B, precision="bf16", compile=True, expected_s=150)] + [
        Case(**FULL_8B, precision="fp8", compile=True, recipe=recipe, expected_s=240)
        for recipe in ("rowwise", "tensorwise-pow2")
    ]


# Eight sequences per micro-batch with gradient checkpointing (LLaMA-Factory's default), so that the AdamW step and
# the per-step weight casts are shared by 8x the tokens. The peak stays the optimizer step's (memory.py's estimate:
# ~127 GiB at batch 1 or 8).
FULL_8B_BATCH8 = dict(FULL_8B, batch=8, grad_ckpt=True, steps=20, warmup_steps=6)


def full_depth_batch8():
    """Compiled BF16, the product's FP8, and LLaMA-Factory's defaults at FULL_8B_BATCH8, profiled."""
    options = dict(FULL_8B_BATCH8, profile_steps=1)
    defaults = Case(
        **dict(options, steps=10, warmup_steps=4),
        precision="bf16",
        compile=False,
        extra=("flash_attn=auto",),
        label="llamafactory-defaults",
        expected_s=120,
    )
    return [
        Case(**options, precision="bf16", compile=True, expected_s=150),
        Case(**options, precision="fp8", compile=True, expected_s=180),
        defaults,
    ]


def full_depth_batch8_repeat(
    shape: str = "llama-3.1-8b", recipes: tuple[str | None, ...] = (None,), repeat: int = 0, profile_steps: int = 0
):
    """full_depth_batch8's compiled pair again (another machine, another model, or a repeat), with torchao's other
    scalings beside the default tensorwise where `recipes` names them."""
    options = dict(FULL_8B_BATCH8, shape=shape, expected_s=120, repeat=repeat, profile_steps=profile_steps)
    return [Case(**options, precision="bf16", compile=True)] + [
        Case(**options, precision="fp8", compile=True, recipe=recipe) for recipe in recipes
    ]


# LoRA r16 on every linear layer of the 8B at full depth, two sequences of 2048: without gradient checkpointing
# this fits an H100 on both sides (the memory model's estimate: ~47 GiB).
LORA_8B = dict(shape="llama-3.1-8b", layers=None, finetuning="lora", batch=2, extra=(*LORA_ALL, "lora_rank=16"))


def lora_8b(grad_ckpt: bool):
    """BF16 against FP8 on the frozen base layers only (lora-base) and the product's default FP8 (every linear
    layer but the first and last, adapters included). Profiled, to count the GEMMs per step."""
    options = dict(LORA_8B, steps=30, profile_steps=2, grad_ckpt=grad_ckpt, expected_s=150)
    return [
        Case(**options, precision="bf16", compile=True),
        Case(**options, precision="fp8", compile=True, recipe="lora-base"),
        Case(**options, precision="fp8", compile=True),
    ]


def lora_8b_batch8():
    """LoRA at eight sequences per step, no checkpointing (~104 GiB by the two-sequence runs, so an H200): the
    launch gap that held lora-base to 1.085x at two sequences is shared by 4x the GPU work."""
    options = dict(LORA_8B, batch=8, steps=20, warmup_steps=6, profile_steps=1, expected_s=200)
    return [
        Case(**options, precision="bf16", compile=True),
        Case(**options, precision="fp8", compile=True, recipe="lora-base"),
    ]


def memory_points():
    """Peak memory for issue 11's memory model: LoRA at three ranks, freeze, QLoRA, gradient checkpointing on and
    off, batch 1, 2 and 4. BF16 eager (what the product runs when it keeps BF16); several at a time."""
    one = dict(
        shape="llama-3.2-1b",
        layers=None,
        compile=False,
        precision="bf16",
        steps=5,
        warmup_steps=0,
        profile_steps=1,
        memory_only=True,
    )
    lora = dict(one, finetuning="lora", grad_ckpt=True)
    return [
        Case(**one, finetuning="full", batch=4, grad_ckpt=False),
        Case(**lora, extra=(*LORA_ALL, "lora_rank=8")),
        Case(**lora, extra=(*LORA_ALL, "lora_rank=64")),
        Case(**one, finetuning="full", batch=4, grad_ckpt=True),
        Case(**dict(lora, grad_ckpt=False), extra=(*LORA_ALL, "lora_rank=16")),
        Case(**one, finetuning="freeze", grad_ckpt=True, extra=("freeze_trainable_layers=2",)),
        Case(**one, finetuning="full", batch=2, grad_ckpt=True),
        Case(**lora, extra=(*LORA_ALL, "lora_rank=16", "quantization_bit=4")),
        Case(**one, finetuning="full", batch=1, grad_ckpt=True),
        Case(**dict(lora, shape="qwen2.5-3b"), extra=(*LORA_ALL, "lora_rank=16")),
    ]


PLANS = {
    "smoke": pairs("llama-3.2-1b", 4, "full", steps=20),
    "small": pairs("llama-3.2-1b", None, "full", bf16_eager=True) + pairs("qwen2.5-3b", 12, "full"),
    "large": pairs("qwen2.5-7b", 6, "full", steps=30) + pairs("llama-3.1-8b", 8, "full", steps=30, batch=2),
    "lora": pairs("llama-3.1-8b", None, "lora", steps=30, batch=2, extra=(*LORA_ALL, "lora_rank=16"), grad_ckpt=True),
    "parity": pairs("llama-3.2-1b", None, "full", steps=200),
    # the smallest measured pair again, twice, the second in the other order, to see the noise
    "repeat": pairs("llama-3.2-1b", 4, "full", steps=20, repeat=1)
    + pairs("llama-3.2-1b", 4, "full", steps=20, repeat=2)[::-1],
    "te": transformer_engine_side_by_side("qwen2.5-7b", 6),
    "te-eager": transformer_engine_side_by_side("qwen2.5-7b", 6)[:2],  # the two eager runs alone, to retry TE
    "full-depth": full_depth_8b(),
    "full-depth-200": full_depth_200("llama-3.1-8b", profile_steps=0),  # profiled in full-depth already
    "qwen-depth": full_depth_200("qwen2.5-7b", profile_steps=2),
    "recipes": full_depth_recipes(),
    "lora-depth": lora_8b(grad_ckpt=False),
    "lora-ckpt": lora_8b(grad_ckpt=True),
    "lora-default": lora_8b(grad_ckpt=False)[
        2:
    ],  # the product's default FP8 alone: its compile outlasts a call beside the others
    "full-batch8": full_depth_batch8(),
    "recipes-batch8": full_depth_batch8_repeat(recipes=(None, "rowwise", "tensorwise-pow2"), repeat=1),
    "qwen-batch8": full_depth_batch8_repeat("qwen2.5-7b"),
    "pow2-batch8": full_depth_batch8_repeat(recipes=("tensorwise-pow2", "rowwise-gw-hp"), repeat=2),
    # the power-of-2 FP8 run alone again, short, to fit the session's last device minutes
    "pow2-repeat": [
        replace(
            full_depth_batch8_repeat(recipes=("tensorwise-pow2",), repeat=3)[1], steps=12, warmup_steps=4, expected_s=90
        )
    ],
    "lora-batch8": lora_8b_batch8(),
    # after the trainer's causal-attention fix (entrypoint/llamafactory_fp8/causal_attention.py): profiled
    "causal-batch8": full_depth_batch8_repeat(recipes=(None, "tensorwise-pow2"), profile_steps=1),
    "batch8-defaults": full_depth_batch8()[2:],  # ran out of GPU memory: results/batch8-defaults-oom/
    "batch4-defaults": [replace(full_depth_batch8()[2], batch=4)],  # the largest power-of-2 batch the defaults fit
    "memory": memory_points(),
}


def build_corpus(work: Path, megabytes: float) -> Path:
    """Real text that ships with Python itself: the standard library's source, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(errors="replace")
        for start in range(0, len(text), 4000):
            chunks.append({"text": text[start : start + 4000]})
            size += len(chunks[-1]["text"])
        if size > megabytes * 1e6:
            break
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "corpus.json").write_text(json.dumps(chunks))
    (data / "dataset_info.json").write_text(
        json.dumps({"bench_corpus": {"file_name": "corpus.json", "columns": {"prompt": "text"}}})
    )
    return data


def build_tokenizer(work: Path, data: Path) -> Path:
    out = work / "tokenizer"
    if (out / "tokenizer.json").exists():
        return out  # kept from an earlier call (--keep-work): the models saved beside it use it
    from llamafactory_fp8.demo import train_bpe_tokenizer

    texts = (chunk["text"] for chunk in json.loads((data / "corpus.json").read_text()))
    train_bpe_tokenizer(texts, vocab_size=32000).save_pretrained(out)
    return out


def model_dir(work: Path, shape: str, layers: int | None) -> Path:
    return work / "models" / f"{shape}-{layers or 'full'}"


def build_model(work: Path, shape: str, layers: int | None, tokenizer_dir: Path) -> Path:
    """In a child process, so that this one never holds a CUDA context the runs would lose memory to."""
    out = model_dir(work, shape, layers)
    if not (out / "config.json").exists():
        child = multiprocessing.get_context("spawn").Process(
            target=_save_random_model, args=(out, shape, layers, tokenizer_dir)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"building {out.name} failed (exit {child.exitcode})")
    return out


def _save_random_model(out: Path, shape: str, layers: int | None, tokenizer_dir: Path) -> None:
    """Random weights in the shape of the real model's config.json, saved where LLaMA-Factory loads them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.for_model(**model_config(shape, layers))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)


def model_config(shape: str, layers: int | None) -> dict:
    values = json.loads((MODELS / shape / "config.json").read_text())
    if layers:
        values["num_hidden_layers"] = layers
        values.pop("layer_types", None)  # derived from the depth; Qwen2 rebuilds it
    return values


def model_facts(shape: str, layers: int | None) -> dict:
    """The shape a memory model needs, from the config the run's model was built from."""
    from llamafactory_fp8.model_facts import estimate_parameters

    config = model_config(shape, layers)
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "tie_word_embeddings",
    )
    return {**{key: config.get(key) for key in keys}, "parameters_estimated": estimate_parameters(config)}


def training_keys(case: Case, model: Path, data: Path, output_dir: Path) -> dict[str, str]:
    """The key=value overrides this case passes to `llamafactory-fp8 train` (the launcher adds the precision's keys)."""
    keys = {
        "model_name_or_path": str(model),
        "output_dir": str(output_dir),
        "dataset_dir": str(data),
        "finetuning_type": case.finetuning,
        "max_steps": str(case.max_steps),
        "per_device_train_batch_size": str(case.batch),
        "gradient_accumulation_steps": str(case.grad_accum),
        "cutoff_len": str(case.seq),
        "torch_compile": "true" if case.compile else "false",
        "disable_gradient_checkpointing": "false" if case.grad_ckpt else "true",
    }
    keys.update(item.split("=", 1) for item in case.extra)
    return keys


def recorded_training(case: Case, keys: dict[str, str]) -> dict:
    """The bench YAML with the case's keys on top, typed, and the precision: everything the run trained with that
    a memory estimate needs, in LLaMA-Factory's own names."""
    values = {**yaml.safe_load(BENCH_YAML.read_text()), **{key: yaml.safe_load(value) for key, value in keys.items()}}
    for key in ("model_name_or_path", "output_dir", "dataset_dir"):
        values.pop(key)
    values["fp8"] = case.precision == "fp8"
    if values["fp8"]:
        values["fp8_backend"] = case.backend
        values["fp8_recipe"] = case.recipe or "default"
    return values


def run_case(case: Case, model: Path, data: Path, work: Path, log_dir: Path, timeout_s: float | None) -> Result:
    output_dir = work / "runs" / case.name
    state_dir = work / "state" / case.name  # the launcher's stop files and run record, one set per run
    profile_dir = work / "profiles" / case.name
    keys = training_keys(case, model, data, output_dir)
    args = [
        # the bench measures what each case takes on one GPU: the launcher's estimate must not refuse a case, nor move
        # it to CPU offload (as it did in results/batch8-offloaded/)
        sys.executable,
        "-m",
        "llamafactory_fp8",
        "train",
        str(BENCH_YAML),
        f"--{case.precision}",
        "--no-memory-check",
        "--strategy",
        "ddp",
        *(("--backend", case.backend) if case.precision == "fp8" else ()),
        *(f"{key}={value}" for key, value in keys.items()),
    ]
    env = {
        **os.environ,
        "RECORD_VRAM": "1",
        "LLAMAFACTORY_FP8_STATE_DIR": str(state_dir),
        "HF_DATASETS_CACHE": str(work / "datasets" / case.name),
    }
    if case.recipe:
        env["LLAMAFACTORY_FP8_RECIPE"] = case.recipe
    if case.profile_steps:
        env["LLAMAFACTORY_FP8_PROFILE"] = f"{case.steps + 1}-{case.max_steps}:{profile_dir}"
    result = Result(case, -1, training=recorded_training(case, keys), model=model_facts(case.shape, case.layers))
    started = time.time()
    try:
        completed = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
        result.exit_code, log = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as expired:
        stop_trainer(state_dir)
        log = (
            _text(expired.stdout)
            + _text(expired.stderr)
            + f"\nrun_bench: stopped at the deadline, after {timeout_s:.0f} s\n"
        )
        result.error = "stopped at the deadline"
    result.wall_s = round(time.time() - started, 1)
    (log_dir / f"{case.name}.log").write_text(log)
    read_outcome(result, log, output_dir)
    if (profile_dir / "profile.json").exists():
        profile = json.loads((profile_dir / "profile.json").read_text())
        (log_dir / f"{case.name}.profile.json").write_text(json.dumps(profile, indent=1))
        result.breakdown = breakdown(profile)
    return result


def read_outcome(result: Result, log: str, output_dir: Path) -> None:
    """Speed, memory, loss and layer counts from LLaMA-Factory's log records, also for a run stopped early."""
    if result.exit_code not in (0, -1):
        result.error = next((line for line in reversed(log.splitlines()) if "Error" in line), log[-300:])
    log_file = output_dir / "trainer_log.jsonl"
    records = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    timed = [r for r in records if r.get("current_steps", 0) <= result.case.steps]
    result.tokens_per_s = steady_tokens_per_s(timed, result.case.warmup_steps)
    result.peak_allocated_gib = max((r["vram_allocated"] for r in records if "vram_allocated" in r), default=None)
    result.peak_reserved_gib = max((r["vram_reserved"] for r in records if "vram_reserved" in r), default=None)
    result.losses = {r["current_steps"]: round(r["loss"], 4) for r in records if "loss" in r}
    found = FP8_LAYERS.search(log)
    result.fp8_layers = (int(found[1]), int(found[2])) if found else None
    counted = PARAMETERS.search(log)
    if counted:
        result.model["trainable_parameters"], result.model["parameters"] = (
            int(n.replace(",", "")) for n in counted.groups()
        )


def stop_trainer(state_dir: Path) -> None:
    """The trainer runs in its own session (the launcher starts it so), so ending the launcher leaves it on the
    GPU: end its process group, by the id the launcher recorded."""
    try:
        pid = json.loads((state_dir / "run.json").read_text())["trainer_pid"]
        os.killpg(pid, signal.SIGKILL)
    except (OSError, KeyError, ValueError):
        pass


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def steady_tokens_per_s(records: list[dict], warmup_steps: int) -> float | None:
    """LLaMA-Factory logs cumulative tokens and cumulative throughput; their ratio is the elapsed time, so the
    rate between the first log after warm-up and the last excludes compilation and warm-up."""
    timed = [
        (r["current_steps"], r["total_tokens"], r["total_tokens"] / r["throughput"])
        for r in records
        if r.get("throughput")
    ]
    after = [t for t in timed if t[0] >= warmup_steps]
    if len(after) < 2:
        return None
    (_, tokens0, time0), (_, tokens1, time1) = after[0], after[-1]
    return (tokens1 - tokens0) / (time1 - time0)


# Kernel groups for the per-step breakdown, first match wins. Names are what CUPTI reports: cuBLAS/cuBLASLt GEMMs
# (nvjet_sm90_tst_* in BF16; nvjet_sm90_qqtst_*/qrtst_* with FP8 operands), cuDNN attention, ATen kernels, and
# Inductor's Triton kernels, named after the ops they fuse. Attention comes before GEMMs (cuDNN's attention kernels
# carry GEMM words); the optimizer before FP8 (its multi-tensor kernels include the gradient-norm clipping); FP8
# casts before norms (Inductor fuses a norm with the cast of its output: that time counts as casting); a kernel
# that only converts dtypes is the per-step cast of the float32 master weights to BF16 (or of activations).
KERNEL_GROUPS = (
    ("attention", r"flash|fmha|sdpa|attention"),
    ("gemm", r"gemm|nvjet|cutlass|xmma|cublas|splitk"),
    ("optimizer + grad clipping", r"multi_tensor_apply|adam|foreach"),
    ("fp8 cast/amax/scale", r"amax|abs_max|float8|fp8|e4m3|e5m2|reciprocal|clamp|scaled_mm"),
    ("dtype casts (fp32 weights to bf16)", r"^triton_poi_fused__to_copy(_t)?_\d+$|bfloat16_copy|direct_copy"),
    ("norm", r"rsqrt|norm|rms|meanops|pow_tensor"),
    ("loss (vocab softmax)", r"softmax|nll_loss|cross_entropy|logsumexp"),
    ("elementwise/activation", r"elementwise|triton_|silu|mul|add|copy|cat|fill|where|neg|sigmoid|index|embedding"),
)
TOP_KERNELS = 15  # per profiled run in the report; the raw profile beside it has every kernel
FP8_GEMM = re.compile(r"e4m3|e5m2|f8|fp8|nvjet_sm\d+_[qr][qr]")


def kernel_group(name: str) -> str:
    lowered = name.lower()
    return next((group for group, pattern in KERNEL_GROUPS if re.search(pattern, lowered)), "other")


def breakdown(profile: dict) -> dict:
    """Milliseconds per optimizer step by kernel group, the GEMM calls per step split BF16/FP8, and the gap between
    the profiled wall time and the kernels' (launch overhead, host work, synchronisation)."""
    steps = profile["steps"]
    groups: dict[str, float] = {}
    gemm_calls = {"bf16": 0, "fp8": 0}
    for kernel in profile["kernels"]:
        group = kernel_group(kernel["name"])
        groups[group] = groups.get(group, 0.0) + kernel["total_us"] / 1000 / steps
        if group == "gemm":
            gemm_calls["fp8" if FP8_GEMM.search(kernel["name"].lower()) else "bf16"] += kernel["calls"]
    kernels_ms = sum(groups.values())
    wall_ms = profile["wall_s"] * 1000 / steps
    return {
        "wall_ms_per_step": round(wall_ms, 1),
        "kernel_ms_per_step": round(kernels_ms, 1),
        "gap_ms_per_step": round(wall_ms - kernels_ms, 1),
        "ms_per_step": {group: round(ms, 2) for group, ms in sorted(groups.items(), key=lambda item: -item[1])},
        "gemm_calls_per_step": {kind: count // steps for kind, count in gemm_calls.items()},
        "top_kernels": [
            {
                "name": k["name"],
                "group": kernel_group(k["name"]),
                "ms_per_step": round(k["total_us"] / 1000 / steps, 2),
                "calls_per_step": k["calls"] // steps,
            }
            for k in sorted(profile["kernels"], key=lambda k: -k["total_us"])[:TOP_KERNELS]
        ],
    }


def environment() -> dict:
    """Read through NVML and package metadata: importing torch.cuda here would hold GPU memory all along."""
    versions = {}
    for package in (
        "torch",
        "torchao",
        "transformer_engine",
        "accelerate",
        "transformers",
        "llamafactory",
        "peft",
        "bitsandbytes",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from llamafactory_fp8.gpus import read_gpus

    gpus = read_gpus()
    return {
        "device": gpus.gpus[0].name if gpus.gpus else None,
        "gpus": [asdict(gpu) for gpu in gpus.gpus],
        "driver": gpus.driver_version,
        "cuda_driver": gpus.cuda_driver_version,
        "python": platform.python_version(),
        "packages": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def ratio_table(results: list[Result]) -> list[dict]:
    """One row per FP8 run: against BF16 of the same pair with the same compile setting, compiled and eager, and
    against LLaMA-Factory's defaults (BF16 eager with gradient checkpointing) of the same family."""
    rows = []
    bf16 = {(r.case.pair, r.case.compile): r for r in results if r.case.precision == "bf16" and r.tokens_per_s}
    defaults = {
        r.case.family: r
        for r in results
        if r.case.precision == "bf16" and not r.case.compile and r.case.grad_ckpt and r.tokens_per_s
    }
    for r in results:
        if r.case.precision != "fp8":
            continue
        row = {
            "pair": r.case.pair,
            "shape": r.case.shape,
            "layers": r.case.layers,
            "finetuning": r.case.finetuning,
            "backend": r.case.backend,
            "recipe": r.case.recipe,
            "compile": r.case.compile,
            "repeat": r.case.repeat,
            "fp8_layers": r.fp8_layers,
            "fp8_tokens_per_s": r.tokens_per_s,
        }
        for compiled, label in ((True, "compiled"), (False, "eager")):
            base = bf16.get((r.case.pair, compiled))
            if base and r.tokens_per_s:
                row[f"speedup_vs_bf16_{label}"] = round(r.tokens_per_s / base.tokens_per_s, 3)
        default = defaults.get(r.case.family)
        if default and r.tokens_per_s:
            row["speedup_vs_llamafactory_defaults"] = round(r.tokens_per_s / default.tokens_per_s, 3)
        same = bf16.get((r.case.pair, r.case.compile))
        if same and r.tokens_per_s:
            row["bf16_tokens_per_s"] = same.tokens_per_s
            row["memory_ratio"] = (
                round(r.peak_allocated_gib / same.peak_allocated_gib, 3) if same.peak_allocated_gib else None
            )
            common = sorted(set(r.losses) & set(same.losses))
            if common:
                last = common[-1]
                row["loss_step"] = last
                row["loss_rel_diff"] = round((r.losses[last] - same.losses[last]) / same.losses[last], 4)
        rows.append(row)
    return rows


def markdown(env: dict, results: list[Result], rows: list[dict], command: str) -> str:
    lines = [
        f"# Benchmark: {env['device']}, {env['date']}",
        "",
        f"Command: `{command}`",
        "",
        f"Driver {env['driver']}, CUDA {env['cuda_driver']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        "",
        "| run | exit | tokens/s | peak alloc GiB | peak reserved GiB | FP8 layers | trainable / all params "
        "| loss (last step) | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        last = max(r.losses) if r.losses else None
        params = f"{r.model['trainable_parameters']:,} / {r.model['parameters']:,}" if "parameters" in r.model else None
        lines.append(
            f"| {r.case.name} | {r.exit_code} | {r.tokens_per_s and round(r.tokens_per_s)} | {r.peak_allocated_gib} | "
            f"{r.peak_reserved_gib} | {r.fp8_layers and f'{r.fp8_layers[0]}/{r.fp8_layers[1]}'} | {params} | "
            f"{last and r.losses[last]} | {r.wall_s} |"
        )
    if rows:
        lines += [
            "",
            "| FP8 run | FP8 / BF16 compiled | FP8 / BF16 eager | FP8 / LLaMA-Factory defaults | memory FP8 / BF16 "
            "| loss rel. diff (step) |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            recipe = f" {row['recipe']}" if row["recipe"] else ""
            label = f"{row['pair']} {row['backend']}{recipe} {'compiled' if row['compile'] else 'eager'}"
            lines.append(
                f"| {label} | {row.get('speedup_vs_bf16_compiled')} | {row.get('speedup_vs_bf16_eager')} | "
                f"{row.get('speedup_vs_llamafactory_defaults')} | {row.get('memory_ratio')} | "
                f"{row.get('loss_rel_diff')} ({row.get('loss_step')}) |"
            )
    lines += breakdown_markdown(results)
    return "\n".join(lines) + "\n"


def breakdown_markdown(results: list[Result]) -> list[str]:
    """Milliseconds per optimizer step, one column per profiled run (memory-only runs profile one step to end early
    and are left out: they ran beside each other)."""
    profiled = [r for r in results if r.breakdown and not r.case.memory_only]
    if not profiled:
        return []
    groups = sorted({group for r in profiled for group in r.breakdown["ms_per_step"]})
    lines = [
        "",
        "Per optimizer step, from torch.profiler (ms; kernel time by group, then wall and the gap between them):",
        "",
        "| group | " + " | ".join(r.case.name for r in profiled) + " |",
        "|---|" + "---|" * len(profiled),
    ]
    for group in groups:
        lines.append(
            f"| {group} | " + " | ".join(str(r.breakdown["ms_per_step"].get(group, 0)) for r in profiled) + " |"
        )
    for key in ("kernel_ms_per_step", "wall_ms_per_step", "gap_ms_per_step"):
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(str(r.breakdown[key]) for r in profiled) + " |")
    lines.append(
        "| GEMM calls per step (BF16 / FP8) | "
        + " | ".join(
            f"{r.breakdown['gemm_calls_per_step']['bf16']} / {r.breakdown['gemm_calls_per_step']['fp8']}"
            for r in profiled
        )
        + " |"
    )
    for r in profiled:
        lines += [
            "",
            f"Top kernels, {r.case.name} (ms and calls per step; names shortened):",
            "",
            "| ms | calls | group | kernel |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k['ms_per_step']} | {k['calls_per_step']} | {k['group']} | `{short_kernel_name(k['name'])}` |"
            for k in r.breakdown["top_kernels"]
        ]
    return lines


def short_kernel_name(name: str) -> str:
    """ATen's kernel names, without the namespaces that make them unreadable in a table, cut at 110 characters."""
    for noise in ("void ", "at::native::", "(anonymous namespace)::", "std::"):
        name = name.replace(noise, "")
    return name[:110]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", choices=sorted(PLANS))
    parser.add_argument("--out", type=Path, help="where JSON, Markdown and logs go")
    parser.add_argument(
        "--rebuild",
        type=Path,
        metavar="RESULTS_DIR",
        help="recompute a results folder's ratios, breakdowns and Markdown from its JSON and raw profiles (no GPU)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/llamafactory-fp8-bench"))
    parser.add_argument("--corpus-mb", type=float, default=12.0)
    parser.add_argument(
        "--keep-work", action="store_true", help="reuse and keep the work dir's models for a later call"
    )
    parser.add_argument(
        "--deadline-s", type=float, default=None, help="skip or stop runs that would end later than this"
    )
    parser.add_argument("--parallel", type=int, default=4, help="memory-only cases run this many at a time")
    parser.add_argument("--list", action="store_true", help="print the plans' cases and exit")
    args = parser.parse_args()
    if args.rebuild:
        print(rebuild(args.rebuild))
        return 0
    if not args.plan or not args.out:
        parser.error("--plan and --out are required (or --rebuild)")
    cases = [case for plan in args.plan for case in PLANS[plan]]
    if args.list:
        for case in cases:
            print(case.name, "memory-only" if case.memory_only else "", f"~{case.expected_s}s")
        return 0

    if len({case.name for case in cases}) != len(cases):
        parser.error("two cases share a name: their logs and outputs would collide")
    deadline = time.time() + args.deadline_s if args.deadline_s else None
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    if not args.keep_work:
        shutil.rmtree(args.work, ignore_errors=True)  # a warm machine keeps earlier calls' models: the disk fills
    data = build_corpus(args.work, args.corpus_mb)
    tokenizer = build_tokenizer(args.work, data)
    env = environment()
    results: list[Result] = []
    for batch in batches(cases, args.parallel):
        for case in batch:
            build_model(args.work, case.shape, case.layers, tokenizer)
        results += run_batch(batch, args, data, logs, deadline)
        release_models(args, cases, results)
        report = write_results(args, env, results)
    print(report)
    return 0 if all(r.exit_code == 0 for r in results) else 1


def batches(cases: list[Case], parallel: int) -> list[list[Case]]:
    """Consecutive memory-only cases in groups of `parallel`; every other case alone."""
    grouped: list[list[Case]] = []
    for case in cases:
        if case.memory_only and grouped and grouped[-1][0].memory_only and len(grouped[-1]) < parallel:
            grouped[-1].append(case)
        else:
            grouped.append([case])
    return grouped


def run_batch(
    batch: list[Case], args: argparse.Namespace, data: Path, logs: Path, deadline: float | None
) -> list[Result]:
    if deadline is not None and deadline - time.time() < max(case.expected_s for case in batch):
        return [
            Result(case, -1, error=f"not run: {deadline - time.time():.0f} s left before the deadline")
            for case in batch
        ]

    def run(case: Case) -> Result:
        timeout_s = None if deadline is None else deadline - time.time()
        result = run_case(case, model_dir(args.work, case.shape, case.layers), data, args.work, logs, timeout_s)
        shutil.rmtree(args.work / "runs" / case.name, ignore_errors=True)  # the saved model is not measured
        print(
            f"{case.name}: exit {result.exit_code}, {result.tokens_per_s and round(result.tokens_per_s)} tok/s, "
            f"{result.peak_allocated_gib} GiB, fp8 layers {result.fp8_layers}, {result.wall_s}s {result.error or ''}",
            flush=True,
        )
        return result

    with ThreadPoolExecutor(max_workers=len(batch)) as pool:
        return list(pool.map(run, batch))


def release_models(args: argparse.Namespace, cases: list[Case], results: list[Result]) -> None:
    """Delete the models no later case uses (the disk holds few 8B models), unless asked to keep them."""
    if args.keep_work:
        return
    later = {(case.shape, case.layers) for case in cases[len(results) :]}
    for shape, layers in {(r.case.shape, r.case.layers) for r in results} - later:
        shutil.rmtree(model_dir(args.work, shape, layers), ignore_errors=True)


def write_results(args: argparse.Namespace, env: dict, results: list[Result]) -> str:
    """Written after every run, so a call cut short still brings back what it measured."""
    command = "python bench/run_bench.py " + " ".join(f"--plan {p}" for p in args.plan) + " --out OUT"
    report = write_report(args.out / "-".join(args.plan), env, command, results)
    if "parity" in args.plan:
        plot_losses(results, args.out / f"{'-'.join(args.plan)}-loss.png")
    return report


def write_report(stem: Path, env: dict, command: str, results: list[Result]) -> str:
    rows = ratio_table(results)
    report = markdown(env, results, rows, command)
    payload = {"environment": env, "command": command, "results": [asdict(r) for r in results], "ratios": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    stem.with_suffix(".md").write_text(report)
    return report


def rebuild(directory: Path) -> str:
    """The kernel groups are name patterns: when they change, the committed raw profiles are grouped again here,
    without a GPU. The runs' measurements are read back unchanged."""
    (path,) = directory.glob("*.json")
    payload = json.loads(path.read_text())
    results = [result_from_record(record) for record in payload["results"]]
    for result in results:
        raw = directory / "logs" / f"{result.case.name}.profile.json"
        if raw.exists():
            result.breakdown = breakdown(json.loads(raw.read_text()))
    return write_report(path.with_suffix(""), payload["environment"], payload["command"], results)


def result_from_record(record: dict) -> Result:
    case = Case(**{**record["case"], "extra": tuple(record["case"]["extra"])})
    fp8_layers = tuple(record["fp8_layers"]) if record["fp8_layers"] else None
    losses = {int(step): loss for step, loss in record["losses"].items()}
    return Result(**{**record, "case": case, "fp8_layers": fp8_layers, "losses": losses})


def plot_losses(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for r in results:
        if r.losses:
            steps = sorted(r.losses)
            axis.plot(steps, [r.losses[s] for s in steps], label=r.case.name)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
