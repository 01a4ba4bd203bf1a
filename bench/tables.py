"""What a plan's results say: FP8 against BF16 per run, as JSON and Markdown, written after every run and rebuilt
from committed results without a GPU."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .cases import Case, Result, result_from_record
from .parity import LONG_RUN_STEPS, PARITY_WINDOW, parity
from .plots import plot_losses
from .profiles import breakdown
from .wall_time import wall_time, wall_time_markdown

LABELS = ((True, "compiled"), (False, "eager"))  # BF16's compile setting, as the tables name it


def ratio_table(results: list[Result]) -> list[dict]:
    """One row per FP8 run: against BF16 of the same pair with the same compile setting, compiled and eager, and
    against LLaMA-Factory's defaults (BF16 eager with gradient checkpointing) of the same family."""
    rows = []
    bf16 = {
        (r.case.pair, r.case.compile): r
        for r in results
        if r.case.precision == "bf16" and (r.tokens_per_s or r.case.loss_only)
    }
    defaults = {
        r.case.family: r
        for r in results
        if r.case.precision == "bf16" and not r.case.compile and r.case.grad_ckpt and r.tokens_per_s
    }
    largest_batch = {  # where a search found the largest batch the defaults fit: the batch a user would run
        same_model(r.case): r for r in results if r.case.search == "llamafactory-defaults" and r.tokens_per_s
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
        for compiled, label in LABELS:
            base = bf16.get((r.case.pair, compiled))
            if base and r.tokens_per_s:
                row[f"speedup_vs_bf16_{label}"] = round(r.tokens_per_s / base.tokens_per_s, 3)
        default = defaults.get(r.case.family) or largest_batch.get(same_model(r.case))
        if default and r.tokens_per_s:
            row["speedup_vs_llamafactory_defaults"] = round(r.tokens_per_s / default.tokens_per_s, 3)
            row["llamafactory_defaults_batch"] = default.case.batch
        same = bf16.get((r.case.pair, r.case.compile))
        if same and (r.tokens_per_s or r.case.loss_only):
            row["bf16_tokens_per_s"] = same.tokens_per_s
            row["memory_ratio"] = (
                round(r.peak_allocated_gib / same.peak_allocated_gib, 3) if same.peak_allocated_gib else None
            )
            common = sorted(set(r.losses) & set(same.losses))
            if common:
                last = common[-1]
                row["loss_step"] = last
                row["loss_rel_diff"] = round((r.losses[last] - same.losses[last]) / same.losses[last], 4)
        if not r.case.loss_only:
            timed = {label: wall_time(r, bf16.get((r.case.pair, compiled))) for compiled, label in LABELS}
            row["wall_time"] = {label: found for label, found in timed.items() if found}
        if r.case.steps >= LONG_RUN_STEPS:
            row["parity"] = parity(r, results)
        rows.append(row)
    return rows


def several_gpus_table(results: list[Result]) -> list[dict]:
    """One row per run over several GPUs: tokens/s per GPU (LLaMA-Factory counts every rank's tokens) against one
    GPU at the same precision and optimizer batch (accumulating as many micro-batches as there are GPUs), rank 0's
    peak memory, and the loss at the last common step against that one GPU's."""
    one_gpu = {
        (same_model(r.case), r.case.batch * r.case.grad_accum, r.case.precision): r
        for r in results
        if r.case.processes == 1 and r.exit_code == 0
    }
    rows = []
    for r in results:
        if r.case.processes == 1:
            continue
        per_gpu = r.tokens_per_s / r.case.processes if r.tokens_per_s else None
        row = {
            "run": r.case.name,
            "strategy": r.case.strategy,
            "gpus": r.case.processes,
            "precision": r.case.precision,
            "exit": r.exit_code,
            "tokens_per_s_per_gpu": per_gpu and round(per_gpu),
            "peak_allocated_gib": r.peak_allocated_gib,
        }
        alone = one_gpu.get((same_model(r.case), r.case.batch * r.case.grad_accum * r.case.processes, r.case.precision))
        if alone and per_gpu and alone.tokens_per_s:
            row["per_gpu_vs_one_gpu"] = round(per_gpu / alone.tokens_per_s, 3)
        common = sorted(set(r.losses) & set(alone.losses)) if alone else []
        if common:
            last = common[-1]
            row["loss_step"] = last
            row["loss_rel_diff_vs_one_gpu"] = round((r.losses[last] - alone.losses[last]) / alone.losses[last], 4)
        rows.append(row)
    return rows


def several_gpus_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "Several GPUs of one machine, against one GPU at the same precision and optimizer batch:",
        "",
        "| run | strategy | GPUs | precision | exit | tokens/s per GPU | per GPU / one GPU | rank 0 peak alloc GiB "
        "| loss rel. diff vs one GPU (step) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['run']} | {row['strategy']} | {row['gpus']} | {row['precision']} | {row['exit']} | "
            f"{row['tokens_per_s_per_gpu']} | {row.get('per_gpu_vs_one_gpu')} | {row['peak_allocated_gib']} | "
            f"{row.get('loss_rel_diff_vs_one_gpu')} ({row.get('loss_step')}) |"
        )
    return lines


def same_model(case: Case) -> tuple:
    return case.shape, case.layers, case.finetuning, case.seq


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
            defaults = row.get("speedup_vs_llamafactory_defaults")
            batch = row.get("llamafactory_defaults_batch")
            if batch and f"-b{batch}x" not in row["pair"]:
                defaults = f"{defaults} (defaults at batch {batch})"
            lines.append(
                f"| {label} | {row.get('speedup_vs_bf16_compiled')} | {row.get('speedup_vs_bf16_eager')} | "
                f"{defaults} | {row.get('memory_ratio')} | "
                f"{row.get('loss_rel_diff')} ({row.get('loss_step')}) |"
            )
    lines += parity_markdown(rows)
    lines += wall_time_markdown(rows)
    lines += several_gpus_markdown(several_gpus_table(results))
    lines += breakdown_markdown(results)
    return "\n".join(lines) + "\n"


def parity_markdown(rows: list[dict]) -> list[str]:
    compared = [row for row in rows if row.get("parity")]
    if not compared:
        return []
    lines = [
        "",
        f"Loss parity: the mean loss over the last {PARITY_WINDOW} steps, against the first BF16 run's:",
        "",
        "| FP8 run | steps | FP8 vs BF16 | BF16 repeat vs BF16 (the noise band) |",
        "|---|---|---|---|",
    ]
    for row in compared:
        found = row["parity"]
        repeat = found["bf16_repeat_rel"]
        lines.append(
            f"| {row['pair']} {row['recipe'] or row['backend']} | {found['steps']} | {found['fp8_vs_bf16_rel']:+.2%} | "
            + (f"{repeat:+.2%} |" if repeat is not None else "not run |")
        )
    return lines


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


def write_report(stem: Path, env: dict, command: str, results: list[Result]) -> str:
    rows = ratio_table(results)
    report = markdown(env, results, rows, command)
    payload = {
        "environment": env,
        "command": command,
        "results": [asdict(r) for r in results],
        "ratios": rows,
        "several_gpus": several_gpus_table(results),
    }
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    stem.with_suffix(".md").write_text(report)
    if any(row.get("parity") for row in rows):
        plot_losses(results, stem.parent / f"{stem.name}-loss.png")
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
