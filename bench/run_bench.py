"""BF16 and FP8 side by side through the product's real path (llamafactory-fp8 -> accelerate launch ->
LLaMA-Factory), on model shapes from bench/models/*/config.json with random weights.

Each run trains the same data, sequence length, batch, seed, attention and compile setting; only the precision
differs. Per run it records steady-state tokens/s (warm-up steps excluded), peak GPU memory, the loss at fixed
steps and how many linear layers ran in FP8; it prints a table of ratios last and writes JSON and Markdown.

    python bench/run_bench.py --plan smoke --out results-dir
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / "models"
BENCH_YAML = ROOT / "bench" / "configs" / "pt.yaml"
FP8_LAYERS = re.compile(r"FP8 active: (\d+) of (\d+) linear layers")


@dataclass(frozen=True)
class Case:
    shape: str
    layers: int | None  # truncated depth (same per-layer shapes); None keeps the model's own
    finetuning: str  # full | lora
    precision: str  # bf16 | fp8
    compile: bool
    steps: int = 40
    warmup_steps: int = 10
    batch: int = 4
    seq: int = 2048
    extra: tuple[str, ...] = ()
    backend: str = "torchao"  # the FP8 backend; ignored for bf16
    repeat: int = 0  # repeated runs of one case in one call are told apart by this

    @property
    def pair(self) -> str:
        """What an FP8 run and its BF16 baselines share."""
        depth = f"{self.layers}L" if self.layers else "full-depth"
        return f"{self.shape}-{depth}-{self.finetuning}" + (f"-r{self.repeat}" if self.repeat else "")

    @property
    def name(self) -> str:
        precision = "fp8-te" if self.precision == "fp8" and self.backend == "te" else self.precision
        return f"{self.pair}-{precision}-{'compiled' if self.compile else 'eager'}"


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


def pairs(shape, layers, finetuning, steps=40, bf16_eager=False, batch=4, extra=(), repeat=0):
    cases = [Case(shape, layers, finetuning, p, True, steps, batch=batch, extra=extra, repeat=repeat) for p in ("bf16", "fp8")]
    if bf16_eager:
        cases.insert(0, Case(shape, layers, finetuning, "bf16", False, steps, batch=batch, extra=extra, repeat=repeat))
    return cases


def transformer_engine_side_by_side(shape, layers, steps=30):
    """TE runs eager (its delayed scaling refuses torch.compile): compare it with BF16 both ways and with torchao."""
    eager = [Case(shape, layers, "full", "bf16", False, steps), Case(shape, layers, "full", "fp8", False, steps, backend="te")]
    return eager + pairs(shape, layers, "full", steps=steps)


PLANS = {
    "smoke": pairs("llama-3.2-1b", 4, "full", steps=20),
    "small": pairs("llama-3.2-1b", None, "full", bf16_eager=True) + pairs("qwen2.5-3b", 12, "full"),
    "large": pairs("qwen2.5-7b", 6, "full", steps=30) + pairs("llama-3.1-8b", 8, "full", steps=30, batch=2),
    "lora": pairs("llama-3.1-8b", None, "lora", steps=30, batch=2,
                  extra=("lora_target=all", "lora_rank=16", "disable_gradient_checkpointing=false")),
    "parity": pairs("llama-3.2-1b", None, "full", steps=200),
    # the smallest measured pair again, twice, the second in the other order, to see the noise
    "repeat": pairs("llama-3.2-1b", 4, "full", steps=20, repeat=1) + pairs("llama-3.2-1b", 4, "full", steps=20, repeat=2)[::-1],
    "te": transformer_engine_side_by_side("qwen2.5-7b", 6),
    "te-eager": transformer_engine_side_by_side("qwen2.5-7b", 6)[:2],  # the two eager runs alone, to retry TE
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
    (data / "dataset_info.json").write_text(json.dumps({"bench_corpus": {"file_name": "corpus.json", "columns": {"prompt": "text"}}}))
    return data


def build_tokenizer(work: Path, data: Path) -> Path:
    from llamafactory_fp8.demo import train_bpe_tokenizer

    texts = (chunk["text"] for chunk in json.loads((data / "corpus.json").read_text()))
    out = work / "tokenizer"
    train_bpe_tokenizer(texts, vocab_size=32000).save_pretrained(out)
    return out


def build_model(work: Path, shape: str, layers: int | None, tokenizer_dir: Path) -> Path:
    """Random weights in the shape of the real model's config.json, saved where LLaMA-Factory loads them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = work / "models" / f"{shape}-{layers or 'full'}"
    if (out / "config.json").exists():
        return out
    values = json.loads((MODELS / shape / "config.json").read_text())
    if layers:
        values["num_hidden_layers"] = layers
        values.pop("layer_types", None)  # derived from the depth; Qwen2 rebuilds it
    config = AutoConfig.for_model(**values)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def run_case(case: Case, model_dir: Path, data: Path, work: Path, log_dir: Path) -> Result:
    output_dir = work / "runs" / case.name
    args = [
        sys.executable, "-m", "llamafactory_fp8", "train", str(BENCH_YAML), f"--{case.precision}",
        *(("--backend", case.backend) if case.precision == "fp8" else ()),
        f"model_name_or_path={model_dir}", f"output_dir={output_dir}", f"dataset_dir={data}",
        f"finetuning_type={case.finetuning}", f"max_steps={case.steps}",
        f"per_device_train_batch_size={case.batch}", f"cutoff_len={case.seq}",
        f"torch_compile={'true' if case.compile else 'false'}", *case.extra,
    ]  # fmt: skip
    started = time.time()
    env = {**os.environ, "RECORD_VRAM": "1"}
    completed = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    log = completed.stdout + completed.stderr
    (log_dir / f"{case.name}.log").write_text(log)
    result = Result(case, completed.returncode, wall_s=round(time.time() - started, 1))
    if completed.returncode != 0:
        result.error = next((line for line in reversed(log.splitlines()) if "Error" in line), log[-300:])
        return result
    records = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    result.tokens_per_s = steady_tokens_per_s(records, case.warmup_steps)
    result.peak_allocated_gib = max((r.get("vram_allocated", 0) for r in records), default=None)
    result.peak_reserved_gib = max((r.get("vram_reserved", 0) for r in records), default=None)
    result.losses = {r["current_steps"]: round(r["loss"], 4) for r in records if "loss" in r}
    found = FP8_LAYERS.search(log)
    result.fp8_layers = (int(found[1]), int(found[2])) if found else None
    return result


def steady_tokens_per_s(records: list[dict], warmup_steps: int) -> float | None:
    """LLaMA-Factory logs cumulative tokens and cumulative throughput; their ratio is the elapsed time, so the
    rate between the first log after warm-up and the last excludes compilation and warm-up."""
    timed = [(r["current_steps"], r["total_tokens"], r["total_tokens"] / r["throughput"]) for r in records if r.get("throughput")]
    after = [t for t in timed if t[0] >= warmup_steps]
    if len(after) < 2:
        return None
    (_, tokens0, time0), (_, tokens1, time1) = after[0], after[-1]
    return (tokens1 - tokens0) / (time1 - time0)


def environment() -> dict:
    import torch

    versions = {}
    for package in ("torch", "torchao", "transformer_engine", "accelerate", "transformers", "llamafactory", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from llamafactory_fp8.gpus import read_gpus

    gpus = read_gpus()
    return {
        "device": torch.cuda.get_device_name(0),
        "gpus": [asdict(gpu) for gpu in gpus.gpus],
        "driver": gpus.driver_version,
        "cuda_driver": gpus.cuda_driver_version,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "packages": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def ratio_table(results: list[Result]) -> list[dict]:
    """One row per FP8 run: against BF16 with the same compile setting, and against BF16 compiled and eager."""
    rows = []
    bf16 = {(r.case.pair, r.case.compile): r for r in results if r.case.precision == "bf16" and r.tokens_per_s}
    for r in results:
        if r.case.precision != "fp8":
            continue
        row = {
            "pair": r.case.pair, "shape": r.case.shape, "layers": r.case.layers, "finetuning": r.case.finetuning,
            "backend": r.case.backend, "compile": r.case.compile, "repeat": r.case.repeat,
            "fp8_layers": r.fp8_layers, "fp8_tokens_per_s": r.tokens_per_s,
        }  # fmt: skip
        for compiled, label in ((True, "compiled"), (False, "eager")):
            base = bf16.get((r.case.pair, compiled))
            if base and r.tokens_per_s:
                row[f"speedup_vs_bf16_{label}"] = round(r.tokens_per_s / base.tokens_per_s, 3)
        same = bf16.get((r.case.pair, r.case.compile))
        if same and r.tokens_per_s:
            row["bf16_tokens_per_s"] = same.tokens_per_s
            row["memory_ratio"] = round(r.peak_allocated_gib / same.peak_allocated_gib, 3) if same.peak_allocated_gib else None
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
        f"Driver {env['driver']}, CUDA {env['cuda_driver']}; " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        "",
        "| run | exit | tokens/s | peak alloc GiB | FP8 layers | loss (last step) | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        last = max(r.losses) if r.losses else None
        lines.append(
            f"| {r.case.name} | {r.exit_code} | {r.tokens_per_s and round(r.tokens_per_s)} | {r.peak_allocated_gib} | "
            f"{r.fp8_layers and f'{r.fp8_layers[0]}/{r.fp8_layers[1]}'} | {last and r.losses[last]} | {r.wall_s} |"
        )
    lines += ["", "| FP8 run | FP8 / BF16 compiled | FP8 / BF16 eager | memory FP8 / BF16 | loss rel. diff (step) |", "|---|---|---|---|---|"]
    for row in rows:
        label = f"{row['pair']} {row['backend']} {'compiled' if row['compile'] else 'eager'}"
        lines.append(
            f"| {label} | {row.get('speedup_vs_bf16_compiled')} | {row.get('speedup_vs_bf16_eager')} | "
            f"{row.get('memory_ratio')} | {row.get('loss_rel_diff')} ({row.get('loss_step')}) |"
        )
    return "\n".join(lines) + "\n"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", choices=sorted(PLANS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="where JSON, Markdown and logs go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llamafactory-fp8-bench"))
    parser.add_argument("--corpus-mb", type=float, default=12.0)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)  # a warm machine keeps earlier calls' models: the disk fills
    data = build_corpus(args.work, args.corpus_mb)
    tokenizer = build_tokenizer(args.work, data)
    env = environment()
    results = []
    cases = [case for plan in args.plan for case in PLANS[plan]]
    for index, case in enumerate(cases):
        model_dir = build_model(args.work, case.shape, case.layers, tokenizer)
        result = run_case(case, model_dir, data, args.work, logs)
        shutil.rmtree(args.work / "runs" / case.name, ignore_errors=True)  # the saved model is not measured
        if index + 1 == len(cases) or (cases[index + 1].shape, cases[index + 1].layers) != (case.shape, case.layers):
            shutil.rmtree(model_dir)
        results.append(result)
        report = write_results(args, env, results)
        print(f"{case.name}: exit {result.exit_code}, {result.tokens_per_s and round(result.tokens_per_s)} tok/s, "
              f"{result.peak_allocated_gib} GiB, fp8 layers {result.fp8_layers}, {result.wall_s}s {result.error or ''}", flush=True)  # fmt: skip

    print(report)
    return 0 if all(r.exit_code == 0 for r in results) else 1


def write_results(args: argparse.Namespace, env: dict, results: list[Result]) -> str:
    """Written after every run, so a call cut short still brings back what it measured."""
    rows = ratio_table(results)
    command = "python bench/run_bench.py " + " ".join(f"--plan {p}" for p in args.plan) + " --out OUT"
    stem = "-".join(args.plan)
    report = markdown(env, results, rows, command)
    payload = {"environment": env, "command": command, "results": [asdict(r) for r in results], "ratios": rows}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(report)
    if "parity" in args.plan:
        plot_losses(results, args.out / f"{stem}-loss.png")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
