"""What a user waits for: the wall time from the launch to a logged step (loading and compiling included), FP8
against BF16, and the step at which FP8's faster steps pay back what its longer compile cost."""

from __future__ import annotations

from .cases import Result


def seconds_per_step(result: Result) -> float | None:
    """The steady seconds per optimizer step, from when the first step after the warm-up reached the log to when the
    last timed one did."""
    seen = {step: s for step, s in result.seconds_to_step.items() if step <= result.case.steps}
    steady = [step for step in seen if step >= result.case.warmup_steps]
    if len(steady) < 2:
        return None
    first, last = min(steady), max(steady)
    return (seen[last] - seen[first]) / (last - first)


def ahead_from(step: int, behind_s: float, gain_s: float) -> int | None:
    """The step from which FP8 is ahead, `behind_s` seconds behind BF16 at `step` and gaining `gain_s` a step:
    `step` itself where it is not behind, None where it gains nothing."""
    if behind_s <= 0:
        return step
    return step + round(behind_s / gain_s) if gain_s > 0 else None


def wall_time(fp8: Result, bf16: Result | None) -> dict | None:
    """Both runs' seconds to their last common timed step, their steady seconds per step, and the step from which
    FP8 is ahead: the first logged one where it is, else where its per-step lead would close the gap (None: never).
    None where there is no BF16 run, or either lacks the times."""
    if bf16 is None:
        return None
    common = sorted(step for step in set(fp8.seconds_to_step) & set(bf16.seconds_to_step) if step <= fp8.case.steps)
    fp8_step, bf16_step = seconds_per_step(fp8), seconds_per_step(bf16)
    if not common or fp8_step is None or bf16_step is None:
        return None
    last = common[-1]
    ahead = [step for step in common if fp8.seconds_to_step[step] <= bf16.seconds_to_step[step]]
    behind = fp8.seconds_to_step[last] - bf16.seconds_to_step[last]
    catch_up = ahead[0] if ahead else ahead_from(last, behind, bf16_step - fp8_step)
    return {
        "step": last,
        "bf16_s": bf16.seconds_to_step[last],
        "fp8_s": fp8.seconds_to_step[last],
        "bf16_s_per_step": round(bf16_step, 3),
        "fp8_s_per_step": round(fp8_step, 3),
        "fp8_ahead_from_step": catch_up,
    }


def wall_time_markdown(rows: list[dict]) -> list[str]:
    timed = [(row, label, found) for row in rows for label, found in (row.get("wall_time") or {}).items()]
    if not timed:
        return []
    lines = [
        "",
        "Wall time from the launch (loading and compiling included) to the last timed step, against BF16 compiled "
        "and eager, and the step from which FP8 is ahead (logged, or projected from the steady seconds per step):",
        "",
        "| FP8 run | against BF16 | step | BF16 s | FP8 s | BF16 s/step | FP8 s/step | FP8 ahead from step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, label, found in timed:
        ahead = found["fp8_ahead_from_step"]
        lines.append(
            f"| {row['pair']} {row['recipe'] or row['backend']} | {label} | {found['step']} | {found['bf16_s']} | "
            f"{found['fp8_s']} | {found['bf16_s_per_step']} | {found['fp8_s_per_step']} | "
            + (f"{ahead} |" if ahead is not None else "never |")
        )
    return lines
