"""Rehearse a sharded job's rank 0 on the one GPU of the lent machine, through the product (`llamafactory-fp8
rehearse`): a random-weight model of a shape under bench/models, the stdlib corpus, BF16 and FP8 in turn, each
run's closing line and report kept under --out. Prints a table: the measured peak beside the memory model's
estimate, the step time without communication, tokens/s per rank.

    python bench/rehearse.py --out DIR --shape llama-3.1-8b --layers 8 --world-size 8 --batch 2 [--strategy fsdp2]
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strategy", default="fsdp2")
    parser.add_argument("--precisions", default="bf16,fp8")
    args = parser.parse_args()
    work = args.out / "work"
    data = runner.build_corpus(work, 8)
    model = runner.build_model(work, args.shape, args.layers, runner.build_tokenizer(work, data))
    rows = []
    for precision in args.precisions.split(","):
        output_dir = args.out / f"{precision}-out"
        command = [
            sys.executable,
            "-m",
            "llamafactory_fp8",
            "rehearse",
            str(CONFIG),
            f"--{precision}",
            "--strategy",
            args.strategy,
            "--processes",
            str(args.world_size),
            f"model_name_or_path={model}",
            f"dataset_dir={data}",
            f"output_dir={output_dir}",
            f"per_device_train_batch_size={args.batch}",
            f"max_steps={args.steps}",
            "torch_compile=true",
            "disable_gradient_checkpointing=false",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        (args.out / f"{precision}.log").write_text(result.stdout + result.stderr)
        report_path = output_dir.with_name(output_dir.name + ".rehearsal") / "rehearsal.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if report is not None:  # beside the results' tables, one level down: bench/results/*/*.json are the bench's
            (args.out / "reports").mkdir(exist_ok=True)
            (args.out / "reports" / f"{precision}.json").write_text(json.dumps(report, indent=2))
        rows.append((precision, result.returncode, report))
    print("| precision | exit | peak allocated GiB | estimate GiB (allocator) | step s | tokens/s per rank |")
    print("|---|---|---|---|---|---|")
    for precision, code, report in rows:
        if report is None:
            print(f"| {precision} | {code} | | | | |")
            continue
        memory = report["memory"]
        print(
            f"| {precision} | {code} | {memory.get('peak_allocated_gib')} | {memory.get('estimate_gib')} | "
            f"{report['step_s']:.3f} | {report['tokens_per_s_per_rank']:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
