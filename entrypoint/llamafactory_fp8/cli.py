"""`llamafactory-fp8`: inspect the GPUs, decide the precision, render the Accelerate config, launch LLaMA-Factory."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import __version__, paths
from .accelerate_config import check_user_config_matches, render_accelerate_config, write_accelerate_config
from .backends import installed_fp8_backends
from .errors import USAGE_EXIT_CODE, LaunchError
from .gpus import GpuInventory, read_gpus
from .launcher import build_command, child_environment, run
from .model_facts import read_model_facts
from .policy import Decision, Request, TrainingFacts, decide
from .records import read_record, write_record
from .report import describe_gpus, render_block
from .resume import RunRecord, outcome, plan_resume, record_path
from .run_state import RunState, state_path
from .stop_request import STOPPED_EXIT_CODE, StopAnswer, StopFiles
from .topology import read_topology
from .training_config import TrainingConfig, check_output_dir_writable, load_training_config

COMMANDS = ("train", "inspect")


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes end in one line and their own exit code, like every other user error."""

    def error(self, message: str):
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="llamafactory-fp8",
        description="Train with LLaMA-Factory in FP8 where it pays and BF16 elsewhere. "
        "With no command, `train` is meant.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    train = commands.add_parser("train", help="decide the precision and launch training")
    train.add_argument("config", nargs="?", type=Path, help="LLaMA-Factory training YAML (default: the built-in demo)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="LLaMA-Factory keys that override the YAML")
    _add_decision_arguments(train)
    train.add_argument("--accelerate-config", type=Path, help="your own Accelerate config, used as is")
    train.add_argument("--dry-run", action="store_true", help="print what would run, then stop")
    train.set_defaults(handler=train_command)

    inspect = commands.add_parser("inspect", help="show the GPUs and what `train` would choose, and why")
    inspect.add_argument("config", nargs="?", type=Path, help="training YAML to decide for (default: the demo)")
    _add_decision_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(handler=inspect_command)
    return parser


def _add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--auto", dest="precision", action="store_const", const="auto", help="FP8 only where it pays (default)")
    precision.add_argument("--fp8", dest="precision", action="store_const", const="fp8", help="FP8, or refuse")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="BF16")
    parser.set_defaults(precision="auto")
    parser.add_argument("--backend", choices=("auto", "torchao", "te"), default="auto", help="FP8 backend")
    parser.add_argument(
        "--strategy",
        choices=("auto", "ddp", "fsdp2", "deepspeed-zero2", "deepspeed-zero3"),
        default="auto",
        help="how several GPUs share the work (auto: data parallel, or DeepSpeed where the YAML sets deepspeed)",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="train on the CPU when no GPU is visible")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "train")  # `docker run IMAGE --bf16` trains the demo
    parser = build_parser()
    args, leftovers = parser.parse_known_args(argv)
    unknown = [item for item in leftovers if item.startswith("-") or "overrides" not in args]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if leftovers:
        args.overrides += leftovers  # key=value given after an option: argparse leaves those over
    try:
        return args.handler(args)
    except LaunchError as error:
        print(f"llamafactory-fp8: error: {error}", file=sys.stderr)
        return error.exit_code


class Plan:
    """Everything found and decided for one run: inspect -> decide -> render, before anything launches."""

    def __init__(self, args: argparse.Namespace, overrides: list[str], gpus: GpuInventory):
        config_path = paths.demo_config() if args.config is None else args.config
        self.uses_demo = config_path.is_file() and config_path.samefile(paths.demo_config())
        self.workdir = paths.project_home() if args.config is None else Path.cwd()
        self.training: TrainingConfig = load_training_config(config_path, overrides)
        self.output_dir = self.resolve(self.training.output_dir)
        self.topology = read_topology()
        self.gpus = gpus
        self.model = read_model_facts(str(self.resolve(self.training.model)))
        self.decision: Decision = decide(
            self.gpus,
            self.model,
            _training_facts(self.training),
            Request(args.precision, args.backend, args.strategy, args.allow_cpu),
            installed_fp8_backends(),
        )
        self.training_keys = {**self.training.overrides, **self.decision.training_keys}
        if self.decision.deepspeed_stage is not None:
            self.training_keys["deepspeed"] = str(paths.deepspeed_config(self.decision.deepspeed_stage))
        self.run_record = record_path(self.output_dir, self.topology)
        self.resume = plan_resume(self.output_dir, read_record(RunRecord, self.run_record), self.training.values)
        if self.resume:
            self.training_keys.update(self.resume.training_keys)
        self.replaced = {
            key: (self.training.values[key], value)
            for key, value in self.decision.training_keys.items()
            if key in self.training.values and self.training.values[key] != value
        }

    def resolve(self, path: str | Path) -> Path:
        return self.workdir / path


def train_command(args: argparse.Namespace) -> int:
    plan = Plan(args, args.overrides, read_gpus())
    check_output_dir_writable(plan.output_dir)
    if args.accelerate_config:
        check_user_config_matches(args.accelerate_config, plan.decision)
        accelerate_config, sources, rendered = args.accelerate_config.resolve(), [], None
    else:
        rendered, sources = render_accelerate_config(plan.decision, plan.topology, paths.accelerate_configs_dir())
        accelerate_config = plan.output_dir / f"accelerate_config{plan.topology.node_suffix}.yaml"
    command = build_command(accelerate_config, plan.resolve(plan.training.path), plan.training_keys)
    print(
        render_block(
            plan.gpus, plan.training, plan.model, plan.decision, plan.replaced, plan.resume,
            accelerate_config, sources, command, plan.workdir,
        ),
        flush=True,
    )  # fmt: skip
    if args.dry_run:
        return 0
    if rendered is not None:
        write_accelerate_config(rendered, accelerate_config)
    if plan.uses_demo and plan.model is None:
        _build_demo_model(plan)
    state_file = state_path()
    stop_files = StopFiles.in_dir(state_file.parent)
    stop_files.clear()
    state = RunState(0, str(plan.output_dir.resolve()), plan.decision.device, time.time())
    write_record(RunRecord("running"), plan.run_record)
    exit_code = run(
        command,
        child_environment(dict(os.environ), plan.topology, plan.decision.device),
        stop_files,
        cwd=plan.workdir,
        on_start=lambda pid: write_record(replace(state, trainer_pid=pid), state_file),
    )
    answer = stop_files.read_answer()
    if answer is not None and exit_code == 0:
        exit_code = STOPPED_EXIT_CODE
        print(f"llamafactory-fp8: {_describe_stop(answer)}", file=sys.stderr, flush=True)
    elif exit_code == 1:
        print(
            "llamafactory-fp8: training failed (exit 1); the trainer's error is above. A trainer killed outright, "
            "by the out-of-memory killer for one, leaves none: look at the kernel log",
            file=sys.stderr,
            flush=True,
        )
    write_record(outcome(exit_code), plan.run_record)
    write_record(replace(read_record(RunState, state_file) or state, exit_code=exit_code), state_file)
    return exit_code


def _describe_stop(answer: StopAnswer) -> str:
    if answer.checkpoint is None:
        return f"stopped on request before the first step, with nothing to save; run the same command again to start (exit {STOPPED_EXIT_CODE})"
    return (
        f"stopped on request after step {answer.step}, checkpoint saved in {answer.checkpoint}; "
        f"run the same command again to resume from it (exit {STOPPED_EXIT_CODE})"
    )


def inspect_command(args: argparse.Namespace) -> int:
    gpus = read_gpus()
    try:
        plan = Plan(args, [], gpus)
        decision, error = plan.decision, None
    except LaunchError as refused:
        decision, error = None, refused
    if args.json:
        print(json.dumps({"gpus": asdict(gpus), "decision": decision and asdict(decision), "refusal": error and str(error)}, indent=2))
        return 0
    print("GPUs:")
    print("\n".join(f"  {line}" for line in describe_gpus(gpus)))
    if decision is None:
        print(f"train would refuse: {error}")
        return 0
    print(f"train would choose {decision.precision.upper()}" + (f" ({decision.backend})" if decision.backend else ""))
    print("\n".join(f"  - {reason}" for reason in decision.reasons))
    return 0


def _build_demo_model(plan: Plan) -> None:
    from .demo import build_demo_model

    destination = plan.resolve(plan.training.model)
    print(f"building the demo model at {destination} (tiny random-init Llama, offline)", flush=True)
    build_demo_model(destination, plan.resolve(str(plan.training.values.get("dataset_dir", "data"))))


def _training_facts(training: TrainingConfig) -> TrainingFacts:
    return TrainingFacts(
        stage=training.stage,
        finetuning_type=training.finetuning_type,
        asks_for_fp8=training.asks_for_fp8,
        deepspeed=training.deepspeed,
        quantized=training.values.get("quantization_bit") is not None,
    )

