"""Run a LaunchPlan: its command (`accelerate launch ... -m llamafactory_fp8.rank CONFIG key=value...`), a signal
turned into a stop request, the outcome recorded for the next run and for the healthcheck, the exit code returned.
Nothing here decides: the plan holds what runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .accelerate_config import write_accelerate_config
from .demo import build_demo_model
from .errors import (
    DISK_FULL_EXIT_CODE,
    NODE_LOST_EXIT_CODE,
    STOPPED_EXIT_CODE,
    TRAINING_FAILED_EXIT_CODE,
    ConfigInvalid,
)
from .lf_data import write_dataset_info
from .plan import LaunchPlan
from .progress import CONFIG_REFUSED, DISK_FULL, KILLED_BY, LOST_PEER, RankProgress, read_all
from .records import write_record
from .resume import RunRecord, outcome
from .run_info import RunState, write_state
from .run_lock import RunLock
from .stop_request import StopAnswer, StopFiles
from .topology import Topology

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOW_DISK_BYTES = 16 * 2**20  # less free than this under output_dir after a failure: the disk filled up


def launch(plan: LaunchPlan) -> int:
    """Move an old run aside where --restart asked, hold output_dir's lock for the run, and run it."""
    if plan.set_aside is not None:
        plan.output_dir.rename(plan.set_aside)
        print(
            f"llamafactory-fp8: --restart: moved the earlier run in {plan.output_dir} to {plan.set_aside}", flush=True
        )
    with RunLock(plan.lock) as lock:
        if lock.unguarded:
            print(
                f"llamafactory-fp8: warning: {plan.output_dir}'s filesystem takes no locks: "
                "a second launcher there would not be refused",
                file=sys.stderr,
                flush=True,
            )
        return _run_plan(plan)


def _run_plan(plan: LaunchPlan) -> int:
    """Write what the plan rendered, start the trainer, and record how it ended."""
    if plan.accelerate.values is not None:
        write_accelerate_config(dict(plan.accelerate.values), plan.accelerate.path)
    if plan.dataset_info is not None:
        write_dataset_info(plan.dataset_info, plan.dataset_dir)
    if plan.demo_model is not None:
        print(f"building the demo model at {plan.demo_model} (tiny random-init Llama, offline)", flush=True)
        build_demo_model(plan.demo_model, plan.workdir / plan.training.dataset_dir)
    stop_files = StopFiles.in_dir(plan.state_file.parent)
    stop_files.clear()
    ranks = plan.progress_dir
    for left in ranks.glob("rank*.json"):
        left.unlink()  # an earlier run's ranks must not speak for this one
    state = RunState(0, str(plan.output_dir.resolve()), plan.decision.device, time.time())

    def started(pid: int) -> None:
        nonlocal state
        state = replace(state, trainer_pid=pid)
        write_state(state, plan.state_file)

    write_record(RunRecord("running"), plan.run_record)
    exit_code = run(
        list(plan.command), {**os.environ, **plan.environment}, stop_files, cwd=plan.workdir, on_start=started
    )
    answer = stop_files.read_answer()
    if answer is not None and exit_code == 0:
        exit_code = STOPPED_EXIT_CODE
        print(f"llamafactory-fp8: {describe_stop(answer)}", file=sys.stderr, flush=True)
    elif exit_code > 128 and stop_files.asked():  # a second signal ended the group at once
        name = signal.Signals(exit_code - 128).name
        print(
            f"\nllamafactory-fp8: stopped at once by a second {name}, without saving; run the same command again to "
            f"resume from the last complete checkpoint (exit {exit_code})",
            file=sys.stderr,
            flush=True,
        )
    elif exit_code != 0:
        exit_code, words = explain_failure(read_all(ranks), plan.output_dir, plan.topology)
        line = f"llamafactory-fp8: {words} (exit {exit_code})"
        killed = exit_code > 128  # its progress bar is left mid-line: the launcher's line starts a new one
        print("\n" + line if killed else line, file=sys.stderr, flush=True)
    elif plan.rehearsal is not None:
        print(f"llamafactory-fp8: {describe_rehearsal(Path(plan.rehearsal.report))}", flush=True)
    else:
        print(f"llamafactory-fp8: {describe_finish(read_all(ranks), plan)}", flush=True)
    try:
        write_record(outcome(exit_code), plan.run_record)
    except OSError:
        pass  # output_dir's disk is full: the record stays "running", and a rerun still resumes
    write_state(replace(state, exit_code=exit_code), plan.state_file)
    return exit_code


def explain_failure(ranks: list[RankProgress], output_dir: Path, topology: Topology) -> tuple[int, str]:
    """One line and its exit code for a trainer that failed, from how its ranks said they ended: killed outright
    (no traceback of its own), a full disk, a lost node, or its own error, which is above in the log."""
    ended = {record.rank: record for record in ranks if record.ended}
    killed = [record for record in ended.values() if record.ended.startswith(KILLED_BY)]
    if killed:
        record = min(killed, key=lambda record: record.ended != KILLED_BY + "SIGKILL")  # the cause, not the cleanup
        name = record.ended.removeprefix(KILLED_BY)
        return 128 + signal.Signals[name], (
            f"the trainer (rank {record.rank}) was killed by {name} at step {record.step}, with no error of its own; "
            "the out-of-memory killer sends SIGKILL: see the kernel log (dmesg). Run the same command again to "
            "resume from the last complete checkpoint"
        )
    free = shutil.disk_usage(next(parent for parent in (output_dir, *output_dir.parents) if parent.exists())).free
    full = [record for record in ended.values() if record.ended.startswith(DISK_FULL)]
    if full or free < LOW_DISK_BYTES:
        saving = next((record.detail for record in ranks if record.phase in ("saving", "stopping")), "")
        return DISK_FULL_EXIT_CODE, (
            f"training failed: the disk under {output_dir} is full ({free / 2**20:.0f} MiB free)"
            + (f" while saving {saving}" if saving else "")
            + "; a checkpoint it cut short is passed over: free space, then run the same command again to resume"
        )
    lost = [record for record in ended.values() if record.ended.startswith(LOST_PEER)]
    if lost:
        message = lost[0].ended.removeprefix(LOST_PEER)
        return NODE_LOST_EXIT_CODE, (
            f"training failed at step {lost[0].step}: {lost_node(topology, message)} was lost ({message[:200]}); "
            "run every node's command again to resume"
        )
    refused = [record for record in ended.values() if record.ended.startswith(CONFIG_REFUSED)]
    if refused:
        return ConfigInvalid.exit_code, (
            f"error: LLaMA-Factory refused the training config: {refused[0].ended.removeprefix(CONFIG_REFUSED)}"
        )
    return TRAINING_FAILED_EXIT_CODE, "training failed; the trainer's own error is above"


def lost_node(topology: Topology, message: str) -> str:
    """Which node stopped answering, as far as this node can tell: the other one of two, node 0 by its address."""
    if topology.num_machines == 2:
        return f"node {1 - topology.machine_rank}"
    address = re.search(r"\[([^\]]+)\]:\d+", message)
    if address and address[1] == topology.main_process_ip:
        return f"node 0 ({address[1]})"
    return f"the node at {address[1]}" if address else "another node"


def describe_finish(ranks: list[RankProgress], plan: LaunchPlan) -> str:
    """The closing line of a run that finished: what it did, how fast, in how much memory, and where it left what
    it made."""
    first = next((record for record in ranks if record.rank == 0), None)
    parts = []
    if first is not None and first.step:
        parts.append(
            f"{first.step - first.first_step} steps" + (f" (from step {first.first_step})" if first.first_step else "")
        )
        if first.tokens_per_s:
            parts.append(f"{first.tokens_per_s:,.0f} tokens/s")
        if first.peak_memory_gib is not None:
            parts.append(f"peak GPU memory {first.peak_memory_gib:.1f} GiB")
        if first.fp8_layers:
            parts.append(f"{first.fp8_layers} FP8 layers")
    made = "model and checkpoints" if plan.training.trains else "results"  # an evaluation writes its metrics
    where = f"{made} in {plan.output_dir}"
    if plan.outputs_stay_in_container:
        where += " inside this container: they go with it (mount a volume there to keep them)"
    return "finished: " + ", ".join([*parts, where])


def describe_rehearsal(report_path: Path) -> str:
    """The closing line of a rehearsal: rank 0's measured memory beside the estimate, its step, and the
    communication the job would add (an estimate: the fake group sends nothing)."""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return f"rehearsal ended without its report ({report_path})"
    memory = report["memory"]
    peak = memory.get("peak_allocated_gib", memory.get("training_peak_rss_gib"))
    kind = "GPU memory allocated" if "peak_allocated_gib" in memory else "resident memory (CPU)"
    estimate = f" (estimated {memory['estimate_gib']:.1f})" if memory.get("estimate_gib") else ""
    sent = report["communication_estimate"]["network_bytes_per_step"] / 1e9
    return (
        f"rehearsed rank 0 of {report['world_size']} ({report['strategy']}, {report['precision']}): peak {kind} "
        f"{peak:.1f} GiB{estimate}, {report['step_s']:.2f} s a step without communication, "
        f"{report['tokens_per_s_per_rank']:,.0f} tokens/s per rank; the job would add ~{sent:.1f} GB a step per rank "
        f"over the network (an estimate); report in {report_path}"
    )


def describe_stop(answer: StopAnswer) -> str:
    if answer.checkpoint is None:
        return (
            "stopped on request before the first step, with nothing to save; "
            f"run the same command again to start (exit {STOPPED_EXIT_CODE})"
        )
    return (
        f"stopped on request after step {answer.step}, checkpoint saved in {answer.checkpoint}; "
        f"run the same command again to resume from it (exit {STOPPED_EXIT_CODE})"
    )


def run(
    command: list[str],
    env: dict[str, str],
    stop_files: StopFiles,
    cwd: Path | None = None,
    on_start: Callable[[int], None] = lambda pid: None,
) -> int:
    """Run the trainer in its own process group. The first SIGINT, SIGTERM or SIGHUP (Docker and Kubernetes send
    SIGTERM, then wait out a grace period) asks it to checkpoint and stop; a second one ends the whole group at
    once. Return its exit code, or 128+N when signal N ended it."""
    child: subprocess.Popen | None = None
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        if len(received) == 1:
            stop_files.ask()
            print(
                f"llamafactory-fp8: {signal.Signals(signum).name}: the trainer will save a checkpoint and stop after "
                "its current step; send the signal again to stop at once",
                file=sys.stderr,
                flush=True,
            )
        elif child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # at once, and without a traceback from every process

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        child = subprocess.Popen(command, env={**env, **stop_files.environment()}, cwd=cwd, start_new_session=True)
        on_start(child.pid)
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if len(received) > 1:
        return 128 + received[1]
    return 128 - returncode if returncode < 0 else returncode
