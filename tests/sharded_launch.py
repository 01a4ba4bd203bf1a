"""`llamafactory-fp8 train --allow-cpu --strategy S --processes N` as the sharded CPU tests run it, until the lead
wires cpu_processes.py into the planner: the real plan of the demo (inspection, resume, keys), its CPU decision
given the strategy and process count, the Accelerate config, keys and environment cpu_processes.py renders, and
the real launcher (stop on SIGTERM, exit 75, the run record the rerun resumes from). The trainer is
tests/sharded_trainer.py: the product's, with the FSDP-on-CPU patch and a sharding probe.

    python -m tests.sharded_launch STRATEGY PROCESSES [--bf16] [--rehearse] [key=value ...]

With --rehearse, as `llamafactory-fp8 rehearse`: the same plan for PROCESSES ranks, run as rank 0 alone on a fake
process group (rehearsal.py), the report written to OUTPUT_DIR/rehearsal.json.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from llamafactory_fp8 import paths
from llamafactory_fp8.cpu_processes import (
    check_cpu_strategy,
    cpu_accelerate_config,
    cpu_environment,
    cpu_training_keys,
)
from llamafactory_fp8.errors import LaunchError
from llamafactory_fp8.fit import StrategyChoice, layout
from llamafactory_fp8.launcher import launch
from llamafactory_fp8.plan import RANK_MODULE, LaunchPlan, build_command, format_value, plan_run
from llamafactory_fp8.rehearsal import RehearsalRequest, check_rehearsable, rehearsal_accelerate_config
from llamafactory_fp8.report import render_block
from llamafactory_fp8.request import Request
from llamafactory_fp8.strategies import BY_NAME


def sharded_cpu_plan(strategy_name: str, processes: int, precision: str, overrides: tuple[str, ...]) -> LaunchPlan:
    plan = plan_run(Request(overrides=overrides, precision=precision, allow_cpu=True))
    strategy = BY_NAME[strategy_name]
    check_cpu_strategy(strategy, processes, processes * plan.topology.num_machines, plan.decision.precision)
    world_size = processes * plan.topology.num_machines
    decision = replace(
        plan.decision,
        processes_per_node=processes,
        world_size=world_size,
        strategy=StrategyChoice(strategy=strategy, source="flag"),
        layout=layout(strategy, world_size),
    )
    values, sources = cpu_accelerate_config(decision, plan.topology, paths.accelerate_configs_dir())
    if "fsdp_config" in values:  # what configs/accelerate/fsdp2*.yaml say once fsdp_checkpoints.py is wired
        values["fsdp_config"] = {**values["fsdp_config"], "fsdp_state_dict_type": "SHARDED_STATE_DICT"}
    arguments = {key.name: key.argument for key in plan.training_keys if key.argument is not None}
    added = cpu_training_keys(decision)
    if strategy.deepspeed_config:
        added["deepspeed"] = str(paths.deepspeed_config(strategy.deepspeed_config))
    arguments.update({name: format_value(value) for name, value in added.items()})
    training_config = plan.command[plan.command.index(RANK_MODULE) + 1]
    command = list(build_command(plan.accelerate.path, plan.workdir / training_config, arguments))
    command[command.index(RANK_MODULE)] = "tests.sharded_trainer"
    return replace(
        plan,
        decision=decision,
        accelerate=replace(plan.accelerate, values=values, sources=sources),
        command=tuple(command),
        environment={**plan.environment, **cpu_environment(processes)},
    )


def rehearsal_plan(plan: LaunchPlan) -> LaunchPlan:
    """What the lead's `rehearse` renders from the job's plan: its Accelerate config for one process, no
    checkpoints, and the request the trainer's rehearsal reads."""
    check_rehearsable(plan.decision.strategy.strategy)
    request = RehearsalRequest(
        world_size=plan.decision.processes_per_node * plan.topology.num_machines,
        processes_per_node=plan.decision.processes_per_node,
        strategy=plan.decision.strategy.strategy.name,
        precision=plan.decision.precision,
        report=str(plan.output_dir / "rehearsal.json"),
    )
    command = list(plan.command)
    command.insert(command.index("tests.sharded_trainer") + 2, 'save_strategy="no"')
    return replace(
        plan,
        accelerate=replace(plan.accelerate, values=rehearsal_accelerate_config(dict(plan.accelerate.values))),
        command=tuple(command),
        environment={**plan.environment, **request.environment()},
    )


def main(argv: list[str]) -> int:
    strategy, processes, *rest = argv
    precision = "bf16" if "--bf16" in rest else "auto"
    overrides = tuple(arg for arg in rest if arg not in ("--bf16", "--rehearse"))
    try:
        plan = sharded_cpu_plan(strategy, int(processes), precision, overrides)
        if "--rehearse" in rest:
            plan = rehearsal_plan(plan)
    except LaunchError as error:
        print(f"llamafactory-fp8: error: {error}", file=sys.stderr)
        return error.exit_code
    print(render_block(plan), flush=True)
    return launch(plan)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
