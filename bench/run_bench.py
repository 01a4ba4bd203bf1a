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
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, only bench/ is on the path

from bench import runner  # noqa: E402
from bench.cases import Case, Result  # noqa: E402
from bench.plans import PLANS  # noqa: E402
from bench.runner import run_case  # noqa: E402
from bench.tables import rebuild, write_report  # noqa: E402

# tests/test_memory.py replays committed cases through this module: Case, run_case, and the subprocess module whose
# run it patches to capture the launcher's arguments.
__all__ = ["Case", "Result", "main", "run_case", "subprocess"]


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
    parser.add_argument(
        "--parallel", type=int, default=4, help="memory-only (and loss-only) cases run this many at a time"
    )
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
    data = runner.build_corpus(args.work, args.corpus_mb)
    tokenizer = runner.build_tokenizer(args.work, data)
    env = runner.environment()
    results: list[Result] = []
    for batch in runner.batches(cases, args.parallel):
        if all(runner.settled(case, results) for case in batch):
            results += [Result(case, -1, error="not run: a larger batch of its search trained") for case in batch]
            continue
        for case in batch:
            runner.build_model(args.work, case.shape, case.layers, tokenizer)
        results += runner.run_batch(batch, args, data, logs, deadline)
        runner.release_models(args, cases, results)
        report = write_results(args, env, results)
    print(report)
    return 0 if all(r.exit_code == 0 for r in results) else 1


def write_results(args: argparse.Namespace, env: dict, results: list[Result]) -> str:
    """Written after every run, so a call cut short still brings back what it measured."""
    command = "python bench/run_bench.py " + " ".join(f"--plan {p}" for p in args.plan) + " --out OUT"
    return write_report(args.out / "-".join(args.plan), env, command, results)


if __name__ == "__main__":
    raise SystemExit(main())
