"""How many micro-batches FP8 takes to pay back its longer start, from committed results: the time to the first
optimizer step (compiling included) of each FP8 run and its BF16 partners, and their steady seconds per
micro-batch from tokens/s. Runs that logged `seconds_to_step` give the first step from the launch; older runs give
it from their log's progress bar, which starts after loading (the same for both precisions). Prints a Markdown
table; no GPU. Folders joined with "+" are one set: consecutive calls on one warm machine.

    python bench/payback.py bench/results/full-depth bench/results/sweep-h100+bench/results/sweep-h100-rest ...
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script, only bench/ is on the path

from bench.cases import Result, result_from_record  # noqa: E402
from bench.wall_time import ahead_from, seconds_per_step  # noqa: E402


def first_step(result: Result, directory: Path) -> tuple[int, float] | None:
    """The first step the run reports, and the seconds to it: logged (every `logging_steps`) from the launch, or
    from the trainer's progress bar, which starts after loading."""
    if result.seconds_to_step:
        step = min(result.seconds_to_step)
        return step, result.seconds_to_step[step]
    log = directory / "logs" / f"{result.case.name}.log"
    # the trainer's tqdm bar after step 1, "1/32 [03:23<" (its total is max_steps: the datasets' bars have others)
    first = re.compile(rf" 1/{result.case.max_steps} \[(\d+):(\d+)<")
    found = first.search(log.read_text()) if log.exists() else None
    return (1, int(found[1]) * 60 + int(found[2])) if found else None


def seconds_per_micro_batch(result: Result) -> float | None:
    """From tokens/s where each micro-batch is full (Case.packed); from the step clock where the data leaves each
    its own length, and batch x seq would overstate its tokens."""
    if not result.case.packed:
        per_step = seconds_per_step(result)
        return per_step / result.case.grad_accum if per_step is not None else None
    tokens = result.case.batch * result.case.seq
    return tokens / result.tokens_per_s if result.tokens_per_s else None


def payback_rows(directories: list[Path]) -> list[dict]:
    trained = []  # each run that trained, with the folder its log is in
    for directory in directories:
        (path,) = directory.glob("*.json")
        results = map(result_from_record, json.loads(path.read_text())["results"])
        trained += [(result, directory) for result in results if result.exit_code == 0]
    rows = []
    for fp8, fp8_directory in (run for run in trained if run[0].case.precision == "fp8"):
        for bf16, bf16_directory in trained:
            if bf16.case.precision != "bf16" or bf16.case.pair != fp8.case.pair:
                continue
            starts = first_step(bf16, bf16_directory), first_step(fp8, fp8_directory)
            steps = seconds_per_micro_batch(bf16), seconds_per_micro_batch(fp8)
            if None in starts or None in steps or starts[0][0] != starts[1][0]:
                continue
            at = starts[0][0] * fp8.case.grad_accum  # micro-batches by then
            behind, gain = starts[1][1] - starts[0][1], steps[0] - steps[1]
            rows.append(
                {
                    "results": "+".join(directory.name for directory in directories),
                    "fp8": fp8.case.name,
                    "against": "BF16 compiled" if bf16.case.compile else "BF16 eager",
                    "tokens": fp8.case.batch * fp8.case.seq,
                    "first_step": starts[0][0],
                    "first_step_s": (starts[0][1], starts[1][1]),
                    "s_per_micro_batch": (round(steps[0], 4), round(steps[1], 4)),
                    "payback": ahead_from(at, behind, gain),
                }
            )
    return rows


def main() -> int:
    print(
        "| results | FP8 run | against | tokens per micro-batch | first step | its s (BF16, FP8) "
        "| s per micro-batch (BF16, FP8) | micro-batches to pay back |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for argument in sys.argv[1:]:
        for row in payback_rows([Path(directory) for directory in argument.split("+")]):
            payback = "never" if row["payback"] is None else f"{row['payback']:,}"
            print(
                f"| {row['results']} | {row['fp8']} | {row['against']} | {row['tokens']} | {row['first_step']} | "
                f"{row['first_step_s'][0]:g}, {row['first_step_s'][1]:g} | "
                f"{row['s_per_micro_batch'][0]}, {row['s_per_micro_batch'][1]} | {payback} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
