"""`llamafactory-fp8`: parse the command line, then plan (inspect -> decide -> render), print, and launch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import USAGE_EXIT_CODE, LaunchError
from .gpus import read_gpus
from .launcher import launch
from .plan import plan_run
from .report import describe_decision, describe_gpus, memory_table, plan_json, render_block, to_json
from .request import BACKEND_CHOICES, FP8_RECIPE_CHOICES, STRATEGY_CHOICES, Request

COMMANDS = ("train", "rehearse", "inspect")


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

    train = commands.add_parser("train", help="decide the precision and strategy, and launch training")
    train.add_argument("config", nargs="?", type=Path, help="LLaMA-Factory training YAML (default: the built-in demo)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="LLaMA-Factory keys that override the YAML")
    _add_decision_arguments(train)
    train.add_argument("--accelerate-config", type=Path, help="your own Accelerate config, used as is")
    train.add_argument(
        "--restart",
        action="store_true",
        help="move what output_dir holds (a finished or interrupted run) aside, named by the time, and start over",
    )
    train.add_argument("--dry-run", action="store_true", help="print what would run, then stop")
    train.add_argument("--json", action="store_true", help="print the plan as JSON instead of the block")
    train.set_defaults(handler=train_command)

    rehearse = commands.add_parser(
        "rehearse",
        help="run rank 0 of a job of --processes ranks alone on this node's one GPU (a fake process group): its "
        "real memory and step time, and the communication the job would add",
    )
    rehearse.add_argument("config", nargs="?", type=Path, help="LLaMA-Factory training YAML (default: the demo)")
    rehearse.add_argument("overrides", nargs="*", metavar="key=value", help="LLaMA-Factory keys that override the YAML")
    _add_decision_arguments(rehearse)
    rehearse.add_argument("--dry-run", action="store_true", help="print what would run, then stop")
    rehearse.add_argument("--json", action="store_true", help="print the plan as JSON instead of the block")
    rehearse.set_defaults(handler=train_command, rehearsal=True)

    inspect = commands.add_parser(
        "inspect", help="show the GPUs, what `train` would choose and why, and the memory per strategy"
    )
    inspect.add_argument("config", nargs="?", type=Path, help="training YAML to decide for (default: the demo)")
    inspect.add_argument("overrides", nargs="*", metavar="key=value", help="LLaMA-Factory keys that override the YAML")
    _add_decision_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(handler=inspect_command)
    return parser


def _add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--auto", dest="precision", action="store_const", const="auto", help="FP8 only where it pays (default)"
    )
    precision.add_argument("--fp8", dest="precision", action="store_const", const="fp8", help="FP8, or refuse")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="BF16")
    parser.set_defaults(precision="auto")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="FP8 backend")
    parser.add_argument(
        "--fp8-recipe",
        choices=FP8_RECIPE_CHOICES,
        default="auto",
        help="torchao's scaling and the layers it converts (auto: lora-base for LoRA, torchao's default otherwise)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGY_CHOICES,
        default="auto",
        help="how several GPUs share the work (auto: the YAML's deepspeed/fsdp, else the fastest that fits in memory)",
    )
    parser.add_argument(
        "--no-memory-check",
        dest="memory_check",
        action="store_false",
        help="launch even where nothing is estimated to fit",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="train on the CPU when no GPU is visible")
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="training processes on this node (default: one per GPU, one on the CPU); for `rehearse`, the job's",
    )


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
    if "overrides" in args and args.config is not None and _is_override(str(args.config)):
        args.overrides.insert(0, str(args.config))  # `docker run IMAGE --bf16 max_steps=10`: the demo, overridden
        args.config = None
    request = Request(
        config=args.config,
        overrides=tuple(getattr(args, "overrides", ())),
        precision=args.precision,
        backend=args.backend,
        fp8_recipe=args.fp8_recipe,
        strategy=args.strategy,
        allow_cpu=args.allow_cpu,
        memory_check=args.memory_check,
        accelerate_config=getattr(args, "accelerate_config", None),
        restart=getattr(args, "restart", False),
        processes=args.processes,
        rehearsal=getattr(args, "rehearsal", False),
    )
    try:
        return args.handler(request, args)
    except LaunchError as error:
        print(f"llamafactory-fp8: error: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code


def _is_override(text: str) -> bool:
    """`key=value` where a config path was expected: `docker run IMAGE --bf16 output_dir=outputs/x` overrides the
    demo. A key holds no slash, a value may; a file of that name is still a config."""
    key, sep, _ = text.partition("=")
    return bool(sep) and bool(key) and "/" not in key and not Path(text).exists()


def one_line(text: str) -> str:
    """An error quotes what the user typed; a line break in it (any Unicode one) must not make it two lines."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def train_command(request: Request, args: argparse.Namespace) -> int:
    plan = plan_run(request)
    print(plan_json(plan) if args.json else render_block(plan), flush=True)
    for warning in plan.decision.warnings:
        print(f"llamafactory-fp8: warning: {warning}", file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return launch(plan)


def inspect_command(request: Request, args: argparse.Namespace) -> int:
    """What train would do, or the one line with which it would refuse; exit 0 either way."""
    try:
        plan, refusal = plan_run(request), None
    except LaunchError as error:
        plan, refusal = None, error
    gpus = plan.gpus if plan else read_gpus()
    if args.json:
        print(
            json.dumps(
                {"gpus": to_json(gpus), "plan": plan and to_json(plan), "refusal": refusal and str(refusal)},
                indent=2,
                default=str,
            )
        )
        return 0
    print("GPUs:")
    print("\n".join(f"  {line}" for line in describe_gpus(gpus)))
    if plan is None:
        print(f"train would refuse (exit {refusal.exit_code}): {refusal}")
        return 0
    decision = plan.decision
    print(f"train would choose {describe_decision(decision, plan.topology.num_machines)}")
    tips = tuple(f"tip: {tip}" for tip in decision.tips)
    print("\n".join(f"  - {line}" for line in decision.reasons + decision.warnings + tips))
    print("\n".join(memory_table(decision, plan.installed_strategies)))
    return 0
