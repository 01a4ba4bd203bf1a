"""Rehearse a sharded job's rank 0 on the one GPU of the lent machine, through the product (`llamafactory-fp8
rehearse`): a random-weight model of a shape under bench/models, the stdlib corpus, BF16 and FP8 in turn, each
run's closing line and report kept under --out. Prints a table: the measured peak beside the memory model's
estimate, the step time without communication, tokens/s per rank.

    python bench/rehearse.py --out DIR --shape llama-3.1-8b [--layers 8] --world-size 8 --batches 2,8 \
        [--strategy fsdp2] [--precisions fp8,bf16] [--fp8-recipe NAME] [--work DIR] [--profile]

Each run's row is printed as soon as it ends, so a call cut short keeps the rows it finished. With --profile each
run instead profiles its last two steps (the product's LLAMAFACTORY_FP8_PROFILE) and ends there, without a report:
its row gives the profiled wall time per step and the GPU kernels' busy time per step, in reports/NAME.profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import runner  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "pt.yaml"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--batches", default="2", help="micro-batches of 2048 tokens, comma-separated")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strategy", default="fsdp2")
    parser.add_argument("--precisions", default="bf16,fp8")
    parser.add_argument("--fp8-recipe", default=None, help="the product's --fp8-recipe for the FP8 runs")
    parser.add_argument("--work", type=Path, default=None, help="where the model and corpus are built (OUT/work)")
    parser.add_argument("--profile", action="store_true", help="profile the last two steps instead of reporting")
    args = parser.parse_args()
    work = args.work or args.out / "work"
    data = runner.build_corpus(work, 8)
    model = runner.build_model(work, args.shape, args.layers, runner.build_tokenizer(work, data))
    print(
        "| precision | micro-batch | exit | peak allocated GiB | peak reserved GiB | estimate GiB (allocated) "
        "| step s | tokens/s per rank |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch in [int(value) for value in args.batches.split(",")]:
        for precision in args.precisions.split(","):
            name = f"{precision}-b{batch}"
            code, report = rehearse(args, model, data, precision, batch, name)
            if args.profile:
                print(profile_row(args.out, name, precision, batch, code), flush=True)
                continue
            if report is None:
                print(f"| {precision} | {batch} | {code} | | | | | |", flush=True)
                continue
            memory = report["memory"]
            print(
                f"| {precision} | {batch} | {code} | {memory.get('peak_allocated_gib')} | "
                f"{memory.get('peak_reserved_gib')} | {memory.get('estimate_gib', 0):.2f} | {report['step_s']:.3f} | "
                f"{report['tokens_per_s_per_rank']:,.0f} |",
                flush=True,
            )
    return 0


def rehearse(args, model: Path, data: Path, precision: str, batch: int, name: str) -> tuple[int, dict | None]:
    """One `llamafactory-fp8 rehearse` run; its log and report kept under --out as NAME.log, reports/NAME.json."""
    output_dir = args.out / f"{name}-out"
    command = [
        sys.executable,
        "-m",
        "llamafactory_fp8",
        "rehearse",
        str(CONFIG),
        f"--{precision}",
        *(["--fp8-recipe", args.fp8_recipe] if args.fp8_recipe and precision == "fp8" else []),
        "--strategy",
        args.strategy,
        "--processes",
        str(args.world_size),
        f"model_name_or_path={model}",
        f"dataset_dir={data}",
        f"output_dir={output_dir}",
        f"per_device_train_batch_size={batch}",
        f"max_steps={args.steps}",
        "torch_compile=true",
        "disable_gradient_checkpointing=false",
    ]
    environment = dict(os.environ)
    if args.profile:
        environment["LLAMAFACTORY_FP8_PROFILE"] = f"{args.steps - 1}-{args.steps}:{args.out / 'profiles' / name}"
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    (args.out / f"{name}.log").write_text(result.stdout + result.stderr)
    report_path = output_dir.with_name(output_dir.name + ".rehearsal") / "rehearsal.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    if report is not None:  # beside the results' tables, one level down: bench/results/*/*.json are the bench's
        (args.out / "reports").mkdir(exist_ok=True)
        (args.out / "reports" / f"{name}.json").write_text(json.dumps(report, indent=2))
    return result.returncode, report


def profile_row(out: Path, name: str, precision: str, batch: int, code: int) -> str:
    """The profiled steps' wall time and GPU busy time per step, the profile kept as reports/NAME.profile.json."""
    path = out / "profiles" / name / "profile.json"
    if not path.exists():
        return f"| {precision} | {batch} | {code} | no profile | | | | |"
    profile = json.loads(path.read_text())
    (out / "reports").mkdir(exist_ok=True)
    (out / "reports" / f"{name}.profile.json").write_text(json.dumps(profile, indent=1))
    steps = profile["steps"]
    busy_s = sum(kernel["total_us"] for kernel in profile["kernels"]) / 1e6 / steps
    wall_s = profile["wall_s"] / steps
    return f"| {precision} | {batch} | {code} | profiled: wall {wall_s:.3f} s/step | GPU busy {busy_s:.3f} s/step |||"


if __name__ == "__main__":
    raise SystemExit(main())
