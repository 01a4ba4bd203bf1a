"""The bench's reading of long runs and searches, on made-up results (no GPU): the parity record, the loss plot,
the largest batch a search found, and which cases share the GPU."""

import json

from bench.cases import Case, Result
from bench.parity import parity
from bench.runner import batches, settled
from bench.tables import ratio_table, write_report

SHAPE = dict(shape="llama-3.2-1b", layers=None, finetuning="full", compile=True, steps=300)


def run(precision, losses, recipe=None, repeat=0, **options):
    case = Case(**{**SHAPE, **options}, precision=precision, recipe=recipe, repeat=repeat)
    return Result(case, 0, losses={step: losses(step) for step in range(5, case.steps + 1, 5)})


def test_parity_compares_the_mean_loss_over_the_last_50_steps():
    bf16 = run("bf16", lambda step: 4.0 if step > 250 else 9.0)
    repeat = run("bf16", lambda step: 4.004 if step > 250 else 1.0, repeat=1)
    fp8 = run("fp8", lambda step: 4.04 if step > 250 else 2.0)
    assert parity(fp8, [fp8, repeat, bf16]) == {"steps": 300, "fp8_vs_bf16_rel": 0.01, "bf16_repeat_rel": 0.001}
    assert parity(fp8, [bf16, fp8])["bf16_repeat_rel"] is None
    other_length = run("bf16", lambda step: 4.0, steps=200)
    assert parity(fp8, [other_length, fp8]) is None


def test_a_long_run_gets_its_parity_row_and_plot(tmp_path):
    results = [
        run("bf16", lambda step: 5 - step / 100),
        run("fp8", lambda step: 5.02 - step / 100),
        run("bf16", lambda step: 5.001 - step / 100, repeat=1),
        run("fp8", lambda step: 5.03 - step / 100, recipe="tensorwise-pow2"),
    ]
    env = {"device": "test", "date": "today", "driver": None, "cuda_driver": None, "packages": {}}
    report = write_report(tmp_path / "parity-1b", env, "command", results)
    rows = ratio_table(results)
    assert [row["recipe"] for row in rows] == [None, "tensorwise-pow2"]
    assert all(row["parity"]["bf16_repeat_rel"] > 0 and row["parity"]["fp8_vs_bf16_rel"] > 0.005 for row in rows)
    assert "| llama-3.2-1b-full-depth-full-b4x2048 tensorwise-pow2 | 300 | +1.35% | +0.04% |" in report
    assert (tmp_path / "parity-1b-loss.png").stat().st_size > 10_000


def test_a_loss_only_run_reports_no_speed_ratio():
    bf16 = run("bf16", lambda step: 4.0, loss_only=True)
    fp8 = run("fp8", lambda step: 4.0, loss_only=True)
    bf16.tokens_per_s, fp8.tokens_per_s = 1000.0, 2000.0  # what a shared GPU gave: not their own speeds
    fp8.tokens_per_s = None  # read_outcome leaves it out for a loss-only run
    (row,) = ratio_table([bf16, fp8])
    assert "speedup_vs_bf16_compiled" not in row and row["parity"]["fp8_vs_bf16_rel"] == 0


def test_a_search_stops_at_the_first_batch_that_trains_and_fp8_is_compared_with_it():
    search = dict(SHAPE, precision="bf16", compile=False, grad_ckpt=True, search="llamafactory-defaults", steps=20)
    seven, six, five = (Case(**search, batch=batch) for batch in (7, 6, 5))
    out_of_memory = Result(seven, 1)
    assert not settled(six, [out_of_memory])
    fitted = Result(six, 0, tokens_per_s=1000.0)
    assert settled(five, [out_of_memory, fitted])
    assert not settled(Case(**dict(SHAPE, precision="fp8")), [fitted])
    fp8 = Result(Case(**dict(SHAPE, steps=20, precision="fp8", batch=8, grad_ckpt=True)), 0, tokens_per_s=1900.0)
    (row,) = ratio_table([fp8, out_of_memory, fitted])
    assert (row["speedup_vs_llamafactory_defaults"], row["llamafactory_defaults_batch"]) == (1.9, 6)


def test_only_runs_that_measure_no_speed_share_the_gpu():
    loss = [Case(**SHAPE, precision="bf16", loss_only=True, repeat=i) for i in range(3)]
    timed = Case(**SHAPE, precision="fp8")
    memory = Case(**SHAPE, precision="bf16", memory_only=True)
    assert batches([*loss, timed, memory, memory], parallel=2) == [loss[:2], loss[2:], [timed], [memory, memory]]


def test_a_run_over_several_gpus_is_set_against_one_gpu_at_its_precision_and_optimizer_batch(tmp_path):
    from bench.plans import PLANS

    one_bf16, one_fp8, two_bf16, two_fp8 = PLANS["gpus-2-fsdp2"]
    results = [
        Result(one_bf16, 0, tokens_per_s=10_000.0, losses={10: 5.0, 20: 4.0}),
        Result(one_fp8, 0, tokens_per_s=13_000.0, losses={10: 5.1, 20: 4.1}),
        Result(two_bf16, 0, tokens_per_s=18_000.0, losses={10: 5.0, 20: 4.02}, peak_allocated_gib=20.0),
        Result(two_fp8, 1, losses={10: 5.1}),
    ]
    env = {"device": "test", "date": "today", "driver": None, "cuda_driver": None, "packages": {}}
    report = write_report(tmp_path / "gpus-2-fsdp2", env, "command", results)
    bf16, fp8 = json.loads((tmp_path / "gpus-2-fsdp2.json").read_text())["several_gpus"]
    assert (bf16["strategy"], bf16["gpus"], bf16["tokens_per_s_per_gpu"]) == ("fsdp2", 2, 9000)
    assert bf16["per_gpu_vs_one_gpu"] == 0.9 and bf16["loss_rel_diff_vs_one_gpu"] == 0.005
    assert (fp8["exit"], fp8["tokens_per_s_per_gpu"], fp8["loss_step"]) == (1, None, 10)
    assert fp8["loss_rel_diff_vs_one_gpu"] == 0.0  # against one GPU's FP8, not its BF16
    assert f"| {two_bf16.name} | fsdp2 | 2 | bf16 | 0 | 9000 | 0.9 | 20.0 | 0.005 (20) |" in report


def timed_run(precision, launch_s, step_s, steps=50, compile=True):
    """A run whose first step reached the log `launch_s` after the launch, then one every `step_s`."""
    case = Case(**{**SHAPE, "steps": steps, "compile": compile}, precision=precision, warmup_steps=10)
    seconds = {step: round(launch_s + (step - 1) * step_s, 1) for step in range(1, steps + 1)}
    return Result(case, 0, tokens_per_s=2048 / step_s, seconds_to_step=seconds)


def test_wall_time_says_when_fp8_pays_back_its_longer_compile():
    bf16 = timed_run("bf16", launch_s=60, step_s=1.0)
    slower_start = timed_run("fp8", launch_s=120, step_s=0.8)
    eager = timed_run("bf16", launch_s=20, step_s=1.5, compile=False)
    (row,) = ratio_table([bf16, eager, slower_start])
    assert row["wall_time"]["eager"]["fp8_ahead_from_step"] == 144  # 100 s behind eager's start, gaining 0.7 s a step
    assert row["wall_time"]["compiled"] == {
        "step": 50,
        "bf16_s": 109.0,
        "fp8_s": 159.2,
        "bf16_s_per_step": 1.0,
        "fp8_s_per_step": 0.8,
        "fp8_ahead_from_step": 301,  # 50.2 s behind at step 50, gaining 0.2 s a step
    }
    already_ahead = timed_run("fp8", launch_s=65, step_s=0.8)
    assert (
        ratio_table([bf16, already_ahead])[0]["wall_time"]["compiled"]["fp8_ahead_from_step"] == 26
    )  # 5 s behind, level at step 26
    never = timed_run("fp8", launch_s=120, step_s=1.1)
    assert ratio_table([bf16, never])[0]["wall_time"]["compiled"]["fp8_ahead_from_step"] is None


def test_the_report_shows_the_wall_time_table(tmp_path):
    results = [timed_run("bf16", launch_s=60, step_s=1.0), timed_run("fp8", launch_s=120, step_s=0.8)]
    env = {"device": "test", "date": "today", "driver": None, "cuda_driver": None, "packages": {}}
    report = write_report(tmp_path / "sweep", env, "command", results)
    row = "| llama-3.2-1b-full-depth-full-b4x2048 torchao | compiled | 50 | 109.0 | 159.2 | 1.0 | 0.8 | 301 |"
    assert row in report


def test_a_run_compiles_from_an_empty_cache_unless_it_shares_its_first_runs(tmp_path):
    from dataclasses import replace

    from bench.plans import rerun_with_cache_kept
    from bench.runner import compile_cache

    first, rerun = rerun_with_cache_kept([Case(**SHAPE, precision="fp8")])
    cache = compile_cache(first, tmp_path)
    (cache / "fxgraph").mkdir(parents=True)
    assert compile_cache(rerun, tmp_path) == cache and (cache / "fxgraph").is_dir(), "the rerun finds it filled"
    own = replace(first, compile_cache="")
    (compile_cache(own, tmp_path) / "left-by-an-earlier-call").mkdir(parents=True)
    assert not compile_cache(own, tmp_path).exists(), "a run of its own starts empty, as in a fresh container"


def test_the_payback_of_short_sft_examples_is_timed_by_the_step_clock_not_by_full_sequences():
    """On alpaca_en_demo a micro-batch holds one short example, not batch x seq tokens: seconds per micro-batch come
    from the logged steps (here 2 s a step of 8 micro-batches), where packed pt blocks take them from tokens/s."""
    from bench.payback import seconds_per_micro_batch

    clock = {step: 10.0 + 2 * step for step in range(5, 31, 5)}
    options = dict(shape="llama-3.1-8b", layers=None, finetuning="lora", precision="bf16", compile=False, steps=30)
    options.update(batch=1, grad_accum=8, warmup_steps=6)
    sft = Case(**options, extra=("stage=sft", "dataset=alpaca_en_demo"))
    packed = Case(**options)
    assert seconds_per_micro_batch(Result(sft, 0, tokens_per_s=2048.0, seconds_to_step=clock)) == 0.25
    assert seconds_per_micro_batch(Result(packed, 0, tokens_per_s=2048.0, seconds_to_step=clock)) == 1.0
