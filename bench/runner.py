"""Running cases through the product's real path (llamafactory-fp8 -> accelerate launch -> LLaMA-Factory) on model
shapes from bench/models/*/config.json with random weights, and reading what each run measured from its logs."""

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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import yaml

from .cases import Case, Result
from .profiles import breakdown

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / "models"
BENCH_YAML = ROOT / "bench" / "configs" / "pt.yaml"
FP8_LAYERS = re.compile(r"FP8 active: (\d+) of (\d+) linear layers")
PARAMETERS = re.compile(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)")


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
    keys.update(case.extra_keys)
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


def launch_arguments(case: Case, keys: dict[str, str]) -> list[str]:
    """`llamafactory-fp8 train` as the case runs it. The bench measures what each case takes under its own strategy
    and GPUs: the launcher's estimate must not refuse a case, nor move it to CPU offload (as it did in
    results/batch8-offloaded/). The recipe goes through the product's own flag, which the plan hands the trainer; an
    environment variable of the bench's own lost to the plan's auto recipe for LoRA (results/lora-fp8-weights-smoke)."""
    fp8 = case.precision == "fp8"
    return [
        sys.executable,
        "-m",
        "llamafactory_fp8",
        "train",
        str(BENCH_YAML),
        f"--{case.precision}",
        "--no-memory-check",
        "--strategy",
        case.strategy,
        "--processes",
        str(case.processes),
        *(("--backend", case.backend) if fp8 else ()),
        *(("--fp8-recipe", case.recipe) if fp8 and case.recipe else ()),
        *(f"{key}={value}" for key, value in keys.items()),
    ]


def run_case(case: Case, model: Path, data: Path, work: Path, log_dir: Path, timeout_s: float | None) -> Result:
    output_dir = work / "runs" / case.name
    state_dir = work / "state" / case.name  # the launcher's stop files and run record, one set per run
    profile_dir = work / "profiles" / case.name
    keys = training_keys(case, model, data, output_dir)
    args = launch_arguments(case, keys)
    env = {
        **os.environ,
        "RECORD_VRAM": "1",
        "LLAMAFACTORY_FP8_STATE_DIR": str(state_dir),
        "HF_DATASETS_CACHE": str(work / "datasets" / case.name),
        "TORCHINDUCTOR_CACHE_DIR": str(compile_cache(case, work)),
    }
    if case.profile_steps:
        env["LLAMAFACTORY_FP8_PROFILE"] = f"{case.steps + 1}-{case.max_steps}:{profile_dir}"
    result = Result(case, -1, training=recorded_training(case, keys), model=model_facts(case.shape, case.layers))
    (output_dir / "trainer_log.jsonl").unlink(missing_ok=True)  # an earlier call's, on a warm machine
    started = time.time()
    watch = StepClock(output_dir / "trainer_log.jsonl", started)
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
    result.seconds_to_step = watch.stop()
    (log_dir / f"{case.name}.log").write_text(log)
    read_outcome(result, log, output_dir)
    if (profile_dir / "profile.json").exists():
        profile = json.loads((profile_dir / "profile.json").read_text())
        (log_dir / f"{case.name}.profile.json").write_text(json.dumps(profile, indent=1))
        result.breakdown = breakdown(profile)
    return result


def compile_cache(case: Case, work: Path) -> Path:
    """Inductor's cache (Triton's inside it) for this run: its own and empty, as in a user's first run in a fresh
    container, unless the case shares one with the runs before it (a rerun with the cache kept on a volume)."""
    if case.compile_cache:
        return work / "compile-cache" / case.compile_cache
    fresh = work / "compile-cache" / case.name
    shutil.rmtree(fresh, ignore_errors=True)
    return fresh


class StepClock:
    """When each logged step's record reached LLaMA-Factory's trainer log, in seconds from the launch: what a user
    waits for step N, loading and compiling included. Read every half second beside the blocking run."""

    def __init__(self, log_file: Path, started: float):
        self.log_file, self.started, self.seen = log_file, started, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.5):
            self._read()

    def _read(self) -> None:
        now = round(time.time() - self.started, 1)
        lines = self.log_file.read_text().splitlines() if self.log_file.exists() else []
        for line in lines:
            try:
                step = json.loads(line)["current_steps"]
            except (ValueError, KeyError):
                continue  # a line still being written
            self.seen.setdefault(step, now)

    def stop(self) -> dict[int, float]:
        self.done.set()
        self.thread.join()
        return dict(sorted(self.seen.items()))


def read_outcome(result: Result, log: str, output_dir: Path) -> None:
    """Speed, memory, loss and layer counts from LLaMA-Factory's log records, also for a run stopped early."""
    if result.exit_code not in (0, -1):
        result.error = next((line for line in reversed(log.splitlines()) if "Error" in line), log[-300:])
    log_file = output_dir / "trainer_log.jsonl"
    records = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    timed = [r for r in records if r.get("current_steps", 0) <= result.case.steps]
    loss_only = result.case.loss_only  # it shared the GPU: its speed is not its own
    result.tokens_per_s = None if loss_only else steady_tokens_per_s(timed, result.case.warmup_steps)
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


def batches(cases: list[Case], parallel: int) -> list[list[Case]]:
    """Consecutive memory-only cases, and consecutive loss-only cases, in groups of `parallel`; every other case
    alone."""
    grouped: list[list[Case]] = []
    for case in cases:
        beside = beside_kind(case)
        if beside and grouped and beside_kind(grouped[-1][0]) == beside and len(grouped[-1]) < parallel:
            grouped[-1].append(case)
        else:
            grouped.append([case])
    return grouped


def beside_kind(case: Case) -> str | None:
    """What a case measures when it shares the GPU: its peak memory, or its losses; never its speed."""
    return "memory" if case.memory_only else "loss" if case.loss_only else None


def settled(case: Case, results: list[Result]) -> bool:
    """Whether an earlier case of this case's search trained to its end (a search runs its largest batch first)."""
    return bool(case.search) and any(r.case.search == case.search and r.exit_code == 0 for r in results)


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
